//! Layers: what one stage changed in the tree, as an OCI-style tar (whiteouts
//! `.wh.NAME` for deletions, `.wh..wh..opq` for opaque directories).
//!
//! `snapshot.rs` records a tree's state and diffs two states, `writer.rs` writes
//! entries as a deterministic tar, `apply.rs` applies an untrusted tar to a tree
//! without ever writing outside it.

pub mod apply;
pub mod snapshot;
pub mod writer;

pub use apply::{apply_layer, ApplyError};
pub use snapshot::{Change, Snapshot};
pub use writer::TreeTarWriter;

/// The prefix OCI uses to mark a deleted path in a layer.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The file that makes its directory opaque (hides every lower entry).
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[cfg(test)]
mod tests;
