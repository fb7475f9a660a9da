//! Build-time noise, scrubbed from the tree after every stage so that the
//! same inputs give the same layers and the same artifacts: logs that record
//! when apt and dpkg ran, ldconfig's cache of file timestamps, and a machine
//! id (made at first boot, never baked into every copy of an image).
//!
//! The tree may come from an untrusted archive: nothing here follows a
//! symlink, in the file or in its directories.

use std::io;
use std::path::Path;

/// Emptied (kept, so their owners and modes stay as the packages made them).
const EMPTIED: [&str; 7] = [
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/bootstrap.log",
    "etc/machine-id",
    "var/lib/dbus/machine-id",
];

/// Removed: caches rebuilt on demand.
const REMOVED: [&str; 2] = ["var/cache/ldconfig/aux-cache", "var/log/apt/eipp.log.xz"];

/// `path` under `tree` when every directory on the way is a real directory
/// and the file itself a regular file.
fn regular_file_in(tree: &Path, path: &str) -> Option<std::path::PathBuf> {
    let mut current = tree.to_path_buf();
    let parts: Vec<&str> = path.split('/').collect();
    for (index, part) in parts.iter().enumerate() {
        current.push(part);
        let metadata = fs_err::symlink_metadata(&current).ok()?;
        let last = index + 1 == parts.len();
        if (last && !metadata.is_file()) || (!last && !metadata.is_dir()) {
            return None;
        }
    }
    Some(current)
}

pub fn scrub(tree: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    for path in EMPTIED {
        if let Some(file) = regular_file_in(tree, path) {
            if fs_err::symlink_metadata(&file)?.len() > 0 {
                std::fs::OpenOptions::new().write(true).truncate(true).custom_flags(libc::O_NOFOLLOW).open(&file)?;
            }
        }
    }
    for path in REMOVED {
        if let Some(file) = regular_file_in(tree, path) {
            fs_err::remove_file(file)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empties_logs_removes_caches_and_follows_no_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("var/log/apt")).unwrap();
        fs_err::create_dir_all(tree.join("var/cache/ldconfig")).unwrap();
        fs_err::create_dir_all(tree.join("etc")).unwrap();
        fs_err::write(tree.join("var/log/dpkg.log"), "2026-11-22 00:30:03 install\n").unwrap();
        fs_err::write(tree.join("var/cache/ldconfig/aux-cache"), "cache").unwrap();
        fs_err::write(tree.join("etc/machine-id"), "0123\n").unwrap();
        // An untrusted tree's symlinks lead outside: neither is touched.
        let outside = dir.path().join("outside");
        fs_err::create_dir_all(&outside).unwrap();
        fs_err::write(outside.join("history.log"), "keep").unwrap();
        fs_err::write(outside.join("alternatives.log"), "keep").unwrap();
        std::os::unix::fs::symlink(outside.join("alternatives.log"), tree.join("var/log/alternatives.log")).unwrap();
        fs_err::remove_dir(tree.join("var/log/apt")).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("var/log/apt")).unwrap();
        scrub(&tree).unwrap();
        assert_eq!(fs_err::read(tree.join("var/log/dpkg.log")).unwrap(), b"");
        assert_eq!(fs_err::read(tree.join("etc/machine-id")).unwrap(), b"");
        assert!(!tree.join("var/cache/ldconfig/aux-cache").exists());
        assert_eq!(fs_err::read(outside.join("history.log")).unwrap(), b"keep");
        assert_eq!(fs_err::read(outside.join("alternatives.log")).unwrap(), b"keep");
    }
}
