//! Filesystem operations more than one module needs: removing a tree a stage
//! may have left read-only, and waiting for an exclusive lock file.

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

/// Open (creating) `path` and wait for an exclusive flock on it; the lock is
/// released when the file is dropped, or when the process dies.
pub fn lock_file(path: &Path) -> std::io::Result<File> {
    let file = fs_err::OpenOptions::new().create(true).truncate(false).write(true).open(path)?.into_parts().0;
    file.lock_exclusive().map_err(|error| std::io::Error::new(error.kind(), format!("locking {}: {error}", path.display())))?;
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
