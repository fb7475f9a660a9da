//! rootsmith's own squashfs 4.0 writer.
//!
//! It writes a directory tree as mksquashfs lays it out by default (128 KiB
//! blocks, files smaller than a block packed into fragment blocks, tail ends of
//! larger files in blocks of their own, zero blocks stored as holes, identical
//! files stored once, xattrs in the `user.`, `trusted.` and `security.`
//! namespaces, inode types and directory runs and indexes as mksquashfs
//! chooses them, so `unsquashfs -lln` lists both images alike),
//! deterministically: entries sorted by the bytes of their names, mtimes
//! clamped to the epoch, the mkfs time the epoch, no export table, and the
//! same bytes whatever the number of threads. One difference: fragment blocks
//! end at points the small files' own bytes choose ([`cuts_after`]), so that
//! a changed file changes few of them; images are about 0.4% larger for it.
//!
//! Image layout: superblock, data and fragment blocks (in the tree's
//! pre-order, sorted), inode table, directory table, fragment table, id table,
//! xattr table, padded to 4 KiB.
//!
//! Data blocks are compressed by several threads, a batch of blocks at a time
//! (batches cut by size, never by timing), and written in order. With a
//! [`BlockCache`], a block whose bytes were compressed before is copied from
//! the cache instead: the image is the same as without.
//!
//! A placeholder [`Devices`] knows is written as the device it stands for,
//! with the placeholder's mode, owner, mtime and links.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::blockcache::{BlockCache, Cached};
use super::codec::{Codec, Settings};
use super::memo::{self, How, Memo, Stamp};
use crate::layer::{DeviceKind, Devices};
use crate::recipe::Compression;

pub const BLOCK_SIZE: u32 = 128 * 1024;
const BLOCK_LOG: u16 = 17;
const METADATA_SIZE: usize = 8192;
const MAGIC: u32 = 0x7371_7368;
const SUPERBLOCK_SIZE: u64 = 96;
const INVALID: u64 = u64::MAX;
const NO_FRAGMENT: u32 = u32::MAX;
const NO_XATTR: u32 = u32::MAX;
/// In a block's size: the block is stored uncompressed.
const UNCOMPRESSED_BLOCK: u32 = 1 << 24;
/// In a metadata block's header: stored uncompressed.
const UNCOMPRESSED_METADATA: u16 = 0x8000;
/// Superblock flag: identical files are stored once.
const FLAG_DUPLICATES: u16 = 0x0040;
/// Raw bytes of data read and compressed per batch: fixed, so the layout
/// never depends on the number of threads.
pub(super) const BATCH_BYTES: u64 = 16 << 20;

// Inode types.
const DIR: u16 = 1;
const FILE: u16 = 2;
const SYMLINK: u16 = 3;
const BLOCK_DEVICE: u16 = 4;
const CHAR_DEVICE: u16 = 5;
const FIFO: u16 = 6;
const SOCKET: u16 = 7;
/// Extended types are the basic ones plus this.
const EXTENDED: u16 = 7;

/// How to write.
pub struct Options<'a> {
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: the mkfs time, and no mtime is later.
    pub epoch: i64,
    /// Compressing threads (at least 1); the image does not depend on it.
    pub threads: usize,
    pub cache: Option<&'a BlockCache>,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Inodes in the image (hard links count once).
    pub inodes: u32,
    /// Entries in the tree, the root included (hard links count each).
    pub entries: u64,
    /// The image's size, padding included.
    pub bytes: u64,
    /// Regular files with data, and how many of them the memo knew (with a memo).
    pub files: usize,
    pub memo_known: Option<usize>,
    /// The most compressed bytes held at once between compressing and
    /// writing: about one batch, whatever the size of the largest file.
    pub max_held_bytes: u64,
}

// ---------------------------------------------------------------------------
// The tree, read into memory
// ---------------------------------------------------------------------------

enum Kind {
    Dir(Vec<(Vec<u8>, usize)>),
    /// `allocated`: the bytes the file takes on disk (`st_blocks` × 512).
    File {
        path: PathBuf,
        size: u64,
        allocated: u64,
        stamp: Stamp,
    },
    Symlink(Vec<u8>),
    Device {
        kind: DeviceKind,
        number: u32,
    },
    Fifo,
    Socket,
}

struct Node {
    kind: Kind,
    mode: u16,
    uid: u32,
    gid: u32,
    mtime: u32,
    /// Sorted by full name; only the namespaces squashfs has.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Links in the image: entries naming it (files), 2 + subdirectories (directories).
    nlink: u32,
    number: u32,
}

struct Scan<'a> {
    nodes: Vec<Node>,
    /// Inodes with more than one link, by (device, inode) on disk.
    links: HashMap<(u64, u64), usize>,
    devices: &'a Devices,
    epoch: u32,
    entries: u64,
}

/// The squashfs device number of `major:minor` (the kernel's `new_encode_dev`).
fn encode_device(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(error) if error.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("listing the xattrs of {}", path.display())),
    };
    let mut xattrs = Vec::new();
    for name in names {
        let bytes = name.as_bytes();
        if xattr_prefix(bytes).is_none() {
            // mksquashfs leaves out what squashfs has no namespace for (system.*).
            continue;
        }
        if let Some(value) = xattr::get(path, &name)
            .with_context(|| format!("reading xattr {} of {}", name.to_string_lossy(), path.display()))?
        {
            xattrs.push((bytes.to_vec(), value));
        }
    }
    xattrs.sort();
    Ok(xattrs)
}

/// The squashfs xattr type of a name and the length of its prefix.
fn xattr_prefix(name: &[u8]) -> Option<(u16, usize)> {
    [(b"user.".as_slice(), 0), (b"trusted.".as_slice(), 1), (b"security.".as_slice(), 2)]
        .into_iter()
        .find(|(prefix, _)| name.starts_with(prefix) && name.len() > prefix.len())
        .map(|(prefix, kind)| (kind, prefix.len()))
}

