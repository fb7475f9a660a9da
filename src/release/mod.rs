//! Releases: the bundles under an `--out` directory, read back. `verify`
//! proves a bundle intact, `promote` makes a new version of it without a
//! rebuild, `ls` and `show` list and describe them.

pub mod diff;
pub mod promote;
pub mod rebuild;
pub mod tree;
pub mod verify;

pub use crate::bundle::{list, Bundle};
