//! The cache store: atomic writes, verified reads, locks, temporary work dirs.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::key::{KeyInputs, CACHE_FORMAT};

/// What the cache knows about one built stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub key: String,
    pub recipe: String,
    pub stage: String,
    pub kind: String,
    pub layer: String,
    pub layer_size: u64,
    /// The tree after this stage: its parent's tree id and its layer.
    pub tree: String,
    pub inputs: KeyInputs,
    pub seconds: f64,
    pub created: u64,
    /// A kernel stage's kernel: its products live in `v1/kernels/PRODUCTS/`.
    #[serde(default)]
    pub kernel: Option<KernelProducts>,
}

/// A kernel built (or taken from a package) by a kernel stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelProducts {
    /// The stage's name: the KERNEL in `NAME-VERSION-KERNEL-vmlinuz`.
    pub name: String,
    /// `uname -r` of the kernel.
    pub release: String,
    pub config_sha256: String,
    /// The directory under `v1/kernels/` holding vmlinuz, config, System.map and the debs.
    pub products: String,
    pub debs: Vec<String>,
    /// Whether this build compiled (false: the products were already cached).
    pub compiled: bool,
    pub ccache_hits: u64,
    pub ccache_misses: u64,
    /// Bytes in the ccache directory after the build.
    #[serde(default)]
    pub ccache_size: u64,
    pub seconds: f64,
}

/// Assembled outputs of one tree, by output key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRecord {
    pub key: String,
    /// file name in the output directory → SHA-256
    pub files: std::collections::BTreeMap<String, String>,
    pub cookie: String,
    pub squashfs_entries: u64,
    /// The thin initramfs's size and modules.
    #[serde(default)]
    pub initramfs: crate::netboot::initramfs::Built,
    pub created: u64,
}

pub struct Store {
    root: PathBuf,
    /// This process's own locked dir under `tmp/` for partial files, so a
    /// sweep by another build never takes a file this one is still writing.
    session: WorkDir,
}

/// An exclusive lock on one key; released when dropped.
pub struct BuildLock {
    _file: File,
}

