//! Deterministic writers for the bundle's artifacts: sorted entries, clamped
//! timestamps, numeric owners, fixed compression settings.

pub mod cpio;
pub mod frames;
pub mod initramfs;
pub mod memo;
pub mod menus;
pub mod modules;
pub mod packages;
pub mod sbom;
pub mod squashfs;
pub mod tarball;
pub mod tarball_memo;
pub mod thin_initramfs;
pub mod uki;

use std::path::Path;

/// Clamp every mtime in `tree` to `epoch`, so a tree fresh from a build and the
/// same tree restored from its (clamped) layers write the same bytes.
pub fn clamp_mtimes(tree: &Path, epoch: i64) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let limit = filetime::FileTime::from_unix_time(epoch, 0);
    // Children before their directory: changing a child's times does not touch
    // the directory, but keep the order anyway for clarity.
    for entry in walkdir::WalkDir::new(tree).contents_first(true).same_file_system(true) {
        let entry = entry.map_err(std::io::Error::other)?;
        let metadata = entry.path().symlink_metadata()?;
        if metadata.mtime() > epoch || (metadata.mtime() == epoch && metadata.mtime_nsec() != 0) {
            filetime::set_symlink_file_times(entry.path(), limit, limit)?;
        }
    }
    Ok(())
}
