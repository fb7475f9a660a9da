//! Filesystem operations more than one module needs: removing a tree a stage
//! may have left read-only, waiting for an exclusive lock file, opening a
//! file that must be a regular one (never blocking on a FIFO or reading a
//! device), and walking a tree in tar order.

use std::fs::File;
use std::path::Path;

use fs4::fs_std::FileExt;

/// Remove a tree even where a stage left read-only directories; a missing
/// tree is not an error.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs_err::remove_dir_all(path) {
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            use std::os::unix::fs::PermissionsExt;
            for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
                if entry.file_type().is_dir() {
                    let _ = fs_err::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
                }
            }
            fs_err::remove_dir_all(path)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(std::io::Error::new(error.kind(), format!("removing {}: {error}", path.display()))),
        Ok(()) => Ok(()),
    }
}

/// What kind of file a `st_mode` is, as messages name it.
pub fn kind_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symbolic link",
        libc::S_IFIFO => "FIFO",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFSOCK => "socket",
        _ => "special file",
    }
}

/// `root/relative` read from outside a tree (rootsmith's view of a stage's
/// tree), where an absolute symlink would point into the host: `None` when a
/// component is missing, an error naming it when one is a symbolic link.
pub fn in_tree(root: &Path, relative: &Path) -> std::io::Result<Option<std::path::PathBuf>> {
    let mut path = root.to_path_buf();
    for component in relative.components() {
        let std::path::Component::Normal(name) = component else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", relative.display()),
            ));
        };
        path.push(name);
        match fs_err::symlink_metadata(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{} is a symbolic link; rootsmith reads it from outside the tree and follows no link there",
                        path.display()
                    ),
                ));
            }
            Ok(_) => {}
        }
    }
    Ok(Some(path))
}

/// Open `path` (symlinks followed) for reading, refusing anything but a
/// regular file: a FIFO would block the open or the read forever, a device
/// such as `/dev/zero` never ends. The type is checked before the open and
/// again on the opened file (it may have been swapped in between), and the
/// open itself does not wait for a FIFO's writer.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    open_checked(path, true)
}

/// Like [`open_regular`], without following a symlink at `path` itself: for
/// walking a tree, where a symlink is an entry of its own.
pub fn open_regular_no_follow(path: &Path) -> std::io::Result<File> {
    open_checked(path, false)
}

/// The first `at_most` bytes of the regular file `path` (opened as by
/// [`open_regular_no_follow`]): cache entries, files of a stage's tree.
pub fn read_regular_no_follow(path: &Path, at_most: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_regular_no_follow(path)?
        .take(at_most)
        .read_to_end(&mut bytes)
        .map_err(|error| std::io::Error::new(error.kind(), format!("{}: {error}", path.display())))?;
    Ok(bytes)
}

/// Call `visit` with every entry below `root` (its path relative to `root`
/// and its metadata, symlinks not followed) in tar order: parents before
/// their children, siblings by the bytes of their names (the order of
/// `Path`). Each directory is read once and its entries are looked at
/// through it, not by a path walked from the root (a tree of 15 k entries
/// on an overlay costs a fraction of the per-path walk). With
/// `same_file_system`, a directory on another file system is visited but
/// not entered.
pub fn walk_tree<E: From<std::io::Error>>(
    root: &Path,
    same_file_system: bool,
    visit: &mut dyn FnMut(&Path, &std::fs::Metadata) -> Result<(), E>,
) -> Result<(), E> {
    use std::os::unix::fs::MetadataExt;
    let device = same_file_system.then(|| fs_err::symlink_metadata(root).map(|metadata| metadata.dev())).transpose()?;
    walk_dir(root, &std::path::PathBuf::new(), device, visit)
}

