//! Apply a layer tar (OCI whiteouts included) to a tree, treating it as untrusted.
//!
//! Every entry path is checked before anything is written: absolute paths and
//! `..` are refused, and parent directories are resolved inside the tree the way
//! a chroot would (an absolute symlink starts again at the tree's root), so a
//! symlink can redirect a write only to another place inside the tree; one that
//! climbs above the root is refused. The final component is never followed:
//! whatever stands there is replaced. Hard links must point inside the tree too.
//!
//! Sizes are bounded before they are written: the entries of one archive may
//! claim (their real sizes, a sparse file's holes included) no more than the
//! free space of the tree's filesystem, and a GNU sparse file is written with
//! its holes left as holes. The (decompressed) stream is counted as it is read:
//! it may run past the data of the entries it has announced by no more than
//! [`HEADER_ALLOWANCE`] (headers, PAX records and long names, which the tar
//! reader keeps in memory), so neither a gzip/zstd bomb nor a giant PAX record
//! gets further than that. An archive that cannot be parsed is reported by
//! byte offset, never by quoting what it holds (it may be any file at all).
//!
//! Character and block devices are made through [`Devices`]: where `mknod` is
//! refused (a rootless build), an empty file stands for the device, with the
//! owner, mode, xattrs and mtime the entry gives. FIFOs are always made.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use tar::EntryType;

use super::devices::{DeviceKind, Devices};
use super::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// An entry that could not be applied, named with its layer.
#[derive(Debug, thiserror::Error)]
#[error("layer {layer}: entry `{entry}`: {reason}")]
pub struct ApplyError {
    pub layer: String,
    pub entry: String,
    pub reason: String,
}

/// How many symlinks one path may go through, as the kernel's own limit.
const MAX_SYMLINK_HOPS: usize = 40;

/// How far the stream may run past the data of the last entry before the next
/// entry starts: its header, GNU sparse maps, PAX records and long names.
pub const HEADER_ALLOWANCE: u64 = 16 << 20;

/// Apply the tar read from `reader` to `root`. `layer` names it in errors;
/// `devices` makes its device nodes (and remembers their placeholders).
/// Returns the number of entries applied.
pub fn apply_layer(reader: impl Read, root: &Path, layer: &str, devices: &Devices) -> Result<u64, ApplyError> {
    let free = free_space(root).map_err(|error| ApplyError {
        layer: layer.to_string(),
        entry: "(archive)".to_string(),
        reason: format!("cannot tell the free space of {}: {error}", root.display()),
    })?;
    apply_layer_with_space(reader, root, layer, devices, free)
}

/// The bytes an unprivileged writer may still use on the filesystem of `path`.
fn free_space(path: &Path) -> nix::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(path)?;
    Ok((stats.blocks_available() as u64).saturating_mul(stats.fragment_size() as u64))
}

/// [`apply_layer`] with the free space given (tests make it small).
pub(super) fn apply_layer_with_space(
    reader: impl Read,
    root: &Path,
    layer: &str,
    devices: &Devices,
    free: u64,
) -> Result<u64, ApplyError> {
    let stream = Rc::new(Stream::default());
    stream.limit.set(HEADER_ALLOWANCE);
    let mut archive = tar::Archive::new(Counted { inner: reader, stream: Rc::clone(&stream) });
    let mut applier = Applier {
        root,
        layer,
        devices,
        written: HashSet::new(),
        directory_times: Vec::new(),
        is_root: nix::unistd::geteuid().is_root(),
        free,
        claimed: 0,
        freed: 0,
    };
    let entries = archive.entries().map_err(|_| applier.unreadable(&stream))?;
    let mut count = 0;
    for entry in entries {
        let entry = entry.map_err(|_| applier.unreadable(&stream))?;
        // The stream now stands at the entry's data: it may go on through that
        // data (padded to whole blocks) and the next entry's headers.
        let in_stream = if entry.header().entry_type() == EntryType::GNUSparse {
            entry.header().entry_size().unwrap_or(u64::MAX)
        } else {
            entry.size()
        };
        stream.limit.set(
            stream
                .read
                .get()
                .saturating_add(in_stream.div_ceil(512).saturating_mul(512))
                .saturating_add(HEADER_ALLOWANCE),
        );
        applier.apply(entry)?;
        count += 1;
    }
    // Directory mtimes last: writing their children moved them.
    for (path, mtime) in applier.directory_times.iter().rev() {
        let time = filetime::FileTime::from_unix_time(*mtime, 0);
        let _ = filetime::set_symlink_file_times(path, time, time);
    }
    Ok(count)
}

