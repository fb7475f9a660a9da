//! How a layer marks what it removes, the way OCI layers do.

/// The prefix OCI uses to mark a deleted path in a layer.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The file that makes its directory opaque (hides every lower entry).
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
