//! Device nodes in a tree that cannot hold them.
//!
//! A rootless build runs as uid 0 of a user namespace, where `mknod` of a
//! character or block device fails with EPERM. Base images and cached layers
//! hold device nodes all the same (a debootstrap tree's `dev/null`), and the
//! bundle must not depend on who built it. So where `mknod` is refused, an empty
//! regular file stands in for the device (a placeholder): it takes the owner,
//! mode, xattrs and mtime the device would have, and [`Devices`] remembers which
//! device it stands for. Whatever writes the tree out again (layers, the rootfs
//! tarball, the squashfs) asks [`Devices::lookup`] and writes the device.
//!
//! A placeholder is known by its inode (device and inode number, and birth time
//! where the filesystem keeps one), not by its path: a second hard link to it is
//! a hard link to the device, as it would be to a real node. It stops standing
//! for a device as soon as it is no longer that empty regular file: a stage that
//! replaced it, removed it or wrote into it made something else of it. (Where
//! the filesystem keeps no birth time, a new file that gets the inode number of
//! a removed placeholder would pass for it; the layer applier tells [`Devices`]
//! what it removes, so only a command in a stage could do that.)

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

/// A device node's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKind {
    Char,
    Block,
}

impl DeviceKind {
    /// Its file type bits (`S_IFCHR`, `S_IFBLK`) of `st_mode`.
    pub fn file_type(self) -> u32 {
        match self {
            DeviceKind::Char => libc::S_IFCHR,
            DeviceKind::Block => libc::S_IFBLK,
        }
    }

    /// What messages call it: `character device`, `block device`.
    pub fn name(self) -> &'static str {
        crate::fileops::kind_name(self.file_type())
    }
}

/// The device a node (or its placeholder) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Device {
    pub kind: DeviceKind,
    pub major: u32,
    pub minor: u32,
}

impl Device {
    /// The device number as `stat` gives it for a real node (`st_rdev`).
    pub fn rdev(&self) -> u64 {
        libc::makedev(self.major, self.minor)
    }

    /// The real device node `metadata` describes, if it is one.
    pub fn of_node(metadata: &Metadata) -> Option<Device> {
        use std::os::unix::fs::FileTypeExt;
        let kind = match metadata.file_type() {
            kind if kind.is_char_device() => DeviceKind::Char,
            kind if kind.is_block_device() => DeviceKind::Block,
            _ => return None,
        };
        let rdev = metadata.rdev();
        Some(Device { kind, major: libc::major(rdev), minor: libc::minor(rdev) })
    }
}

/// A placeholder made by [`Devices::make`]: the device and the file's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    device: Device,
    /// `st_dev` and `st_ino` of the placeholder.
    dev: u64,
    ino: u64,
    /// Its birth time, where the filesystem records one: an inode number freed
    /// by removing the placeholder and given to a new file is not the placeholder.
    born: Option<SystemTime>,
}

impl Node {
    fn is(&self, metadata: &Metadata) -> bool {
        self.dev == metadata.dev()
            && self.ino == metadata.ino()
            && (self.born.is_none() || self.born == metadata.created().ok())
    }
}

/// A placeholder standing in the tree now.
#[derive(Debug, Clone)]
pub struct Placeholder {
    /// Its path relative to the tree's root.
    pub path: PathBuf,
    pub device: Device,
    /// The placeholder's own metadata (owner, mode, mtime, links).
    pub metadata: Metadata,
}

/// The device placeholders of one tree (see the module's documentation).
#[derive(Debug, Default)]
pub struct Devices {
    /// Placeholders by the path they were made at.
    nodes: Mutex<BTreeMap<PathBuf, Node>>,
    placeholders_only: bool,
}

impl Devices {
    /// Placeholders for every device, even where `mknod` would work: tests
    /// running as root take the rootless path this way.
    pub fn placeholders_only() -> Devices {
        Devices { nodes: Mutex::default(), placeholders_only: true }
    }

