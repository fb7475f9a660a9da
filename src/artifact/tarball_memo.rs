//! What the tarball writer learnt about the entries of its last write, so
//! the next write of a tree that mostly did not change reads only what did.
//!
//! Entries are known by their path and [`Stamp`] (see
//! [`crate::artifact::memo`] for why that is enough): for each, the length
//! of its tar bytes; for each group of entries that went into one zstd
//! frame, by the digest of the group's paths and stamps, the SHA-256 of the
//! group's tar bytes and of its frame in the frame cache. A group whose
//! entries all have their recorded stamps is then written as that frame, when
//! the frame cache entry's bytes still hash to what the memo says, without
//! reading a file; any other group is built and checked as without a memo.
//! Hard-linked files are never known (a link's bytes name the path written
//! first), nor is anything in a tree with device placeholders.
//!
//! One file per recipe and level (`cache::Layout::tarball_memo`), replaced
//! whole after each write over a kept tree (never from an extracted one); a memo for another `SOURCE_DATE_EPOCH` is no memo.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::artifact::memo::{self as sealed, Reader, Stamp};

const MAGIC: &[u8] = b"rootsmith-tarball-memo 1\n";

/// An entry: its path in the tree and its stamp.
pub type Key = (Vec<u8>, Stamp);

/// Where a known group's frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownGroup {
    /// SHA-256 of the group's tar bytes (the frame cache's name for it).
    pub group: [u8; 32],
    /// SHA-256 of its frame.
    pub frame: [u8; 32],
}

#[derive(Default)]
pub struct TarballMemo {
    epoch: i64,
    entries: HashMap<Key, u64>,
    groups: HashMap<[u8; 32], KnownGroup>,
    learnt_entries: HashMap<Key, u64>,
    learnt_groups: HashMap<[u8; 32], KnownGroup>,
}

impl TarballMemo {
    /// The memo at `path` for `epoch`; empty when there is none or it cannot be trusted.
    pub fn load(path: &Path, epoch: i64) -> TarballMemo {
        let loaded = sealed::open(path, MAGIC).and_then(|records| parse(&records)).filter(|memo| memo.epoch == epoch);
        let mut memo = loaded.unwrap_or_default();
        memo.epoch = epoch;
        memo
    }

    /// The length of a known entry's tar bytes.
    pub fn entry(&self, key: &Key) -> Option<u64> {
        self.entries.get(key).copied()
    }

    pub fn group(&self, identity: &[u8; 32]) -> Option<KnownGroup> {
        self.groups.get(identity).copied()
    }

    pub fn learn_entry(&mut self, key: Key, length: u64) {
        self.learnt_entries.insert(key, length);
    }

    pub fn learn_group(&mut self, identity: [u8; 32], group: KnownGroup) {
        self.learnt_groups.insert(identity, group);
    }

    /// How many entries of this write the memo knew.
    pub fn known_entries(&self) -> usize {
        self.learnt_entries.keys().filter(|key| self.entries.contains_key(*key)).count()
    }

    /// Replace the memo at `path` with what this write learnt about entries
    /// settled before `began` (groups are learnt only when all theirs are).
    pub fn save(&self, path: &Path, began: SystemTime) -> anyhow::Result<()> {
        let mut out = Vec::new();
        out.extend((self.epoch as u64).to_le_bytes());
        let mut keys: Vec<_> = self.learnt_entries.keys().filter(|(_, stamp)| stamp.settled_before(began)).collect();
        keys.sort();
        out.extend((keys.len() as u64).to_le_bytes());
        for key in keys {
            sealed::put_bytes(&mut out, &key.0);
            key.1.put(&mut out);
            out.extend(self.learnt_entries[key].to_le_bytes());
        }
        let mut identities: Vec<_> = self.learnt_groups.keys().collect();
        identities.sort();
        out.extend((identities.len() as u64).to_le_bytes());
        for identity in identities {
            let group = &self.learnt_groups[identity];
            out.extend(identity);
            out.extend(group.group);
            out.extend(group.frame);
        }
        sealed::save(path, MAGIC, &out)
    }
}

fn parse(records: &[u8]) -> Option<TarballMemo> {
    let mut reader = Reader(records);
    let mut memo = TarballMemo { epoch: reader.u64()? as i64, ..TarballMemo::default() };
    for _ in 0..reader.count(8 + 48 + 8)? {
        let relative = reader.bytes()?.to_vec();
        let stamp = reader.stamp()?;
        memo.entries.insert((relative, stamp), reader.u64()?);
    }
    for _ in 0..reader.count(96)? {
        let identity = reader.digest()?;
        memo.groups.insert(identity, KnownGroup { group: reader.digest()?, frame: reader.digest()? });
    }
    reader.is_empty().then_some(memo)
}

/// The identity of a group: the digest of its entries' paths and stamps, in order.
pub fn group_identity<'a>(keys: impl Iterator<Item = &'a Key>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for (relative, stamp) in keys {
        let mut record = Vec::new();
        sealed::put_bytes(&mut record, relative);
        stamp.put(&mut record);
        hasher.update(&record);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, ctime: i64) -> Key {
        (name.as_bytes().to_vec(), Stamp { ino: 1, size: 2, mtime: (3, 4), ctime: (ctime, 0) })
    }

    #[test]
    fn a_saved_memo_reads_back_for_its_epoch_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memo");
        let mut memo = TarballMemo::load(&path, 1_700_000_000);
        memo.learn_entry(key("etc/a", 10), 1536);
        memo.learn_entry(key("etc/b", 2_000), 512);
        let group = KnownGroup { group: [1; 32], frame: [2; 32] };
        memo.learn_group([3; 32], group);
        memo.save(&path, SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000)).unwrap();
        let loaded = TarballMemo::load(&path, 1_700_000_000);
        assert_eq!(loaded.entry(&key("etc/a", 10)), Some(1536));
        assert_eq!(loaded.entry(&key("etc/b", 2_000)), None, "changed after the write began");
        assert_eq!(loaded.group(&[3; 32]), Some(group));
        assert_eq!(TarballMemo::load(&path, 1).entry(&key("etc/a", 10)), None, "another epoch");
        assert_ne!(group_identity([key("a", 1)].iter()), group_identity([key("a", 2)].iter()));
    }
}