fn walk_dir<E: From<std::io::Error>>(
    root: &Path,
    relative: &Path,
    device: Option<u64>,
    visit: &mut dyn FnMut(&Path, &std::fs::Metadata) -> Result<(), E>,
) -> Result<(), E> {
    use std::os::unix::fs::MetadataExt;
    let dir = root.join(relative);
    let named =
        |error: std::io::Error, path: &Path| std::io::Error::new(error.kind(), format!("{}: {error}", path.display()));
    let mut children = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|error| named(error, &dir))? {
        let entry = entry.map_err(|error| named(error, &dir))?;
        // fstatat through the open directory, not following a symlink.
        let metadata = entry.metadata().map_err(|error| named(error, &entry.path()))?;
        children.push((entry.file_name(), metadata));
    }
    children.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    for (name, metadata) in children {
        let path = relative.join(&name);
        visit(&path, &metadata)?;
        if metadata.is_dir() && device.is_none_or(|device| metadata.dev() == device) {
            walk_dir(root, &path, device, visit)?;
        }
    }
    Ok(())
}

/// Make `to` a hard link of the regular file `from`: `true` when it is one,
/// `false` (and nothing at `to`) where the file system cannot link them (other
/// file systems, no hard links) or `from` is not a regular file, for the
/// caller to copy instead. A symlink at `from` is never linked.
pub fn hard_link_regular(from: &Path, to: &Path) -> std::io::Result<bool> {
    if std::fs::hard_link(from, to).is_err() {
        return Ok(false);
    }
    if fs_err::symlink_metadata(to)?.is_file() {
        return Ok(true);
    }
    fs_err::remove_file(to)?;
    Ok(false)
}

/// A directory of this user's own under the system's temporary directory
/// (`/tmp/rootsmith-UID`, mode 0700), made when missing. One that stands
/// there as anything else (a symlink, another user's directory, one others
/// may enter) is refused: names in it cannot be planted by anyone else.
pub fn private_temp_dir() -> std::io::Result<std::path::PathBuf> {
    private_dir_in(&std::env::temp_dir())
}