impl Scan<'_> {
    fn node(&self, path: &Path, metadata: &std::fs::Metadata, kind: Kind) -> Result<Node> {
        let mtime = metadata.mtime().clamp(0, i64::from(self.epoch)) as u32;
        let mode = (metadata.mode() & 0o7777) as u16;
        Ok(Node {
            kind,
            mode,
            uid: metadata.uid(),
            gid: metadata.gid(),
            mtime,
            xattrs: read_xattrs(path)?,
            nlink: 1,
            number: 0,
        })
    }

    fn leaf(&mut self, path: &Path, metadata: &std::fs::Metadata) -> Result<usize> {
        if metadata.nlink() > 1 {
            if let Some(&index) = self.links.get(&(metadata.dev(), metadata.ino())) {
                self.nodes[index].nlink += 1;
                return Ok(index);
            }
        }
        let file_type = metadata.file_type();
        let kind = if let Some(device) =
            (file_type.is_file() && !self.devices.is_empty()).then(|| self.devices.lookup(metadata)).flatten()
        {
            Kind::Device { kind: device.kind, number: encode_device(device.major, device.minor) }
        } else if file_type.is_file() {
            Kind::File {
                path: path.to_path_buf(),
                size: metadata.len(),
                allocated: metadata.blocks() * 512,
                stamp: Stamp::of(metadata),
            }
        } else if file_type.is_symlink() {
            Kind::Symlink(fs_err::read_link(path)?.into_os_string().into_vec())
        } else if file_type.is_char_device() || file_type.is_block_device() {
            let kind = if file_type.is_char_device() { DeviceKind::Char } else { DeviceKind::Block };
            let rdev = metadata.rdev();
            Kind::Device { kind, number: encode_device(libc::major(rdev), libc::minor(rdev)) }
        } else if file_type.is_fifo() {
            Kind::Fifo
        } else if file_type.is_socket() {
            Kind::Socket
        } else {
            bail!("{}: a file of unknown type", path.display());
        };
        let node = self.node(path, metadata, kind)?;
        self.nodes.push(node);
        let index = self.nodes.len() - 1;
        if metadata.nlink() > 1 {
            self.links.insert((metadata.dev(), metadata.ino()), index);
        }
        Ok(index)
    }

    fn dir(&mut self, path: &Path, metadata: &std::fs::Metadata) -> Result<usize> {
        self.entries += 1;
        let node = self.node(path, metadata, Kind::Dir(Vec::new()))?;
        self.nodes.push(node);
        let index = self.nodes.len() - 1;
        let mut names = Vec::new();
        for entry in fs_err::read_dir(path)? {
            let entry = entry?;
            // fstatat through the open directory, not a walk from the root per entry.
            let metadata = entry.metadata()?;
            names.push((entry.file_name(), metadata));
        }
        names.sort_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
        let mut children = Vec::with_capacity(names.len());
        let mut subdirs = 0;
        for (name, child_metadata) in names {
            if name.len() > 256 {
                bail!("{}: a name longer than 256 bytes does not fit a squashfs", path.join(&name).display());
            }
            let child_path = path.join(&name);
            let child = if child_metadata.is_dir() {
                subdirs += 1;
                self.dir(&child_path, &child_metadata)?
            } else {
                self.entries += 1;
                self.leaf(&child_path, &child_metadata)?
            };
            children.push((name.as_bytes().to_vec(), child));
        }
        self.nodes[index].nlink = 2 + subdirs;
        self.nodes[index].kind = Kind::Dir(children);
        Ok(index)
    }
}

fn children(nodes: &[Node], dir: usize) -> &[(Vec<u8>, usize)] {
    match &nodes[dir].kind {
        Kind::Dir(children) => children,
        _ => &[],
    }
}

/// Inode numbers in the order inodes are written: each directory's entries in
/// order (a subdirectory with all it holds), then the directory; the root last.
fn number(nodes: &mut [Node], dir: usize, next: &mut u32) {
    let entries: Vec<usize> = children(nodes, dir).iter().map(|(_, child)| *child).collect();
    for child in entries {
        if matches!(nodes[child].kind, Kind::Dir(_)) {
            number(nodes, child, next);
        } else if nodes[child].number == 0 {
            *next += 1;
            nodes[child].number = *next;
        }
    }
    *next += 1;
    nodes[dir].number = *next;
}

/// Regular files in the order their data is written: the tree in pre-order.
fn data_order(nodes: &[Node], dir: usize, seen: &mut [bool], order: &mut Vec<usize>) {
    for (_, child) in children(nodes, dir) {
        match nodes[*child].kind {
            Kind::Dir(_) => data_order(nodes, *child, seen, order),
            Kind::File { .. } if !seen[*child] => {
                seen[*child] = true;
                order.push(*child);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Data and fragments
// ---------------------------------------------------------------------------

/// Where a regular file's data went.
#[derive(Clone, Default)]
struct FileData {
    start: u64,
    sizes: Vec<u32>,
    fragment: Option<(u32, u32)>,
    sparse: u64,
}

/// A block compressed (or not), as it goes into the image.
enum Block {
    /// All zeros: a hole, no bytes.
    Sparse,
    Stored(Vec<u8>),
    Compressed(Vec<u8>),
}

impl Block {
    fn size_field(&self) -> u32 {
        match self {
            Block::Sparse => 0,
            Block::Stored(bytes) => bytes.len() as u32 | UNCOMPRESSED_BLOCK,
            Block::Compressed(bytes) => bytes.len() as u32,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Block::Sparse => &[],
            Block::Stored(bytes) | Block::Compressed(bytes) => bytes,
        }
    }
}

/// One thread's tools.
struct Worker<'a> {
    codec: Codec,
    settings: Settings,
    cache: Option<&'a BlockCache>,
}

impl Worker<'_> {
    /// `raw` as it goes into the image: from the cache when it holds it;
    /// and how a memo can find it again.
    fn block(&mut self, raw: Vec<u8>, digest: &[u8; 32]) -> Result<(Block, How)> {
        let Some(cache) = self.cache else {
            return Ok(match self.codec.compress(&raw)? {
                Some(compressed) => (Block::Compressed(compressed), How::Read),
                None => (Block::Stored(raw), How::Read),
            });
        };
        let hex = hex::encode(digest);
        match cache.get(&self.settings, &hex, &raw) {
            Some((Cached::Compressed(bytes), entry)) => Ok((Block::Compressed(bytes), How::Entry(entry))),
            Some((Cached::Stored, _)) => Ok((Block::Stored(raw), How::Read)),
            None => {
                let compressed = self.codec.compress(&raw)?;
                let how = match cache.put(&self.settings, &hex, compressed.as_deref()) {
                    Ok(entry) if compressed.is_some() => How::Entry(entry),
                    Ok(_) => How::Read,
                    Err(_) => {
                        cache.unwritten.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        How::Read
                    }
                };
                Ok(match compressed {
                    Some(compressed) => (Block::Compressed(compressed), how),
                    None => (Block::Stored(raw), How::Read),
                })
            }
        }
    }

    /// The compressed block the memo's `known` piece names, when the cache
    /// still holds that very entry.
    fn known(&self, known: &memo::Piece) -> Option<Block> {
        match known.how {
            How::Sparse => Some(Block::Sparse),
            How::Entry(entry) => {
                self.cache?.get_trusted(&self.settings, &hex::encode(known.raw), &entry).map(Block::Compressed)
            }
            How::Read => None,
        }
    }
}

/// Run `work` on every job with `threads` threads, each with its own
/// [`Worker`]; the results in the jobs' order.
fn parallel<J: Sync, R: Send>(
    jobs: &[J],
    threads: usize,
    settings: Settings,
    cache: Option<&BlockCache>,
    work: &(dyn Fn(&mut Worker, &J) -> Result<R> + Sync),
) -> Result<Vec<R>> {
    let threads = threads.clamp(1, jobs.len().max(1));
    if threads == 1 {
        let mut worker = Worker { codec: Codec::new(settings)?, settings, cache };
        return jobs.iter().map(|job| work(&mut worker, job)).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<R>>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..threads {
            handles.push(scope.spawn(|| -> Result<()> {
                let mut worker = Worker { codec: Codec::new(settings)?, settings, cache };
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(index) else { return Ok(()) };
                    let result = work(&mut worker, job);
                    let failed = result.is_err();
                    *results[index].lock().expect("a result slot") = Some(result);
                    if failed {
                        // Let the other threads run out of jobs.
                        next.fetch_add(jobs.len(), Ordering::Relaxed);
                        return Ok(());
                    }
                }
            }));
        }
        for handle in handles {
            handle.join().map_err(|_| anyhow::anyhow!("a compressing thread panicked"))??;
        }
        Ok(())
    })?;
    // The first error in the jobs' order, not a job left undone after it.
    let results: Vec<Option<Result<R>>> =
        results.into_iter().map(|slot| slot.into_inner().expect("a result slot")).collect();
    if let Some(position) = results.iter().position(|result| matches!(result, Some(Err(_)))) {
        let Some(Some(Err(error))) = results.into_iter().nth(position) else { unreachable!("an error") };
        return Err(error);
    }
    results.into_iter().map(|result| result.context("a compressing thread stopped early")?).collect()
}

