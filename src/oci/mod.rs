//! OCI images: the JSON of the image spec (index, manifest, descriptors), an
//! image layout directory, and digests checked before any blob is trusted.
//! The `oci` base stage (stage/oci.rs) applies an image's layers in order with
//! the same untrusted-layer applier as every other tar.

pub mod image;
pub mod layout;
pub mod registry;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The annotation an image layout's index names each image by.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// How a layer's bytes are compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

pub fn layer_compression(media_type: &str) -> Result<LayerCompression> {
    Ok(match media_type {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => {
            LayerCompression::None
        }
        "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            LayerCompression::Gzip
        }
        "application/vnd.oci.image.layer.v1.tar+zstd" | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            LayerCompression::Zstd
        }
        other => {
            bail!("layer media type `{other}` is not a filesystem layer rootsmith can apply (tar, tar+gzip, tar+zstd)")
        }
    })
}

/// An image's architecture name for a Debian architecture (`amd64` → `amd64`,
/// `armhf` → `arm` v7, `i386` → `386`, `ppc64el` → `ppc64le`).
pub fn platform_for(debian_arch: &str) -> (&'static str, Option<&'static str>) {
    match debian_arch {
        "arm64" => ("arm64", None),
        "armhf" => ("arm", Some("v7")),
        "i386" => ("386", None),
        "ppc64el" => ("ppc64le", None),
        "riscv64" => ("riscv64", None),
        "s390x" => ("s390x", None),
        _ => ("amd64", None),
    }
}

/// The manifest of `index` for `debian_arch` on linux.
pub fn choose_platform<'a>(index: &'a Index, debian_arch: &str) -> Result<&'a Descriptor> {
    let (architecture, variant) = platform_for(debian_arch);
    let fits = |descriptor: &&Descriptor| {
        descriptor.platform.as_ref().is_some_and(|platform| {
            platform.os == "linux"
                && platform.architecture == architecture
                && (variant.is_none() || platform.variant.as_deref() == variant)
        })
    };
    index.manifests.iter().find(fits).with_context(|| {
        let offered: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| {
                format!(
                    "{}/{}{}",
                    p.os,
                    p.architecture,
                    p.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default()
                )
            })
            .collect();
        format!(
            "the image has no linux/{architecture} manifest for the recipe's arch `{debian_arch}` (it has: {})",
            offered.join(", ")
        )
    })
}

/// A digest rootsmith accepts: `sha256:` and 64 lower-case hex digits (so it
/// is also safe as a file name).
pub fn check_digest(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Ok(hex)
        }
        _ => bail!("`{digest}` is not a sha256 digest"),
    }
}

/// Check that the file at `path` is `size` bytes with `digest`, reading it once.
pub fn verify_blob(path: &Path, descriptor: &Descriptor) -> Result<()> {
    let expected = check_digest(&descriptor.digest)?;
    let (actual, size) = crate::digest::hash_reader(fs_err::File::open(path)?)?;
    if size != descriptor.size || actual != expected {
        bail!("blob {} does not match its descriptor: expected {} bytes with sha256 {expected}, got {size} bytes with sha256 {actual}", path.display(), descriptor.size);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_use_as_paths() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(check_digest(&good).unwrap(), "a".repeat(64));
        for bad in [
            "sha256:../../etc/passwd",
            "sha512:00",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
        ] {
            assert!(check_digest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms_and_media_types() {
        let descriptor = |arch: &str, variant: Option<&str>| Descriptor {
            media_type: MEDIA_MANIFEST.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(str::to_string),
            }),
            annotations: BTreeMap::new(),
        };
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![descriptor("arm", Some("v6")), descriptor("arm", Some("v7")), descriptor("amd64", None)],
        };
        assert_eq!(choose_platform(&index, "armhf").unwrap().platform.as_ref().unwrap().variant.as_deref(), Some("v7"));
        assert_eq!(choose_platform(&index, "amd64").unwrap().platform.as_ref().unwrap().architecture, "amd64");
        let error = choose_platform(&index, "s390x").unwrap_err().to_string();
        assert!(
            error.contains("no linux/s390x manifest") && error.contains("linux/arm/v6, linux/arm/v7, linux/amd64"),
            "{error}"
        );
        assert_eq!(layer_compression("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(), LayerCompression::Zstd);
        assert!(layer_compression("application/vnd.oci.image.layer.nondistributable.v1.tar").is_err());
    }
}