/// What the counting reader saw: bytes read, how far it may read, and why it
/// stopped, so an error names its cause without the tar reader's text (which
/// quotes a broken header's bytes).
#[derive(Default)]
struct Stream {
    read: Cell<u64>,
    limit: Cell<u64>,
    ended: Cell<bool>,
    failure: RefCell<Option<String>>,
}

/// The archive's (decompressed) bytes, counted and cut off at the limit.
struct Counted<R> {
    inner: R,
    stream: Rc<Stream>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let stream = &self.stream;
        let room = stream.limit.get().saturating_sub(stream.read.get());
        if room == 0 {
            let reason = format!(
                "the archive runs on past byte {} with more than {} of headers before an entry's data; refusing to read further (a decompression bomb?)",
                stream.read.get(),
                bytes(HEADER_ALLOWANCE)
            );
            stream.failure.replace(Some(reason.clone()));
            return Err(std::io::Error::other(reason));
        }
        let wanted = buffer.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        match self.inner.read(&mut buffer[..wanted]) {
            Ok(0) if wanted > 0 => {
                stream.ended.set(true);
                Ok(0)
            }
            Ok(count) => {
                stream.read.set(stream.read.get() + count as u64);
                Ok(count)
            }
            Err(error) => {
                stream.failure.replace(Some(format!("cannot read the archive: {error}")));
                Err(error)
            }
        }
    }
}

/// A byte count as people read it: `1099511627776 bytes (1.0 TiB)`.
fn bytes(count: u64) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = count as f64;
    let mut unit = "";
    for next in units {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if unit.is_empty() {
        format!("{count} bytes")
    } else {
        format!("{count} bytes ({value:.1} {unit})")
    }
}

struct Applier<'a> {
    root: &'a Path,
    layer: &'a str,
    devices: &'a Devices,
    /// Paths this layer wrote, which an opaque marker must not remove.
    written: HashSet<PathBuf>,
    directory_times: Vec<(PathBuf, i64)>,
    is_root: bool,
    /// Free bytes on the tree's filesystem when the archive started.
    free: u64,
    /// Bytes the entries so far claimed (real sizes, holes included).
    claimed: u64,
    /// Bytes given back by files this archive replaced.
    freed: u64,
}