/// A piece of a file to read (and compress, unless it is a tail for a
/// fragment), or to take from the block cache as the memo says.
struct Piece<'a> {
    path: &'a Path,
    offset: u64,
    len: usize,
    tail: bool,
    known: Option<memo::Piece>,
}

enum Read {
    Block(Block, [u8; 32], How),
    Tail(TailPart),
}

/// A tail on its way into a fragment block: its bytes, or where they are
/// when the memo knew their digest (read only if the block must be made).
struct TailPart {
    bytes: Option<Vec<u8>>,
    path: PathBuf,
    offset: u64,
    len: usize,
    digest: [u8; 32],
}

impl TailPart {
    fn append_to(&self, raw: &mut Vec<u8>) -> Result<()> {
        match &self.bytes {
            Some(bytes) => raw.extend_from_slice(bytes),
            None => {
                let start = raw.len();
                raw.resize(start + self.len, 0);
                let file = crate::fileops::open_regular_no_follow(&self.path)?;
                file.read_exact_at(&mut raw[start..], self.offset)
                    .with_context(|| format!("reading {} (did it change while being written?)", self.path.display()))?;
                if sha256(&raw[start..]) != self.digest {
                    bail!("{} is not what it was when last written, though its inode, size and times are (was its ctime set back?)", self.path.display());
                }
            }
        }
        Ok(())
    }
}

/// One piece of a file: from the block cache when the memo knows it (a
/// tail by its digest alone), else read, hashed and compressed.
fn read_piece(worker: &mut Worker, piece: &Piece) -> Result<Read> {
    if let Some(known) = &piece.known {
        if piece.tail {
            return Ok(Read::Tail(TailPart {
                bytes: None,
                path: piece.path.to_path_buf(),
                offset: piece.offset,
                len: piece.len,
                digest: known.raw,
            }));
        }
        if let Some(block) = worker.known(known) {
            return Ok(Read::Block(block, known.raw, known.how));
        }
    }
    let raw = match read_raw(piece)? {
        Raw::Hole if !piece.tail => return Ok(Read::Block(Block::Sparse, zeros_digest(piece.len), How::Sparse)),
        Raw::Hole => vec![0; piece.len],
        Raw::Bytes(raw) => raw,
    };
    let digest = sha256(&raw);
    if piece.tail {
        return Ok(Read::Tail(TailPart {
            bytes: Some(raw),
            path: piece.path.to_path_buf(),
            offset: piece.offset,
            len: piece.len,
            digest,
        }));
    }
    if raw.iter().all(|&byte| byte == 0) {
        return Ok(Read::Block(Block::Sparse, digest, How::Sparse));
    }
    let (block, how) = worker.block(raw, &digest)?;
    Ok(Read::Block(block, digest, how))
}

/// One piece of a file as read: its bytes, or a hole (zeros, not read).
enum Raw {
    Bytes(Vec<u8>),
    Hole,
}

/// The bytes of one piece of a file. A piece that lies in a hole of a
/// sparse file is known by one `lseek(SEEK_DATA)` without being read: a
/// sparse disk image of many gigabytes in a tree costs what its data costs.
fn read_raw(piece: &Piece) -> Result<Raw> {
    let file = crate::fileops::open_regular_no_follow(piece.path)?;
    if in_hole(&file, piece.offset, piece.len) {
        return Ok(Raw::Hole);
    }
    let mut raw = vec![0; piece.len];
    file.read_exact_at(&mut raw, piece.offset)
        .with_context(|| format!("reading {} (did it change while being written?)", piece.path.display()))?;
    Ok(Raw::Bytes(raw))
}

/// Whether `len` bytes at `offset` of `file` are all in a hole (no data
/// before their end). A filesystem that cannot tell says no, and the bytes
/// are read; so does a file that is shorter now than the range (lseek says
/// ENXIO past the end too, and the read must fail).
fn in_hole(file: &std::fs::File, offset: u64, len: usize) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(start) = i64::try_from(offset) else { return false };
    let end = offset + len as u64;
    let in_file = || file.metadata().is_ok_and(|metadata| metadata.len() >= end);
    match nix::unistd::lseek(file.as_raw_fd(), start, nix::unistd::Whence::SeekData) {
        Ok(data) => data as u64 >= end && in_file(),
        Err(nix::errno::Errno::ENXIO) => in_file(),
        Err(_) => false,
    }
}

