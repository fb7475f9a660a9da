//! zstd frames already made once, by the SHA-256 of the bytes they hold, the
//! level and a fingerprint of the compressor: the rootfs tarball's groups of
//! entries and the thin initramfs's fixed part (its init and modules) are
//! compressed once and copied afterwards, so a small change compresses
//! only what changed. The bytes are a clean write's: a frame is the
//! compression of its bytes at its level, whoever asks for it.
//!
//! A frame that decompresses to the right bytes is not enough: the same bytes
//! compressed at another level, or by another zstd, are as valid and would
//! give another tarball than a clean build. So each entry ends with a tag,
//! an HMAC-SHA-256 under the cache's own secret key (`CACHE/v1/key`, 0600)
//! of the settings label, the bytes' digest and the frame: an entry only this
//! cache's writer made carries a tag that verifies, and any other is
//! compressed again and replaced.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The frames' writer and version, in the label of every frame (and so in
/// the output keys): bump it when the same bytes would give another frame.
/// (2: entries end with their tag.)
pub const WRITER: &str = "rootsmith-tar-frames 2";

/// The length of an entry's tag (HMAC-SHA-256).
const TAG_LEN: usize = 32;

/// Where a frame cache keeps a frame: (settings label, SHA-256 hex of the
/// bytes it holds) → its path. The cache's layout decides.
pub type FramePath = dyn Fn(&str, &str) -> PathBuf + Send + Sync;

/// zstd frames already made once. An entry looked up with the bytes it
/// should hold is used only when it is one zstd frame, nothing after it,
/// that decompresses to exactly those bytes; otherwise it is compressed
/// again and replaced. Looked up by a memo without the bytes
/// ([`FrameCache::get_trusted`]), it is used only when its own bytes hash
/// to what the memo recorded after such a check. A frame that cannot be
/// stored is counted, never fatal.
pub struct FrameCache {
    path: Box<FramePath>,
    /// The key of the entries' tags (the cache's secret).
    key: [u8; 32],
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub corrupt: AtomicU64,
    pub unwritten: AtomicU64,
    /// Entries of the last write its memo knew (the tarball's; for the log).
    pub known_entries: AtomicU64,
    marked: UsedMark,
}

impl FrameCache {
    /// The frames at `path`, their tags under `key` (the cache's
    /// `Store::entry_key`).
    pub fn new(path: Box<FramePath>, key: [u8; 32]) -> FrameCache {
        FrameCache {
            path,
            key,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            unwritten: AtomicU64::new(0),
            known_entries: AtomicU64::new(0),
            marked: UsedMark::default(),
        }
    }

