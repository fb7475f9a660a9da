//! The cache store: atomic writes, verified reads, locks, temporary work dirs.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use fs4::fs_std::FileExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::key::KeyInputs;
use super::layout::Layout;
use crate::digest::hash_file;
use crate::fileops::{lock_file, remove_tree};

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
    /// What the stage made beside its layer (a kernel stage: its kernel), in
    /// the layout's products area. (Stored as `kernel`, the only kind of
    /// product so far, so caches written before keep working.)
    #[serde(default, rename = "kernel")]
    pub products: Option<Products>,
    /// The layer records the files' true owners (it was made by a build that
    /// could set them). A record without it is never used.
    #[serde(default)]
    pub owners_recorded: bool,
}

impl StageRecord {
    /// Why this record cannot be what it claims to be: the record for `key`,
    /// its inputs hashing to that key, its tree id made of its parent's tree
    /// and its layer. `None` when it is consistent.
    pub fn inconsistency(&self, key: &str) -> Option<String> {
        if self.key != key {
            return Some(format!("it is stored as {key} but names key {}", self.key));
        }
        if self.inputs.key() != self.key {
            return Some("its recorded inputs hash to another key".into());
        }
        if !crate::digest::is_sha256_hex(&self.layer) {
            return Some(format!("its layer `{}` is not a digest", self.layer));
        }
        if self.tree != super::key::tree_id(self.inputs.parent.as_deref(), &self.layer) {
            return Some(format!("its tree id is not made of its parent's and its layer {}", self.layer));
        }
        if let Some(products) = &self.products {
            if !crate::digest::is_sha256_hex(&products.dir) {
                return Some(format!("its products `{}` are not named by a digest", products.dir));
            }
        }
        if !self.owners_recorded {
            return Some(
                "its layer does not record the files' true owners (made by an unprivileged or older build)".into(),
            );
        }
        None
    }
}

/// A cache entry whose bytes are not what its name or record says. A build
/// that meets one discards it and builds it again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} is corrupt: {why}; rootsmith discards it and builds it again (`rootsmith cache verify --repair` removes every broken entry)")]
pub struct Corrupt {
    pub what: String,
    pub why: String,
    pub entry: CorruptEntry,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorruptEntry {
    /// A layer blob, by digest.
    Blob(String),
    /// An output directory, by key.
    Output(String),
    /// A stage record, by key.
    Record(String),
    /// A file of a content-addressed area other than the layers (a pulled OCI blob).
    File(std::path::PathBuf),
    /// A kept tree that is no longer what its record says, by tree id.
    KeptTree(String),
}

/// A stage's products: a directory in the layout's products area, and the
/// stage's own account of it, which the store keeps as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Products {
    /// The directory's id ([`super::Layout::products_dir`]).
    #[serde(rename = "products")]
    pub dir: String,
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// What the store reads of an output record: the files it must check. The
/// record itself belongs to whoever assembled the outputs.
#[derive(Debug, Clone, Deserialize)]
pub struct OutputHeader {
    pub key: String,
    /// file name in the output directory → SHA-256
    pub files: std::collections::BTreeMap<String, String>,
    pub created: u64,
}

pub struct Store {
    layout: Layout,
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
        let _ = fs_err::remove_file(&self.lock_path);
    }
}

