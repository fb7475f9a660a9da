//! What the squashfs writer learnt about the files of its last write, so the
//! next write of a tree that mostly did not change reads only what did.
//!
//! A file is known by its path in the tree and its stamp: inode, size, mtime
//! and ctime to the nanosecond. Nothing can change a file's bytes without
//! moving its ctime to the present, and only a file whose ctime was already
//! [`SETTLED`] in the past when the write began is remembered, so a change
//! in the same clock tick as the write cannot hide. (In a kept tree's
//! overlay, an unchanged file is the kept tree's own inode with its own
//! ctime; a changed one is copied up, a new ctime.) For each known file the
//! memo has the SHA-256 of each of its blocks and, for a block that went
//! into the image compressed, the SHA-256 of its block cache entry; for
//! each fragment block, the SHA-256 of its entry by the digests of the tails
//! it holds. An entry is then taken from the block cache when its bytes
//! hash to what the memo says (a 40 KiB hash instead of reading, hashing,
//! decompressing and comparing 128 KiB); anything the memo does not know,
//! or whose entry does not match, is read and checked as without a memo.
//!
//! The memo is one file per recipe and compressor setting
//! (`cache::Layout::squashfs_memo`), replaced whole after each write with
//! what that write learnt: a magic line, the records, and the SHA-256 of
//! both; a memo that is damaged, too large or from another version is
//! ignored (the write reads everything, and writes a new one).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

const MAGIC: &[u8] = b"rootsmith-squashfs-memo 1\n";
/// A memo larger than this is not read (a tree of a million files is ~100 MiB).
const MAX_BYTES: u64 = 512 << 20;
/// How far in the past a file's ctime must be, when the write begins, for the
/// memo to remember it.
/// (Unit tests remember files made a moment before, and change them with
/// another size or in another clock tick.)
pub const SETTLED: Duration = if cfg!(test) { Duration::ZERO } else { Duration::from_secs(2) };

/// What identifies a file's bytes without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stamp {
    pub fn of(metadata: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp { ino: metadata.ino(), size: metadata.len(), mtime: (metadata.mtime(), metadata.mtime_nsec()), ctime: (metadata.ctime(), metadata.ctime_nsec()) }
    }

    /// Whether the file's last change was at least [`SETTLED`] before `began`.
    fn settled_before(&self, began: SystemTime) -> bool {
        let Ok(since_epoch) = began.duration_since(SystemTime::UNIX_EPOCH) else { return false };
        let limit = since_epoch.saturating_sub(SETTLED);
        let ctime = Duration::new(self.ctime.0.max(0) as u64, self.ctime.1.clamp(0, 999_999_999) as u32);
        self.ctime.0 >= 0 && ctime < limit
    }
}

/// One block of a file, or the tail that went into a fragment block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// SHA-256 of the block's (or tail's) bytes.
    pub raw: [u8; 32],
    pub how: How,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// All zeros: a hole.
    Sparse,
    /// Compressed, as the block cache entry with this SHA-256 holds it.
    Entry([u8; 32]),
    /// Stored as it is, or a tail: the bytes must be read.
    Read,
}

/// A file's pieces, by its path in the tree and its stamp.
type Files = HashMap<(Vec<u8>, Stamp), Vec<Piece>>;

#[derive(Default)]
pub struct Memo {
    files: Files,
    /// A fragment block's entry, by the digest of its tails' digests and lengths.
    fragments: HashMap<[u8; 32], Piece>,
    learnt_files: Mutex<Files>,
    learnt_fragments: Mutex<HashMap<[u8; 32], Piece>>,
}

impl Memo {
    /// The memo at `path`; empty when there is none or it cannot be trusted.
    pub fn load(path: &Path) -> Memo {
        let Ok(bytes) = crate::fileops::read_regular_no_follow(path, MAX_BYTES) else { return Memo::default() };
        parse(&bytes).unwrap_or_default()
    }

    pub fn file(&self, relative: &[u8], stamp: Stamp) -> Option<&[Piece]> {
        self.files.get(&(relative.to_vec(), stamp)).map(Vec::as_slice)
    }

