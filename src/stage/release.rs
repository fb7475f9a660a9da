//! `release` base stage: the rootfs tarball of a published bundle, checked
//! against the SHA-256 its manifest gives, applied as an untrusted layer. A
//! developer starts from a release without rebuilding its stages.

use std::path::Path;

use anyhow::{bail, Result};

use super::context::StageContext;
use crate::recipe::{LocalPath, Release, Tarball};

pub fn run(stage: &Release, path: &Path, expected: &str, context: &StageContext<'_>) -> Result<()> {
    let actual = crate::digest::hash_file(path)?;
    if actual != expected {
        bail!(
            "{} has sha256 {actual}, but the release's manifest says {expected}\nhint: rootsmith release verify {}",
            path.display(),
            path.parent().map(|dir| dir.display().to_string()).unwrap_or_default()
        );
    }
    let written = format!("release {} {}", stage.name, stage.version);
    super::tarball::run(&Tarball { path: LocalPath { written, resolved: path.to_path_buf() } }, context)
}