impl Applier<'_> {
    fn error(&self, entry: &str, reason: impl Into<String>) -> ApplyError {
        ApplyError { layer: self.layer.to_string(), entry: entry.to_string(), reason: reason.into() }
    }

    /// The archive itself could not be read: say why from what the counting
    /// reader saw, never with the tar reader's text, which quotes the bytes of
    /// a broken header (the "archive" may be any file: an environment, a key).
    fn unreadable(&self, stream: &Stream) -> ApplyError {
        let reason = match stream.failure.borrow().clone() {
            Some(reason) => reason,
            None if stream.ended.get() => format!("the archive ends after {} bytes, in the middle of an entry (is it truncated?)", stream.read.get()),
            None => format!("not a tar archive, or a damaged one: the header before byte {} is not a valid tar header (or sparse map)", stream.read.get()),
        };
        self.error("(archive)", reason)
    }

    /// Count an entry's real size against the free space, before it is written.
    fn claim(&mut self, shown: &str, size: u64) -> Result<(), ApplyError> {
        let available = self.free.saturating_add(self.freed);
        let claimed = self.claimed.saturating_add(size);
        if claimed > available {
            return Err(self.error(
                shown,
                format!(
                    "it claims {}, and with the {} the archive's earlier entries claimed that is more than the {} free on the filesystem of {}",
                    bytes(size),
                    bytes(self.claimed),
                    bytes(available),
                    self.root.display()
                ),
            ));
        }
        self.claimed = claimed;
        Ok(())
    }

    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let relative = clean_path(&raw_path).map_err(|reason| self.error(&shown, reason))?;
        let Some(name) = relative.file_name().map(|name| name.to_os_string()) else {
            // The root itself ("./"); data it carries was read all the same.
            return self.claim(&shown, entry.size());
        };
        let parent = self
            .resolve_parent(relative.parent().unwrap_or(Path::new("")))
            .map_err(|reason| self.error(&shown, reason))?;
        let parent_full = self.root.join(&parent);
        let name_bytes = name.as_bytes();

        if name_bytes == OPAQUE_MARKER.as_bytes() || name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Markers write nothing, but data they carry is read all the same.
            self.claim(&shown, entry.size())?;
        }
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            return self.make_opaque(&parent).map_err(|error| self.error(&shown, error.to_string()));
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            // `.wh..` would delete the directory itself, `.wh...` its parent.
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(self
                    .error(&shown, "a whiteout must name an entry of its directory, not the directory or its parent"));
            }
            let target = parent_full.join(std::ffi::OsStr::from_bytes(hidden));
            self.devices.forget(&target);
            return remove_any(&target)
                .map_err(|error| self.error(&shown, format!("cannot delete {}: {error}", target.display())));
        }

        let destination = parent_full.join(&name);
        let header = entry.header().clone();
        let mut xattrs = Vec::new();
        if let Ok(Some(extensions)) = entry.pax_extensions() {
            for extension in extensions.flatten() {
                if let Some(key) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((OsString::from(std::ffi::OsStr::from_bytes(key)), extension.value_bytes().to_vec()));
                }
            }
        }
        let kind = header.entry_type();
        let existing = fs_err::symlink_metadata(&destination).ok();
        // What replacing a file gives back (unless another link keeps it).
        if let Some(metadata) = existing.as_ref().filter(|metadata| metadata.is_file() && metadata.nlink() == 1) {
            self.freed = self.freed.saturating_add(metadata.blocks().saturating_mul(512));
        }
        // A regular file's real size (a sparse one's holes included: what
        // reading it back gives), or whatever data another kind carries.
        self.claim(&shown, entry.size())?;
        let io = |error: std::io::Error| self.error(&shown, format!("{}: {error}", destination.display()));
        if existing.as_ref().is_some_and(|metadata| !(metadata.is_dir() && kind == EntryType::Directory)) {
            self.devices.forget(&destination);
        }
        match existing {
            Some(metadata) if metadata.is_dir() && kind == EntryType::Directory => {}
            Some(metadata) if metadata.is_dir() => fs_err::remove_dir_all(&destination).map_err(io)?,
            Some(_) => fs_err::remove_file(&destination).map_err(io)?,
            None => {}
        }
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        match kind {
            EntryType::Directory => {
                if !destination.is_dir() {
                    fs_err::create_dir(&destination).map_err(io)?;
                }
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // The tar reader's own unpack writes a GNU sparse map's holes
                // as holes (a seek, then set_len for a hole at the end). The
                // destination's parent is resolved and nothing stands at it
                // now; the file is created with O_EXCL, so never through a
                // symlink. Owner, mode, xattrs and mtime are set below.
                entry.unpack(&destination).map_err(|error| self.error(&shown, with_causes(&error)))?;
            }
            EntryType::Symlink => {
                let target =
                    entry.link_name_bytes().ok_or_else(|| self.error(&shown, "symlink without a target"))?.into_owned();
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &destination).map_err(io)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.error(&shown, "hard link without a target"))?
                    .into_owned();
                let source = self.resolve_link_target(&target).map_err(|reason| self.error(&shown, reason))?;
                fs_err::hard_link(&source, &destination).map_err(io)?;
                self.written.insert(parent.join(&name));
                return Ok(());
            }
            EntryType::Char | EntryType::Block => {
                let device_kind = if kind == EntryType::Char { DeviceKind::Char } else { DeviceKind::Block };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                // The error names the path already.
                self.devices
                    .make(self.root, &parent.join(&name), device_kind, major, minor, mode)
                    .map_err(|error| self.error(&shown, error.to_string()))?;
            }
            EntryType::Fifo => {
                use nix::sys::stat::{mknod, Mode, SFlag};
                mknod(&destination, SFlag::S_IFIFO, Mode::from_bits_truncate(mode), 0)
                    .map_err(|errno| io(errno.into()))?;
            }
            other => return Err(self.error(&shown, format!("unsupported entry type {other:?}"))),
        }
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let chown = nix::unistd::fchownat(
            None,
            &destination,
            Some(uid.into()),
            Some(gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if let Err(errno) = chown {
            if errno == nix::errno::Errno::EINVAL {
                // An id the user namespace does not map (a rootless build).
                return Err(self.error(&shown, unmapped_owner(uid, gid)));
            }
            if self.is_root {
                return Err(io(errno.into()));
            }
        }
        if kind != EntryType::Symlink {
            // After chown, which clears set-id bits.
            use std::os::unix::fs::PermissionsExt;
            fs_err::set_permissions(&destination, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        }
        for (key, value) in &xattrs {
            xattr::set(&destination, key, value).map_err(|error| {
                let on_symlink = kind == EntryType::Symlink && key.to_string_lossy().starts_with("user.");
                if on_symlink && error.raw_os_error() == Some(libc::EPERM) {
                    self.error(
                        &shown,
                        format!(
                            "its extended attribute {} cannot be set: Linux allows no user.* attribute on a symlink",
                            key.to_string_lossy()
                        ),
                    )
                } else {
                    self.error(&shown, format!("its extended attribute {}: {error}", key.to_string_lossy()))
                }
            })?;
        }
        let mtime = header.mtime().unwrap_or(0) as i64;
        if kind == EntryType::Directory {
            self.directory_times.push((destination.clone(), mtime));
        } else {
            let time = filetime::FileTime::from_unix_time(mtime, 0);
            filetime::set_symlink_file_times(&destination, time, time).map_err(io)?;
        }
        self.written.insert(parent.join(&name));
        Ok(())
    }

    /// Resolve a parent path inside the tree, following symlinks chroot-style and
    /// creating missing directories. Returns the resolved path relative to root.
    fn resolve_parent(&self, parent: &Path) -> Result<PathBuf, String> {
        let mut resolved = PathBuf::new();
        let mut pending: Vec<OsString> = parent.components().rev().filter_map(normal_component).collect();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                if !resolved.pop() {
                    return Err("its path leaves the tree through a symlink".to_string());
                }
                continue;
            }
            let candidate = resolved.join(&part);
            let full = self.root.join(&candidate);
            match fs_err::symlink_metadata(&full) {
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err("too many levels of symlinks in its path".to_string());
                    }
                    let target = fs_err::read_link(&full).map_err(|error| error.to_string())?;
                    if target.is_absolute() {
                        resolved = PathBuf::new();
                    }
                    for component in target.components().rev() {
                        match component {
                            Component::Normal(part) => pending.push(part.to_os_string()),
                            Component::ParentDir => pending.push("..".into()),
                            _ => {}
                        }
                    }
                }
                Ok(metadata) if metadata.is_dir() => resolved = candidate,
                Ok(_) => return Err(format!("`{}` in its path is not a directory", candidate.display())),
                Err(_) => {
                    fs_err::create_dir(&full).map_err(|error| format!("{}: {error}", full.display()))?;
                    resolved = candidate;
                }
            }
        }
        Ok(resolved)
    }

    fn resolve_link_target(&self, raw: &[u8]) -> Result<PathBuf, String> {
        let target = clean_path(raw).map_err(|reason| format!("hard link target: {reason}"))?;
        let name = target.file_name().ok_or("hard link to the tree's root")?;
        let parent = self.resolve_parent(target.parent().unwrap_or(Path::new("")))?;
        let source = self.root.join(parent).join(name);
        match fs_err::symlink_metadata(&source) {
            Ok(metadata) if !metadata.is_dir() => Ok(source),
            Ok(_) => Err("hard link to a directory".to_string()),
            Err(_) => Err(format!("hard link target `{}` does not exist in the tree", target.display())),
        }
    }

    /// Remove every child of `directory` this layer did not write itself.
    fn make_opaque(&self, directory: &Path) -> std::io::Result<()> {
        for child in fs_err::read_dir(self.root.join(directory))? {
            let child = child?;
            if !self.written.contains(&directory.join(child.file_name())) {
                self.devices.forget(&child.path());
                remove_any(&child.path())?;
            }
        }
        Ok(())
    }
}

