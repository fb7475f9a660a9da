//! `NAME-VERSION-rootfs.tar.zst`: the whole tree as a deterministic tar (a
//! device placeholder as the device it stands for).
//!
//! With zstd the tar is cut into groups of whole entries and each group is
//! compressed as a zstd frame of its own; a `.tar.zst` may be a sequence of
//! frames, which every zstd decoder reads as one stream. The cuts fall after
//! entries whose path's SHA-256 starts with a byte divisible by 8, once a
//! group holds 1 MiB (and always at 16 MiB), so they depend on the entries,
//! not on what came before: one changed file changes its own group's frame
//! and rarely the next. A [`FrameCache`] keeps each frame by the SHA-256 of
//! its tar bytes, the level and a fingerprint of the compressor, so a
//! rebuild after a small change compresses only the groups that changed,
//! and writes the bytes a clean write gives. The tar inside is the same
//! bytes whichever way it is compressed.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::layer::{Devices, TreeTarWriter};
use crate::recipe::{Algorithm, Compression};

/// The framed writer's name and version, in the rootfs output key: bump it
/// when the same tree would give other bytes.
pub const WRITER: &str = "rootsmith-tar-frames 1";

/// A group is cut after an entry at this size or more, when the entry's path allows.
const MIN_GROUP: usize = 1 << 20;
/// A group is cut after the entry that brings it to this size, whatever its path.
const MAX_GROUP: usize = 16 << 20;
/// Groups are compressed in batches of about this many bytes (what a write holds in memory).
const BATCH: usize = 64 << 20;

/// A compressing writer with fixed settings. zstd runs multi-threaded; its
/// output does not depend on the number of workers.
pub fn compressor<'a, W: Write + 'a>(writer: W, compression: Compression) -> Result<Box<dyn Write + 'a>> {
    let level = compression.level.unwrap_or(3);
    Ok(match compression.algorithm {
        Algorithm::Zstd => {
            let mut encoder = zstd::Encoder::new(writer, level)?;
            encoder.multithread(std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1))?;
            encoder.include_checksum(true)?;
            Box::new(encoder.auto_finish())
        }
        Algorithm::Gzip => Box::new(flate2::GzBuilder::new().mtime(0).write(writer, flate2::Compression::new(level as u32))),
        Algorithm::Xz => Box::new(xz2::write::XzEncoder::new(writer, level as u32)),
        _ => Box::new(writer),
    })
}

/// File name suffix for a tarball compressed with `compression`.
pub fn extension(compression: Compression) -> &'static str {
    match compression.algorithm {
        Algorithm::Zstd => "tar.zst",
        Algorithm::Gzip => "tar.gz",
        Algorithm::Xz => "tar.xz",
        _ => "tar",
    }
}

/// Where a frame cache keeps a frame: (settings label, SHA-256 hex of the
/// group's tar bytes) → its path. The cache's layout decides.
pub type FramePath = dyn Fn(&str, &str) -> PathBuf + Send + Sync;

/// zstd frames of tar groups already compressed once. An entry is never
/// trusted: it is used only when it is one zstd frame, nothing after it,
/// that decompresses to exactly the group it is looked up for; otherwise
/// it is compressed again and replaced. A frame that cannot be stored is
/// counted, never fatal.
pub struct FrameCache {
    path: Box<FramePath>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub corrupt: AtomicU64,
    pub unwritten: AtomicU64,
}

impl FrameCache {
    pub fn new(path: Box<FramePath>) -> FrameCache {
        FrameCache { path, hits: AtomicU64::new(0), misses: AtomicU64::new(0), corrupt: AtomicU64::new(0), unwritten: AtomicU64::new(0) }
    }

