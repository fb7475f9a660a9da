//! What rootsmith's output writers share to remember files between builds:
//! a file's stamp (the squashfs writer's and the tarball writer's memos know
//! files by it) and the sealed file a memo is kept in.
//!
//! A file is known by its path in the tree and its stamp: inode, size, mtime
//! and ctime to the nanosecond. Nothing can change a file's bytes (or its
//! mode, owner or xattrs) without moving its ctime to the present, and a
//! memo only remembers a file whose ctime was already [`SETTLED`] in the
//! past when the write began, so a change in the same clock tick as the
//! write cannot hide. (In a kept tree's overlay an unchanged file is the kept
//! tree's own inode with its own ctime; a changed one is copied up, a new
//! ctime. An extracted tree has new inodes every time: nothing is known.)
//!
//! A memo file is a magic line, the records, and the SHA-256 of both; one
//! that is damaged, too large or of another version is no memo.

use std::path::Path;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// A memo file larger than this is not read (a tree of a million files is ~100 MiB).
const MAX_BYTES: u64 = 512 << 20;

/// How far in the past a file's ctime must be, when the write begins, for a
/// memo to remember it.
/// (Unit tests remember files made a moment before, and change them with
/// another size or in another clock tick.)
pub const SETTLED: Duration = if cfg!(test) { Duration::ZERO } else { Duration::from_secs(2) };

/// What identifies a file's bytes and metadata without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp {
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stamp {
    pub fn of(metadata: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            ino: metadata.ino(),
            size: metadata.len(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// Whether the file's last change was at least [`SETTLED`] before `began`.
    pub fn settled_before(&self, began: SystemTime) -> bool {
        let Ok(since_epoch) = began.duration_since(SystemTime::UNIX_EPOCH) else { return false };
        let limit = since_epoch.saturating_sub(SETTLED);
        let ctime = Duration::new(self.ctime.0.max(0) as u64, self.ctime.1.clamp(0, 999_999_999) as u32);
        self.ctime.0 >= 0 && ctime < limit
    }

    pub fn put(&self, out: &mut Vec<u8>) {
        for value in
            [self.ino, self.size, self.mtime.0 as u64, self.mtime.1 as u64, self.ctime.0 as u64, self.ctime.1 as u64]
        {
            out.extend(value.to_le_bytes());
        }
    }
}

/// The memo file at `path` (at most [`MAX_BYTES`]), its magic line checked
/// and taken off, its seal checked: a reader of its records.
pub fn open(path: &Path, magic: &[u8]) -> Option<Vec<u8>> {
    let bytes = crate::fileops::read_regular_no_follow(path, MAX_BYTES).ok()?;
    let (body, digest) = bytes.split_at(bytes.len().checked_sub(32)?);
    (Sha256::digest(body).as_slice() == digest && body.starts_with(magic)).then(|| body[magic.len()..].to_vec())
}

/// Write `magic`, `records` and their seal to `path`, atomically (a
/// temporary file beside it, renamed).
pub fn save(path: &Path, magic: &[u8], records: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut hasher = Sha256::new();
    hasher.update(magic);
    hasher.update(records);
    let parent = path.parent().ok_or_else(|| anyhow::anyhow!("a memo path without a directory"))?;
    fs_err::create_dir_all(parent)?;
    let mut temp = tempfile::NamedTempFile::new_in(parent)?;
    temp.write_all(magic)?;
    temp.write_all(records)?;
    temp.write_all(&hasher.finalize())?;
    temp.persist(path)?;
    Ok(())
}

/// Reads a memo's records, every length checked against what is left.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.0.len() < count {
            return None;
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Some(taken)
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A count of records, each at least `min` bytes: no larger than what is left could hold.
    pub fn count(&mut self, min: usize) -> Option<usize> {
        let count = usize::try_from(self.u64()?).ok()?;
        (count <= self.0.len() / min).then_some(count)
    }

    pub fn digest(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }

    /// A length-prefixed byte string (a path).
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let length = usize::try_from(self.u64()?).ok()?;
        self.take(length)
    }

    pub fn stamp(&mut self) -> Option<Stamp> {
        let mut values = [0u64; 6];
        for value in &mut values {
            *value = self.u64()?;
        }
        Some(Stamp {
            ino: values[0],
            size: values[1],
            mtime: (values[2] as i64, values[3] as i64),
            ctime: (values[4] as i64, values[5] as i64),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A length-prefixed byte string, as [`Reader::bytes`] reads it.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend((bytes.len() as u64).to_le_bytes());
    out.extend(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_file_opens_only_whole_and_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo");
        save(&path, b"magic 1\n", b"records").unwrap();
        assert_eq!(open(&path, b"magic 1\n").as_deref(), Some(&b"records"[..]));
        assert_eq!(open(&path, b"magic 2\n"), None);
        let bytes = fs_err::read(&path).unwrap();
        for damaged in [
            bytes[..bytes.len() - 1].to_vec(),
            {
                let mut b = bytes.clone();
                b[9] ^= 1;
                b
            },
            Vec::new(),
        ] {
            fs_err::write(&path, &damaged).unwrap();
            assert_eq!(open(&path, b"magic 1\n"), None);
        }
        // A FIFO is not waited on.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(open(&fifo, b"magic 1\n"), None);
        // A count larger than the records could hold.
        let mut records = Vec::new();
        records.extend(u64::MAX.to_le_bytes());
        assert_eq!(Reader(&records).count(1), None);
    }

    #[test]
    fn only_a_file_changed_before_the_write_began_is_settled() {
        let stamp = |ctime: i64| Stamp { ino: 1, size: 2, mtime: (3, 4), ctime: (ctime, 5) };
        let began = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(stamp(900).settled_before(began));
        assert!(!stamp(1_000).settled_before(began));
        assert!(!stamp(-5).settled_before(began));
    }
}