/// An error with its causes, `outer: inner: …` (the tar reader keeps the I/O
/// error under its own message).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let shown = inner.to_string();
        if !text.ends_with(&shown) {
            text = format!("{text}: {shown}");
        }
        cause = inner.source();
    }
    text
}

fn normal_component(component: Component<'_>) -> Option<OsString> {
    match component {
        Component::Normal(part) => Some(part.to_os_string()),
        _ => None,
    }
}

/// An entry path made relative and checked: no absolute path, no `..`.
fn clean_path(raw: &[u8]) -> Result<PathBuf, String> {
    if raw.starts_with(b"/") {
        return Err("absolute path".to_string());
    }
    let mut clean = PathBuf::new();
    for component in Path::new(std::ffi::OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` in its path".to_string()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".to_string()),
        }
    }
    Ok(clean)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs_err::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs_err::remove_dir_all(path),
        Ok(_) => fs_err::remove_file(path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}
/// Why an entry owned by `uid:gid` cannot be made here: this process's user
/// namespace maps no such id. Names the map and what to do.
fn unmapped_owner(uid: u32, gid: u32) -> String {
    let map = |file: &str| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let fields: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
                (fields.len() == 3).then(|| format!("{}-{}", fields[0], fields[0] + fields[2].saturating_sub(1)))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "it is owned by uid {uid}, gid {gid}, which this build's user namespace does not map (uids {}, gids {}): a build without root gives files only the ids its subordinate range maps\nhint: build as root, or give the user a range that covers the id (usermod --add-subuids/--add-subgids with at least {} ids)",
        map("/proc/self/uid_map"),
        map("/proc/self/gid_map"),
        u64::from(uid.max(gid)) + 1
    )
}
