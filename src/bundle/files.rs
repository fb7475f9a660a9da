//! Reading a bundle's files. A bundle on disk is untrusted input: a name is
//! checked before it becomes a path, each component under the bundle's
//! directory is opened without following a symbolic link, only a regular file
//! is read (a FIFO, a device or a socket is named and never read, so nothing
//! blocks), and no read goes past the size the manifest states.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};

use super::names::check_file_name;

/// The most a bundle's own index (`manifest.json`, `SHA256SUMS`) may hold;
/// a real one is a few KiB.
pub const MAX_INDEX_BYTES: u64 = 16 << 20;

/// A regular file of a bundle, open for reading from its start.
#[derive(Debug)]
pub struct BundleFile {
    pub file: File,
    pub path: PathBuf,
    /// Its length when it was opened.
    pub len: u64,
    /// Device and inode, to tell whether a path still leads to it.
    pub id: (u64, u64),
}

fn error(kind: io::ErrorKind, path: &Path, message: impl std::fmt::Display) -> io::Error {
    io::Error::new(kind, format!("{}: {message}", path.display()))
}

fn errno(errno: Errno, path: &Path) -> io::Error {
    match errno {
        Errno::ELOOP => {
            error(io::ErrorKind::InvalidData, path, "is a symbolic link; a bundle's files are regular files")
        }
        other => {
            let io = io::Error::from(other);
            error(io.kind(), path, io)
        }
    }
}

/// What a file that is not a regular file is, for the error that names it.
fn kind_of(mode: u32) -> String {
    format!("a {}", crate::fileops::kind_name(mode))
}

fn not_regular(path: &Path, mode: u32) -> io::Error {
    error(
        io::ErrorKind::InvalidData,
        path,
        format!("is {}, not a regular file; a bundle's files are regular files", kind_of(mode)),
    )
}

fn is_regular(mode: u32) -> bool {
    mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits()
}

/// `openat` with an owned result.
fn open_at(dir: &OwnedFd, name: &str, flags: OFlag, path: &Path) -> io::Result<OwnedFd> {
    let fd =
        nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW, Mode::empty())
            .map_err(|e| errno(e, path))?;
    // SAFETY: openat just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open `name` in the bundle directory `dir`: the name must be one a bundle
/// may hold ([`check_file_name`], checked before anything is opened), no
/// component under `dir` may be a symbolic link, and the file must be a
/// regular file. A FIFO or device is named in the error, never opened for
/// reading.
pub fn open(dir: &Path, name: &str) -> io::Result<BundleFile> {
    check_file_name(name).map_err(|bad| io::Error::new(io::ErrorKind::InvalidInput, bad))?;
    let path = dir.join(name);
    let mut parent: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| error(e.kind(), dir, e))?
        .into();
    let parts: Vec<&str> = name.split('/').collect();
    let (last, dirs) = parts.split_last().expect("a checked name has a component");
    let mut so_far = dir.to_path_buf();
    for part in dirs {
        so_far.push(part);
        parent = match open_at(&parent, part, OFlag::O_RDONLY | OFlag::O_DIRECTORY, &so_far) {
            Ok(opened) => opened,
            // O_NOFOLLOW | O_DIRECTORY on a symbolic link says ENOTDIR: say what it is.
            Err(refused) => {
                match nix::sys::stat::fstatat(Some(parent.as_raw_fd()), *part, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(stat) if stat.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFDIR.bits() => {
                        return Err(error(
                            io::ErrorKind::InvalidData,
                            &so_far,
                            format!("is {}, not a directory", kind_of(stat.st_mode)),
                        ))
                    }
                    _ => return Err(refused),
                }
            }
        };
    }
    // Look before opening, so a device is never opened; the descriptor is
    // looked at again below, in case the name changed in between.
    let stat = nix::sys::stat::fstatat(Some(parent.as_raw_fd()), *last, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| errno(e, &path))?;
    if !is_regular(stat.st_mode) {
        return Err(not_regular(&path, stat.st_mode));
    }
    let file = File::from(open_at(&parent, last, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY, &path)?);
    let metadata = file.metadata().map_err(|e| error(e.kind(), &path, e))?;
    {
        use std::os::unix::fs::MetadataExt;
        if !is_regular(metadata.mode()) {
            return Err(not_regular(&path, metadata.mode()));
        }
        Ok(BundleFile { len: metadata.len(), id: (metadata.dev(), metadata.ino()), file, path })
    }
}