/// The SHA-256 of `len` zero bytes (a whole block's is computed once).
fn zeros_digest(len: usize) -> [u8; 32] {
    static BLOCK: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    if len == BLOCK_SIZE as usize {
        *BLOCK.get_or_init(|| sha256(&vec![0; len]))
    } else {
        sha256(&vec![0; len])
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether a fragment block ends after a tail with SHA-256 `digest`, `filled`
/// bytes in: past a quarter of a block, after one tail in eight, chosen by
/// the tail's own bytes. A block ends there whatever came before, so a
/// changed file changes its own fragment block and seldom the next, not
/// every block after it (as filling each block to the brim would); the cost
/// is fragment blocks about two thirds full.
fn cuts_after(digest: &[u8; 32], filled: usize, block_size: u32) -> bool {
    filled >= block_size as usize / 4 && digest[0].is_multiple_of(8)
}

/// Writes data blocks and fragment blocks at the end of the image so far.
struct DataWriter<'a, W: Write> {
    out: &'a mut W,
    position: u64,
    settings: Settings,
    threads: usize,
    cache: Option<&'a BlockCache>,
    /// What the last write learnt, and what this one learns.
    memo: Option<&'a Memo>,
    /// The tree, for the paths the memo knows files by.
    tree: &'a Path,
    /// Tail ends waiting to fill a fragment block, and their length.
    fragment: Vec<TailPart>,
    fragment_len: usize,
    /// Fragment blocks filled, not yet compressed.
    full_fragments: Vec<Vec<TailPart>>,
    /// The fragment table: (start, size field).
    fragments: Vec<(u64, u32)>,
    /// Files already stored, by size and digest of their blocks.
    stored: HashMap<(u64, [u8; 32]), FileData>,
    /// See [`Summary::max_held_bytes`].
    max_held: u64,
}

impl<W: Write> DataWriter<'_, W> {
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    /// Write the next data block of `file` (of `size` bytes): a hole counts
    /// toward its sparse bytes.
    fn write_block(&mut self, file: &mut FileData, size: u64, block: &Block) -> Result<()> {
        let block_size = u64::from(self.settings.block_size);
        if matches!(block, Block::Sparse) {
            file.sparse += (size - file.sizes.len() as u64 * block_size).min(block_size);
        }
        file.sizes.push(block.size_field());
        self.write_bytes(block.bytes())
    }

    /// The path the memo knows `path` by.
    fn relative<'p>(&self, path: &'p Path) -> &'p [u8] {
        path.strip_prefix(self.tree).unwrap_or(path).as_os_str().as_bytes()
    }

    /// A file larger than a batch, written a batch's worth of blocks at a
    /// time, so a write holds at most a batch of compressed blocks whatever
    /// the size of its files. Its identity (whether an identical file was
    /// stored already) comes first: from the memo, or from a read that only
    /// hashes its blocks; the blocks read again to be written must hash the
    /// same. The image's bytes are those of a batch holding the file whole.
    fn large_file(&mut self, path: &Path, size: u64, stamp: Stamp) -> Result<FileData> {
        let block = u64::from(self.settings.block_size);
        let count = size.div_ceil(block) as usize;
        let known = self
            .memo
            .and_then(|memo| memo.file(self.relative(path), stamp))
            .filter(|known| known.len() == count)
            .map(<[memo::Piece]>::to_vec);
        let pieces: Vec<Piece> = (0..count)
            .map(|index| {
                let offset = index as u64 * block;
                Piece {
                    path,
                    offset,
                    len: (size - offset).min(block) as usize,
                    tail: false,
                    known: known.as_ref().map(|known| known[index]),
                }
            })
            .collect();
        let digests: Vec<[u8; 32]> = match &known {
            Some(known) => known.iter().map(|piece| piece.raw).collect(),
            None => parallel(&pieces, self.threads, self.settings, None, &|_, piece: &Piece| {
                Ok(match read_raw(piece)? {
                    Raw::Bytes(raw) => sha256(&raw),
                    Raw::Hole => zeros_digest(piece.len),
                })
            })?,
        };
        let mut identity = Sha256::new();
        for digest in &digests {
            identity.update(digest);
        }
        let key = (size, identity.finalize().into());
        if let Some(stored) = self.stored.get(&key) {
            if let Some(memo) = self.memo {
                // Known by its blocks' digests; their bytes are read next time they are needed.
                memo.learn_file(
                    self.relative(path),
                    stamp,
                    digests.iter().map(|&raw| memo::Piece { raw, how: How::Read }).collect(),
                );
            }
            return Ok(stored.clone());
        }
        let mut file = FileData { start: self.position, ..FileData::default() };
        let mut learnt = Vec::with_capacity(count);
        let per_batch = (BATCH_BYTES / block).max(1) as usize;
        for (segment, expected) in pieces.chunks(per_batch).zip(digests.chunks(per_batch)) {
            let read = parallel(segment, self.threads, self.settings, self.cache, &read_piece)?;
            self.held(&read);
            for (piece, expected) in read.into_iter().zip(expected) {
                let Read::Block(block, digest, how) = piece else {
                    unreachable!("a file larger than a block has no tail")
                };
                if digest != *expected {
                    bail!("{} changed while being written", path.display());
                }
                self.write_block(&mut file, size, &block)?;
                learnt.push(memo::Piece { raw: digest, how });
            }
        }
        if let Some(memo) = self.memo {
            memo.learn_file(self.relative(path), stamp, learnt);
        }
        self.stored.insert(key, file.clone());
        Ok(file)
    }

    /// Count what `read` holds toward [`Summary::max_held_bytes`].
    fn held(&mut self, read: &[Read]) {
        let bytes = read
            .iter()
            .map(|piece| if let Read::Block(block, _, _) = piece { block.bytes().len() as u64 } else { 0 })
            .sum();
        self.max_held = self.max_held.max(bytes);
    }

    /// The files of one batch, in order (their tails into fragment blocks, not yet written).
    fn batch_data(&mut self, files: &[(&Path, u64, Stamp)]) -> Result<Vec<FileData>> {
        let block = u64::from(self.settings.block_size);
        let mut pieces = Vec::new();
        for &(path, size, stamp) in files {
            let count = if size >= block { size.div_ceil(block) as usize } else { usize::from(size > 0) };
            // What the memo knows of this very file, if it knows as many pieces.
            let known =
                self.memo.and_then(|memo| memo.file(self.relative(path), stamp)).filter(|known| known.len() == count);
            let mut offset = 0;
            for index in 0..count {
                let len = (size - offset).min(block) as usize;
                pieces.push(Piece { path, offset, len, tail: size < block, known: known.map(|known| known[index]) });
                offset += len as u64;
            }
        }
        let read = parallel(&pieces, self.threads, self.settings, self.cache, &read_piece)?;
        self.held(&read);
        let mut read = read.into_iter();
        let mut data = Vec::with_capacity(files.len());
        for &(path, size, stamp) in files {
            let count = if size >= block { size.div_ceil(block) as usize } else { usize::from(size > 0) };
            let pieces: Vec<Read> = read.by_ref().take(count).collect();
            let mut identity = Sha256::new();
            let mut learnt = Vec::with_capacity(pieces.len());
            for piece in &pieces {
                let (digest, how) = match piece {
                    Read::Block(_, digest, how) => (digest, *how),
                    Read::Tail(part) => (&part.digest, How::Read),
                };
                identity.update(digest);
                learnt.push(memo::Piece { raw: *digest, how });
            }
            if let Some(memo) = self.memo {
                memo.learn_file(self.relative(path), stamp, learnt);
            }
            let key = (size, identity.finalize().into());
            if let Some(stored) = self.stored.get(&key) {
                data.push(stored.clone());
                continue;
            }
            let mut file = FileData::default();
            for piece in pieces {
                match piece {
                    Read::Block(block, _, _) => {
                        if file.sizes.is_empty() {
                            file.start = self.position;
                        }
                        self.write_block(&mut file, size, &block)?;
                    }
                    Read::Tail(part) => {
                        if self.fragment_len + part.len > self.settings.block_size as usize {
                            self.close_fragment();
                        }
                        let index = (self.fragments.len() + self.full_fragments.len()) as u32;
                        file.fragment = Some((index, self.fragment_len as u32));
                        self.fragment_len += part.len;
                        let digest = part.digest;
                        self.fragment.push(part);
                        if cuts_after(&digest, self.fragment_len, self.settings.block_size) {
                            self.close_fragment();
                        }
                    }
                }
            }
            if size > 0 {
                self.stored.insert(key, file.clone());
            }
            data.push(file);
        }
        Ok(data)
    }

    fn close_fragment(&mut self) {
        self.full_fragments.push(std::mem::take(&mut self.fragment));
        self.fragment_len = 0;
    }

    /// Compress and write the full fragment blocks: a block the memo knows
    /// by its tails is copied from the cache without reading them.
    fn write_fragments(&mut self) -> Result<()> {
        let full = std::mem::take(&mut self.full_fragments);
        let memo = self.memo;
        let blocks = parallel(&full, self.threads, self.settings, self.cache, &|worker, parts: &Vec<TailPart>| {
            let identity = memo::fragment_identity(parts.iter().map(|part| (&part.digest, part.len)));
            if let Some(known) = memo.and_then(|memo| memo.fragment(&identity)) {
                if let Some(block) = worker.known(&known).filter(|block| matches!(block, Block::Compressed(_))) {
                    memo.expect("a memo").learn_fragment(identity, known);
                    return Ok(block);
                }
            }
            let mut raw = Vec::with_capacity(parts.iter().map(|part| part.len).sum());
            for part in parts {
                part.append_to(&mut raw)?;
            }
            let digest = sha256(&raw);
            let (block, how) = worker.block(raw, &digest)?;
            if let Some(memo) = memo {
                memo.learn_fragment(identity, memo::Piece { raw: digest, how });
            }
            Ok(block)
        })?;
        for block in blocks {
            self.fragments.push((self.position, block.size_field()));
            self.write_bytes(block.bytes())?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if !self.fragment.is_empty() {
            self.close_fragment();
        }
        self.write_fragments()
    }
}

