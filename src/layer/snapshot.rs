//! A record of every entry of a tree and the diff between two records.
//!
//! A file is unchanged when its inode and ctime are: ctime cannot be set from
//! user space, so any write, chmod, chown or xattr change moves it. Directories
//! compare by mode, owner and mtime instead, because their ctime also moves
//! whenever a child is added or removed.
//!
//! One exception: an empty regular file whose inode, mode, owner, mtime and
//! link count are the same is unchanged whatever its ctime says. A program
//! that only opens a lock file for writing (`/etc/.pwd.lock`, dpkg's locks)
//! leaves a plain directory's ctime alone, but copies the file up in an
//! overlay work tree (see `host::overlay`), which moves it; an empty file's
//! bytes cannot have changed, so both trees give the same layer. (A chmod
//! or chown of an empty file to the mode or owner it had, or an xattr set on
//! one, is not recorded either way.)

use std::cmp::Ordering;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
struct EntryState {
    is_dir: bool,
    is_file: bool,
    nlink: u64,
    device: u64,
    inode: u64,
    ctime: (i64, i64),
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
}

impl EntryState {
    fn of(metadata: &std::fs::Metadata) -> EntryState {
        EntryState {
            is_dir: metadata.is_dir(),
            is_file: metadata.is_file(),
            nlink: metadata.nlink(),
            device: metadata.dev(),
            inode: metadata.ino(),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
            mode: metadata.mode(),
            uid: metadata.uid(),
            gid: metadata.gid(),
            mtime: metadata.mtime(),
            size: metadata.size(),
        }
    }
}

/// The state of every path of a tree, relative to its root, in tar order
/// (parents before children, siblings by name: the order of `Path`).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    entries: Vec<(PathBuf, EntryState)>,
}

/// One path a stage changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Created or modified: the layer carries the new entry.
    Write(PathBuf),
    /// Removed: the layer carries a whiteout (only the topmost removed path).
    Delete(PathBuf),
}

impl Snapshot {
    /// Record `root` (not following symlinks, not crossing into other
    /// filesystems), in tar order as [`crate::fileops::walk_tree`] walks it.
    pub fn take(root: &Path) -> std::io::Result<Snapshot> {
        let mut entries = Vec::new();
        crate::fileops::walk_tree::<std::io::Error>(root, true, &mut |path, metadata| {
            entries.push((path.to_path_buf(), EntryState::of(metadata)));
            Ok(())
        })?;
        Ok(Snapshot { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every path, in tar order (parents before children).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.entries.iter().map(|(path, _)| path.as_path())
    }

    /// Record `paths` of `root` again (after their times were set); a path
    /// that is not in the snapshot is left out.
    pub fn refresh<'p>(&mut self, root: &Path, paths: impl IntoIterator<Item = &'p Path>) -> std::io::Result<()> {
        for path in paths {
            if let Ok(at) = self.entries.binary_search_by(|(known, _)| compare(known, path)) {
                let metadata = std::fs::symlink_metadata(root.join(path)).map_err(|error| {
                    std::io::Error::new(error.kind(), format!("{}: {error}", root.join(path).display()))
                })?;
                self.entries[at].1 = EntryState::of(&metadata);
            }
        }
        Ok(())
    }

    /// What changed from `self` (before) to `after`, sorted by path.
    pub fn changes(&self, after: &Snapshot) -> Vec<Change> {
        let mut changes = Vec::new();
        let (mut before_at, mut after_at) = (0, 0);
        let mut last_deleted: Option<&Path> = None;
        loop {
            let order = match (self.entries.get(before_at), after.entries.get(after_at)) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((old, _)), Some((new, _))) => compare(old, new),
            };
            match order {
                // Only in the snapshot before: removed (below a removed
                // directory, the directory's whiteout says it).
                Ordering::Less => {
                    let path = &self.entries[before_at].0;
                    if !last_deleted.is_some_and(|parent| path.starts_with(parent)) {
                        changes.push(Change::Delete(path.clone()));
                        last_deleted = Some(path);
                    }
                    before_at += 1;
                }
                Ordering::Greater => {
                    changes.push(Change::Write(after.entries[after_at].0.clone()));
                    after_at += 1;
                }
                Ordering::Equal => {
                    let (old, (path, new)) = (&self.entries[before_at].1, &after.entries[after_at]);
                    let changed = match () {
                        _ if old.is_dir != new.is_dir => true,
                        _ if new.is_dir => {
                            (old.mode, old.uid, old.gid, old.mtime) != (new.mode, new.uid, new.gid, new.mtime)
                        }
                        _ if untouched_empty_file(old, new) => false,
                        _ => old != new,
                    };
                    if changed {
                        changes.push(Change::Write(path.clone()));
                    }
                    before_at += 1;
                    after_at += 1;
                }
            }
        }
        changes.sort_by(|a, b| change_path(a).cmp(change_path(b)));
        changes
    }
}