/// A temporary directory in the cache, removed when dropped; if the process dies,
/// the next [`Store::open`] sweeps it because its lock is no longer held.
pub struct WorkDir {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl WorkDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = remove_tree(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Remove a tree even where a stage left read-only directories.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            use std::os::unix::fs::PermissionsExt;
            for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
                if entry.file_type().is_dir() {
                    let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
                }
            }
            std::fs::remove_dir_all(path)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

pub fn now_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Store {
    /// Open (creating) the cache at `dir` and sweep work dirs of dead builds.
    pub fn open(dir: &Path) -> Result<Store> {
        let root = dir.join(format!("v{CACHE_FORMAT}"));
        for sub in ["blobs/sha256", "stages", "outputs", "history", "locks", "apt/archives/partial", "tmp"] {
            fs_err::create_dir_all(root.join(sub))?;
        }
        sweep_stale_work_dirs(&root.join("tmp"))?;
        let session = new_work_dir(&root.join("tmp"), "session")?;
        Ok(Store { root, session })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn apt_archives(&self) -> PathBuf {
        self.root.join("apt/archives")
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(digest)
    }

    fn stage_path(&self, key: &str) -> PathBuf {
        self.root.join("stages").join(format!("{key}.json"))
    }

    pub fn output_dir(&self, key: &str) -> PathBuf {
        self.root.join("outputs").join(key)
    }

    /// Wait for, then hold, the lock of `key`.
    pub fn lock(&self, key: &str) -> Result<BuildLock> {
        Ok(BuildLock { _file: lock_file(&self.root.join("locks").join(format!("{key}.lock")))? })
    }

    /// A fresh directory under `tmp/`, on the cache's filesystem so results can
    /// be renamed into place.
    pub fn work_dir(&self, label: &str) -> Result<WorkDir> {
        new_work_dir(&self.root.join("tmp"), label)
    }

    /// Write `bytes` to `path` atomically (temp file in the cache + rename).
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut temp = tempfile::NamedTempFile::new_in(self.session.path())?;
        temp.write_all(bytes)?;
        temp.as_file().sync_all()?;
        temp.persist(path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// A temp file in the cache for a blob being written.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        Ok(tempfile::NamedTempFile::new_in(self.session.path())?)
    }

    /// Move a finished blob into the store under its digest; returns (digest, size).
    pub fn put_blob(&self, temp: tempfile::NamedTempFile) -> Result<(String, u64)> {
        let digest = hash_file(temp.path())?;
        let size = temp.as_file().metadata()?.len();
        temp.as_file().sync_all()?;
        let destination = self.blob_path(&digest);
        if destination.exists() {
            return Ok((digest, size));
        }
        temp.persist(&destination).with_context(|| format!("storing blob {digest}"))?;
        Ok((digest, size))
    }

    /// Open a blob after checking its bytes still hash to its name.
    pub fn open_blob(&self, digest: &str) -> Result<File> {
        let path = self.blob_path(digest);
        let actual = hash_file(&path).with_context(|| format!("reading layer blob {digest}"))?;
        if actual != digest {
            bail!("layer blob {digest} is corrupt (its bytes hash to {actual}); run `rootsmith cache verify` and rebuild");
        }
        Ok(fs_err::File::open(&path)?.into_parts().0)
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn stage(&self, key: &str) -> Option<StageRecord> {
        let bytes = std::fs::read(self.stage_path(key)).ok()?;
        let record: StageRecord = serde_json::from_slice(&bytes).ok()?;
        // A record is only a hit while its layer is there.
        self.has_blob(&record.layer).then_some(record)
    }

    pub fn put_stage(&self, record: &StageRecord) -> Result<()> {
        self.write_atomic(&self.stage_path(&record.key), &serde_json::to_vec_pretty(record)?)?;
        let history = self.root.join("history").join(&record.recipe);
        fs_err::create_dir_all(&history)?;
        self.write_atomic(&history.join(format!("{}.json", record.stage)), &serde_json::to_vec_pretty(&record.inputs)?)
    }

    /// The inputs of the last build of `stage` in `recipe`, for `plan --explain`.
    pub fn last_inputs(&self, recipe: &str, stage: &str) -> Option<KeyInputs> {
        let bytes = std::fs::read(self.root.join("history").join(recipe).join(format!("{stage}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn output(&self, key: &str) -> Option<OutputRecord> {
        let bytes = std::fs::read(self.output_dir(key).join("record.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Move a directory of assembled outputs into place under `key`.
    pub fn put_output(&self, key: &str, staged: &Path, record: &OutputRecord) -> Result<()> {
        fs_err::write(staged.join("record.json"), serde_json::to_vec_pretty(record)?)?;
        let destination = self.output_dir(key);
        match std::fs::rename(staged, &destination) {
            Ok(()) => Ok(()),
            // Another build stored the same outputs first: theirs are as good.
            Err(_) if destination.join("record.json").exists() => Ok(()),
            Err(error) => Err(error).with_context(|| format!("storing outputs {key}")),
        }
    }

    pub(super) fn stages_dir(&self) -> PathBuf {
        self.root.join("stages")
    }

    pub(super) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub(super) fn outputs_dir(&self) -> PathBuf {
        self.root.join("outputs")
    }
}

/// Open (creating) `path` and wait for an exclusive flock on it; the lock is
/// released when the file is dropped, or when the process dies.
pub fn lock_file(path: &Path) -> Result<File> {
    let file = fs_err::OpenOptions::new().create(true).truncate(false).write(true).open(path)?.into_parts().0;
    file.lock_exclusive().with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

fn new_work_dir(tmp: &Path, label: &str) -> Result<WorkDir> {
    let path = tempfile::Builder::new().prefix(&format!("{label}-")).tempdir_in(tmp)?.keep();
    let lock_path = path.with_extension("lock");
    let lock = fs_err::File::create(&lock_path)?.into_parts().0;
    lock.lock_exclusive()?;
    Ok(WorkDir { path, lock_path, _lock: lock })
}

/// Leftovers without a lock are only taken once they are this old: a work dir
/// exists for a moment before its lock file does.
const ORPHAN_AGE: Duration = Duration::from_secs(86_400);

/// Remove the work dirs of builds that died: their lock is held by nobody.
fn sweep_stale_work_dirs(tmp: &Path) -> Result<()> {
    for entry in fs_err::read_dir(tmp)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "lock") {
            let Ok(file) = File::options().write(true).open(&path) else { continue };
            if file.try_lock_exclusive().unwrap_or(false) {
                let _ = remove_tree(&path.with_extension(""));
                let _ = std::fs::remove_file(&path);
            }
        } else if !path.with_extension("lock").exists() {
            let old = std::fs::symlink_metadata(&path).ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|age| age > ORPHAN_AGE);
            if old {
                let _ = remove_tree(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
    Ok(())
}

pub fn hash_file(path: &Path) -> std::io::Result<String> {
    hash_reader(File::open(path)?).map(|(digest, _)| digest)
}

/// SHA-256 (hex) and length of everything `reader` gives.
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut reader, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), size))
}
