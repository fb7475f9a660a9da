//! Stage kinds: each turns the tree it is given into the tree after it.
//! Base stages (`debootstrap`, `tarball`) start from an empty tree.

mod chroot;
mod context;
pub mod debootstrap;
mod files;
pub mod kernel;
pub mod oci;
mod packages;
mod release;
mod run;
pub mod scrub;
mod tarball;

use anyhow::Result;

use crate::recipe::StageKind;

pub use chroot::{run_chrooted, run_interactive, PINS_FILE};
pub use context::{changed_during_build, Resolved, StageContext};
pub use files::source_digests;

/// Run one stage; a kernel stage also returns the kernel it built or took.
pub fn run_stage(
    kind: &StageKind,
    resolved: &Resolved,
    context: &StageContext<'_>,
) -> Result<Option<kernel::KernelProducts>> {
    match (kind, resolved) {
        (StageKind::Release(stage), Resolved::ReleaseTarball { path, sha256 }) => {
            release::run(stage, path, sha256, context).map(|()| None)
        }
        (StageKind::Oci(stage), Resolved::Image(image)) => oci::run(stage, image, context).map(|()| None),
        (StageKind::Release(_) | StageKind::Oci(_), _) => {
            anyhow::bail!("the plan resolved nothing for this {} stage", kind.kind_name())
        }
        (kind, resolved) => run_plain(kind, resolved, context),
    }
}

fn run_plain(
    kind: &StageKind,
    _resolved: &Resolved,
    context: &StageContext<'_>,
) -> Result<Option<kernel::KernelProducts>> {
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