    pub fn fragment(&self, identity: &[u8; 32]) -> Option<Piece> {
        self.fragments.get(identity).copied()
    }

    /// Remember a file of this write (kept only when its stamp is settled).
    pub fn learn_file(&self, relative: &[u8], stamp: Stamp, pieces: Vec<Piece>) {
        self.learnt_files.lock().expect("the memo").insert((relative.to_vec(), stamp), pieces);
    }

    pub fn learn_fragment(&self, identity: [u8; 32], piece: Piece) {
        self.learnt_fragments.lock().expect("the memo").insert(identity, piece);
    }

    /// How many files this write found in the memo's records, of how many it
    /// learnt (for the log).
    pub fn known_files(&self) -> usize {
        let learnt = self.learnt_files.lock().expect("the memo");
        learnt.keys().filter(|key| self.files.contains_key(*key)).count()
    }

    /// Replace the memo at `path` with what this write learnt about files
    /// settled before `began` (atomically: a temporary file renamed).
    pub fn save(&self, path: &Path, began: SystemTime) -> anyhow::Result<()> {
        use std::io::Write;
        let files = self.learnt_files.lock().expect("the memo");
        let fragments = self.learnt_fragments.lock().expect("the memo");
        let mut out = MAGIC.to_vec();
        let mut keys: Vec<_> = files.keys().filter(|(_, stamp)| stamp.settled_before(began)).collect();
        keys.sort();
        out.extend((keys.len() as u64).to_le_bytes());
        for key @ (relative, stamp) in keys {
            out.extend((relative.len() as u64).to_le_bytes());
            out.extend(relative);
            for value in [stamp.ino, stamp.size, stamp.mtime.0 as u64, stamp.mtime.1 as u64, stamp.ctime.0 as u64, stamp.ctime.1 as u64] {
                out.extend(value.to_le_bytes());
            }
            let pieces = &files[key];
            out.extend((pieces.len() as u64).to_le_bytes());
            for piece in pieces {
                put_piece(&mut out, piece);
            }
        }
        let mut identities: Vec<_> = fragments.keys().collect();
        identities.sort();
        out.extend((identities.len() as u64).to_le_bytes());
        for identity in identities {
            out.extend(identity);
            put_piece(&mut out, &fragments[identity]);
        }
        let digest = Sha256::digest(&out);
        out.extend(digest);
        let parent = path.parent().ok_or_else(|| anyhow::anyhow!("a memo path without a directory"))?;
        fs_err::create_dir_all(parent)?;
        let mut temp = tempfile::NamedTempFile::new_in(parent)?;
        temp.write_all(&out)?;
        temp.persist(path)?;
        Ok(())
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.ino, self.size, self.mtime, self.ctime).cmp(&(other.ino, other.size, other.mtime, other.ctime))
    }
}

fn put_piece(out: &mut Vec<u8>, piece: &Piece) {
    out.extend(piece.raw);
    match piece.how {
        How::Sparse => out.push(0),
        How::Read => out.push(2),
        How::Entry(entry) => {
            out.push(1);
            out.extend(entry);
        }
    }
}

/// Reads a memo's bytes, every length checked against what is left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.0.len() < count {
            return None;
        }
        let (taken, rest) = self.0.split_at(count);
        self.0 = rest;
        Some(taken)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A count of records, each at least `min` bytes: no larger than what is left could hold.
    fn count(&mut self, min: usize) -> Option<usize> {
        let count = usize::try_from(self.u64()?).ok()?;
        (count <= self.0.len() / min).then_some(count)
    }

    fn digest(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }

    fn piece(&mut self) -> Option<Piece> {
        let raw = self.digest()?;
        let how = match self.take(1)?[0] {
            0 => How::Sparse,
            1 => How::Entry(self.digest()?),
            2 => How::Read,
            _ => return None,
        };
        Some(Piece { raw, how })
    }
}

