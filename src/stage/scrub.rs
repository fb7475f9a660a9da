//! Build-time noise, scrubbed from the tree after every stage so that the
//! same inputs give the same layers and the same artifacts: logs that record
//! when apt and dpkg ran, ldconfig's cache of file timestamps, and a machine
//! id (made at first boot, never baked into every copy of an image); and
//! apt's `partial` directories, whose owner says whether apt could drop to
//! its `_apt` user (which depends on where the cache is, not on the inputs).
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

/// apt's download directories: apt makes them `_apt:root` 0700 when it can
/// drop to `_apt`, and leaves them root's when it cannot reach them as
/// `_apt` (a cache under a 0700 home): they are given what the sandboxed
/// case gives, so the layer does not depend on the cache's path.
const APT_PARTIAL: [&str; 2] = ["var/cache/apt/archives/partial", "var/lib/apt/lists/partial"];

/// `path` under `tree` when every directory on the way is a real directory
/// and the file itself a regular file.
fn regular_file_in(tree: &Path, path: &str) -> Option<std::path::PathBuf> {
    entry_in(tree, path, false)
}

/// `path` under `tree` when it and every directory on the way is a real
/// directory.
fn directory_in(tree: &Path, path: &str) -> Option<std::path::PathBuf> {
    entry_in(tree, path, true)
}

fn entry_in(tree: &Path, path: &str, directory: bool) -> Option<std::path::PathBuf> {
    let mut current = tree.to_path_buf();
    let parts: Vec<&str> = path.split('/').collect();
    for (index, part) in parts.iter().enumerate() {
        current.push(part);
        let metadata = fs_err::symlink_metadata(&current).ok()?;
        let last = index + 1 == parts.len();
        let wanted = if last && !directory { metadata.is_file() } else { metadata.is_dir() };
        if !wanted {
            return None;
        }
    }
    Some(current)
}

/// The uid of `name` in the tree's `etc/passwd` (not the host's).
fn tree_uid(tree: &Path, name: &str) -> Option<u32> {
    let passwd = regular_file_in(tree, "etc/passwd")?;
    let text = crate::fileops::read_regular_no_follow(&passwd, 1 << 20).ok()?;
    String::from_utf8_lossy(&text).lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name)).then(|| fields.nth(1)?.parse().ok()).flatten()
    })
}

/// apt's partial directories as apt makes them when it can drop to `_apt`.
fn normalize_apt_partial(tree: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(apt_uid) = tree_uid(tree, "_apt") else { return Ok(()) };
    for path in APT_PARTIAL {
        let Some(dir) = directory_in(tree, path) else { continue };
        let metadata = fs_err::symlink_metadata(&dir)?;
        if (metadata.uid(), metadata.gid()) != (apt_uid, 0) {
            std::os::unix::fs::lchown(&dir, Some(apt_uid), Some(0))
                .map_err(|error| io::Error::new(error.kind(), format!("chown {}: {error}", dir.display())))?;
        }
        if metadata.mode() & 0o7777 != 0o700 {
            fs_err::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
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
    normalize_apt_partial(tree)
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

    #[test]
    fn apt_partial_directories_get_the_owner_a_sandboxed_apt_gives() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        for path in APT_PARTIAL {
            fs_err::create_dir_all(tree.join(path)).unwrap();
            fs_err::set_permissions(tree.join(path), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs_err::create_dir_all(tree.join("etc")).unwrap();
        let passwd = "root:x:0:0:root:/root:/bin/bash\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n";
        fs_err::write(tree.join("etc/passwd"), passwd).unwrap();
        assert_eq!(tree_uid(&tree, "_apt"), Some(42));
        assert_eq!(tree_uid(&tree, "nobody"), None);
        let root = nix::unistd::geteuid().is_root();
        if root {
            scrub(&tree).unwrap();
            for path in APT_PARTIAL {
                let metadata = fs_err::symlink_metadata(tree.join(path)).unwrap();
                assert_eq!((metadata.uid(), metadata.gid(), metadata.mode() & 0o7777), (42, 0, 0o700), "{path}");
            }
        }
        // A partial directory that is a symlink out of the tree is not followed.
        let outside = dir.path().join("outside");
        fs_err::create_dir_all(&outside).unwrap();
        fs_err::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        fs_err::remove_dir(tree.join(APT_PARTIAL[1])).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join(APT_PARTIAL[1])).unwrap();
        if root {
            scrub(&tree).unwrap();
        }
        assert_eq!(fs_err::metadata(&outside).unwrap().mode() & 0o7777, 0o755);
    }
}