    /// A line for the outputs log.
    pub fn summary(&self) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!("{WRITER}: frame cache: {} frames copied, {} compressed, {} corrupt entries replaced, {} not stored", load(&self.hits), load(&self.misses), load(&self.corrupt), load(&self.unwritten))
    }

    fn get(&self, label: &str, hex: &str, group: &[u8]) -> Option<Vec<u8>> {
        let path = (self.path)(label, hex);
        if std::fs::symlink_metadata(&path).is_err() {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // No frame is much larger than its group: read no further.
        let bytes = crate::fileops::read_regular_no_follow(&path, group.len() as u64 + 4096).ok();
        match bytes.filter(|frame| decodes_to(frame, group)) {
            Some(frame) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                if let Some(parent) = path.parent() {
                    let _ = filetime::set_file_mtime(parent, filetime::FileTime::now());
                }
                Some(frame)
            }
            None => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    fn put(&self, label: &str, hex: &str, frame: &[u8]) {
        let path = (self.path)(label, hex);
        let stored = (|| -> Result<()> {
            let parent = path.parent().context("a frame cache entry has no directory")?;
            fs_err::create_dir_all(parent)?;
            let mut temp = tempfile::NamedTempFile::new_in(parent)?;
            temp.write_all(frame)?;
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
fn label(level: i32) -> Result<String> {
    let probe: Vec<u8> = (0..64 * 1024).map(|i: usize| if i % 3 == 0 { (i * 7 % 251) as u8 } else { b"rootsmith tar probe "[i % 20] }).collect();
    let mut hasher = Sha256::new();
    hasher.update(WRITER.as_bytes());
    hasher.update(compress(&probe, level)?);
    Ok(format!("zstd-{level}-{}", hex::encode(&hasher.finalize()[..6])))
}

/// `group` as one zstd frame with its content size and checksum.
fn compress(group: &[u8], level: i32) -> Result<Vec<u8>> {
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    compressor.include_checksum(true)?;
    compressor.include_contentsize(true)?;
    Ok(compressor.compress(group)?)
}

/// A `Write` into a buffer the caller can take groups out of between entries.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether a group may end after the entry at `path` (see the module's note).
fn cut_after(path: &Path, group_len: usize) -> bool {
    use std::os::unix::ffi::OsStrExt;
    group_len >= MAX_GROUP || (group_len >= MIN_GROUP && Sha256::digest(path.as_os_str().as_bytes())[0] % 8 == 0)
}

/// Compresses groups in batches on every core and writes their frames in order.
struct Framer<'c, W: Write> {
    out: W,
    level: i32,
    label: String,
    cache: Option<&'c FrameCache>,
    batch: Vec<Vec<u8>>,
    batch_len: usize,
}

impl<W: Write> Framer<'_, W> {
    fn push(&mut self, group: Vec<u8>) -> Result<()> {
        self.batch_len += group.len();
        self.batch.push(group);
        if self.batch_len >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let groups = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(groups.len().max(1));
        let (level, label, cache) = (self.level, self.label.as_str(), self.cache);
        // Thread t takes groups t, t + threads, …; the frames go back in order.
        let frames: Vec<Result<Vec<(usize, Vec<u8>)>>> = std::thread::scope(|scope| {
            let groups = &groups;
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || -> Result<Vec<(usize, Vec<u8>)>> {
                        let mut done = Vec::new();
                        for index in (t..groups.len()).step_by(threads) {
                            let group = &groups[index];
                            let frame = match cache {
                                Some(cache) => {
                                    let hex = hex::encode(Sha256::digest(group));
                                    match cache.get(label, &hex, group) {
                                        Some(frame) => frame,
                                        None => {
                                            let frame = compress(group, level)?;
                                            cache.put(label, &hex, &frame);
                                            frame
                                        }
                                    }
                                }
                                None => compress(group, level)?,
                            };
                            done.push((index, frame));
                        }
                        Ok(done)
                    })
                })
                .collect();
            workers.into_iter().map(|worker| worker.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a compressing thread panicked")))).collect()
        });
        let mut ordered: Vec<Option<Vec<u8>>> = vec![None; groups.len()];
        for done in frames {
            for (index, frame) in done? {
                ordered[index] = Some(frame);
            }
        }
        for frame in ordered {
            let Some(frame) = frame else { bail!("a group was not compressed") };
            self.out.write_all(&frame)?;
        }
        Ok(())
    }
}

/// Write the tree as `output`; with zstd, as frames of tar groups (from
/// `frames` when it holds them).
pub fn write_rootfs_tarball(tree: &Path, devices: &Devices, output: &Path, compression: Compression, epoch: i64, frames: Option<&FrameCache>) -> Result<()> {
    let file = std::io::BufWriter::new(fs_err::File::create(output)?);
    if compression.algorithm != Algorithm::Zstd {
        let mut writer = TreeTarWriter::new(compressor(file, compression)?, epoch, devices);
        for entry in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
            let entry = entry?;
            writer.append(tree, entry.path().strip_prefix(tree).expect("under tree"))?;
        }
        writer.finish()?.flush()?;
        return Ok(());
    }
    let level = compression.level.unwrap_or(3);
    let mut framer = Framer { out: file, level, label: label(level)?, cache: frames, batch: Vec::new(), batch_len: 0 };
    let buffer = Shared::default();
    let mut writer = TreeTarWriter::new(buffer.clone(), epoch, devices);
    for entry in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
        let entry = entry?;
        let relative = entry.path().strip_prefix(tree).expect("under tree");
        writer.append(tree, relative)?;
        let group_len = buffer.0.borrow().len();
        if cut_after(relative, group_len) {
            let group = std::mem::take(&mut *buffer.0.borrow_mut());
            framer.push(group)?;
        }
    }
    // The end-of-archive blocks close the last group.
    writer.finish()?;
    let last = std::mem::take(&mut *buffer.0.borrow_mut());
    framer.push(last)?;
    framer.flush()?;
    framer.out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of many small files and a few large ones (groups of several sizes).
    fn tree(dir: &Path) -> PathBuf {
        let root = dir.join("tree");
        for d in 0..40 {
            let sub = root.join(format!("usr/share/d{d:02}"));
            fs_err::create_dir_all(&sub).unwrap();
            for f in 0..30 {
                let body: Vec<u8> = (0..(d * 997 + f * 131) % 60_000).map(|i| ((i * (d + 1) + f) % 251) as u8).collect();
                fs_err::write(sub.join(format!("f{f:02}")), body).unwrap();
            }
        }
        fs_err::write(root.join("usr/big"), vec![7u8; 20 << 20]).unwrap();
        root
    }

    fn write(root: &Path, out: &Path, cache: Option<&FrameCache>) -> Vec<u8> {
        write_rootfs_tarball(root, &Devices::default(), out, Compression { algorithm: Algorithm::Zstd, level: Some(3) }, 1_700_000_000, cache).unwrap();
        fs_err::read(out).unwrap()
    }

    fn unzstd(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(bytes).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    fn cache(dir: &Path) -> FrameCache {
        let dir = dir.to_path_buf();
        FrameCache::new(Box::new(move |label, hex| dir.join(label).join(hex)))
    }

    #[test]
    fn frames_hold_the_tar_a_single_stream_holds() {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        let framed = write(&root, &dir.path().join("a.tar.zst"), None);
        assert_eq!(framed, write(&root, &dir.path().join("b.tar.zst"), None), "two writes differ");
        // The same tar as a plain TreeTarWriter stream.
        let devices = Devices::default();
        let mut plain = TreeTarWriter::new(Vec::new(), 1_700_000_000, &devices);
        for entry in walkdir::WalkDir::new(&root).min_depth(1).sort_by_file_name() {
            let entry = entry.unwrap();
            plain.append(&root, entry.path().strip_prefix(&root).unwrap()).unwrap();
        }
        let plain = plain.finish().unwrap();
        assert!(unzstd(&framed) == plain, "the framed tarball holds another tar");
        // Several frames: the zstd tool reads them as one stream.
        let mut frames = 0;
        let mut rest = &framed[..];
        while !rest.is_empty() {
            let size = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
            rest = &rest[size..];
            frames += 1;
        }
        assert!(frames > 3, "{frames} frames");
        let listed = std::process::Command::new("tar").arg("--zstd").arg("-tf").arg(dir.path().join("a.tar.zst")).output().unwrap();
        assert!(listed.status.success() && String::from_utf8_lossy(&listed.stdout).lines().count() > 1200);
    }

    #[test]
    fn a_changed_file_compresses_its_own_group_and_gives_a_clean_writes_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        let frames = cache(&dir.path().join("cache"));
        let clean = write(&root, &dir.path().join("clean.tar.zst"), None);
        assert!(write(&root, &dir.path().join("cold.tar.zst"), Some(&frames)) == clean, "a write filling the cache differs");
        let stored = frames.misses.load(Ordering::Relaxed);
        let warm = cache(&dir.path().join("cache"));
        assert!(write(&root, &dir.path().join("warm.tar.zst"), Some(&warm)) == clean, "a write from the cache differs");
        assert_eq!((warm.hits.load(Ordering::Relaxed), warm.misses.load(Ordering::Relaxed)), (stored, 0));

        // One file grows: its group and at most the next are compressed again.
        fs_err::write(root.join("usr/share/d17/f05"), vec![1u8; 70_000]).unwrap();
        let changed_clean = write(&root, &dir.path().join("changed-clean.tar.zst"), None);
        let again = cache(&dir.path().join("cache"));
        assert!(write(&root, &dir.path().join("changed.tar.zst"), Some(&again)) == changed_clean, "an incremental write differs from a clean one");
        let misses = again.misses.load(Ordering::Relaxed);
        assert!((1..=2).contains(&misses), "{misses} of {stored} groups compressed again");
    }

    #[test]
    fn corrupt_planted_or_special_entries_are_replaced_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        let clean = write(&root, &dir.path().join("clean.tar.zst"), None);
        let frames = cache(&dir.path().join("cache"));
        write(&root, &dir.path().join("cold.tar.zst"), Some(&frames));
        let mut entries: Vec<PathBuf> = walkdir::WalkDir::new(dir.path().join("cache")).into_iter().map(|e| e.unwrap().into_path()).filter(|p| p.is_file()).collect();
        entries.sort();
        // Truncated; with bytes after the frame; another group's frame; a FIFO.
        let bytes = fs_err::read(&entries[0]).unwrap();
        fs_err::write(&entries[0], &bytes[..bytes.len() - 1]).unwrap();
        let bytes = fs_err::read(&entries[1]).unwrap();
        fs_err::write(&entries[1], [&bytes[..], b"planted"].concat()).unwrap();
        fs_err::copy(&entries[3], &entries[2]).unwrap();
        fs_err::remove_file(&entries[4]).unwrap();
        nix::unistd::mkfifo(&entries[4], nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let fresh = cache(&dir.path().join("cache"));
        assert!(write(&root, &dir.path().join("repaired.tar.zst"), Some(&fresh)) == clean, "a write from a corrupt cache differs");
        assert_eq!(fresh.corrupt.load(Ordering::Relaxed), 4);
        assert!(entries[4].is_file(), "the FIFO is replaced by a frame");
    }
}
