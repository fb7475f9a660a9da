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
    let after_epoch = |metadata: &std::fs::Metadata| {
        metadata.mtime() > epoch || (metadata.mtime() == epoch && metadata.mtime_nsec() != 0)
    };
    // Changing a child's times does not touch its directory's.
    crate::fileops::walk_tree::<std::io::Error>(tree, true, &mut |relative, metadata| {
        if after_epoch(metadata) {
            filetime::set_symlink_file_times(tree.join(relative), limit, limit)?;
        }
        Ok(())
    })?;
    if after_epoch(&fs_err::symlink_metadata(tree)?) {
        filetime::set_symlink_file_times(tree, limit, limit)?;
    }
    Ok(())
}

/// Bytes that do not compress (xorshift), for the writers' tests.
#[cfg(test)]
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