// ---------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------

/// A metadata table being written: 8 KiB blocks, each compressed when that
/// makes it smaller, behind a two-byte header.
struct Metadata<'a> {
    codec: &'a mut Codec,
    out: Vec<u8>,
    pending: Vec<u8>,
    /// The start (in `out`) of each block written, by its number.
    starts: Vec<u64>,
}

impl<'a> Metadata<'a> {
    fn new(codec: &'a mut Codec) -> Metadata<'a> {
        Metadata { codec, out: Vec::new(), pending: Vec::new(), starts: Vec::new() }
    }

    /// Where the next byte goes: (start of its block in the table, offset in the block).
    fn position(&self) -> (u64, u16) {
        (self.out.len() as u64, self.pending.len() as u16)
    }

    /// The next byte's position in the table's uncompressed bytes.
    fn uncompressed(&self) -> u64 {
        (self.starts.len() * METADATA_SIZE + self.pending.len()) as u64
    }

    /// The start of the block holding uncompressed byte `at`.
    fn block_start(&self, at: u64) -> u64 {
        let block = (at / METADATA_SIZE as u64) as usize;
        self.starts.get(block).copied().unwrap_or(self.out.len() as u64)
    }

    fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= METADATA_SIZE {
            let rest = self.pending.split_off(METADATA_SIZE);
            let block = std::mem::replace(&mut self.pending, rest);
            self.flush(&block)?;
        }
        Ok(())
    }

    fn flush(&mut self, block: &[u8]) -> Result<()> {
        self.starts.push(self.out.len() as u64);
        match self.codec.compress(block)? {
            Some(compressed) => {
                self.out.extend_from_slice(&(compressed.len() as u16).to_le_bytes());
                self.out.extend_from_slice(&compressed);
            }
            None => {
                self.out.extend_from_slice(&(block.len() as u16 | UNCOMPRESSED_METADATA).to_le_bytes());
                self.out.extend_from_slice(block);
            }
        }
        Ok(())
    }

    /// The table's bytes and the start of each of its blocks.
    fn finish(mut self) -> Result<(Vec<u8>, Vec<u64>)> {
        if !self.pending.is_empty() {
            let block = std::mem::take(&mut self.pending);
            self.flush(&block)?;
        }
        Ok((self.out, self.starts))
    }
}

/// A table of fixed-size entries (fragments, ids, xattr ids): its metadata
/// blocks, then the list of their starts; returns where the list begins.
fn write_table(out: &mut impl Write, position: &mut u64, codec: &mut Codec, entries: &[u8]) -> Result<u64> {
    let mut metadata = Metadata::new(codec);
    metadata.push(entries)?;
    let (bytes, starts) = metadata.finish()?;
    out.write_all(&bytes)?;
    let list = *position + bytes.len() as u64;
    for start in &starts {
        out.write_all(&(*position + start).to_le_bytes())?;
    }
    *position = list + 8 * starts.len() as u64;
    Ok(list)
}

/// uids and gids, as indexes into the id table (in order of first use).
#[derive(Default)]
struct Ids {
    ids: Vec<u32>,
    index: HashMap<u32, u16>,
}

impl Ids {
    fn of(&mut self, id: u32) -> Result<u16> {
        if let Some(&index) = self.index.get(&id) {
            return Ok(index);
        }
        let index = u16::try_from(self.ids.len())
            .ok()
            .filter(|&index| index < u16::MAX)
            .context("more than 65535 distinct uids and gids")?;
        self.ids.push(id);
        self.index.insert(id, index);
        Ok(index)
    }
}

/// An inode's xattrs: (full name, value), sorted.
type XattrSet = Vec<(Vec<u8>, Vec<u8>)>;

/// Xattr sets, each stored once: their key/value table and the id table.
struct Xattrs<'a> {
    table: Metadata<'a>,
    /// Per id: (reference into the table, count, size).
    ids: Vec<(u64, u32, u32)>,
    index: HashMap<XattrSet, u32>,
}

