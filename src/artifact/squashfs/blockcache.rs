//! The block cache of rootsmith's squashfs writer: the compressed form of each
//! data or fragment block already compressed once, by the SHA-256 of its
//! uncompressed bytes and the compressor's settings. A write looks a block up
//! before compressing it and copies what the cache holds instead.
//!
//! An entry is one file: a byte saying whether the block is stored compressed
//! (1) or as it is (0), then the compressed bytes. Entries are written
//! atomically (a temporary file beside the entry, renamed into place), so an
//! interrupted write leaves whole entries or none. An entry is never trusted:
//! it must decompress to exactly the block it is looked up for, as the
//! kernel's decoder reads it (one frame or stream, nothing after it, a
//! window of one block), or it is ignored, recompressed and replaced. The
//! settings' label carries a fingerprint of the compressor, so blocks a
//! different zstd, zlib or liblzma made are never copied. What is trusted
//! is the one-byte "does not compress" entry: a wrong one (only planted by
//! hand) gives a valid image with that block stored, not the clean bytes.
//!
//! Where entries live is the cache's business (`cache::Layout::squashfs_block`):
//! the writer gets a function from (settings, digest) to the entry's path.
//! Entries of one setting share a directory, which `cache gc` removes whole
//! when it is the least recently used; a hit marks the directory used.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use sha2::Digest;

use super::codec::{self, Settings};

/// The path of the entry for a block: (settings label, SHA-256 hex of the block).
pub type EntryPath = dyn Fn(&str, &str) -> PathBuf + Send + Sync;

/// The path of the writer's memo for a settings label (see [`super::memo`]).
pub type MemoPath = dyn Fn(&str) -> PathBuf + Send + Sync;

pub struct BlockCache {
    entry_path: Box<EntryPath>,
    memo_path: Option<Box<MemoPath>>,
    /// Blocks copied from the cache, compressed and stored, and entries found corrupt.
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub corrupt: AtomicU64,
    /// Entries that could not be stored (a full disk, a read-only cache):
    /// the cache only saves work, so the image is written all the same.
    pub unwritten: AtomicU64,
    marked: crate::artifact::frames::UsedMark,
}

/// What the cache holds for a block.
pub enum Cached {
    /// The block's compressed bytes (checked: they decompress to the block).
    Compressed(Vec<u8>),
    /// The block does not compress: it is stored as it is.
    Stored,
}

impl BlockCache {
    pub fn new(entry_path: Box<EntryPath>) -> BlockCache {
        BlockCache {
            entry_path,
            memo_path: None,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            unwritten: AtomicU64::new(0),
            marked: crate::artifact::frames::UsedMark::default(),
        }
    }

    /// The cache with a memo of what each write learnt, at `memo_path(label)`.
    pub fn with_memo(mut self, memo_path: Box<MemoPath>) -> BlockCache {
        self.memo_path = Some(memo_path);
        self
    }

    pub fn memo_path(&self, settings: &Settings) -> Option<PathBuf> {
        self.memo_path.as_ref().map(|path| path(&settings.label()))
    }

    /// The compressed bytes of the entry for the block with SHA-256 `digest`
    /// when the entry's bytes hash to `entry` (what a memo says it held when
    /// it was last checked against the block); nothing otherwise.
    pub fn get_trusted(&self, settings: &Settings, digest: &str, entry: &[u8; 32]) -> Option<Vec<u8>> {
        let path = (self.entry_path)(&settings.label(), digest);
        let bytes = crate::fileops::read_regular_no_follow(&path, u64::from(settings.block_size) + 2).ok()?;
        if sha2::Sha256::digest(&bytes).as_slice() != entry {
            return None;
        }
        match bytes.split_first() {
            Some((1, rest)) if !rest.is_empty() => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.marked.mark(&path);
                Some(rest.to_vec())
            }
            _ => None,
        }
    }

    /// The entry for `raw` (whose SHA-256 is `digest`), if there is a sound
    /// one, and the SHA-256 of the entry's bytes.
    pub fn get(&self, settings: &Settings, digest: &str, raw: &[u8]) -> Option<(Cached, [u8; 32])> {
        let path = (self.entry_path)(&settings.label(), digest);
        if std::fs::symlink_metadata(&path).is_err() {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // A regular file no longer than a flag and a block, or not an entry
        // (a FIFO or a device would never end, a huge file fill the memory).
        let bytes = crate::fileops::read_regular_no_follow(&path, u64::from(settings.block_size) + 2).ok();
        let entry: [u8; 32] = bytes.as_deref().map(|bytes| sha2::Sha256::digest(bytes).into()).unwrap_or_default();
        let sound = match bytes.as_deref().and_then(|bytes| bytes.split_first()) {
            Some((0, [])) => Some(Cached::Stored),
            Some((1, rest)) if !rest.is_empty() && rest.len() < raw.len() => {
                codec::decompress(settings, rest, settings.block_size as usize)
                    .ok()
                    .filter(|out| out == raw)
                    .map(|_| Cached::Compressed(rest.to_vec()))
            }
            _ => None,
        };
        match sound {
            Some(cached) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.marked.mark(&path);
                Some((cached, entry))
            }
            None => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Keep what `raw` (SHA-256 `digest`) compressed to, atomically; the
    /// SHA-256 of the entry's bytes.
    pub fn put(&self, settings: &Settings, digest: &str, compressed: Option<&[u8]>) -> Result<[u8; 32]> {
        let path = (self.entry_path)(&settings.label(), digest);
        let parent = path.parent().context("a block cache entry has no directory")?;
        fs_err::create_dir_all(parent)?;
        let mut temp = tempfile::NamedTempFile::new_in(parent)
            .with_context(|| format!("a temporary file in {}", parent.display()))?;
        let mut hasher = sha2::Sha256::new();
        match compressed {
            Some(bytes) => {
                temp.write_all(&[1])?;
                temp.write_all(bytes)?;
                hasher.update([1]);
                hasher.update(bytes);
            }
            None => {
                temp.write_all(&[0])?;
                hasher.update([0]);
            }
        }
        temp.persist(&path).with_context(|| format!("storing {}", path.display()))?;
        Ok(hasher.finalize().into())
    }
}
