//! Layers: what one stage changed in the tree, as an OCI-style tar (whiteouts
//! `.wh.NAME` for deletions, `.wh..wh..opq` for opaque directories).
//!
//! `snapshot.rs` records a tree's state and diffs two states, `writer.rs` writes
//! entries as a deterministic tar, `apply.rs` applies an untrusted tar to a tree
//! without ever writing outside it. `devices.rs` keeps the placeholders that
//! stand for device nodes where `mknod` is refused (a rootless build).

pub mod apply;
pub mod devices;
pub mod snapshot;
pub mod whiteout;
pub mod writer;

pub use apply::{apply_layer, ApplyError};
pub use devices::{Device, DeviceKind, Devices, Placeholder};
pub use snapshot::{Change, Snapshot};
pub use whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX};
pub use writer::TreeTarWriter;

#[cfg(test)]
mod tests;
