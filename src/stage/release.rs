//! `release` base stage: the rootfs tarball of a published bundle, checked
//! against the SHA-256 its manifest gives, applied as an untrusted layer. A
//! developer starts from a release without rebuilding its stages.

use anyhow::{bail, Result};

use super::StageContext;
use crate::recipe::{LocalPath, Release, Tarball};

pub fn run(stage: &Release, context: &StageContext<'_>) -> Result<()> {
    let (path, expected) = stage.tarball.as_ref().expect("the plan resolves the release's tarball");
    let actual = crate::cache::store::hash_file(path)?;
    if &actual != expected {
        bail!(
            "{} has sha256 {actual}, but the release's manifest says {expected}\nhint: rootsmith release verify {}",
            path.display(),
            path.parent().map(|dir| dir.display().to_string()).unwrap_or_default()
        );
    }
    let written = format!("release {} {}", stage.name, stage.version);
    super::tarball::run(&Tarball { path: LocalPath { written, resolved: path.clone() } }, context)
}