fn private_dir_in(base: &Path) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let me = nix::unistd::geteuid().as_raw();
    let dir = base.join(format!("rootsmith-{me}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(std::io::Error::new(error.kind(), format!("{}: {error}", dir.display()))),
    }
    let metadata = fs_err::symlink_metadata(&dir)?;
    if !metadata.is_dir() || metadata.uid() != me || metadata.mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private directory of uid {me} (a symlink, another user's, or open to others)",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

/// Why another user could change what is under `dir` (a cache or an out
/// directory), as OpenSSH asks of a key's directory: `dir`, or its nearest
/// existing parent, writable by others, or any directory above it (to `/`)
/// that belongs to another user (not root) or that others may write without
/// the sticky bit. `None` when only this user and root can. Links above
/// `dir` are followed (a `/home` that is a link is the directory it leads to).
pub fn shared_directory(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let absolute = std::path::absolute(dir).ok()?;
    // The directory itself when it is there (one still to be made is this
    // user's), then every directory above it.
    let mut first = true;
    let mut current = Some(absolute.as_path());
    while let Some(path) = current {
        current = path.parent();
        let Ok(metadata) = fs_err::metadata(path) else {
            first = false;
            continue;
        };
        let mode = metadata.mode();
        let owner = metadata.uid();
        let others_write = mode & 0o002 != 0;
        let sticky = mode & 0o1000 != 0;
        let named = |why: &str| Some(format!("{} {why}", path.display()));
        if first {
            first = false;
            if others_write {
                return named(&format!("can be written by every user (mode {:o})", mode & 0o7777));
            }
        } else if others_write && !sticky {
            return named(&format!("can be written by every user, without the sticky bit (mode {:o})", mode & 0o7777));
        }
        if owner != me && owner != 0 {
            let user = nix::unistd::User::from_uid(owner.into()).ok().flatten().map(|user| user.name);
            return named(&format!("belongs to {} (uid {owner})", user.unwrap_or_else(|| "another user".into())));
        }
    }
    None
}

/// How [`clone_or_copy`] made its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// A reflink (FICLONE): the file system shares the blocks until either
    /// file is written, and a write to one never shows in the other.
    Reflinked,
    /// The bytes copied.
    Copied,
}

/// Make the new file `to` a copy of the regular file `from` (a symlink is
/// refused) that shares no inode with it: a reflink where the file system
/// can make one (btrfs, XFS), else a copy of the bytes.
pub fn clone_or_copy(from: &Path, to: &Path) -> std::io::Result<Copied> {
    use std::os::fd::AsRawFd;
    let source = open_regular_no_follow(from)?;
    let mut target = fs_err::OpenOptions::new().write(true).create_new(true).open(to)?;
    // SAFETY: FICLONE takes the source's descriptor as its argument; both
    // descriptors are open for the duration of the call.
    let cloned = unsafe { libc::ioctl(target.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) } == 0;
    if cloned {
        return Ok(Copied::Reflinked);
    }
    let mut source = source;
    std::io::copy(&mut source, &mut target).map_err(|error| {
        std::io::Error::new(error.kind(), format!("copying {} to {}: {error}", from.display(), to.display()))
    })?;
    Ok(Copied::Copied)
}

/// Whether `path` and every directory above it up to and including `top`
/// belong to this process's user and none can be written by its group or
/// by others: nobody else can change or replace what is there.
pub fn owner_only(path: &Path, top: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let mut current = Some(path);
    while let Some(dir) = current {
        match fs_err::symlink_metadata(dir) {
            Ok(metadata) if metadata.uid() == me && metadata.mode() & 0o022 == 0 => {}
            _ => return false,
        }
        if dir == top {
            return true;
        }
        current = dir.parent();
    }
    false
}

fn open_checked(path: &Path, follow: bool) -> std::io::Result<File> {
    use fs_err::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::MetadataExt;
    let not_regular = |mode: u32| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is a {}, not a regular file", path.display(), kind_name(mode)),
        )
    };
    let metadata = if follow { fs_err::metadata(path)? } else { fs_err::symlink_metadata(path)? };
    if !metadata.is_file() {
        return Err(not_regular(metadata.mode()));
    }
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = fs_err::OpenOptions::new().read(true).custom_flags(flags).open(path)?.into_parts().0;
    let opened =
        file.metadata().map_err(|error| std::io::Error::new(error.kind(), format!("{}: {error}", path.display())))?;
    if !opened.is_file() {
        return Err(not_regular(opened.mode()));
    }
    // Reads of a regular file never block; the flag only mattered for the open.
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(|errno| std::io::Error::new(std::io::Error::from(errno).kind(), format!("{}: {errno}", path.display())))?;
    Ok(file)
}

/// Open (creating) `path` and wait for an exclusive flock on it; the lock is
/// released when the file is dropped, or when the process dies.
pub fn lock_file(path: &Path) -> std::io::Result<File> {
    let file = fs_err::OpenOptions::new().create(true).truncate(false).write(true).open(path)?.into_parts().0;
    file.lock_exclusive()
        .map_err(|error| std::io::Error::new(error.kind(), format!("locking {}: {error}", path.display())))?;
    Ok(file)
}

