//! `release` base stage: the rootfs tarball of a published bundle, checked
//! against the SHA-256 its manifest gives, applied as an untrusted layer. A
//! developer starts from a release without rebuilding its stages. The
//! tarball is hashed as it is applied (one read, and no window between a
//! check and the read for another file to take its place).

use std::path::Path;

use anyhow::{bail, Result};

use super::context::StageContext;
use crate::recipe::Release;

pub fn run(stage: &Release, path: &Path, expected: &str, context: &StageContext<'_>) -> Result<()> {
    let written = format!("release {} {}", stage.name, stage.version);
    let actual = super::tarball::unpack(path, &written, context)?;
    if actual != expected {
        bail!(
            "{} has sha256 {actual}, but the release's manifest says {expected}\nhint: rootsmith release verify {}",
            path.display(),
            path.parent().map(|dir| dir.display().to_string()).unwrap_or_default()
        );
    }
    Ok(())
}
