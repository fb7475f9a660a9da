//! Stage kinds: each turns the tree it is given into the tree after it.
//! Base stages (`debootstrap`, `tarball`) start from an empty tree.

mod chroot;
pub mod debootstrap;
mod files;
pub mod kernel;
pub mod oci;
mod packages;
mod release;
mod run;
pub mod scrub;
mod tarball;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cache::Layout;
use crate::host::Host;
use crate::oci::layout::ResolvedImage;
use crate::recipe::StageKind;

pub use chroot::{run_chrooted, run_interactive};

/// What a stage needs from the build around it.
pub struct StageContext<'a> {
    pub host: &'a dyn Host,
    pub tree: &'a Path,
    /// The stage's log file (the output of every command it runs).
    pub log: PathBuf,
    pub arch: &'a str,
    pub source_date_epoch: i64,
    pub mirror: Option<&'a str>,
    /// Scratch space outside the tree.
    pub scratch: &'a Path,
    /// The cache's paths: the shared apt archive, kernel sources and products, OCI blobs.
    pub layout: &'a Layout,
    pub recipe: &'a str,
    pub stage_name: &'a str,
    pub stage_key: &'a str,
    /// Remote inputs the plan resolved for this stage.
    pub remote: &'a std::collections::BTreeMap<String, String>,
    /// `build --locked`: apt preferences pinning every package to its locked version.
    pub apt_pins: Option<&'a str>,
}

/// What the plan found out for a stage beyond what its recipe says: the
/// recipe stays what the user wrote, this is what it resolved to.
#[derive(Debug, Clone, Default)]
pub enum Resolved {
    #[default]
    Nothing,
    /// An `oci` base: the manifest its reference names now.
    Image(ResolvedImage),
    /// A `release` base: the bundle's rootfs tarball and the SHA-256 its manifest gives.
    ReleaseTarball { path: PathBuf, sha256: String },
}

/// Run one stage; a kernel stage also returns the kernel it built or took.
pub fn run_stage(kind: &StageKind, resolved: &Resolved, context: &StageContext<'_>) -> Result<Option<kernel::KernelProducts>> {
    match (kind, resolved) {
        (StageKind::Release(stage), Resolved::ReleaseTarball { path, sha256 }) => release::run(stage, path, sha256, context).map(|()| None),
        (StageKind::Oci(stage), Resolved::Image(image)) => oci::run(stage, image, context).map(|()| None),
        (StageKind::Release(_) | StageKind::Oci(_), _) => anyhow::bail!("the plan resolved nothing for this {} stage", kind.kind_name()),
        (kind, resolved) => run_plain(kind, resolved, context),
    }
}

fn run_plain(kind: &StageKind, _resolved: &Resolved, context: &StageContext<'_>) -> Result<Option<kernel::KernelProducts>> {
    match kind {
        StageKind::Release(_) | StageKind::Oci(_) => unreachable!("matched in run_stage"),
        StageKind::Debootstrap(stage) => debootstrap::run(stage, context).map(|()| None),
        StageKind::Tarball(stage) => tarball::run(stage, context).map(|()| None),
        StageKind::Packages(stage) => packages::run(stage, context).map(|()| None),
        StageKind::Files(stage) => files::run(stage, context).map(|()| None),
        StageKind::Run(stage) => run::run(stage, context).map(|()| None),
        StageKind::Kernel(stage) => kernel::run(stage, context),
    }
}