impl Store {
    /// Open (creating) the cache at `dir` and sweep work dirs of dead builds.
    pub fn open(dir: &Path) -> Result<Store> {
        let layout = Layout::new(dir);
        layout.create()?;
        sweep_stale_work_dirs(&layout.tmp())?;
        let session = new_work_dir(&layout.tmp(), "session")?;
        Ok(Store { layout, session })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Wait for, then hold, the lock of `key`.
    pub fn lock(&self, key: &str) -> Result<BuildLock> {
        self.lock_announcing(key, &|_| {})
    }

    /// Like [`Self::lock`]; when another process holds the lock, `waiting`
    /// is told first (with that process's id, which each holder writes into
    /// the lock file), so a build can say what it waits for.
    pub fn lock_announcing(&self, key: &str, waiting: &dyn Fn(Option<u32>)) -> Result<BuildLock> {
        let path = self.layout.lock(key);
        let mut file = match crate::fileops::try_lock_file(&path)? {
            Some(file) => file,
            None => {
                let holder = {
                    // A process id, at most a few bytes: read no more.
                    let mut text = String::new();
                    let read = fs_err::File::open(&path)
                        .and_then(|file| std::io::Read::read_to_string(&mut std::io::Read::take(file, 32), &mut text));
                    read.ok().and_then(|_| text.trim().parse().ok())
                };
                waiting(holder);
                lock_file(&path)?
            }
        };
        // Who holds it, for the next one to wait.
        let _ = file.set_len(0).and_then(|()| file.write_all(std::process::id().to_string().as_bytes()));
        Ok(BuildLock { _file: file })
    }

    /// A fresh directory under `tmp/`, on the cache's filesystem so results can
    /// be renamed into place.
    pub fn work_dir(&self, label: &str) -> Result<WorkDir> {
        new_work_dir(&self.layout.tmp(), label)
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
    /// The cache's secret key ([`Layout::entry_key`]), made on first use:
    /// 32 random bytes, mode 0600. Two builds making it at once agree (the
    /// first rename wins, both read what stands).
    pub fn entry_key(&self) -> Result<[u8; 32]> {
        let path = self.layout.entry_key();
        if fs_err::symlink_metadata(&path).is_err() {
            let mut key = [0u8; 32];
            std::io::Read::read_exact(&mut fs_err::File::open("/dev/urandom")?, &mut key)?;
            let mut temp = self.temp_file()?;
            std::io::Write::write_all(&mut temp, &key)?;
            // tempfile makes it 0600.
            let _ = temp.persist_noclobber(&path);
        }
        let bytes = crate::fileops::read_regular_no_follow(&path, 64)
            .with_context(|| format!("reading the cache's key {}", path.display()))?;
        bytes.try_into().map_err(|_| {
            anyhow::anyhow!(
                "{} is not a cache key (32 bytes)\nhint: remove it; the next build makes a new one",
                path.display()
            )
        })
    }

    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        Ok(tempfile::NamedTempFile::new_in(self.session.path())?)
    }

    /// Move a finished blob into the store under its digest; returns (digest,
    /// size). A blob already there is kept only while its bytes are right.
    pub fn put_blob(&self, temp: tempfile::NamedTempFile) -> Result<(String, u64)> {
        let digest = hash_file(temp.path())?;
        let size = temp.as_file().metadata()?.len();
        temp.as_file().sync_all()?;
        let destination = self.layout.blob(&digest);
        if destination.exists() && hash_file(&destination).is_ok_and(|actual| actual == digest) {
            return Ok((digest, size));
        }
        temp.persist(&destination).with_context(|| format!("storing blob {digest}"))?;
        Ok((digest, size))
    }

    /// Open a blob after checking its bytes still hash to its name.
    pub fn open_blob(&self, digest: &str) -> Result<File> {
        let path = self.layout.blob(digest);
        let actual = hash_file(&path).with_context(|| format!("reading layer blob {digest}"))?;
        if actual != digest {
            return Err(Corrupt {
                what: format!("layer blob {digest}"),
                why: format!("its bytes hash to {actual}"),
                entry: CorruptEntry::Blob(digest.to_string()),
            }
            .into());
        }
        Ok(fs_err::File::open(&path)?.into_parts().0)
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        crate::digest::is_sha256_hex(digest) && self.layout.blob(digest).is_file()
    }

    /// The record of stage `key`, when it is a hit: consistent with itself
    /// ([`StageRecord::inconsistency`]) and its layer there.
    pub fn stage(&self, key: &str) -> Option<StageRecord> {
        if !crate::digest::is_sha256_hex(key) {
            return None;
        }
        let bytes = fs_err::read(self.layout.stage_record(key)).ok()?;
        let record: StageRecord = serde_json::from_slice(&bytes).ok()?;
        (record.inconsistency(key).is_none() && self.has_blob(&record.layer)).then_some(record)
    }

    /// Remove a corrupt entry: a blob and every record that uses it, or an
    /// output directory.
    /// Remove the kept tree `tree_id` and its record unless a build is using
    /// it (its lock is held): `true` when it is gone.
    pub fn discard_kept_tree(&self, tree_id: &str) -> Result<bool> {
        let path = self.layout.kept_tree(tree_id);
        let lock = path.with_extension("lock");
        let _alone = if lock.exists() {
            match crate::fileops::try_lock_file(&lock)? {
                Some(alone) => Some(alone),
                None => return Ok(false),
            }
        } else {
            None
        };
        if fs_err::symlink_metadata(&path).is_ok() {
            remove_tree(&path)?;
        }
        let _ = fs_err::remove_file(self.layout.kept_tree_record(tree_id));
        let _ = fs_err::remove_file(self.layout.kept_tree_owner(tree_id));
        Ok(true)
    }

    pub fn discard(&self, entry: &CorruptEntry) -> Result<()> {
        match entry {
            CorruptEntry::Blob(digest) => {
                if crate::digest::is_sha256_hex(digest) {
                    let _ = fs_err::remove_file(self.layout.blob(digest));
                }
                for path in fs_err::read_dir(self.layout.stages())?.flatten().map(|entry| entry.path()) {
                    let uses = fs_err::read(&path)
                        .ok()
                        .and_then(|bytes| serde_json::from_slice::<StageRecord>(&bytes).ok())
                        .is_some_and(|record| &record.layer == digest);
                    if uses {
                        fs_err::remove_file(&path)?;
                    }
                }
            }
            CorruptEntry::Output(key) => remove_tree(&self.layout.output(key))?,
            CorruptEntry::Record(key) => {
                if crate::digest::is_sha256_hex(key) {
                    let _ = fs_err::remove_file(self.layout.stage_record(key));
                }
            }
            CorruptEntry::File(path) => {
                if path.starts_with(self.layout.root()) {
                    let _ = fs_err::remove_file(path);
                }
            }
            CorruptEntry::KeptTree(tree_id) => {
                if crate::digest::is_sha256_hex(tree_id) {
                    self.discard_kept_tree(tree_id)?;
                }
            }
        }
        Ok(())
    }

    pub fn put_stage(&self, record: &StageRecord) -> Result<()> {
        self.write_atomic(&self.layout.stage_record(&record.key), &serde_json::to_vec_pretty(record)?)?;
        let history = self.layout.history_record(&record.recipe, &record.stage);
        fs_err::create_dir_all(history.parent().expect("a history record is in a recipe's dir"))?;
        self.write_atomic(&history, &serde_json::to_vec_pretty(&record.inputs)?)
    }

    /// The inputs of the last build of `stage` in `recipe`, for `plan --explain`.
    pub fn last_inputs(&self, recipe: &str, stage: &str) -> Option<KeyInputs> {
        let bytes = fs_err::read(self.layout.history_record(recipe, stage)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The record of the outputs stored under `key`, in the type that wrote it.
    pub fn output<R: DeserializeOwned>(&self, key: &str) -> Option<R> {
        let bytes = fs_err::read(self.layout.output(key).join(OUTPUT_RECORD)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Move a directory of assembled outputs into place under `key`: `true`
    /// when it is the entry now, `false` when another build's was there first.
    pub fn put_output(&self, key: &str, staged: &Path, record: &impl Serialize) -> Result<bool> {
        fs_err::write(staged.join(OUTPUT_RECORD), serde_json::to_vec_pretty(record)?)?;
        let destination = self.layout.output(key);
        match fs_err::rename(staged, &destination) {
            Ok(()) => Ok(true),
            // Another build stored the same outputs first: theirs are as good
            // (and are checked like any cached entry when published).
            Err(_) if destination.join(OUTPUT_RECORD).exists() => Ok(false),
            Err(error) => Err(error).with_context(|| format!("storing outputs {key}")),
        }
    }
}

/// The record in each output directory.
pub const OUTPUT_RECORD: &str = "record.json";

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
            // The lock goes only with its tree: a tree this process may not
            // remove (files of a rootless build's subordinate ids, seen from
            // outside its namespace) stays a known leftover for the next build.
            if file.try_lock_exclusive().unwrap_or(false) && remove_tree(&path.with_extension("")).is_ok() {
                let _ = fs_err::remove_file(&path);
            }
        } else if !path.with_extension("lock").exists() {
            let old = fs_err::symlink_metadata(&path)
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ORPHAN_AGE);
            if old {
                let _ = remove_tree(&path).or_else(|_| fs_err::remove_file(&path));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn blobs_are_stored_by_digest_and_checked_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut temp = store.temp_file().unwrap();
        temp.write_all(b"layer bytes").unwrap();
        let (digest, size) = store.put_blob(temp).unwrap();
        assert_eq!((digest.as_str(), size), (crate::digest::sha256_hex(b"layer bytes").as_str(), 11));
        assert!(store.has_blob(&digest));
        assert!(!store.has_blob("../../etc/passwd"), "a name that is not a digest is never a blob");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut store.open_blob(&digest).unwrap(), &mut text).unwrap();
        assert_eq!(text, "layer bytes");
        fs_err::write(store.layout().blob(&digest), b"flipped").unwrap();
        let error = store.open_blob(&digest).unwrap_err().to_string();
        assert!(error.contains("is corrupt"), "{error}");
    }

    #[test]
    fn outputs_are_read_back_in_the_type_that_wrote_them() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Made {
            key: String,
            files: std::collections::BTreeMap<String, String>,
            created: u64,
            extra: u32,
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let staged = store.work_dir("outputs").unwrap();
        let outputs = staged.path().join("o");
        fs_err::create_dir(&outputs).unwrap();
        let made = Made { key: "k".repeat(64), files: Default::default(), created: 1, extra: 7 };
        assert!(store.put_output(&made.key, &outputs, &made).unwrap(), "the first is stored");
        // Another build's outputs for the same key, stored second: the first stay.
        let second = staged.path().join("second");
        fs_err::create_dir(&second).unwrap();
        fs_err::write(second.join("file"), b"theirs").unwrap();
        assert!(!store.put_output(&made.key, &second, &made).unwrap(), "the second is not the entry");
        assert!(!store.layout().output(&made.key).join("file").exists());
        assert_eq!(store.output::<Made>(&made.key), Some(made));
        assert!(store.output::<Made>(&"0".repeat(64)).is_none());
    }

    #[test]
    fn work_dirs_of_dead_builds_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let live = store.work_dir("live").unwrap();
        // A dead build's dir: its lock file exists but nobody holds it.
        let dead = store.layout().tmp().join("dead-x");
        fs_err::create_dir(&dead).unwrap();
        fs_err::write(dead.with_extension("lock"), b"").unwrap();
        let _other = Store::open(dir.path()).unwrap();
        assert!(!dead.exists(), "the dead build's dir was not swept");
        assert!(live.path().exists(), "a running build's dir was taken");
    }

    #[test]
    fn a_record_is_checked_against_what_it_claims() {
        let inputs = KeyInputs {
            format: crate::cache::CACHE_FORMAT,
            kind: "run".into(),
            kind_version: 1,
            arch: "amd64".into(),
            source_date_epoch: 0,
            parent: None,
            params: serde_json::json!({}),
            files: Vec::new(),
            remote: Default::default(),
        };
        let layer = "a".repeat(64);
        let key = inputs.key();
        let good = StageRecord {
            key: key.clone(),
            recipe: "r".into(),
            stage: "s".into(),
            kind: "run".into(),
            tree: super::super::key::tree_id(None, &layer),
            layer: layer.clone(),
            layer_size: 1,
            inputs,
            seconds: 0.0,
            created: 0,
            products: None,
            owners_recorded: true,
        };
        assert_eq!(good.inconsistency(&key), None);
        let with = |change: &dyn Fn(&mut StageRecord)| {
            let mut record = good.clone();
            change(&mut record);
            record.inconsistency(&key).unwrap_or_default()
        };
        assert!(with(&|r| r.key = "b".repeat(64)).contains("stored as"));
        assert!(with(&|r| r.layer = "../../etc/passwd".into()).contains("not a digest"));
        assert!(with(&|r| r.layer = "c".repeat(64)).contains("tree id"));
        assert!(with(&|r| r.owners_recorded = false).contains("true owners"));
        assert!(with(&|r| r.products = Some(Products { dir: "../../elsewhere".into(), details: Default::default() }))
            .contains("not named by a digest"));
    }
}
