//! What the squashfs writer learnt about the files of its last write, so the
//! next write of a tree that mostly did not change reads only what did.
//!
//! Files are known by their path and [`Stamp`] (see [`crate::artifact::memo`]
//! for why that is enough). For each known file the memo has the SHA-256 of
//! each of its blocks and, for a block that went into the image compressed,
//! the SHA-256 of its block cache entry; for each fragment block, the
//! SHA-256 of its entry by the digests of the tails it holds. An entry is
//! then taken from the block cache when its bytes hash to what the memo says
//! (a 40 KiB hash instead of reading, hashing, decompressing and comparing
//! 128 KiB); anything the memo does not know, or whose entry does not match,
//! is read and checked as without a memo.
//!
//! The memo is one file per recipe and compressor setting
//! (`cache::Layout::squashfs_memo`), replaced whole after each write over a
//! kept tree with what that write learnt (a write from an extracted tree,
//! whose inodes are never seen again, leaves it alone).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

pub use crate::artifact::memo::Stamp;
use crate::artifact::memo::{self as sealed, Reader};

const MAGIC: &[u8] = b"rootsmith-squashfs-memo 1\n";
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
        sealed::open(path, MAGIC).and_then(|records| parse(&records)).unwrap_or_default()
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
        let files = self.learnt_files.lock().expect("the memo");
        let fragments = self.learnt_fragments.lock().expect("the memo");
        let mut out = Vec::new();
        let mut keys: Vec<_> = files.keys().filter(|(_, stamp)| stamp.settled_before(began)).collect();
        keys.sort();
        out.extend((keys.len() as u64).to_le_bytes());
        for key @ (relative, stamp) in keys {
            sealed::put_bytes(&mut out, relative);
            stamp.put(&mut out);
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
        sealed::save(path, MAGIC, &out)
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

/// A piece, as [`put_piece`] writes it.
fn read_piece(reader: &mut Reader) -> Option<Piece> {
    let raw = reader.digest()?;
    let how = match reader.take(1)?[0] {
        0 => How::Sparse,
        1 => How::Entry(reader.digest()?),
        2 => How::Read,
        _ => return None,
    };
    Some(Piece { raw, how })
}

fn parse(records: &[u8]) -> Option<Memo> {
    let mut reader = Reader(records);
    let mut memo = Memo::default();
    for _ in 0..reader.count(8 + 48 + 8)? {
        let relative = reader.bytes()?.to_vec();
        let stamp = reader.stamp()?;
        let pieces = (0..reader.count(33)?).map(|_| read_piece(&mut reader)).collect::<Option<Vec<_>>>()?;
        memo.files.insert((relative, stamp), pieces);
    }
    for _ in 0..reader.count(65)? {
        let identity = reader.digest()?;
        memo.fragments.insert(identity, read_piece(&mut reader)?);
    }
    reader.is_empty().then_some(memo)
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
        let pieces = vec![
            Piece { raw: [1; 32], how: How::Entry([2; 32]) },
            Piece { raw: [3; 32], how: How::Sparse },
            Piece { raw: [4; 32], how: How::Read },
        ];
        let began = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
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
    fn a_damaged_memo_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo");
        let memo = Memo::default();
        memo.learn_file(b"a", stamp(10), vec![Piece { raw: [1; 32], how: How::Read }]);
        memo.save(&path, SystemTime::now()).unwrap();
        assert!(Memo::load(&path).file(b"a", stamp(10)).is_some());
        let mut bytes = fs_err::read(&path).unwrap();
        bytes[40] ^= 1;
        fs_err::write(&path, &bytes).unwrap();
        assert!(Memo::load(&path).file(b"a", stamp(10)).is_none());
        // Records that do not parse, though sealed: no memo.
        sealed::save(&path, MAGIC, &[1, 0, 0, 0, 0, 0, 0, 0, 9]).unwrap();
        assert!(Memo::load(&path).files.is_empty());
    }
}