    fn nodes(&self) -> MutexGuard<'_, BTreeMap<PathBuf, Node>> {
        // The map stays whole whatever panicked while it was held.
        self.nodes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Make the device `kind major:minor` at `root/relative` with `mode`
    /// (exactly, whatever the umask), where nothing stands yet. The parent
    /// must exist; the final component is never followed. Where `mknod` is
    /// refused (EPERM: a user namespace), an empty regular file stands for the
    /// device instead. Owner, xattrs and mtime are the caller's to set, on the
    /// placeholder as on a device.
    pub fn make(
        &self,
        root: &Path,
        relative: &Path,
        kind: DeviceKind,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> io::Result<()> {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        let path = root.join(relative);
        let with_path = |error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", path.display()));
        let permissions = std::fs::Permissions::from_mode(mode & 0o7777);
        if !self.placeholders_only {
            let flag = SFlag::from_bits_truncate(kind.file_type());
            match mknod(&path, flag, Mode::from_bits_truncate(mode), makedev(major.into(), minor.into())) {
                Ok(()) => return std::fs::set_permissions(&path, permissions).map_err(with_path),
                Err(nix::errno::Errno::EPERM) => {}
                Err(errno) => return Err(with_path(errno.into())),
            }
        }
        // O_CREAT|O_EXCL never follows a symlink standing at the path.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(mode & 0o777)
            .open(&path)
            .map_err(with_path)?;
        file.set_permissions(permissions).map_err(with_path)?;
        let metadata = file.metadata().map_err(with_path)?;
        let node = Node {
            device: Device { kind, major, minor },
            dev: metadata.dev(),
            ino: metadata.ino(),
            born: metadata.created().ok(),
        };
        self.nodes().insert(relative.to_path_buf(), node);
        Ok(())
    }

    /// Called before `path` (a file, or a directory with all it holds) is
    /// removed: its placeholders that have no other link are forgotten, so a
    /// file that gets the same inode number later is not taken for one.
    pub fn forget(&self, path: &Path) {
        if self.is_empty() {
            return;
        }
        let mut nodes = self.nodes();
        for entry in walkdir::WalkDir::new(path).follow_root_links(false).same_file_system(true).into_iter().flatten() {
            if !entry.file_type().is_file() {
                continue;
            }
            if let Ok(metadata) = entry.path().symlink_metadata() {
                if metadata.nlink() == 1 {
                    nodes.retain(|_, node| !node.is(&metadata));
                }
            }
        }
    }

    /// Whether nothing was ever made as a placeholder.
    pub fn is_empty(&self) -> bool {
        self.nodes().is_empty()
    }

    /// The device the file `metadata` describes (its `symlink_metadata`) stands
    /// for: `Some` only for a live placeholder, an empty regular file that is
    /// the inode [`Self::make`] made (through any of its hard links).
    pub fn lookup(&self, metadata: &Metadata) -> Option<Device> {
        if !metadata.file_type().is_file() || metadata.len() != 0 {
            return None;
        }
        self.nodes().values().find(|node| node.is(metadata)).map(|node| node.device)
    }

    /// The live placeholders under `root` (every hard link of each), sorted by
    /// path; without a walk when there never were any.
    pub fn placeholders(&self, root: &Path) -> io::Result<Vec<Placeholder>> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for entry in walkdir::WalkDir::new(root).min_depth(1).same_file_system(true).sort_by_file_name() {
            let entry = entry.map_err(io::Error::other)?;
            if !entry.file_type().is_file() {
                continue;
            }
            let metadata = entry
                .path()
                .symlink_metadata()
                .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", entry.path().display())))?;
            if let Some(device) = self.lookup(&metadata) {
                let path = entry.path().strip_prefix(root).expect("walkdir stays under root").to_path_buf();
                found.push(Placeholder { path, device, metadata });
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placeholder_stands_for_its_device_until_something_else_takes_its_place() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        std::fs::create_dir(root.join("dev")).unwrap();
        let devices = Devices::placeholders_only();
        devices.make(root, Path::new("dev/null"), DeviceKind::Char, 1, 3, 0o666).unwrap();
        devices.make(root, Path::new("dev/sda"), DeviceKind::Block, 8, 0, 0o660).unwrap();
        let null = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.is_file() && null.len() == 0);
        assert_eq!(null.mode() & 0o7777, 0o666, "the mode is exact whatever the umask");
        assert_eq!(devices.lookup(&null), Some(Device { kind: DeviceKind::Char, major: 1, minor: 3 }));
        assert_eq!(Device { kind: DeviceKind::Char, major: 1, minor: 3 }.rdev(), nix::sys::stat::makedev(1, 3));

        // Another link to it is the same device.
        std::fs::hard_link(root.join("dev/null"), root.join("null-too")).unwrap();
        let listed: Vec<_> =
            devices.placeholders(root).unwrap().into_iter().map(|p| (p.path, p.device.major, p.device.minor)).collect();
        assert_eq!(
            listed,
            [(PathBuf::from("dev/null"), 1, 3), (PathBuf::from("dev/sda"), 8, 0), (PathBuf::from("null-too"), 1, 3)]
        );

        // Written into, replaced, removed: no longer a device.
        std::fs::write(root.join("dev/null"), "data").unwrap();
        assert_eq!(devices.lookup(&std::fs::symlink_metadata(root.join("null-too")).unwrap()), None);
        std::fs::remove_file(root.join("dev/sda")).unwrap();
        std::fs::write(root.join("dev/sda"), "").unwrap();
        assert_eq!(devices.lookup(&std::fs::symlink_metadata(root.join("dev/sda")).unwrap()), None);
        assert!(devices.placeholders(root).unwrap().is_empty());

        // Nothing is made where something stands, and a symlink is not followed.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("target"), root.join("dev/tty")).unwrap();
        assert_eq!(
            devices.make(root, Path::new("dev/tty"), DeviceKind::Char, 5, 0, 0o666).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert!(!outside.path().join("target").exists());
    }

    #[test]
    fn devices_without_placeholders_are_never_walked_for() {
        let devices = Devices::default();
        assert!(devices.placeholders(Path::new("/nonexistent")).unwrap().is_empty());
        fn shared<T: Send + Sync>() {}
        shared::<Devices>();
    }
}
