//! `manifest.json` and `SHA256SUMS`. The manifest holds only what the inputs
//! decide (no build time, no host name), so identical inputs give identical bytes.

use serde::{Deserialize, Serialize};

/// Version of the manifest's layout; bump on any incompatible change.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub manifest_version: u32,
    pub tool: String,
    pub name: String,
    pub version: String,
    pub arch: String,
    pub recipe_sha256: String,
    pub source_date_epoch: i64,
    /// Built with `--fast` (low compression): never a release.
    pub fast: bool,
    pub stages: Vec<ManifestStage>,
    pub rootfs: ManifestRootfs,
    /// One entry per kernel stage, in stage order.
    #[serde(default)]
    pub kernels: Vec<ManifestKernel>,
    pub boot: ManifestBoot,
    pub artifacts: Vec<ManifestArtifact>,
    /// `build --locked`: the SHA-256 of the lock the build used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_sha256: Option<String>,
    /// `outputs.oci`: the digest of the image's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_image: Option<String>,
    /// Set by `release promote`: the version whose artifacts these are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<PromotedFrom>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromotedFrom {
    pub version: String,
    /// The SHA-256 of that version's manifest.json.
    pub manifest_sha256: String,
}

/// How the bundle boots: its files, the recipe's kernel command line and
/// marker, and what the thin initramfs carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestBoot {
    pub initramfs: String,
    pub initramfs_size: u64,
    pub initramfs_compression: String,
    pub rootfs_image: String,
    pub cmdline: String,
    pub marker: Option<String>,
    /// kernel release → module files in the initramfs, in load order
    pub modules: std::collections::BTreeMap<String, Vec<String>>,
    pub shell: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestKernel {
    pub name: String,
    /// `uname -r`
    pub release: String,
    pub config_sha256: String,
    pub vmlinuz: String,
    pub debs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestStage {
    pub name: String,
    pub kind: String,
    pub key: String,
    pub layer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestRootfs {
    pub cookie: String,
    pub squashfs_writer: String,
    pub squashfs_compression: String,
    pub squashfs_entries: u64,
    pub contract_version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestArtifact {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// Write `manifest.json` and `SHA256SUMS` (the manifest's artifacts and the
/// manifest itself) into a bundle directory; returns the manifest's bytes.
pub fn write_index(dir: &std::path::Path, manifest: &Manifest) -> std::io::Result<Vec<u8>> {
    let bytes = serde_json::to_vec_pretty(manifest)?;
    fs_err::write(dir.join("manifest.json"), &bytes)?;
    let mut artifacts = manifest.artifacts.clone();
    artifacts.push(ManifestArtifact { name: "manifest.json".into(), size: bytes.len() as u64, sha256: crate::digest::sha256_hex(&bytes) });
    fs_err::write(dir.join("SHA256SUMS"), sha256sums(&artifacts))?;
    Ok(bytes)
}

/// `sha256sum -c` format: `HEX  NAME` lines, sorted by name.
pub fn sha256sums(artifacts: &[ManifestArtifact]) -> String {
    let mut sorted: Vec<&ManifestArtifact> = artifacts.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.iter().map(|artifact| format!("{}  {}\n", artifact.sha256, artifact.name)).collect()
}