/// Like [`lock_file`], without waiting: `None` when another process holds it.
pub fn try_lock_file(path: &Path) -> std::io::Result<Option<File>> {
    let file = fs_err::OpenOptions::new().create(true).truncate(false).write(true).open(path)?.into_parts().0;
    match file.try_lock_exclusive() {
        Ok(true) => Ok(Some(file)),
        Ok(false) => Ok(None),
        Err(error) => Err(std::io::Error::new(error.kind(), format!("locking {}: {error}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_in_a_tree_never_follows_a_link_out_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/lib/linux-image-1")).unwrap();
        std::fs::create_dir_all(dir.path().join("host/secret")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("host"), tree.join("boot")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("host/secret"), tree.join("usr/lib/linux-image-2")).unwrap();
        assert_eq!(
            in_tree(&tree, Path::new("usr/lib/linux-image-1")).unwrap(),
            Some(tree.join("usr/lib/linux-image-1"))
        );
        assert_eq!(in_tree(&tree, Path::new("usr/lib/linux-image-3")).unwrap(), None);
        for linked in ["boot/vmlinuz-1", "usr/lib/linux-image-2"] {
            let error = in_tree(&tree, Path::new(linked)).unwrap_err().to_string();
            assert!(error.contains("is a symbolic link"), "{error}");
        }
        assert!(in_tree(&tree, Path::new("usr/../../host")).is_err());
    }

    #[test]
    fn a_tree_is_walked_in_tar_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for path in ["a/b/c", "a.b/x", "a-b", "ab/z", "a/b.c/d", "b"] {
            std::fs::create_dir_all(root.join(path)).unwrap();
        }
        std::fs::write(root.join("a/file"), "f").unwrap();
        std::os::unix::fs::symlink("/", root.join("a/b/link")).unwrap();
        let mut seen = Vec::new();
        walk_tree::<std::io::Error>(root, true, &mut |path, metadata| {
            seen.push((path.to_path_buf(), metadata.file_type().is_symlink()));
            Ok(())
        })
        .unwrap();
        let paths: Vec<&Path> = seen.iter().map(|(path, _)| path.as_path()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "tar order is the order of Path");
        assert_eq!(paths.len(), 13, "{paths:?}");
        assert!(
            paths.iter().position(|p| *p == Path::new("a/b/c")) < paths.iter().position(|p| *p == Path::new("a-b")),
            "a directory's children come before its next sibling"
        );
        assert!(
            seen.iter().any(|(path, symlink)| path == Path::new("a/b/link") && *symlink),
            "a symlink is an entry, not followed"
        );
        let error =
            walk_tree::<std::io::Error>(&root.join("missing"), false, &mut |_, _| Ok(())).unwrap_err().to_string();
        assert!(error.contains("missing"), "{error}");
    }

    #[test]
    fn only_a_regular_file_is_hard_linked() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"bytes").unwrap();
        assert!(hard_link_regular(&dir.path().join("file"), &dir.path().join("linked")).unwrap());
        assert_eq!(
            std::fs::metadata(dir.path().join("linked")).unwrap().ino(),
            std::fs::metadata(dir.path().join("file")).unwrap().ino()
        );
        std::os::unix::fs::symlink(dir.path().join("file"), dir.path().join("symlink")).unwrap();
        assert!(!hard_link_regular(&dir.path().join("symlink"), &dir.path().join("from-symlink")).unwrap());
        assert!(
            std::fs::symlink_metadata(dir.path().join("from-symlink")).is_err(),
            "nothing is left where the link was refused"
        );
        assert!(!hard_link_regular(&dir.path().join("missing"), &dir.path().join("from-missing")).unwrap());
        assert!(
            !hard_link_regular(&dir.path().join("file"), &dir.path().join("linked")).unwrap(),
            "an existing name is never replaced"
        );
    }

    /// Run `f` on a thread and fail (instead of hanging) when it takes too long.
    fn within_seconds<T: Send + 'static>(seconds: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || sender.send(f()));
        receiver.recv_timeout(std::time::Duration::from_secs(seconds)).expect("the call hung")
    }

    #[test]
    fn only_regular_files_are_opened_and_a_fifo_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let regular = dir.path().join("file");
        fs_err::write(&regular, "x").unwrap();
        std::os::unix::fs::symlink(&fifo, dir.path().join("to-fifo")).unwrap();
        std::os::unix::fs::symlink(&regular, dir.path().join("to-file")).unwrap();
        let cases = [
            (fifo.clone(), Some("is a FIFO, not a regular file")),
            (dir.path().join("to-fifo"), Some("is a FIFO")),
            (std::path::PathBuf::from("/dev/zero"), Some("is a character device")),
            (dir.path().to_path_buf(), Some("is a directory")),
            (regular.clone(), None),
            (dir.path().join("to-file"), None),
        ];
        for (path, expected) in cases {
            let shown = path.display().to_string();
            let result = within_seconds(10, move || open_regular(&path).map(|_| ()).map_err(|error| error.to_string()));
            match expected {
                Some(message) => {
                    let error = result.unwrap_err();
                    assert!(error.contains(message) && error.contains(&shown), "{shown}: {error}");
                }
                None => result.unwrap(),
            }
        }
        let link = dir.path().join("to-file");
        let error = open_regular_no_follow(&link).unwrap_err();
        assert!(error.to_string().contains("is a symbolic link"), "{error}");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut open_regular_no_follow(&regular).unwrap(), &mut text).unwrap();
        assert_eq!(text, "x");
    }

    #[test]
    fn a_copy_shares_no_inode_and_refuses_a_symlink() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        fs_err::write(&from, "bundle bytes").unwrap();
        let to = dir.path().join("to");
        clone_or_copy(&from, &to).unwrap();
        assert_eq!(fs_err::read(&to).unwrap(), b"bundle bytes");
        assert_ne!(fs_err::metadata(&to).unwrap().ino(), fs_err::metadata(&from).unwrap().ino());
        fs_err::write(&from, "changed in the cache").unwrap();
        assert_eq!(fs_err::read(&to).unwrap(), b"bundle bytes", "the copy changed with its source");
        assert!(clone_or_copy(&from, &to).is_err(), "an existing file is never written into");
        std::os::unix::fs::symlink(&from, dir.path().join("link")).unwrap();
        assert!(clone_or_copy(&dir.path().join("link"), &dir.path().join("via-link")).is_err());
    }

    #[test]
    fn owner_only_needs_every_directory_up_to_the_top_to_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("cache");
        let entry = top.join("v1/outputs/key");
        fs_err::create_dir_all(&entry).unwrap();
        for path in [&top, &top.join("v1"), &top.join("v1/outputs"), &entry] {
            fs_err::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert!(owner_only(&entry, &top));
        assert!(!owner_only(&entry, Path::new("/nonexistent")), "not under the top");
        fs_err::set_permissions(top.join("v1"), std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(!owner_only(&entry, &top), "a group-writable directory on the way");
        fs_err::set_permissions(top.join("v1"), std::fs::Permissions::from_mode(0o755)).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&top, Some(65534), None).unwrap();
            assert!(!owner_only(&entry, &top), "the top belongs to another user");
        }
    }

    #[test]
    fn a_private_directory_is_made_once_and_a_planted_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = private_dir_in(base.path()).unwrap();
        assert_eq!(fs_err::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(private_dir_in(base.path()).unwrap(), dir);
        // Open to others, or a symlink planted in its place.
        fs_err::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_dir_in(base.path()).is_err());
        fs_err::remove_dir(&dir).unwrap();
        let elsewhere = base.path().join("elsewhere");
        fs_err::create_dir(&elsewhere).unwrap();
        fs_err::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        let error = private_dir_in(base.path()).unwrap_err();
        assert!(error.to_string().contains("not a private directory"), "{error}");
    }

    #[test]
    fn a_directory_others_can_change_is_named_with_why() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let cache = base.path().join("cache");
        fs_err::create_dir(&cache).unwrap();
        assert_eq!(shared_directory(&cache), None);
        assert_eq!(shared_directory(&cache.join("not-yet/made")), None, "judged by what exists");
        // A cache still to be made in a sticky directory others write (as /tmp).
        fs_err::set_permissions(&cache, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(shared_directory(&cache.join("mine")), None);
        fs_err::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        fs_err::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = shared_directory(&cache).unwrap();
        assert!(why.contains("can be written by every user (mode 777)"), "{why}");
        // A parent others may write without the sticky bit.
        fs_err::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        fs_err::set_permissions(base.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(shared_directory(&cache).unwrap().contains("without the sticky bit"));
        // With the sticky bit (as /tmp), a parent is fine.
        fs_err::set_permissions(base.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(shared_directory(&cache), None);
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&cache, Some(65534), None).unwrap();
            assert!(shared_directory(&cache).unwrap().contains("(uid 65534)"));
        }
    }
}
