//! The recipe as the user wrote it (schema 1): serde types, unknown keys refused.
//!
//! These types mirror the YAML one to one. `load.rs` turns them into the checked
//! [`super::model::Recipe`]; nothing here touches the disk.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecipe {
    pub rootsmith: u32,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub source_date_epoch: Option<i64>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    pub stages: Vec<RawStage>,
    #[serde(default)]
    pub outputs: RawOutputs,
    #[serde(default)]
    pub boot: Option<RawBoot>,
    /// A hosts inventory to check against this recipe and put in its bundle.
    #[serde(default)]
    pub hosts: Option<String>,
}

/// How the bundle boots: the kernel command line of its menus and the line
/// its rootfs prints once it is up (what `boot-test` waits for).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoot {
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub marker: Option<String>,
}

/// One item of `stages:`: an optional `name` and exactly one kind key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub debootstrap: Option<RawDebootstrap>,
    #[serde(default)]
    pub tarball: Option<RawTarball>,
    #[serde(default)]
    pub packages: Option<RawPackages>,
    #[serde(default)]
    pub files: Option<RawFiles>,
    #[serde(default)]
    pub run: Option<RawRun>,
    #[serde(default)]
    pub kernel: Option<RawKernel>,
    #[serde(default)]
    pub release: Option<RawRelease>,
    #[serde(default)]
    pub oci: Option<RawOci>,
}

/// `oci:` base stage: an OCI image's layers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOci {
    /// A registry reference (`host[:port]/repo:tag` or `@sha256:…`)
    #[serde(default)]
    pub image: Option<String>,
    /// An OCI image layout directory
    #[serde(default)]
    pub layout: Option<String>,
    /// The image in the layout (its `org.opencontainers.image.ref.name`)
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
}

/// `release:` base stage: the rootfs of a published bundle.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelease {
    pub name: String,
    pub version: String,
    /// The directory bundles are in [default: build's --out]
    #[serde(default)]
    pub out: Option<String>,
}

impl RawStage {
    /// The kind keys present, in schema order.
    pub fn kind_names(&self) -> Vec<&'static str> {
        let present = [
            ("debootstrap", self.debootstrap.is_some()),
            ("tarball", self.tarball.is_some()),
            ("packages", self.packages.is_some()),
            ("files", self.files.is_some()),
            ("run", self.run.is_some()),
            ("kernel", self.kernel.is_some()),
            ("release", self.release.is_some()),
            ("oci", self.oci.is_some()),
        ];
        present.into_iter().filter(|(_, here)| *here).map(|(name, _)| name).collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDebootstrap {
    pub suite: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub components: Vec<String>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub mirror: Option<String>,
    #[serde(default)]
    pub tool: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarball {
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPackages {
    #[serde(default)]
    pub install: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    pub src: String,
    #[serde(default)]
    pub dest: Option<String>,
    /// `UID:GID` for everything copied; root when absent.
    #[serde(default)]
    pub owner: Option<String>,
    /// Octal modes for individual paths, relative to `src`.
    #[serde(default)]
    pub modes: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRun {
    #[serde(default)]
    pub sh: Option<String>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutputs {
    #[serde(default)]
    pub rootfs: Option<RawRootfsOutput>,
    #[serde(default)]
    pub tarball: Option<RawCompression>,
    #[serde(default)]
    pub initramfs: Option<RawInitramfs>,
    #[serde(default)]
    pub oci: Option<RawOciOutput>,
    #[serde(default)]
    pub uki: Option<RawUki>,
}

/// `outputs.uki`: `true`/`false`, or a mapping of its settings (which turns
/// it on).
#[derive(Debug)]
pub enum RawUki {
    Enabled(bool),
    Settings(RawUkiSettings),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUkiSettings {
    /// The kernel stages that get a UKI [default: every one].
    #[serde(default)]
    pub kernels: Option<Vec<String>>,
    /// The rootfs URL baked into the command line.
    #[serde(default)]
    pub rootfs_url: Option<String>,
    /// Sign each UKI for Secure Boot.
    #[serde(default)]
    pub sign: Option<RawUkiSign>,
}

/// `outputs.uki.sign`: the Secure Boot signing key and its certificate (PEM files).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUkiSign {
    pub key: String,
    pub cert: String,
}

impl<'de> Deserialize<'de> for RawUki {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<RawUki, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawUki;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("true, false, or a mapping with `kernels`, `rootfs_url` and `sign`")
            }
            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<RawUki, E> {
                Ok(RawUki::Enabled(value))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawUki, A::Error> {
                RawUkiSettings::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(RawUki::Settings)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOciOutput {
    #[serde(default)]
    pub layout: Option<String>,
    #[serde(default)]
    pub push: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInitramfs {
    #[serde(default)]
    pub compression: Option<String>,
    #[serde(default)]
    pub level: Option<i32>,
    /// Kernel modules to carry besides squashfs, overlay and loop (NIC and
    /// disk drivers); their dependencies come along.
    #[serde(default)]
    pub modules: Option<Vec<String>>,
    /// Add a busybox shell for failed boots.
    #[serde(default)]
    pub shell: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRootfsOutput {
    #[serde(default)]
    pub squashfs: Option<RawCompression>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    #[serde(default)]
    pub compression: Option<String>,
    #[serde(default)]
    pub level: Option<i32>,
}

/// `kernel:` either builds one (`source` + `config`) or takes a packaged one (`package`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKernel {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub source: Option<RawKernelSource>,
    #[serde(default)]
    pub package: Option<String>,
    #[serde(default)]
    pub patches: Vec<String>,
    #[serde(default)]
    pub config: Option<RawKernelConfig>,
    #[serde(default)]
    pub localversion: Option<String>,
    #[serde(default)]
    pub install: Option<bool>,
    #[serde(default)]
    pub headers: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKernelSource {
    #[serde(default)]
    pub package: Option<String>,
    #[serde(default)]
    pub tarball: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKernelConfig {
    pub base: String,
    #[serde(default)]
    pub fragments: Vec<String>,
}
