//! A checked recipe: what the user wrote, with paths resolved and variables
//! substituted. Nothing the plan resolves lives here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::diagnostic::{Diagnostic, SpanIndex};

/// The only schema version this rootsmith reads. Bump it when a recipe that
/// parsed before would now mean something else.
pub const SCHEMA_VERSION: u32 = 1;

/// A checked recipe: every referenced file exists, every stage has one kind, the
/// base stage comes first, variables are substituted.
#[derive(Debug)]
pub struct Recipe {
    pub file: PathBuf,
    /// The directory relative paths in the recipe are resolved against.
    pub dir: PathBuf,
    pub name: String,
    pub version: String,
    pub arch: String,
    pub source_date_epoch: Option<i64>,
    pub vars: BTreeMap<String, String>,
    pub stages: Vec<Stage>,
    pub outputs: Outputs,
    pub boot: Boot,
    /// `hosts:`: an inventory (docs/fleet.md), checked against the recipe's
    /// kernels and copied into the bundle as `hosts.yaml`.
    pub hosts: Option<LocalPath>,
    /// The recipe text, for diagnostics raised after loading (`--rebuild`).
    pub source: String,
    pub spans: SpanIndex,
}

#[derive(Debug, Clone)]
pub struct Stage {
    /// Given with `name:`, or the kind (with its position when a kind repeats).
    pub name: String,
    pub kind: StageKind,
}

#[derive(Debug, Clone)]
pub enum StageKind {
    Debootstrap(Debootstrap),
    Tarball(Tarball),
    Packages(Packages),
    Files(Files),
    Run(Run),
    Kernel(Kernel),
    Release(Release),
    Oci(Oci),
}

/// A base from an OCI image: its layers applied in order.
#[derive(Debug, Clone)]
pub struct Oci {
    pub source: OciSource,
}

#[derive(Debug, Clone)]
pub enum OciSource {
    /// An image layout directory and the image's name in it.
    Layout { dir: LocalPath, reference: Option<String> },
    /// A registry reference: `host[:port]/repo:tag` or `…@sha256:…`.
    Registry { reference: String },
}

/// A base from a published bundle's rootfs tarball.
#[derive(Debug, Clone)]
pub struct Release {
    pub name: String,
    pub version: String,
    /// The `--out` directory to look in, when the recipe names one.
    pub out: Option<std::path::PathBuf>,
}

impl StageKind {
    pub fn kind_name(&self) -> &'static str {
        match self {
            StageKind::Debootstrap(_) => "debootstrap",
            StageKind::Tarball(_) => "tarball",
            StageKind::Packages(_) => "packages",
            StageKind::Files(_) => "files",
            StageKind::Run(_) => "run",
            StageKind::Kernel(_) => "kernel",
            StageKind::Release(_) => "release",
            StageKind::Oci(_) => "oci",
        }
    }

    /// Base stages create the tree; every other stage changes the one before it.
    pub fn is_base(&self) -> bool {
        matches!(self, StageKind::Debootstrap(_) | StageKind::Tarball(_) | StageKind::Release(_) | StageKind::Oci(_))
    }
}

#[derive(Debug, Clone)]
pub struct Debootstrap {
    pub suite: String,
    pub variant: String,
    pub components: Vec<String>,
    pub include: Vec<String>,
    /// `None`: the mirror the host's apt sources name, found at plan time.
    pub mirror: Option<String>,
    pub tool: BootstrapTool,
}

/// Which program makes a `debootstrap` base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootstrapTool {
    /// mmdebstrap when installed, else debootstrap.
    Auto,
    Mmdebstrap,
    Debootstrap,
}

/// A local file, with the path as the recipe wrote it (for keys and messages)
/// and resolved against the recipe's directory (for reading).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LocalPath {
    pub written: String,
    pub resolved: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Tarball {
    pub path: LocalPath,
}

