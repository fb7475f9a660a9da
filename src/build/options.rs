//! What a build is asked to do, and what it reports.

use std::path::PathBuf;

use serde::Serialize;

pub const TOOL: &str = concat!("rootsmith ", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub cache_dir: PathBuf,
    pub out_dir: PathBuf,
    pub version: String,
    /// Stages from this index on are rebuilt even when cached.
    pub rebuild_from: Option<usize>,
    pub fast: bool,
    pub cache_only: bool,
    /// `build --locked`: the lock, its apt pins and its digest.
    pub lock: Option<LockedBuild>,
    /// `--cache-remote`: a registry repository sharing the stage cache.
    pub cache_remote: Option<String>,
    /// `--replace`: a version published already with other contents is
    /// replaced, when it is neither signed nor promoted.
    pub replace: bool,
}

impl BuildOptions {
    /// Options that only bring stages into the cache (`shell`, `lock`).
    pub fn stages_only(cache_dir: PathBuf, version: String) -> BuildOptions {
        BuildOptions {
            cache_dir,
            out_dir: PathBuf::new(),
            version,
            rebuild_from: None,
            fast: false,
            cache_only: false,
            lock: None,
            cache_remote: None,
            replace: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LockedBuild {
    pub lock: crate::lock::Lock,
    pub pins: String,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageOutcome {
    pub name: String,
    pub kind: String,
    pub key: String,
    pub state: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    pub name: String,
    pub version: String,
    pub bundle: PathBuf,
    pub stages: Vec<StageOutcome>,
    pub outputs: StageOutcome,
    /// The version already existed with exactly these contents.
    pub up_to_date: bool,
    pub seconds: f64,
    /// What the user was warned of (an unreachable remote cache, a mirror
    /// reached only through a remembered digest).
    pub warnings: Vec<String>,
    /// The bundle's artifacts, with their sizes and SHA-256 (its manifest's).
    pub artifacts: Vec<crate::bundle::manifest::ManifestArtifact>,
}

/// A stage whose work failed: which one, and where its log is (in the cache:
/// it outlives the build).
#[derive(Debug, Clone, thiserror::Error)]
#[error("stage `{stage}` ({kind}) failed")]
pub struct StageFailed {
    pub stage: String,
    pub kind: String,
    pub log: PathBuf,
}
