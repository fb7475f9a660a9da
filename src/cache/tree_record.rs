//! The record of a kept tree, written when it is made: each entry's path,
//! kind, mode, owner, size, times, inode and link count (its stamp) and the
//! digest of its content (a file's bytes, a symlink's target). A kept tree is
//! only ever read, so it must still match its record:
//!
//! - a build compares the stamps before it overlays the tree (one walk, no
//!   file is read): a file changed in place has a new ctime even when its
//!   mtime is set back (no call sets a ctime), a symlink or another file put
//!   in its place a new inode and kind;
//! - `cache verify` compares the contents too, and `--repair` removes a tree
//!   that differs (the next build that needs it extracts it again).
//!
//! The record is text, one entry per line, the path last with its bytes
//! escaped; it starts with [`FORMAT`] and the digest of the stamp lines.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The record's first line: bump the number when a line means something else.
pub const FORMAT: &str = "rootsmith-kept-tree 1";

/// A record is read no further than this (a tree of millions of entries).
const MAX_RECORD: u64 = 1 << 30;

/// How a kept tree differs from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// No record, or one that is not a record of this format.
    NoRecord(String),
    /// The first entry (by path) whose stamp or content differs, or that is
    /// there on only one side.
    Entry(String),
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::NoRecord(why) => write!(f, "it has no sound record ({why})"),
            Difference::Entry(path) => write!(f, "/{path} is not what it was when the tree was made"),
        }
    }
}

/// One line per entry: (escaped path, stamp, content digest).
struct Line {
    path: String,
    stamp: String,
    content: String,
}

/// The lines of `tree`, in the walk's order; with `contents`, every regular
/// file is read and hashed, else its content field is left empty.
fn lines(tree: &Path, contents: bool) -> std::io::Result<Vec<Line>> {
    let root = fs_err::symlink_metadata(tree)?;
    // The root's times change with every use (its mtime is its last use).
    let mut lines = vec![Line {
        path: ".".into(),
        stamp: format!("dir {:o} {} {}", root.mode(), root.uid(), root.gid()),
        content: String::new(),
    }];
    crate::fileops::walk_tree(tree, false, &mut |relative, metadata| -> std::io::Result<()> {
        let file_type = metadata.file_type();
        let kind = if file_type.is_dir() {
            "dir"
        } else if file_type.is_symlink() {
            "symlink"
        } else if file_type.is_file() {
            "file"
        } else if file_type.is_fifo() {
            "fifo"
        } else if file_type.is_char_device() {
            "char"
        } else if file_type.is_block_device() {
            "block"
        } else {
            "socket"
        };
        let stamp = format!(
            "{kind} {:o} {} {} {} {} {}.{} {}.{} {} {} {}",
            metadata.mode(),
            metadata.uid(),
            metadata.gid(),
            metadata.len(),
            metadata.rdev(),
            metadata.mtime(),
            metadata.mtime_nsec(),
            metadata.ctime(),
            metadata.ctime_nsec(),
            metadata.ino(),
            metadata.nlink(),
            metadata.dev(),
        );
        let full = tree.join(relative);
        let content = match kind {
            "symlink" => crate::digest::sha256_hex(fs_err::read_link(&full)?.as_os_str().as_bytes()),
            "file" if contents => crate::digest::hash_file_no_follow(&full)?,
            _ => String::new(),
        };
        lines.push(Line { path: escape(relative.as_os_str().as_bytes()), stamp, content });
        Ok(())
    })?;
    Ok(lines)
}

/// A path's bytes with `%`, control bytes, spaces and non-ASCII as `%XX`.
fn escape(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte <= b' ' || byte == b'%' || byte >= 0x7f {
            text.push_str(&format!("%{byte:02x}"));
        } else {
            text.push(byte as char);
        }
    }
    text
}

