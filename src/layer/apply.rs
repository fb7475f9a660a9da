//! Apply a layer tar (OCI whiteouts included) to a tree, treating it as untrusted.
//!
//! Every entry path is checked before anything is written: absolute paths and
//! `..` are refused, and parent directories are resolved inside the tree the way
//! a chroot would (an absolute symlink starts again at the tree's root), so a
//! symlink can redirect a write only to another place inside the tree; one that
//! climbs above the root is refused. The final component is never followed:
//! whatever stands there is replaced. Hard links must point inside the tree too.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

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

/// Apply the tar read from `reader` to `root`. `layer` names it in errors.
pub fn apply_layer(reader: impl Read, root: &Path, layer: &str) -> Result<u64, ApplyError> {
    let mut archive = tar::Archive::new(reader);
    let mut applier = Applier { root, layer, written: HashSet::new(), directory_times: Vec::new(), is_root: nix::unistd::geteuid().is_root() };
    let entries = archive.entries().map_err(|error| applier.error("(archive)", format!("cannot read the archive: {error}")))?;
    let mut count = 0;
    for entry in entries {
        let entry = entry.map_err(|error| applier.error("(archive)", format!("cannot read the archive: {error}")))?;
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

struct Applier<'a> {
    root: &'a Path,
    layer: &'a str,
    /// Paths this layer wrote, which an opaque marker must not remove.
    written: HashSet<PathBuf>,
    directory_times: Vec<(PathBuf, i64)>,
    is_root: bool,
}

impl Applier<'_> {
    fn error(&self, entry: &str, reason: impl Into<String>) -> ApplyError {
        ApplyError { layer: self.layer.to_string(), entry: entry.to_string(), reason: reason.into() }
    }

    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ApplyError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let relative = clean_path(&raw_path).map_err(|reason| self.error(&shown, reason))?;
        let Some(name) = relative.file_name().map(|name| name.to_os_string()) else {
            return Ok(()); // the root itself ("./")
        };
        let parent = self.resolve_parent(relative.parent().unwrap_or(Path::new(""))).map_err(|reason| self.error(&shown, reason))?;
        let parent_full = self.root.join(&parent);
        let name_bytes = name.as_bytes();

        if name_bytes == OPAQUE_MARKER.as_bytes() {
            return self.make_opaque(&parent).map_err(|error| self.error(&shown, error.to_string()));
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            // `.wh..` would delete the directory itself, `.wh...` its parent.
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(self.error(&shown, "a whiteout must name an entry of its directory, not the directory or its parent"));
            }
            let target = parent_full.join(std::ffi::OsStr::from_bytes(hidden));
            return remove_any(&target).map_err(|error| self.error(&shown, format!("cannot delete {}: {error}", target.display())));
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
        let io = |error: std::io::Error| self.error(&shown, format!("{}: {error}", destination.display()));
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
                let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&destination).map_err(io)?;
                std::io::copy(&mut entry, &mut file).map_err(io)?;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| self.error(&shown, "symlink without a target"))?.into_owned();
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &destination).map_err(io)?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| self.error(&shown, "hard link without a target"))?.into_owned();
                let source = self.resolve_link_target(&target).map_err(|reason| self.error(&shown, reason))?;
                fs_err::hard_link(&source, &destination).map_err(io)?;
                self.written.insert(parent.join(&name));
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                use nix::sys::stat::{makedev, mknod, Mode, SFlag};
                let flag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let device = makedev(header.device_major().ok().flatten().unwrap_or(0) as u64, header.device_minor().ok().flatten().unwrap_or(0) as u64);
                mknod(&destination, flag, Mode::from_bits_truncate(mode), device).map_err(|errno| io(errno.into()))?;
            }
            other => return Err(self.error(&shown, format!("unsupported entry type {other:?}"))),
        }
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let chown = nix::unistd::fchownat(None, &destination, Some(uid.into()), Some(gid.into()), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
        if let Err(errno) = chown {
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
            xattr::set(&destination, key, value).map_err(io)?;
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
                remove_any(&child.path())?;
            }
        }
        Ok(())
    }
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
