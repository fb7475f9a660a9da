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
use std::io::Write;
use std::path::Path;
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::frames::{self, FrameCache};
use crate::digest::HashingWriter;
use crate::layer::{Devices, TreeTarWriter};
use crate::recipe::{Algorithm, Compression};

/// The framed writer's name and version, in the rootfs output key.
pub use super::frames::WRITER;

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
                                Some(cache) => cache.frame(label, group, level)?,
                                None => frames::compress(group, level)?,
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
pub fn write_rootfs_tarball(tree: &Path, devices: &Devices, output: &Path, compression: Compression, epoch: i64, frames: Option<&FrameCache>) -> Result<String> {
    let file = HashingWriter::new(std::io::BufWriter::new(fs_err::File::create(output)?));
    if compression.algorithm != Algorithm::Zstd {
        let digest = Rc::new(RefCell::new(None));
        {
            let mut writer = TreeTarWriter::new(compressor(Finishing { inner: Some(file), digest: digest.clone() }, compression)?, epoch, devices);
            for entry in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
                let entry = entry?;
                writer.append(tree, entry.path().strip_prefix(tree).expect("under tree"))?;
            }
            writer.finish()?.flush()?;
        }
        let digest = digest.borrow_mut().take();
        return digest.context("the tarball was not finished")?;
    }
    let level = compression.level.unwrap_or(3);
    let mut framer = Framer { out: file, level, label: frames::label(level)?, cache: frames, batch: Vec::new(), batch_len: 0 };
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
    let (_, digest) = framer.out.finish()?;
    Ok(digest)
}

/// The end of a compressed tarball's writers: when the compressor drops it
/// (after writing its last bytes), it flushes the file and leaves the
/// digest of everything written, or the error flushing met.
struct Finishing<W: Write> {
    inner: Option<HashingWriter<W>>,
    digest: Rc<RefCell<Option<Result<String>>>>,
}

impl<W: Write> Write for Finishing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.inner.as_mut().expect("written before dropped").write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.as_mut().expect("written before dropped").flush()
    }
}

impl<W: Write> Drop for Finishing<W> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            *self.digest.borrow_mut() = Some(inner.finish().map(|(_, digest)| digest).map_err(Into::into));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::PathBuf;
    use std::sync::atomic::Ordering;

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
        let digest = write_rootfs_tarball(root, &Devices::default(), out, Compression { algorithm: Algorithm::Zstd, level: Some(3) }, 1_700_000_000, cache).unwrap();
        let bytes = fs_err::read(out).unwrap();
        assert_eq!(digest, crate::digest::sha256_hex(&bytes), "the digest of what was written");
        bytes
    }

    #[test]
    fn the_digest_of_a_gzip_xz_or_plain_tarball_is_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        for algorithm in [Algorithm::Gzip, Algorithm::Xz, Algorithm::None] {
            let out = dir.path().join(format!("out.{}", algorithm.name()));
            let digest = write_rootfs_tarball(&root, &Devices::default(), &out, Compression { algorithm, level: None }, 1_700_000_000, None).unwrap();
            assert_eq!(digest, crate::digest::hash_file(&out).unwrap(), "{}", algorithm.name());
        }
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