/// [`open`], for a file the manifest says is `size` bytes long.
pub fn open_sized(dir: &Path, name: &str, size: u64) -> io::Result<BundleFile> {
    let file = open(dir, name)?;
    if file.len != size {
        return Err(error(
            io::ErrorKind::InvalidData,
            &file.path,
            format!("is {} bytes, but the manifest says {size}", file.len),
        ));
    }
    Ok(file)
}

impl BundleFile {
    /// Copy the file's bytes into `out`, reading at most `size + 1`: exactly
    /// `size` bytes (the manifest's) must be there.
    pub fn copy_exactly(&self, size: u64, out: &mut impl Write) -> io::Result<()> {
        let copied = io::copy(&mut (&self.file).take(size.saturating_add(1)), out)
            .map_err(|e| error(e.kind(), &self.path, e))?;
        self.check_count(copied, size)
    }

    /// The SHA-256 of exactly `size` bytes (the manifest's), read at most `size + 1`.
    pub fn sha256(&self, size: u64) -> io::Result<String> {
        let (digest, read) = crate::digest::hash_reader((&self.file).take(size.saturating_add(1)))
            .map_err(|e| error(e.kind(), &self.path, e))?;
        self.check_count(read, size)?;
        Ok(digest)
    }

    /// All of the file, when it holds no more than `limit` bytes (read at most `limit + 1`).
    pub fn read_within(&self, limit: u64) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        (&self.file)
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| error(e.kind(), &self.path, e))?;
        if bytes.len() as u64 > limit {
            return Err(error(io::ErrorKind::InvalidData, &self.path, format!("holds more than {limit} bytes")));
        }
        Ok(bytes)
    }

    /// The file's first `size` bytes (the manifest's) as a reader that can
    /// seek, for formats read out of order (cpio, squashfs): nothing past
    /// `size` is ever read. Each view keeps its own position.
    pub fn within(&self, size: u64) -> Within<'_> {
        Within { file: &self.file, position: 0, end: size }
    }

    fn check_count(&self, read: u64, size: u64) -> io::Result<()> {
        if read > size {
            return Err(error(
                io::ErrorKind::InvalidData,
                &self.path,
                format!("holds more than the {size} bytes the manifest says"),
            ));
        }
        if read < size {
            return Err(error(
                io::ErrorKind::InvalidData,
                &self.path,
                format!("ends after {read} of the {size} bytes the manifest says"),
            ));
        }
        Ok(())
    }
}

/// A bundle file's first bytes, read at positions of its own (see [`BundleFile::within`]).
#[derive(Debug)]
pub struct Within<'a> {
    file: &'a File,
    position: u64,
    end: u64,
}

impl Read for Within<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = self.end.saturating_sub(self.position);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buf[..want], self.position)?;
        self.position += read as u64;
        Ok(read)
    }
}

impl io::Seek for Within<'_> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let target = match to {
            io::SeekFrom::Start(offset) => Some(offset),
            io::SeekFrom::End(delta) => self.end.checked_add_signed(delta),
            io::SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position =
            target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the file"))?;
        Ok(self.position)
    }
}

/// The bytes of `name` in the bundle `dir`, at most `limit` of them.
pub fn read(dir: &Path, name: &str, limit: u64) -> io::Result<Vec<u8>> {
    open(dir, name)?.read_within(limit)
}