fn stamps_digest(lines: &[Line]) -> String {
    let mut hasher = Sha256::new();
    for line in lines {
        hasher.update(line.path.as_bytes());
        hasher.update(b" ");
        hasher.update(line.stamp.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// The record of `tree` as it is now (every file read).
pub fn make(tree: &Path) -> std::io::Result<Vec<u8>> {
    let lines = lines(tree, true)?;
    let mut text = format!("{FORMAT}\nstamps {}\n", stamps_digest(&lines));
    for line in &lines {
        text.push_str(&format!("{} {} {}\n", line.content_field(), line.stamp, line.path));
    }
    Ok(text.into_bytes())
}

impl Line {
    fn content_field(&self) -> &str {
        if self.content.is_empty() {
            "-"
        } else {
            &self.content
        }
    }
}

fn read_record(record: &Path) -> Result<String, Difference> {
    let bytes = crate::fileops::read_regular_no_follow(record, MAX_RECORD)
        .map_err(|error| Difference::NoRecord(error.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| Difference::NoRecord("not text".into()))?;
    if text.lines().next() != Some(FORMAT) {
        return Err(Difference::NoRecord(format!("its first line is not `{FORMAT}`")));
    }
    Ok(text)
}

/// The first entry that differs between the record's lines and `lines`
/// (compared with or without the content field).
fn first_difference(text: &str, lines: &[Line], contents: bool) -> Difference {
    let recorded: Vec<&str> = text.lines().skip(2).collect();
    for (index, line) in lines.iter().enumerate() {
        let Some(old) = recorded.get(index) else { return Difference::Entry(line.path.clone()) };
        let (old_content, old_rest) = old.split_once(' ').unwrap_or(("", old));
        let rest = format!("{} {}", line.stamp, line.path);
        if old_rest != rest || (contents && old_content != line.content_field()) {
            let old_path = old_rest.rsplit(' ').next().unwrap_or_default();
            return Difference::Entry(line.path.clone().min(old_path.to_string()));
        }
    }
    match recorded.get(lines.len()) {
        Some(extra) => Difference::Entry(extra.rsplit(' ').next().unwrap_or_default().to_string()),
        None => Difference::NoRecord("its digest of the stamps does not match its lines".into()),
    }
}

/// Whether `tree`'s stamps are those of its record (a walk; no file is
/// read): what a build checks before it uses the tree.
pub fn check_stamps(tree: &Path, record: &Path) -> Result<(), Difference> {
    let text = read_record(record)?;
    let lines = lines(tree, false).map_err(|error| Difference::NoRecord(error.to_string()))?;
    let recorded = text.lines().nth(1).and_then(|line| line.strip_prefix("stamps ")).unwrap_or_default();
    if stamps_digest(&lines) == recorded {
        return Ok(());
    }
    Err(first_difference(&text, &lines, false))
}

/// Whether `tree` is its record, stamps and contents (every file read):
/// what `cache verify` checks.
pub fn check_contents(tree: &Path, record: &Path) -> Result<(), Difference> {
    let text = read_record(record)?;
    let lines = lines(tree, true).map_err(|error| Difference::NoRecord(error.to_string()))?;
    let mut now = format!("{FORMAT}\nstamps {}\n", stamps_digest(&lines));
    for line in &lines {
        now.push_str(&format!("{} {} {}\n", line.content_field(), line.stamp, line.path));
    }
    if now == text {
        return Ok(());
    }
    Err(first_difference(&text, &lines, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("etc")).unwrap();
        fs_err::write(tree.join("etc/motd"), "hello\n").unwrap();
        fs_err::write(tree.join("etc/odd name\n%"), "x").unwrap();
        std::os::unix::fs::symlink("motd", tree.join("etc/link")).unwrap();
        let record = dir.path().join("tree.record");
        fs_err::write(&record, make(&tree).unwrap()).unwrap();
        (dir, tree, record)
    }

    #[test]
    fn an_untouched_tree_matches_its_record() {
        let (_dir, tree, record) = tree();
        check_stamps(&tree, &record).unwrap();
        check_contents(&tree, &record).unwrap();
        // The root's mtime (its last use) is not part of the record.
        filetime::set_file_mtime(&tree, filetime::FileTime::now()).unwrap();
        check_stamps(&tree, &record).unwrap();
        let text = String::from_utf8(fs_err::read(&record).unwrap()).unwrap();
        assert!(text.contains("etc/odd%20name%0a%25"), "{text}");
    }

    #[test]
    fn a_file_changed_in_place_with_its_mtime_set_back_is_found() {
        let (_dir, tree, record) = tree();
        let file = tree.join("etc/motd");
        let mtime = filetime::FileTime::from_last_modification_time(&fs_err::metadata(&file).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs_err::write(&file, "HELLO\n").unwrap();
        filetime::set_file_mtime(&file, mtime).unwrap();
        assert_eq!(check_stamps(&tree, &record), Err(Difference::Entry("etc/motd".into())));
        assert_eq!(check_contents(&tree, &record), Err(Difference::Entry("etc/motd".into())));
    }

    #[test]
    fn a_file_replaced_by_a_symlink_added_or_removed_is_found() {
        let (_dir, tree, record) = tree();
        fs_err::remove_file(tree.join("etc/motd")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", tree.join("etc/motd")).unwrap();
        // The first entry that differs is the directory whose entries changed.
        assert_eq!(check_stamps(&tree, &record), Err(Difference::Entry("etc".into())));

        let (_dir, tree, record) = self::tree();
        fs_err::write(tree.join("etc/zz-added"), "").unwrap();
        assert!(matches!(check_stamps(&tree, &record), Err(Difference::Entry(_))));

        let (_dir, tree, record) = self::tree();
        fs_err::remove_file(tree.join("etc/link")).unwrap();
        assert!(matches!(check_stamps(&tree, &record), Err(Difference::Entry(_))));
    }

    #[test]
    fn a_missing_or_foreign_record_is_no_record() {
        let (dir, tree, record) = tree();
        assert!(matches!(check_stamps(&tree, &dir.path().join("none")), Err(Difference::NoRecord(_))));
        fs_err::write(&record, "something else\n").unwrap();
        assert!(matches!(check_stamps(&tree, &record), Err(Difference::NoRecord(_))));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(matches!(check_stamps(&tree, &fifo), Err(Difference::NoRecord(_))), "a FIFO is never read");
    }
}