    /// A line for the outputs log, after the writer's name.
    pub fn summary(&self) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!(
            "frame cache: {} frames copied, {} compressed, {} corrupt entries replaced, {} not stored",
            load(&self.hits),
            load(&self.misses),
            load(&self.corrupt),
            load(&self.unwritten)
        ) + &format!("; memo: {} entries known", load(&self.known_entries))
    }

    pub fn get(&self, label: &str, hex: &str, group: &[u8]) -> Option<Vec<u8>> {
        let path = (self.path)(label, hex);
        if std::fs::symlink_metadata(&path).is_err() {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let bytes = crate::fileops::read_regular_no_follow(&path, max_frame_len(group.len() as u64)).ok();
        match bytes.and_then(|bytes| self.untagged(label, hex, bytes)).filter(|frame| decodes_to(frame, group)) {
            Some(frame) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.marked.mark(&path);
                Some(frame)
            }
            None => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// The tag's HMAC over the label, the bytes' digest and `frame`.
    fn tag(&self, label: &str, hex: &str, frame: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        for part in [WRITER.as_bytes(), label.as_bytes(), hex.as_bytes()] {
            mac.update(part);
            mac.update(b"\0");
        }
        mac.update(frame);
        mac
    }

    /// The frame of the entry `bytes` when its tag verifies (in constant time).
    fn untagged(&self, label: &str, hex: &str, mut bytes: Vec<u8>) -> Option<Vec<u8>> {
        let frame_len = bytes.len().checked_sub(TAG_LEN)?;
        self.tag(label, hex, &bytes[..frame_len]).verify_slice(&bytes[frame_len..]).ok()?;
        bytes.truncate(frame_len);
        Some(bytes)
    }

    pub fn put(&self, label: &str, hex: &str, frame: &[u8]) {
        let path = (self.path)(label, hex);
        let stored = (|| -> Result<()> {
            let parent = path.parent().context("a frame cache entry has no directory")?;
            fs_err::create_dir_all(parent)?;
            let mut temp = tempfile::NamedTempFile::new_in(parent)?;
            temp.write_all(frame)?;
            temp.write_all(&self.tag(label, hex, frame).finalize().into_bytes())?;
            temp.persist(&path)?;
            Ok(())
        })();
        if stored.is_err() {
            self.unwritten.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether `frame` is one zstd frame, nothing after it, of exactly `group`.
fn decodes_to(frame: &[u8], group: &[u8]) -> bool {
    if zstd::zstd_safe::find_frame_compressed_size(frame) != Ok(frame.len()) {
        return false;
    }
    let Ok(decoder) = zstd::stream::read::Decoder::with_buffer(frame) else { return false };
    let mut out = Vec::with_capacity(group.len());
    decoder.single_frame().take(group.len() as u64 + 1).read_to_end(&mut out).is_ok() && out == group
}

/// The settings' label: the level and 12 hex digits of the digest of the
/// writer's name and a fixed probe compressed at that level (another zstd
/// library never shares frames with this one).
pub fn label(level: i32) -> Result<String> {
    let probe: Vec<u8> = (0..64 * 1024)
        .map(|i: usize| if i.is_multiple_of(3) { (i * 7 % 251) as u8 } else { b"rootsmith tar probe "[i % 20] })
        .collect();
    let mut hasher = Sha256::new();
    hasher.update(WRITER.as_bytes());
    hasher.update(compress(&probe, level)?);
    Ok(format!("zstd-{level}-{}", hex::encode(&hasher.finalize()[..6])))
}

/// `group` as one zstd frame with its content size and checksum.
pub fn compress(group: &[u8], level: i32) -> Result<Vec<u8>> {
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    compressor.include_checksum(true)?;
    compressor.include_contentsize(true)?;
    Ok(compressor.compress(group)?)
}

impl FrameCache {
    /// `bytes` as one zstd frame at `level` (labelled `label`, from
    /// [`label`]): copied from the cache when it holds it, else compressed
    /// and kept.
    pub fn frame(&self, label: &str, bytes: &[u8], level: i32) -> Result<Vec<u8>> {
        Ok(self.frame_and_digests(label, bytes, level)?.0)
    }

    /// [`Self::frame`], with the SHA-256 of `bytes` and of the frame (what
    /// a memo needs to find the frame again without the bytes).
    pub fn frame_and_digests(&self, label: &str, bytes: &[u8], level: i32) -> Result<(Vec<u8>, [u8; 32], [u8; 32])> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let hex = hex::encode(digest);
        let frame = match self.get(label, &hex, bytes) {
            Some(frame) => frame,
            None => {
                let frame = compress(bytes, level)?;
                self.put(label, &hex, &frame);
                frame
            }
        };
        let frame_digest = Sha256::digest(&frame).into();
        Ok((frame, digest, frame_digest))
    }

    /// The frame of the bytes with SHA-256 `digest` (of `len` bytes, as a
    /// memo recorded them) when its tag verifies: only this cache's writer
    /// made it, from those bytes, so it is not decompressed again. Read no
    /// further than such a frame can be; nothing otherwise.
    pub fn get_trusted(&self, label: &str, digest: &[u8; 32], len: u64) -> Option<Vec<u8>> {
        let hex = hex::encode(digest);
        let path = (self.path)(label, &hex);
        let bytes = crate::fileops::read_regular_no_follow(&path, max_frame_len(len)).ok()?;
        let bytes = self.untagged(label, &hex, bytes)?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.marked.mark(&path);
        Some(bytes)
    }
}

/// Marks the directory of a cache's entries used, once per write: `cache gc`
/// removes the least recently used directories first (the block cache and
/// the frame cache both keep one per compression setting).
#[derive(Default)]
pub struct UsedMark(std::sync::atomic::AtomicBool);

impl UsedMark {
    /// The directory holding `entry` was used now (the first call only).
    pub fn mark(&self, entry: &std::path::Path) {
        if !self.0.swap(true, Ordering::Relaxed) {
            if let Some(parent) = entry.parent() {
                let _ = filetime::set_file_mtime(parent, filetime::FileTime::now());
            }
        }
    }
}

/// Generously more than a zstd frame of `len` bytes can take (an
/// incompressible 128 KiB block is stored with a 3-byte header): an entry
/// is read no further, so a huge file planted there is never read whole.
/// One bound for both lookups.
fn max_frame_len(len: u64) -> u64 {
    len + len / 128 + 4096 + TAG_LEN as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &std::path::Path) -> FrameCache {
        let dir = dir.to_path_buf();
        FrameCache::new(Box::new(move |label, hex| dir.join(label).join(hex)), [7; 32])
    }

    #[test]
    fn a_frame_larger_than_its_bytes_is_copied_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = crate::artifact::noise(4 << 20, 88172645463325252);
        let label = label(1).unwrap();
        let (frame, digest, frame_digest) = cache(dir.path()).frame_and_digests(&label, &bytes, 1).unwrap();
        assert!(frame.len() > bytes.len(), "incompressible: {} bytes for {}", frame.len(), bytes.len());
        let warm = cache(dir.path());
        assert_eq!(warm.frame(&label, &bytes, 1).unwrap(), frame);
        assert_eq!((warm.hits.load(Ordering::Relaxed), warm.corrupt.load(Ordering::Relaxed)), (1, 0));
        assert_eq!(frame_digest, <[u8; 32]>::from(Sha256::digest(&frame)));
        assert_eq!(warm.get_trusted(&label, &digest, bytes.len() as u64), Some(frame));
    }

    #[test]
    fn a_frame_found_through_a_memo_marks_its_directory_used() {
        let dir = tempfile::tempdir().unwrap();
        let label = label(3).unwrap();
        let (_, digest, _) = cache(dir.path()).frame_and_digests(&label, b"some bytes", 3).unwrap();
        let settings = dir.path().join(&label);
        let old = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_mtime(&settings, old).unwrap();
        assert!(cache(dir.path()).get_trusted(&label, &digest, 10).is_some());
        assert!(
            filetime::FileTime::from_last_modification_time(&fs_err::metadata(&settings).unwrap()) > old,
            "cache gc would take the directory as unused"
        );
    }

    #[test]
    fn a_valid_frame_of_the_same_bytes_at_another_level_is_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = b"rootsmith frame ".iter().cycle().take(300_000).copied().collect();
        let label = label(9).unwrap();
        let (clean, digest, _) = cache(dir.path()).frame_and_digests(&label, &bytes, 9).unwrap();
        let entry = dir.path().join(&label).join(hex::encode(digest));
        // Re-encoded at level 1 (valid, the same content), with and without
        // the old entry's tag, and tagged under another cache's key.
        let other = compress(&bytes, 1).unwrap();
        assert_ne!(other, clean);
        let old_tag = fs_err::read(&entry).unwrap()[clean.len()..].to_vec();
        let foreign = {
            let mut entry = other.clone();
            let stranger = FrameCache::new(Box::new(|_, _| std::path::PathBuf::new()), [8; 32]);
            entry.extend_from_slice(&stranger.tag(&label, &hex::encode(digest), &other).finalize().into_bytes());
            entry
        };
        for planted in [other.clone(), [&other[..], &old_tag[..]].concat(), foreign] {
            fs_err::write(&entry, &planted).unwrap();
            let warm = cache(dir.path());
            assert_eq!(warm.get_trusted(&label, &digest, bytes.len() as u64), None, "through a memo");
            assert_eq!(warm.frame(&label, &bytes, 9).unwrap(), clean, "the clean frame is made again");
            assert_eq!(warm.corrupt.load(Ordering::Relaxed), 1);
        }
        assert_eq!(cache(dir.path()).get_trusted(&label, &digest, bytes.len() as u64), Some(clean));
    }
}