fn parse(bytes: &[u8]) -> Option<Memo> {
    let (body, digest) = bytes.split_at(bytes.len().checked_sub(32)?);
    if Sha256::digest(body).as_slice() != digest || !body.starts_with(MAGIC) {
        return None;
    }
    let mut reader = Reader(&body[MAGIC.len()..]);
    let mut memo = Memo::default();
    for _ in 0..reader.count(8 + 48 + 8)? {
        let length = usize::try_from(reader.u64()?).ok()?;
        let relative = reader.take(length)?.to_vec();
        let mut values = [0u64; 6];
        for value in &mut values {
            *value = reader.u64()?;
        }
        let stamp = Stamp { ino: values[0], size: values[1], mtime: (values[2] as i64, values[3] as i64), ctime: (values[4] as i64, values[5] as i64) };
        let pieces = (0..reader.count(33)?).map(|_| reader.piece()).collect::<Option<Vec<_>>>()?;
        memo.files.insert((relative, stamp), pieces);
    }
    for _ in 0..reader.count(65)? {
        let identity = reader.digest()?;
        memo.fragments.insert(identity, reader.piece()?);
    }
    reader.0.is_empty().then_some(memo)
}

/// The identity of a fragment block: the digest of its tails' digests and lengths, in order.
pub fn fragment_identity<'a>(tails: impl Iterator<Item = (&'a [u8; 32], usize)>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for (digest, len) in tails {
        hasher.update(digest);
        hasher.update((len as u64).to_le_bytes());
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ctime: i64) -> Stamp {
        Stamp { ino: 7, size: 300_000, mtime: (5, 6), ctime: (ctime, 9) }
    }

    #[test]
    fn a_saved_memo_reads_back_with_only_settled_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo");
        let memo = Memo::default();
        let pieces = vec![Piece { raw: [1; 32], how: How::Entry([2; 32]) }, Piece { raw: [3; 32], how: How::Sparse }, Piece { raw: [4; 32], how: How::Read }];
        let began = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        memo.learn_file(b"etc/old", stamp(900), pieces.clone());
        // Changed as the write began: not remembered.
        memo.learn_file(b"etc/new", stamp(1_000), pieces.clone());
        memo.learn_fragment([5; 32], Piece { raw: [6; 32], how: How::Entry([7; 32]) });
        memo.save(&path, began).unwrap();
        let loaded = Memo::load(&path);
        assert_eq!(loaded.file(b"etc/old", stamp(900)), Some(pieces.as_slice()));
        assert_eq!(loaded.file(b"etc/old", stamp(901)), None, "another stamp is another file");
        assert_eq!(loaded.file(b"etc/new", stamp(1_000)), None);
        assert_eq!(loaded.fragment(&[5; 32]), Some(Piece { raw: [6; 32], how: How::Entry([7; 32]) }));
    }

    #[test]
    fn a_damaged_truncated_or_foreign_memo_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo");
        let memo = Memo::default();
        memo.learn_file(b"a", stamp(10), vec![Piece { raw: [1; 32], how: How::Read }]);
        memo.save(&path, SystemTime::now()).unwrap();
        assert!(Memo::load(&path).file(b"a", stamp(10)).is_some());
        let bytes = fs_err::read(&path).unwrap();
        for damaged in [bytes[..bytes.len() - 1].to_vec(), { let mut b = bytes.clone(); b[40] ^= 1; b }, b"rootsmith-squashfs-memo 0\n".to_vec(), Vec::new()] {
            fs_err::write(&path, &damaged).unwrap();
            assert!(Memo::load(&path).file(b"a", stamp(10)).is_none());
        }
        // A count larger than the file could hold, with a right digest.
        let mut forged = MAGIC.to_vec();
        forged.extend(u64::MAX.to_le_bytes());
        forged.extend(Sha256::digest(&forged));
        fs_err::write(&path, &forged).unwrap();
        assert!(parse(&fs_err::read(&path).unwrap()).is_none());
        // A FIFO is not waited on.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(Memo::load(&fifo).files.is_empty());
    }
}
