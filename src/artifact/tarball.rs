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
//!
//! A regular file larger than a batch (64 MiB) is not held whole: the group
//! before it ends, and its own tar bytes are cut into groups of exactly 16
//! MiB (the last one shorter) as they are read, so a write holds about one
//! batch of groups whatever the size of its largest file.

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::frames::{self, FrameCache};
use super::memo::Stamp;
use super::tarball_memo::{group_identity, Key, KnownGroup, TarballMemo};
use crate::digest::HashingWriter;
use crate::layer::{Devices, TreeTarWriter};
use crate::recipe::{Algorithm, Compression};

/// The framed writer's name and version, in the rootfs output key: where
/// groups are cut (2: a file larger than a batch is cut into groups of its
/// own). How a group becomes a frame is `frames::WRITER`'s.
pub const WRITER: &str = "rootsmith-tar-frames 2";

/// Where a recipe's tarball memo for a frame label is (the cache's layout decides).
pub type MemoPath = dyn Fn(&str) -> PathBuf + Sync;

/// A group is cut after an entry at this size or more, when the entry's path allows.
const MIN_GROUP: usize = 1 << 20;
/// A group is cut after the entry that brings it to this size, whatever its path.
const MAX_GROUP: usize = 16 << 20;
/// Groups are compressed in batches of about this many bytes (what a write holds in memory).
const BATCH: usize = 64 << 20;
/// A regular file larger than this is cut into groups of its own as it is
/// read (a smaller one is held whole while its group is made).
const LARGE_FILE: u64 = BATCH as u64;

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
        Algorithm::Gzip => {
            Box::new(flate2::GzBuilder::new().mtime(0).write(writer, flate2::Compression::new(level as u32)))
        }
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

/// A `Write` into a buffer the caller can take groups out of between
/// entries; while `spill` is set, every full group of [`MAX_GROUP`] bytes
/// goes to it as it is written (a large file's bytes, cut as they come).
#[derive(Clone, Default)]
struct Shared<'s> {
    bytes: Rc<RefCell<Vec<u8>>>,
    spill: Rc<RefCell<Option<Spill<'s>>>>,
}

/// Where full groups of a large file go as they are written.
type Spill<'s> = Box<dyn FnMut(Vec<u8>) -> Result<()> + 's>;

impl Shared<'_> {
    fn len(&self) -> usize {
        self.bytes.borrow().len()
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.bytes.borrow_mut())
    }
}

impl Write for Shared<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.bytes.borrow_mut();
        buffer.extend_from_slice(bytes);
        if let Some(spill) = self.spill.borrow_mut().as_mut() {
            while buffer.len() >= MAX_GROUP {
                let rest = buffer.split_off(MAX_GROUP);
                spill(std::mem::replace(&mut *buffer, rest)).map_err(std::io::Error::other)?;
            }
        }
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

/// What goes into the tarball next: a group to compress (with its
/// identity when a memo may learn it), or a frame the memo found.
enum Item {
    Group(Vec<u8>, Option<[u8; 32]>),
    Frame(Vec<u8>),
}

/// Compresses groups in batches on every core and writes their frames in order.
struct Framer<'c, W: Write> {
    out: W,
    level: i32,
    label: String,
    cache: Option<&'c FrameCache>,
    batch: Vec<Item>,
    batch_len: usize,
    /// Groups compressed or found, by identity, for the memo.
    learnt: Vec<([u8; 32], KnownGroup)>,
}