impl Xattrs<'_> {
    fn of(&mut self, set: &[(Vec<u8>, Vec<u8>)]) -> Result<u32> {
        if set.is_empty() {
            return Ok(NO_XATTR);
        }
        if let Some(&id) = self.index.get(set) {
            return Ok(id);
        }
        let (block, offset) = self.table.position();
        let mut bytes = Vec::new();
        for (name, value) in set {
            let (kind, prefix) = xattr_prefix(name).expect("only known namespaces are read");
            let suffix = &name[prefix..];
            bytes.extend_from_slice(&kind.to_le_bytes());
            bytes.extend_from_slice(&(suffix.len() as u16).to_le_bytes());
            bytes.extend_from_slice(suffix);
            bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
            bytes.extend_from_slice(value);
        }
        self.table.push(&bytes)?;
        let id = self.ids.len() as u32;
        self.ids.push(((block << 16) | u64::from(offset), set.len() as u32, bytes.len() as u32));
        self.index.insert(set.to_vec(), id);
        Ok(id)
    }
}

/// Writes the inode and directory tables, bottom up.
struct Tables<'a, 'c> {
    nodes: &'a [Node],
    data: &'a HashMap<usize, FileData>,
    inodes: Metadata<'c>,
    directories: Metadata<'c>,
    ids: Ids,
    xattrs: Xattrs<'c>,
    /// Inode references of the inodes written.
    refs: HashMap<usize, u64>,
}

fn le16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn le32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn le64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn basic_type(node: &Node) -> u16 {
    match &node.kind {
        Kind::Dir(_) => DIR,
        Kind::File { .. } => FILE,
        Kind::Symlink(_) => SYMLINK,
        Kind::Device { kind: DeviceKind::Block, .. } => BLOCK_DEVICE,
        Kind::Device { kind: DeviceKind::Char, .. } => CHAR_DEVICE,
        Kind::Fifo => FIFO,
        Kind::Socket => SOCKET,
    }
}

impl Tables<'_, '_> {
    fn header(&mut self, out: &mut Vec<u8>, kind: u16, node: &Node) -> Result<()> {
        le16(out, kind);
        le16(out, node.mode);
        le16(out, self.ids.of(node.uid)?);
        le16(out, self.ids.of(node.gid)?);
        le32(out, node.mtime);
        le32(out, node.number);
        Ok(())
    }

    /// Write the inode of a non-directory, once.
    fn leaf(&mut self, index: usize) -> Result<u64> {
        if let Some(&reference) = self.refs.get(&index) {
            return Ok(reference);
        }
        let node = &self.nodes[index];
        let xattr = self.xattrs.of(&node.xattrs)?;
        let mut out = Vec::new();
        match &node.kind {
            Kind::File { size, .. } => {
                let data = &self.data[&index];
                let (fragment, offset) = data.fragment.unwrap_or((NO_FRAGMENT, 0));
                if node.nlink == 1 && data.start < 1 << 32 && *size < 1 << 32 && data.sparse == 0 && xattr == NO_XATTR {
                    self.header(&mut out, FILE, node)?;
                    le32(&mut out, data.start as u32);
                    le32(&mut out, fragment);
                    le32(&mut out, offset);
                    le32(&mut out, *size as u32);
                } else {
                    self.header(&mut out, FILE + EXTENDED, node)?;
                    le64(&mut out, data.start);
                    le64(&mut out, *size);
                    le64(&mut out, data.sparse);
                    le32(&mut out, node.nlink);
                    le32(&mut out, fragment);
                    le32(&mut out, offset);
                    le32(&mut out, xattr);
                }
                for size in &data.sizes {
                    le32(&mut out, *size);
                }
            }
            Kind::Symlink(target) => {
                let extended = xattr != NO_XATTR;
                self.header(&mut out, SYMLINK + if extended { EXTENDED } else { 0 }, node)?;
                le32(&mut out, node.nlink);
                le32(&mut out, target.len() as u32);
                out.extend_from_slice(target);
                if extended {
                    le32(&mut out, xattr);
                }
            }
            Kind::Device { number, .. } => {
                let extended = xattr != NO_XATTR;
                self.header(&mut out, basic_type(node) + if extended { EXTENDED } else { 0 }, node)?;
                le32(&mut out, node.nlink);
                le32(&mut out, *number);
                if extended {
                    le32(&mut out, xattr);
                }
            }
            Kind::Fifo | Kind::Socket => {
                let extended = xattr != NO_XATTR;
                self.header(&mut out, basic_type(node) + if extended { EXTENDED } else { 0 }, node)?;
                le32(&mut out, node.nlink);
                if extended {
                    le32(&mut out, xattr);
                }
            }
            Kind::Dir(_) => unreachable!("directories are written by Tables::dir"),
        }
        let (block, offset) = self.inodes.position();
        self.inodes.push(&out)?;
        let reference = (block << 16) | u64::from(offset);
        self.refs.insert(index, reference);
        Ok(reference)
    }

