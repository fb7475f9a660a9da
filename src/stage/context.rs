//! What a stage gets from the build around it: the tree, the host to run
//! commands on, the cache's paths, and what the plan resolved for it.

use std::path::{Path, PathBuf};

use crate::cache::{FileDigest, Layout};
use crate::host::Host;
use crate::layer::Devices;
use crate::oci::layout::ResolvedImage;

/// What a stage needs from the build around it.
pub struct StageContext<'a> {
    pub host: &'a dyn Host,
    pub tree: &'a Path,
    /// The tree's device placeholders: devices are made through it.
    pub devices: &'a Devices,
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
    /// The digests of the local files the plan read for this stage's key:
    /// what the stage reads must be the same bytes, or it fails and nothing
    /// is recorded under a key that does not describe it.
    pub planned_files: &'a [FileDigest],
    /// `build --locked`: apt preferences pinning every package to its locked version.
    pub apt_pins: Option<&'a str>,
}

impl StageContext<'_> {
    /// The digest the plan read of the local file the recipe names `written`.
    pub fn planned_digest(&self, written: &str) -> anyhow::Result<&FileDigest> {
        self.planned_files
            .iter()
            .find(|file| file.path == written)
            .ok_or_else(|| anyhow::anyhow!("the plan has no digest of `{written}`, which this stage reads"))
    }
}

/// The error of a stage whose local input `written` is not what the plan
/// read for its key (an editor saving it mid-build, a file replaced):
/// nothing is recorded, since the key would name other bytes than the layer.
pub fn changed_during_build(written: &str, planned: &str, read: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`{written}` changed during the build (the plan read {planned}, the stage read {read}); nothing was recorded\nhint: build again once it no longer changes"
    )
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

#[cfg(test)]
impl<'a> StageContext<'a> {
    /// A context for a stage's unit tests: recipe `r`, stage `s`, amd64, no
    /// mirror, no remote inputs, the log in `scratch`, devices made as the
    /// process can (a real node as root).
    pub fn for_test(
        host: &'a dyn Host,
        tree: &'a Path,
        scratch: &'a Path,
        layout: &'a Layout,
        source_date_epoch: i64,
    ) -> StageContext<'a> {
        static NO_REMOTE: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        // A few bytes per test; a test that wants placeholders sets its own.
        let devices = Box::leak(Box::new(Devices::default()));
        StageContext {
            host,
            tree,
            devices,
            log: scratch.join("log"),
            arch: "amd64",
            source_date_epoch,
            mirror: None,
            scratch,
            layout,
            recipe: "r",
            stage_name: "s",
            stage_key: "k",
            remote: &NO_REMOTE,
            planned_files: &[],
            apt_pins: None,
        }
    }

    /// The same context with the plan's digests of the stage's local files.
    pub fn with_planned_files(mut self, files: &'a [FileDigest]) -> StageContext<'a> {
        self.planned_files = files;
        self
    }
}