/// Two paths in tar order; most paths compared are equal, which their bytes
/// tell faster than their components.
fn compare(a: &Path, b: &Path) -> Ordering {
    if a.as_os_str() == b.as_os_str() {
        Ordering::Equal
    } else {
        a.cmp(b)
    }
}

/// An empty regular file the same in all but its ctime (see the module's note).
fn untouched_empty_file(old: &EntryState, new: &EntryState) -> bool {
    old.is_file
        && new.is_file
        && old.size == 0
        && new.size == 0
        && (old.device, old.inode, old.mode, old.uid, old.gid, old.mtime, old.nlink)
            == (new.device, new.inode, new.mode, new.uid, new.gid, new.mtime, new.nlink)
}

fn change_path(change: &Change) -> &Path {
    match change {
        Change::Write(path) | Change::Delete(path) => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn captures_writes_and_topmost_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc/old/deep")).unwrap();
        fs::write(root.join("etc/old/deep/file"), "x").unwrap();
        fs::write(root.join("etc/keep"), "k").unwrap();
        fs::write(root.join("etc/edit"), "1").unwrap();
        fs::write(root.join("gone"), "g").unwrap();
        let before = Snapshot::take(root).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        fs::remove_dir_all(root.join("etc/old")).unwrap();
        fs::remove_file(root.join("gone")).unwrap();
        fs::write(root.join("etc/edit"), "2").unwrap();
        fs::write(root.join("etc/new"), "n").unwrap();
        let after = Snapshot::take(root).unwrap();
        let changes = before.changes(&after);
        let expect = vec![
            Change::Write("etc".into()),
            Change::Write("etc/edit".into()),
            Change::Write("etc/new".into()),
            Change::Delete("etc/old".into()),
            Change::Delete("gone".into()),
        ];
        // The directory entry only shows when its mtime moved to another second.
        let changes: Vec<Change> = changes.into_iter().filter(|c| *c != Change::Write("etc".into())).collect();
        let expect: Vec<Change> = expect.into_iter().filter(|c| *c != Change::Write("etc".into())).collect();
        assert_eq!(changes, expect);
    }

    #[test]
    fn an_empty_file_opened_for_writing_is_unchanged_and_one_written_is_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in ["lock", "chmod", "filled", "linked"] {
            fs::write(root.join(name), "").unwrap();
        }
        let before = Snapshot::take(root).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        // ctime moves on each of these; only the first leaves the file as it was.
        fs::set_permissions(
            root.join("lock"),
            fs::Permissions::from_mode(fs::metadata(root.join("lock")).unwrap().permissions().mode()),
        )
        .unwrap();
        fs::set_permissions(root.join("chmod"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(root.join("filled"), "now with bytes").unwrap();
        fs::hard_link(root.join("linked"), root.join("second-name")).unwrap();
        let after = Snapshot::take(root).unwrap();
        let changes = before.changes(&after);
        let written: Vec<&Path> = changes.iter().map(change_path).collect();
        assert_eq!(written, [Path::new("chmod"), Path::new("filled"), Path::new("linked"), Path::new("second-name")]);
    }

    #[test]
    fn a_refreshed_path_is_recorded_as_it_is_now() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("etc")).unwrap();
        fs::write(root.join("etc/file"), "x").unwrap();
        let mut before = Snapshot::take(root).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        filetime::set_file_mtime(root.join("etc/file"), filetime::FileTime::from_unix_time(1, 0)).unwrap();
        let now = Snapshot::take(root).unwrap();
        assert_eq!(before.changes(&now), [Change::Write("etc/file".into())]);
        before.refresh(root, [Path::new("etc/file"), Path::new("not/there")]).unwrap();
        assert!(before.changes(&now).is_empty());
    }

    #[test]
    fn a_changed_entry_type_and_a_removed_tree_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("d/e/f")).unwrap();
        fs::write(root.join("d/e/f/g"), "g").unwrap();
        fs::write(root.join("kind"), "file").unwrap();
        fs::write(root.join("z"), "z").unwrap();
        let before = Snapshot::take(root).unwrap();
        fs::remove_dir_all(root.join("d")).unwrap();
        fs::remove_file(root.join("kind")).unwrap();
        fs::create_dir(root.join("kind")).unwrap();
        let after = Snapshot::take(root).unwrap();
        assert_eq!(before.changes(&after), [Change::Delete("d".into()), Change::Write("kind".into())]);
    }

    #[test]
    fn untouched_tree_has_no_changes() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("a")).unwrap();
        fs::write(dir.path().join("a/b"), "b").unwrap();
        let before = Snapshot::take(dir.path()).unwrap();
        let after = Snapshot::take(dir.path()).unwrap();
        assert!(before.changes(&after).is_empty());
    }
}