    /// Write a directory: what it holds, its listing, then its inode.
    fn dir(&mut self, index: usize, parent: u32) -> Result<u64> {
        let nodes = self.nodes;
        let node = &nodes[index];
        let Kind::Dir(entries) = &node.kind else { unreachable!("a directory") };
        let mut written = Vec::with_capacity(entries.len());
        for (name, child) in entries {
            let reference = match nodes[*child].kind {
                Kind::Dir(_) => self.dir(*child, node.number)?,
                _ => self.leaf(*child)?,
            };
            written.push((name, *child, reference));
        }

        // The listing: runs of entries behind a header (at most 256, one
        // inode block, inode numbers within ±32767 of the header's), a new
        // run with an index entry where the listing passes 8 KiB since the
        // last index (as mksquashfs does).
        let mut listing: Vec<u8> = Vec::new();
        let mut index_entries: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut header_at: Option<usize> = None;
        let mut count = 0u32;
        let mut header_block = 0u64;
        let mut header_number = 0u32;
        let mut since_index = 0usize;
        for (name, child, reference) in &written {
            let block = reference >> 16;
            let number = nodes[*child].number;
            let entry_size = 8 + name.len();
            let far = (i64::from(number) - i64::from(header_number)).abs() > 32767;
            let crosses = header_at.is_some() && listing.len() + entry_size - since_index > METADATA_SIZE;
            if header_at.is_none() || count == 256 || block != header_block || far || crosses {
                if let Some(at) = header_at {
                    listing[at..at + 4].copy_from_slice(&(count - 1).to_le_bytes());
                    if crosses {
                        index_entries.push((listing.len() as u32, (*name).clone()));
                        since_index = listing.len();
                    }
                }
                header_at = Some(listing.len());
                le32(&mut listing, 0);
                le32(&mut listing, block as u32);
                le32(&mut listing, number);
                count = 0;
                header_block = block;
                header_number = number;
            }
            le16(&mut listing, (reference & 0xffff) as u16);
            listing.extend_from_slice(&((i64::from(number) - i64::from(header_number)) as i16).to_le_bytes());
            le16(&mut listing, basic_type(&nodes[*child]));
            le16(&mut listing, (name.len() - 1) as u16);
            listing.extend_from_slice(name);
            count += 1;
        }
        if let Some(at) = header_at {
            listing[at..at + 4].copy_from_slice(&(count - 1).to_le_bytes());
        }
        let start = self.directories.uncompressed();
        let (block_index, block_offset) = self.directories.position();
        self.directories.push(&listing)?;
        let index_blocks: Vec<u64> =
            index_entries.iter().map(|(at, _)| self.directories.block_start(start + u64::from(*at))).collect();

        let xattr = self.xattrs.of(&node.xattrs)?;
        let file_size = listing.len() as u64 + 3;
        let mut out = Vec::new();
        // Extended as mksquashfs makes them: also for more than 256 entries or
        // 8 KiB of entries (not counting headers), index or not.
        let entry_bytes: usize = entries.iter().map(|(name, _)| 8 + name.len()).sum();
        let large = entries.len() > 256 || entry_bytes >= METADATA_SIZE;
        if !large && index_entries.is_empty() && file_size < 1 << 16 && xattr == NO_XATTR {
            self.header(&mut out, DIR, node)?;
            le32(&mut out, block_index as u32);
            le32(&mut out, node.nlink);
            le16(&mut out, file_size as u16);
            le16(&mut out, block_offset);
            le32(&mut out, parent);
        } else {
            self.header(&mut out, DIR + EXTENDED, node)?;
            le32(&mut out, node.nlink);
            le32(&mut out, u32::try_from(file_size).context("a directory listing over 4 GiB")?);
            le32(&mut out, block_index as u32);
            le32(&mut out, parent);
            le16(&mut out, index_entries.len() as u16);
            le16(&mut out, block_offset);
            le32(&mut out, xattr);
            for ((at, name), block) in index_entries.iter().zip(index_blocks) {
                le32(&mut out, *at);
                le32(&mut out, block as u32);
                le32(&mut out, (name.len() - 1) as u32);
                out.extend_from_slice(name);
            }
        }
        let (block, offset) = self.inodes.position();
        self.inodes.push(&out)?;
        Ok((block << 16) | u64::from(offset))
    }
}

// ---------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------

/// Write `tree` (whose device placeholders `devices` knows) to `output`.
pub fn write(tree: &Path, devices: &Devices, output: &Path, options: &Options) -> Result<Summary> {
    write_into(tree, devices, &mut fs_err::File::create(output)?.into_parts().0, options)
}