/// The SHA-256 of `name` in the bundle `dir`, which the manifest says is `size` bytes.
pub fn sha256(dir: &Path, name: &str, size: u64) -> io::Result<String> {
    open_sized(dir, name, size)?.sha256(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("a.img"), b"abc").unwrap();
        fs_err::create_dir(dir.path().join("kernel")).unwrap();
        fs_err::write(dir.path().join("kernel/k-config"), b"CONFIG_A=y\n").unwrap();
        dir
    }

    #[test]
    fn regular_files_are_read_within_their_stated_size() {
        let dir = bundle();
        assert_eq!(sha256(dir.path(), "a.img", 3).unwrap(), crate::digest::sha256_hex(b"abc"));
        assert_eq!(read(dir.path(), "kernel/k-config", 100).unwrap(), b"CONFIG_A=y\n");
        let error = sha256(dir.path(), "a.img", 2).unwrap_err();
        assert!(error.to_string().contains("a.img: is 3 bytes, but the manifest says 2"), "{error}");
        let error = read(dir.path(), "a.img", 2).unwrap_err();
        assert!(error.to_string().contains("holds more than 2 bytes"), "{error}");
        // A file that grew after it was opened is read no further than stated.
        let file = open(dir.path(), "a.img").unwrap();
        fs_err::write(dir.path().join("a.img"), vec![b'x'; 1 << 20]).unwrap();
        let error = file.sha256(3).unwrap_err();
        assert!(error.to_string().contains("holds more than the 3 bytes"), "{error}");
        let mut out = Vec::new();
        assert!(open(dir.path(), "a.img").unwrap().copy_exactly(3, &mut out).is_err());
        assert!(out.len() <= 4, "read at most size + 1 bytes: {}", out.len());
        // A view for out-of-order reads ends at the stated size.
        use std::io::Seek;
        let file = open(dir.path(), "a.img").unwrap();
        let mut view = file.within(3);
        let mut all = Vec::new();
        view.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"xxx");
        assert_eq!(view.seek(io::SeekFrom::End(-1)).unwrap(), 2);
        let mut other = file.within(3);
        let mut first = [0u8; 2];
        other.read_exact(&mut first).unwrap();
        assert_eq!(view.read(&mut first).unwrap(), 1, "each view has its own position");
        assert!(view.seek(io::SeekFrom::Current(-10)).is_err());
        assert_eq!(open(dir.path(), "missing").unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn names_outside_the_bundle_are_refused_before_anything_is_opened() {
        let dir = bundle();
        let outside = dir.path().join("kernel/secret");
        fs_err::write(&outside, b"secret").unwrap();
        for name in ["../x", "/etc/passwd", "kernel/../a.img", "", "kernel//k-config"] {
            let error = open(dir.path(), name).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{name}");
            assert!(error.to_string().contains("is not a file a bundle may hold"), "{error}");
        }
        // `open(dir.join("kernel"), "../a.img")` would be the same file: still refused.
        assert!(open(&dir.path().join("kernel"), "../a.img").is_err());
    }

    #[test]
    fn symlinks_fifos_and_devices_are_named_never_read() {
        let dir = bundle();
        let path = dir.path();
        std::os::unix::fs::symlink("/dev/zero", path.join("zero.img")).unwrap();
        std::os::unix::fs::symlink("a.img", path.join("link.img")).unwrap();
        nix::unistd::mkfifo(&path.join("fifo.img"), Mode::S_IRWXU).unwrap();
        // A symlinked directory: its files are not the bundle's.
        let elsewhere = tempfile::tempdir().unwrap();
        fs_err::write(elsewhere.path().join("x"), b"x").unwrap();
        fs_err::remove_dir_all(path.join("kernel")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), path.join("kernel")).unwrap();
        for (name, shown, what) in [
            ("zero.img", "zero.img", "is a symbolic link"),
            ("link.img", "link.img", "is a symbolic link"),
            ("fifo.img", "fifo.img", "is a FIFO"),
            ("kernel/x", "kernel:", "is a symbolic link"),
        ] {
            let started = std::time::Instant::now();
            let error = sha256(path, name, 1).unwrap_err();
            assert!(error.to_string().contains(shown) && error.to_string().contains(what), "{name}: {error}");
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
        if Path::new("/dev/null").exists() {
            let error = open(Path::new("/dev"), "null").unwrap_err();
            assert!(error.to_string().contains("is a character device"), "{error}");
        }
        assert!(open(path, "kernel").unwrap_err().to_string().contains("symbolic link"));
    }
}
