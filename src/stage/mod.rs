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

use crate::host::Host;
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
    /// The shared apt package cache.
    pub apt_archives: &'a Path,
    /// Scratch space outside the tree.
    pub scratch: &'a Path,
    /// The cache's versioned root (`CACHE/v1`), for stages that keep products there.
    pub cache_root: &'a Path,
    pub recipe: &'a str,
    pub stage_name: &'a str,
    pub stage_key: &'a str,
    /// Remote inputs the plan resolved for this stage.
    pub remote: &'a std::collections::BTreeMap<String, String>,
    /// `build --locked`: apt preferences pinning every package to its locked version.
    pub apt_pins: Option<&'a str>,
}

/// Run one stage; a kernel stage also returns the kernel it built or took.
pub fn run_stage(kind: &StageKind, context: &StageContext<'_>) -> Result<Option<crate::cache::KernelProducts>> {
    match kind {
        StageKind::Debootstrap(stage) => debootstrap::run(stage, context).map(|()| None),
        StageKind::Tarball(stage) => tarball::run(stage, context).map(|()| None),
        StageKind::Release(stage) => release::run(stage, context).map(|()| None),
        StageKind::Oci(stage) => oci::run(stage, context).map(|()| None),
        StageKind::Packages(stage) => packages::run(stage, context).map(|()| None),
        StageKind::Files(stage) => files::run(stage, context).map(|()| None),
        StageKind::Run(stage) => run::run(stage, context).map(|()| None),
        StageKind::Kernel(stage) => kernel::run(stage, context),
    }
}