/// [`write`] into `file` from its current position on (a rootfs image
/// holds the squashfs after a header): every offset in the image is from
/// that position, as the kernel reads an image. The file is not synced.
pub fn write_into(tree: &Path, devices: &Devices, file: &mut std::fs::File, options: &Options) -> Result<Summary> {
    let base = file.stream_position()?;
    // Files changed after this are never remembered as they are now.
    let began = std::time::SystemTime::now();
    let settings = Settings::of(options.compression, BLOCK_SIZE)?;
    let epoch = u32::try_from(options.epoch)
        .map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH {} does not fit a squashfs", options.epoch))?;

    let root_metadata = fs_err::symlink_metadata(tree)?;
    if !root_metadata.is_dir() {
        bail!("{} is not a directory", tree.display());
    }
    let mut scan = Scan { nodes: Vec::new(), links: HashMap::new(), devices, epoch, entries: 0 };
    let root = scan.dir(tree, &root_metadata)?;
    let entries = scan.entries;
    let mut nodes = scan.nodes;
    let mut inodes = 0;
    number(&mut nodes, root, &mut inodes);

    let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut *file);
    out.write_all(&[0; SUPERBLOCK_SIZE as usize])?;

    // Data, batch by batch.
    let mut order = Vec::new();
    data_order(&nodes, root, &mut vec![false; nodes.len()], &mut order);
    let memo_path = options.cache.and_then(|cache| cache.memo_path(&settings));
    let memo = memo_path.as_deref().map(Memo::load);
    let mut data_writer = DataWriter {
        out: &mut out,
        position: SUPERBLOCK_SIZE,
        settings,
        threads: options.threads.max(1),
        cache: options.cache,
        memo: memo.as_ref(),
        tree,
        fragment: Vec::new(),
        fragment_len: 0,
        full_fragments: Vec::new(),
        fragments: Vec::new(),
        stored: HashMap::new(),
        max_held: 0,
    };
    let mut data = HashMap::new();
    let mut batch: Vec<(usize, &Path, u64, u64, Stamp)> = Vec::new();
    let mut batch_bytes = 0;
    // Zero blocks are holes either way; as mksquashfs does, only a file
    // sparse on disk gets an extended inode saying so.
    let mut keep = |index: usize, size: u64, allocated: u64, mut file_data: FileData| {
        if allocated >= size {
            file_data.sparse = 0;
        }
        data.insert(index, file_data);
    };
    for (position, &index) in order.iter().enumerate() {
        let Kind::File { path, size, allocated, stamp } = &nodes[index].kind else { unreachable!("a file") };
        let large = *size > BATCH_BYTES;
        if !large {
            batch.push((index, path, *size, *allocated, *stamp));
            batch_bytes += size;
        }
        if large || batch_bytes >= BATCH_BYTES || position + 1 == order.len() {
            // A file larger than a batch closes the batch it comes in, as the
            // last of it: the files before it, it, then their fragment blocks.
            let files: Vec<(&Path, u64, Stamp)> =
                batch.iter().map(|(_, path, size, _, stamp)| (*path, *size, *stamp)).collect();
            let written = data_writer.batch_data(&files)?;
            for ((index, _, size, allocated, _), file_data) in batch.drain(..).zip(written) {
                keep(index, size, allocated, file_data);
            }
            if large {
                let file_data = data_writer.large_file(path, *size, *stamp)?;
                keep(index, *size, *allocated, file_data);
            }
            data_writer.write_fragments()?;
            batch_bytes = 0;
        }
    }
    data_writer.finish()?;
    let mut position = data_writer.position;
    let data_writer_held = data_writer.max_held;
    let fragments = std::mem::take(&mut data_writer.fragments);
    let mut memo_known = None;
    if let (Some(memo), Some(path)) = (&memo, &memo_path) {
        memo_known = Some(memo.known_files());
        // Only saves work: a memo that cannot be written is no error.
        let _ = memo.save(path, began);
    }

    // Inode and directory tables.
    let mut inode_codec = Codec::new(settings)?;
    let mut directory_codec = Codec::new(settings)?;
    let mut xattr_codec = Codec::new(settings)?;
    let mut tables = Tables {
        nodes: &nodes,
        data: &data,
        inodes: Metadata::new(&mut inode_codec),
        directories: Metadata::new(&mut directory_codec),
        ids: Ids::default(),
        xattrs: Xattrs { table: Metadata::new(&mut xattr_codec), ids: Vec::new(), index: HashMap::new() },
        refs: HashMap::new(),
    };
    let root_ref = tables.dir(root, inodes + 1)?;
    let Tables { inodes: inode_table, directories, ids, xattrs, .. } = tables;
    let (inode_table, _) = inode_table.finish()?;
    let (directory_table, _) = directories.finish()?;
    let inode_table_start = position;
    out.write_all(&inode_table)?;
    position += inode_table.len() as u64;
    let directory_table_start = position;
    out.write_all(&directory_table)?;
    position += directory_table.len() as u64;

    let mut codec = Codec::new(settings)?;
    let mut fragment_entries = Vec::new();
    for (start, size) in &fragments {
        le64(&mut fragment_entries, *start);
        le32(&mut fragment_entries, *size);
        le32(&mut fragment_entries, 0);
    }
    let fragment_table_start = if fragments.is_empty() {
        position
    } else {
        write_table(&mut out, &mut position, &mut codec, &fragment_entries)?
    };
    let mut id_entries = Vec::new();
    for id in &ids.ids {
        le32(&mut id_entries, *id);
    }
    let id_table_start = write_table(&mut out, &mut position, &mut codec, &id_entries)?;

    let xattr_table_start = if xattrs.ids.is_empty() {
        INVALID
    } else {
        let Xattrs { table, ids: xattr_ids, .. } = xattrs;
        let (table, _) = table.finish()?;
        let kv_start = position;
        out.write_all(&table)?;
        position += table.len() as u64;
        let mut entries = Vec::new();
        for (reference, count, size) in &xattr_ids {
            le64(&mut entries, *reference);
            le32(&mut entries, *count);
            le32(&mut entries, *size);
        }
        // The id table's blocks, then its header, then the list of blocks.
        let mut metadata = Metadata::new(&mut codec);
        metadata.push(&entries)?;
        let (blocks, starts) = metadata.finish()?;
        let blocks_start = position;
        out.write_all(&blocks)?;
        position += blocks.len() as u64;
        let header = position;
        let mut bytes = Vec::new();
        le64(&mut bytes, kv_start);
        le32(&mut bytes, xattr_ids.len() as u32);
        le32(&mut bytes, 0);
        for start in starts {
            le64(&mut bytes, blocks_start + start);
        }
        out.write_all(&bytes)?;
        position += bytes.len() as u64;
        header
    };

    let bytes_used = position;
    let padded = bytes_used.div_ceil(4096) * 4096;
    out.write_all(&vec![0; (padded - bytes_used) as usize])?;

    let mut superblock = Vec::with_capacity(SUPERBLOCK_SIZE as usize);
    le32(&mut superblock, MAGIC);
    le32(&mut superblock, inodes);
    le32(&mut superblock, epoch);
    le32(&mut superblock, BLOCK_SIZE);
    le32(&mut superblock, fragments.len() as u32);
    le16(&mut superblock, settings.id());
    le16(&mut superblock, BLOCK_LOG);
    le16(&mut superblock, FLAG_DUPLICATES);
    le16(&mut superblock, ids.ids.len() as u16);
    le16(&mut superblock, 4);
    le16(&mut superblock, 0);
    le64(&mut superblock, root_ref);
    le64(&mut superblock, bytes_used);
    le64(&mut superblock, id_table_start);
    le64(&mut superblock, xattr_table_start);
    le64(&mut superblock, inode_table_start);
    le64(&mut superblock, directory_table_start);
    le64(&mut superblock, fragment_table_start);
    le64(&mut superblock, INVALID);
    let file = out.into_inner().map_err(|error| error.into_error())?;
    file.seek(SeekFrom::Start(base))?;
    file.write_all(&superblock)?;
    file.seek(SeekFrom::Start(base + padded))?;
    Ok(Summary { inodes, entries, bytes: padded, files: order.len(), memo_known, max_held_bytes: data_writer_held })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Algorithm;

    #[test]
    fn parallel_keeps_the_order_and_reports_the_first_error() {
        let settings = Settings::of(Compression { algorithm: Algorithm::Zstd, level: Some(1) }, BLOCK_SIZE).unwrap();
        let jobs: Vec<u32> = (0..200).collect();
        for threads in [1, 2, 5] {
            let doubled = parallel(&jobs, threads, settings, None, &|_, job: &u32| Ok(job * 2)).unwrap();
            assert_eq!(doubled, jobs.iter().map(|job| job * 2).collect::<Vec<_>>());
            let error = parallel(&jobs, threads, settings, None, &|_, job: &u32| {
                if *job >= 50 {
                    bail!("job {job} failed")
                } else {
                    Ok(*job)
                }
            })
            .unwrap_err();
            assert_eq!(error.to_string(), "job 50 failed");
        }
    }

    #[test]
    fn device_numbers_are_encoded_as_the_kernel_decodes_them() {
        assert_eq!(encode_device(1, 3), 0x103);
        assert_eq!(encode_device(8, 0), 0x800);
        // Minor numbers past 255 go above the major (new_encode_dev).
        assert_eq!(encode_device(300, 70000), (70000 & 0xff) | (300 << 8) | ((70000 & !0xff) << 12));
        assert_eq!(u64::from(encode_device(259, 65537)), libc::makedev(259, 65537) & 0xffff_ffff);
    }

    #[test]
    fn a_hole_is_known_and_a_range_past_the_end_is_not_one() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("sparse"))
            .unwrap();
        let block = BLOCK_SIZE as u64;
        file.set_len(64 * block).unwrap();
        file.write_all_at(b"data", 40 * block).unwrap();
        assert!(in_hole(&file, 0, block as usize), "a block inside the hole");
        assert!(!in_hole(&file, 40 * block, block as usize), "the block with data");
        assert!(!in_hole(&file, 39 * block, 2 * block as usize), "a range reaching the data");
        assert!(in_hole(&file, 63 * block, block as usize), "the hole after the data, to the end");
        assert!(!in_hole(&file, 64 * block, block as usize), "past the end: read, and the read fails");
        assert!(!in_hole(&file, 63 * block, 2 * block as usize), "a range longer than the file");
    }
}
