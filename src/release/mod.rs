//! Releases: the bundles under an `--out` directory, read back. `verify`
//! proves a bundle intact, `promote` makes a new version of it without a
//! rebuild, `ls` and `show` list and describe them.

pub mod diff;
pub mod promote;
pub mod rebuild;
pub mod tree;
pub mod verify;

pub use crate::bundle::{list, Bundle};

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::bundle::signature::SigningKey;

/// `release sign`: sign `OUT/NAME/VERSION` with `key`, but only a bundle that
/// verifies (a signature vouches for what the manifest pins, so those bytes
/// must be there). A signature already there is replaced.
pub fn sign(out: &Path, name: &str, version: &str, key: &SigningKey) -> Result<PathBuf> {
    let bundle = Bundle::open_in(out, name, version)?;
    let report = verify::verify_bundle(&bundle);
    if !report.ok() {
        bail!("{} {version} fails verification, so it is not signed:\n{}", name, report.failures());
    }
    key.sign_bundle(&bundle.dir)?;
    Ok(bundle.dir)
}