impl<W: Write> Framer<'_, W> {
    fn push(&mut self, group: Vec<u8>, identity: Option<[u8; 32]>) -> Result<()> {
        self.batch_len += group.len();
        self.batch.push(Item::Group(group, identity));
        if self.batch_len >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn push_frame(&mut self, frame: Vec<u8>) -> Result<()> {
        self.batch_len += frame.len();
        self.batch.push(Item::Frame(frame));
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
        type Done = Vec<(usize, Vec<u8>, Option<([u8; 32], KnownGroup)>)>;
        // Thread t takes groups t, t + threads, …; the frames go back in order.
        let frames: Vec<Result<Done>> = std::thread::scope(|scope| {
            let groups = &groups;
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || -> Result<Done> {
                        let mut done = Vec::new();
                        for index in (t..groups.len()).step_by(threads) {
                            match &groups[index] {
                                Item::Frame(frame) => done.push((index, frame.clone(), None)),
                                Item::Group(group, identity) => match cache {
                                    Some(cache) => {
                                        let (frame, group, frame_digest) =
                                            cache.frame_and_digests(label, group, level)?;
                                        done.push((
                                            index,
                                            frame,
                                            identity
                                                .map(|identity| (identity, KnownGroup { group, frame: frame_digest })),
                                        ));
                                    }
                                    None => done.push((index, frames::compress(group, level)?, None)),
                                },
                            }
                        }
                        Ok(done)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a compressing thread panicked"))))
                .collect()
        });
        let mut ordered: Vec<Option<Vec<u8>>> = vec![None; groups.len()];
        for done in frames {
            for (index, frame, learnt) in done? {
                ordered[index] = Some(frame);
                self.learnt.extend(learnt);
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
pub fn write_rootfs_tarball(
    tree: &Path,
    devices: &Devices,
    output: &Path,
    compression: Compression,
    epoch: i64,
    frames: Option<&FrameCache>,
    memo: Option<&MemoPath>,
) -> Result<String> {
    let file = HashingWriter::new(std::io::BufWriter::new(fs_err::File::create(output)?));
    if compression.algorithm != Algorithm::Zstd {
        let digest = Rc::new(RefCell::new(None));
        {
            let mut writer = TreeTarWriter::new(
                compressor(Finishing { inner: Some(file), digest: digest.clone() }, compression)?,
                epoch,
                devices,
            );
            crate::fileops::walk_tree::<anyhow::Error>(tree, false, &mut |relative, _| {
                writer.append(tree, relative).map_err(Into::into)
            })?;
            writer.finish()?.flush()?;
        }
        let digest = digest.borrow_mut().take();
        return digest.context("the tarball was not finished")?;
    }
    let level = compression.level.unwrap_or(3);
    let label = frames::label(level)?;
    // Entries changed after this are never remembered as they are now.
    let began = std::time::SystemTime::now();
    let memo_path = memo.filter(|_| devices.is_empty() && frames.is_some()).map(|path| path(&label));
    let memo = memo_path.as_deref().map(|path| TarballMemo::load(path, epoch));
    let framer = Rc::new(RefCell::new(Framer {
        out: file,
        level,
        label: label.clone(),
        cache: frames,
        batch: Vec::new(),
        batch_len: 0,
        learnt: Vec::new(),
    }));
    let buffer = Shared::default();
    let known_len = memo.as_ref().map(|_| 0u64);
    let mut groups = Groups {
        tree,
        writer: TreeTarWriter::new(buffer.clone(), epoch, devices),
        buffer,
        framer: framer.clone(),
        memo,
        frames,
        label,
        began,
        group: Vec::new(),
        known_len,
    };
    crate::fileops::walk_tree::<anyhow::Error>(tree, false, &mut |relative, metadata| {
        groups.entry(relative, metadata)
    })?;
    groups.materialize()?;
    // The end-of-archive blocks close the last group.
    let Groups { writer, buffer, mut memo, framer: shared, .. } = groups;
    drop(shared);
    writer.finish()?;
    let mut framer =
        Rc::try_unwrap(framer).map_err(|_| anyhow::anyhow!("the tarball's framer is still shared"))?.into_inner();
    framer.push(buffer.take(), None)?;
    framer.flush()?;
    if let (Some(memo), Some(path)) = (memo.as_mut(), &memo_path) {
        for (identity, known) in std::mem::take(&mut framer.learnt) {
            memo.learn_group(identity, known);
        }
        // Only saves work: a memo that cannot be written is no error.
        let _ = memo.save(path, began);
        if let Some(frames) = frames {
            frames.known_entries.store(memo.known_entries() as u64, Ordering::Relaxed);
        }
    }
    let (_, digest) = framer.out.finish()?;
    Ok(digest)
}

/// The tree's entries on their way into groups (see the module's note).
struct Groups<'a, W: Write> {
    tree: &'a Path,
    writer: TreeTarWriter<'a, Shared<'a>>,
    buffer: Shared<'a>,
    framer: Rc<RefCell<Framer<'a, W>>>,
    memo: Option<TarballMemo>,
    frames: Option<&'a FrameCache>,
    label: String,
    /// When the write began: entries changed since are not remembered.
    began: std::time::SystemTime,
    /// The group so far: its entries, and while the memo knew every one of
    /// them, their length (their bytes are not in the buffer yet).
    group: Vec<(PathBuf, Option<Key>)>,
    known_len: Option<u64>,
}

impl<'a, W: Write + 'a> Groups<'a, W> {
    fn entry(&mut self, relative: &Path, metadata: &std::fs::Metadata) -> Result<()> {
        if metadata.is_file() && metadata.len() > LARGE_FILE {
            return self.large_file(relative);
        }
        // A hard link's bytes name whichever path was written first.
        let key = self.memo.as_ref().and_then(|_| {
            (metadata.is_dir() || metadata.nlink() == 1)
                .then(|| (relative.as_os_str().as_bytes().to_vec(), Stamp::of(metadata)))
        });
        let length = self.known_len.and(key.as_ref()).and_then(|key| self.memo.as_ref()?.entry(key));
        match (self.known_len, length) {
            (Some(so_far), Some(length)) => self.known_len = Some(so_far + length),
            _ => {
                self.materialize()?;
                let before = self.buffer.len();
                self.writer.append(self.tree, relative)?;
                if let (Some(memo), Some(key)) = (self.memo.as_mut(), &key) {
                    memo.learn_entry(key.clone(), (self.buffer.len() - before) as u64);
                }
            }
        }
        if let (Some(memo), Some(key), Some(length)) = (self.memo.as_mut(), &key, length) {
            memo.learn_entry(key.clone(), length);
        }
        self.group.push((relative.to_path_buf(), key));
        let group_len = self.known_len.unwrap_or(self.buffer.len() as u64);
        if cut_after(relative, group_len as usize) {
            self.cut()?;
        }
        Ok(())
    }

    /// The entries the memo knew, whose bytes the group now needs after all.
    fn materialize(&mut self) -> Result<()> {
        if self.known_len.take().is_some() {
            for (path, _) in &self.group {
                self.writer.append(self.tree, path)?;
            }
        }
        Ok(())
    }

    /// End the group here: its frame from the memo and the frame cache, or
    /// its bytes to compress (or look up by their digest).
    fn cut(&mut self) -> Result<()> {
        // Its identity, when the memo may learn it: every entry known by a settled stamp.
        let identity = self
            .group
            .iter()
            .all(|(_, key)| key.as_ref().is_some_and(|key| key.1.settled_before(self.began)))
            .then(|| group_identity(self.group.iter().filter_map(|(_, key)| key.as_ref())));
        let found = match (self.known_len, identity, &self.memo, self.frames) {
            (Some(length), Some(identity), Some(memo), Some(frames)) => memo.group(&identity).and_then(|known| {
                frames.get_trusted(&self.label, &known.group, length).map(|frame| (identity, known, frame))
            }),
            _ => None,
        };
        match found {
            Some((identity, known, frame)) => {
                let mut framer = self.framer.borrow_mut();
                framer.learnt.push((identity, known));
                framer.push_frame(frame)?;
            }
            None => {
                self.materialize()?;
                self.framer.borrow_mut().push(self.buffer.take(), identity)?;
            }
        }
        self.group.clear();
        self.known_len = self.memo.as_ref().map(|_| 0);
        Ok(())
    }

    /// A regular file larger than [`LARGE_FILE`]: the group before it ends, and its
    /// tar bytes are cut into groups of [`MAX_GROUP`] as they are read (never
    /// held whole, never remembered by the memo).
    fn large_file(&mut self, relative: &Path) -> Result<()> {
        if !self.group.is_empty() {
            self.cut()?;
        }
        let framer = self.framer.clone();
        *self.buffer.spill.borrow_mut() = Some(Box::new(move |group| framer.borrow_mut().push(group, None)));
        let appended = self.writer.append(self.tree, relative);
        *self.buffer.spill.borrow_mut() = None;
        appended?;
        // What is left after the last full group (nothing when the entry's
        // tar bytes end exactly there).
        let rest = self.buffer.take();
        if !rest.is_empty() {
            self.framer.borrow_mut().push(rest, None)?;
        }
        self.known_len = self.memo.as_ref().map(|_| 0);
        Ok(())
    }
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

    /// A tree of many small files and a few large ones (groups of several sizes).
    fn tree(dir: &Path) -> PathBuf {
        let root = dir.join("tree");
        for d in 0..40 {
            let sub = root.join(format!("usr/share/d{d:02}"));
            fs_err::create_dir_all(&sub).unwrap();
            for f in 0..30 {
                let body: Vec<u8> =
                    (0..(d * 997 + f * 131) % 60_000).map(|i| ((i * (d + 1) + f) % 251) as u8).collect();
                fs_err::write(sub.join(format!("f{f:02}")), body).unwrap();
            }
        }
        fs_err::write(root.join("usr/big"), vec![7u8; 20 << 20]).unwrap();
        root
    }

    fn write(root: &Path, out: &Path, cache: Option<&FrameCache>) -> Vec<u8> {
        let digest = write_rootfs_tarball(
            root,
            &Devices::default(),
            out,
            Compression { algorithm: Algorithm::Zstd, level: Some(3) },
            1_700_000_000,
            cache,
            None,
        )
        .unwrap();
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
            let digest = write_rootfs_tarball(
                &root,
                &Devices::default(),
                &out,
                Compression { algorithm, level: None },
                1_700_000_000,
                None,
                None,
            )
            .unwrap();
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
        FrameCache::new(Box::new(move |label, hex| dir.join(label).join(hex)), [1; 32])
    }

    #[test]
    fn a_memo_skips_unchanged_groups_and_never_changes_the_tarball() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        // Hard links are never known by the memo, and must stay links.
        fs_err::hard_link(root.join("usr/share/d03/f04"), root.join("usr/share/d39/link")).unwrap();
        let frames_dir = dir.path().join("frames");
        let memo_dir = dir.path().join("memo");
        let memo = move |label: &str| memo_dir.join(label);
        let out = dir.path().join("out.tar.zst");
        let write_memo = |cache: &FrameCache| {
            write_rootfs_tarball(
                &root,
                &Devices::default(),
                &out,
                Compression { algorithm: Algorithm::Zstd, level: Some(3) },
                1_700_000_000,
                Some(cache),
                Some(&memo),
            )
            .unwrap();
            fs_err::read(&out).unwrap()
        };
        let clean = write(&root, &dir.path().join("clean"), None);
        let first = cache(&frames_dir);
        assert!(write_memo(&first) == clean, "a write learning a memo differs");
        assert_eq!(first.known_entries.load(Ordering::Relaxed), 0);
        let second = cache(&frames_dir);
        assert!(write_memo(&second) == clean, "a write from the memo differs");
        let entries = walkdir::WalkDir::new(&root).min_depth(1).into_iter().count() as u64;
        // Every entry but the two names of the hard link.
        assert_eq!(second.known_entries.load(Ordering::Relaxed), entries - 2);
        assert_eq!(second.misses.load(Ordering::Relaxed), 0);

        // Rewritten in place with the same size and mtime: only the ctime tells.
        let path = root.join("usr/share/d20/f10");
        let before = fs_err::metadata(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut body = fs_err::read(&path).unwrap();
        body[0] ^= 0xff;
        {
            use std::io::Write;
            fs_err::OpenOptions::new().write(true).open(&path).unwrap().write_all(&body).unwrap();
        }
        filetime::set_file_mtime(&path, filetime::FileTime::from_last_modification_time(&before)).unwrap();
        assert_eq!(fs_err::metadata(&path).unwrap().ino(), before.ino());
        let clean = write(&root, &dir.path().join("changed-clean"), None);
        let third = cache(&frames_dir);
        assert!(write_memo(&third) == clean, "an incremental write from the memo differs from a clean one");
        assert_eq!(third.known_entries.load(Ordering::Relaxed), entries - 3);
        assert!((1..=3).contains(&third.misses.load(Ordering::Relaxed)), "the changed group is compressed again");

        // Frames the memo names whose bytes are no longer those: built and checked instead.
        for label in fs_err::read_dir(&frames_dir).unwrap() {
            for entry in fs_err::read_dir(label.unwrap().path()).unwrap().take(3) {
                let path = entry.unwrap().path();
                let bytes = fs_err::read(&path).unwrap();
                fs_err::write(&path, &bytes[..bytes.len() - 1]).unwrap();
            }
        }
        assert!(write_memo(&cache(&frames_dir)) == clean, "a write from a memo over damaged frames differs");
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
        let listed = std::process::Command::new("tar")
            .arg("--zstd")
            .arg("-tf")
            .arg(dir.path().join("a.tar.zst"))
            .output()
            .unwrap();
        assert!(listed.status.success() && String::from_utf8_lossy(&listed.stdout).lines().count() > 1200);
    }

    /// A file larger than a batch is cut into groups of 16 MiB as it is read:
    /// no frame holds more than that (a write never holds the file whole),
    /// the tar inside is the plain stream's, and writes from the frame cache
    /// and the memo give the same bytes.
    #[test]
    fn a_file_larger_than_a_batch_is_cut_into_groups_as_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs_err::create_dir_all(root.join("var")).unwrap();
        fs_err::write(root.join("var/a-small"), b"before\n").unwrap();
        let large: Vec<u8> =
            (0..LARGE_FILE as usize + (5 << 20) + 123).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        fs_err::write(root.join("var/large"), &large).unwrap();
        fs_err::write(root.join("var/z-small"), b"after\n").unwrap();
        let framed = write(&root, &dir.path().join("a.tar.zst"), None);
        let devices = Devices::default();
        let mut plain = TreeTarWriter::new(Vec::new(), 1_700_000_000, &devices);
        for entry in walkdir::WalkDir::new(&root).min_depth(1).sort_by_file_name() {
            let entry = entry.unwrap();
            plain.append(&root, entry.path().strip_prefix(&root).unwrap()).unwrap();
        }
        assert!(unzstd(&framed) == plain.finish().unwrap(), "the framed tarball holds another tar");
        let mut sizes = Vec::new();
        let mut rest = &framed[..];
        while !rest.is_empty() {
            let size = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
            sizes.push(unzstd(&rest[..size]).len());
            rest = &rest[size..];
        }
        assert!(sizes.iter().all(|&size| size <= MAX_GROUP), "a frame holds more than a group: {sizes:?}");
        assert!(sizes.iter().filter(|&&size| size == MAX_GROUP).count() >= 4, "{sizes:?}");
        let (frames_dir, memo_dir) = (dir.path().join("frames"), dir.path().join("memo"));
        let memo = move |label: &str| memo_dir.join(label);
        for pass in ["learning", "from the memo"] {
            let out = dir.path().join("memo.tar.zst");
            write_rootfs_tarball(
                &root,
                &Devices::default(),
                &out,
                Compression { algorithm: Algorithm::Zstd, level: Some(3) },
                1_700_000_000,
                Some(&cache(&frames_dir)),
                Some(&memo),
            )
            .unwrap();
            assert!(fs_err::read(&out).unwrap() == framed, "a write {pass} differs");
        }
    }

    #[test]
    fn a_changed_file_compresses_its_own_group_and_gives_a_clean_writes_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        let frames = cache(&dir.path().join("cache"));
        let clean = write(&root, &dir.path().join("clean.tar.zst"), None);
        assert!(
            write(&root, &dir.path().join("cold.tar.zst"), Some(&frames)) == clean,
            "a write filling the cache differs"
        );
        let stored = frames.misses.load(Ordering::Relaxed);
        let warm = cache(&dir.path().join("cache"));
        assert!(write(&root, &dir.path().join("warm.tar.zst"), Some(&warm)) == clean, "a write from the cache differs");
        assert_eq!((warm.hits.load(Ordering::Relaxed), warm.misses.load(Ordering::Relaxed)), (stored, 0));

        // One file grows: its group and at most the next are compressed again.
        fs_err::write(root.join("usr/share/d17/f05"), vec![1u8; 70_000]).unwrap();
        let changed_clean = write(&root, &dir.path().join("changed-clean.tar.zst"), None);
        let again = cache(&dir.path().join("cache"));
        assert!(
            write(&root, &dir.path().join("changed.tar.zst"), Some(&again)) == changed_clean,
            "an incremental write differs from a clean one"
        );
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
        let mut entries: Vec<PathBuf> = walkdir::WalkDir::new(dir.path().join("cache"))
            .into_iter()
            .map(|e| e.unwrap().into_path())
            .filter(|p| p.is_file())
            .collect();
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
        assert!(
            write(&root, &dir.path().join("repaired.tar.zst"), Some(&fresh)) == clean,
            "a write from a corrupt cache differs"
        );
        assert_eq!(fresh.corrupt.load(Ordering::Relaxed), 4);
        assert!(entries[4].is_file(), "the FIFO is replaced by a frame");
    }
}