#[derive(Debug, Clone)]
pub struct Packages {
    pub install: Vec<String>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Files {
    pub src: LocalPath,
    /// Absolute path inside the tree.
    pub dest: String,
    pub uid: u32,
    pub gid: u32,
    /// Mode overrides, by path relative to `src`.
    pub modes: BTreeMap<String, u32>,
}

#[derive(Debug, Clone)]
pub enum Script {
    Inline(String),
    File(LocalPath),
}

#[derive(Debug, Clone)]
pub struct Run {
    pub script: Script,
    pub env: BTreeMap<String, String>,
}

/// A kernel: built from source on the host, or a Debian package installed in the tree.
#[derive(Debug, Clone)]
pub enum Kernel {
    Build(KernelBuild),
    Package { package: String },
}

#[derive(Debug, Clone)]
pub struct KernelBuild {
    pub source: KernelSource,
    pub patches: Vec<LocalPath>,
    pub base: ConfigBase,
    pub fragments: Vec<LocalPath>,
    pub localversion: String,
    /// Install the linux-image package into the tree.
    pub install: bool,
    /// Ship the linux-headers package in the bundle too.
    pub headers: bool,
}

#[derive(Debug, Clone)]
pub enum KernelSource {
    /// A Debian package holding `/usr/src/NAME.tar.xz` (`linux-source-6.1`).
    Package(String),
    /// A tarball at a path or URL, with its SHA-256.
    Tarball { location: String, local: Option<LocalPath>, sha256: String },
}

#[derive(Debug, Clone)]
pub enum ConfigBase {
    /// A make target: `defconfig`, `tinyconfig`, `allnoconfig`.
    Target(String),
    File(LocalPath),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Zstd,
    Gzip,
    Xz,
    Lz4,
    Lzo,
    None,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Zstd => "zstd",
            Algorithm::Gzip => "gzip",
            Algorithm::Xz => "xz",
            Algorithm::Lz4 => "lz4",
            Algorithm::Lzo => "lzo",
            Algorithm::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Compression {
    pub algorithm: Algorithm,
    /// `None` where the algorithm has no level (xz in squashfs, lz4, lzo, none).
    pub level: Option<i32>,
}

#[derive(Debug, Clone)]
pub struct Outputs {
    pub squashfs: Compression,
    pub tarball: Compression,
    pub initramfs: Initramfs,
    /// The tree as an OCI image too: one layer per stage.
    pub oci: Option<OciOutput>,
    /// `outputs.uki`: a Unified Kernel Image per kernel.
    pub uki: Option<Uki>,
}

/// `outputs.uki`: which kernels get a Unified Kernel Image (EFI stub, kernel,
/// thin initramfs, command line, os-release in one PE file) and the rootfs
/// URL its command line carries (docs/netboot.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Uki {
    /// Kernel stage names; `None`: every kernel of the recipe.
    pub kernels: Option<Vec<String>>,
    /// `rootsmith.rootfs_url` of the baked command line; `None`:
    /// [`Uki::default_rootfs_url`].
    pub rootfs_url: Option<String>,
    /// `outputs.uki.sign`: sign each UKI for Secure Boot.
    pub sign: Option<UkiSign>,
}

/// `outputs.uki.sign`: the key (PEM, read at publish only: never in a key, a
/// record or a bundle) and the certificate (its SHA-256 goes in the
/// manifest) that sign the UKIs for Secure Boot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UkiSign {
    pub key: LocalPath,
    pub cert: LocalPath,
}

impl Uki {
    /// Where `rootsmith serve` (port 8080, the directory above the bundles)
    /// has the bundle's rootfs.img, on the DHCP server that gave the init its
    /// lease.
    pub fn default_rootfs_url(name: &str, version: &str, rootfs_image: &str) -> String {
        format!("http://{}:8080/{name}/{version}/{rootfs_image}", rootsmith_init::contract::DHCP_SERVER_HOST)
    }

    /// Whether the kernel stage `kernel` gets a UKI.
    pub fn covers(&self, kernel: &str) -> bool {
        self.kernels.as_ref().is_none_or(|kernels| kernels.iter().any(|name| name == kernel))
    }
}

/// `outputs.oci`: where the image goes (a layout directory, a registry, or both).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OciOutput {
    /// An image layout directory (created or added to), the image tagged with the bundle's version.
    pub layout: Option<std::path::PathBuf>,
    /// A registry reference to push to.
    pub push: Option<String>,
}

/// The thin initramfs: its compression (zstd, gzip or none), the modules it
/// carries beyond [`Initramfs::BASE_MODULES`], and whether it has a shell.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Initramfs {
    pub compression: Compression,
    pub modules: Vec<String>,
    /// The recipe lists no `modules:`: carry [`Initramfs::DEFAULT_MODULES`]
    /// that the kernel has, so a netboot still reaches its rootfs.
    pub default_modules: bool,
    pub shell: bool,
}

impl Initramfs {
    /// What mounting the rootfs needs, always carried (unless built in).
    pub const BASE_MODULES: [&'static str; 3] = ["loop", "squashfs", "overlay"];

    /// Without `modules:` in the recipe: the NICs of QEMU and of common
    /// servers, and the usual disk controllers (docs/netboot.md). Each is
    /// carried only if the kernel has it as a module.
    pub const DEFAULT_MODULES: [&'static str; 14] = [
        "virtio_pci",
        "virtio_net",
        "virtio_blk",
        "virtio_scsi",
        "e1000",
        "e1000e",
        "igb",
        "ixgbe",
        "r8169",
        "tg3",
        "bnx2",
        "ahci",
        "nvme",
        "sd_mod",
    ];

    /// The modules to resolve, base ones first, without repeats.
    pub fn module_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Self::BASE_MODULES.iter().map(|name| name.to_string()).collect();
        for name in &self.modules {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }
}

/// `boot:` of the recipe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Boot {
    /// Kernel arguments of every menu entry (the init's own are added).
    pub cmdline: String,
    /// A console line the booted rootfs prints; `boot-test` waits for it.
    pub marker: Option<String>,
}

impl Recipe {
    /// The index of the stage called `name`, or a diagnostic pointing at `stages:`
    /// that lists the names there are.
    pub fn stage_index(&self, name: &str, option: &str) -> Result<usize, Diagnostic> {
        if let Some(index) = self.stages.iter().position(|stage| stage.name == name) {
            return Ok(index);
        }
        let names: Vec<&str> = self.stages.iter().map(|stage| stage.name.as_str()).collect();
        Err(Diagnostic::new(
            &self.file,
            &self.source,
            self.spans.key("stages"),
            format!("{option} names stage `{name}`, which this recipe does not have"),
        )
        .with_hint(format!("the stages are: {}", names.join(", "))))
    }
}
