//! The content-addressed stage cache: where things are ([`Layout`]), how they
//! are written and read ([`Store`]: atomic writes, verified reads, locks, work
//! dirs), how keys are made ([`key`]), and `ls`/`gc`/`verify`.
//!
//! The store knows nothing of what it stores: a stage's layer is a blob, its
//! products a directory with an opaque account, its outputs a directory with
//! a record whose type belongs to the build. Every file is written to `tmp/`
//! and renamed into place, so a reader sees a whole file or none; blobs are
//! hashed again when read.

pub mod key;
pub mod layout;
mod maintenance;
pub mod store;
pub mod tree_record;

pub use key::{tree_id, FileDigest, KeyInputs, CACHE_FORMAT};
pub use layout::{Area, Collect, Layout};
pub use maintenance::{CacheEntry, GcOptions, GcReport, VerifyReport, PRODUCTS_RECORD};
pub use store::{BuildLock, Corrupt, CorruptEntry, OutputHeader, Products, StageRecord, Store, WorkDir, OUTPUT_RECORD};
