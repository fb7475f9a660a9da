//! `cache ls`, `cache gc` and `cache verify`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::layout::Collect;
use super::store::{CorruptEntry, OutputHeader, StageRecord, Store, OUTPUT_RECORD};
use crate::digest::hash_file;
use crate::fileops::remove_tree;
use crate::time::now_seconds;

#[derive(Debug, Clone, Serialize)]
pub struct CacheEntry {
    pub kind: String,
    pub key: String,
    pub recipe: String,
    pub stage: String,
    pub size: u64,
    pub created: u64,
}

#[derive(Debug)]
pub struct GcOptions {
    /// Remove the oldest entries until the cache holds at most this many bytes.
    pub keep_size: Option<u64>,
    /// Remove entries created longer ago than this many seconds.
    pub older_than: Option<u64>,
    /// Never remove entries younger than this: a build may be about to use them.
    pub grace_seconds: u64,
}

impl GcOptions {
    pub fn new(keep_size: Option<u64>, older_than: Option<u64>) -> GcOptions {
        GcOptions { keep_size, older_than, grace_seconds: GC_GRACE_SECONDS }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub removed_stages: usize,
    pub removed_outputs: usize,
    pub removed_blobs: usize,
    pub removed_kernels: usize,
    /// Entries removed from the least-recently-used areas, by area.
    pub removed_other: std::collections::BTreeMap<String, usize>,
    pub freed_bytes: u64,
    pub kept_bytes: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub checked_blobs: usize,
    pub checked_stages: usize,
    pub checked_outputs: usize,
    pub checked_trees: usize,
    pub problems: Vec<String>,
    /// What `--repair` removes.
    #[serde(skip)]
    pub broken: Vec<CorruptEntry>,
}

/// Entries younger than this are never collected by default.
const GC_GRACE_SECONDS: u64 = 60;

/// One thing `gc` may remove, with when it was made or last used.
struct Candidate {
    at: u64,
    size: u64,
    what: Removal,
}

enum Removal {
    Stage(String),
    Output(String),
    /// An entry of a least-recently-used area: (area name, path).
    Loose(&'static str, PathBuf),
}

impl Store {
    pub fn stage_records(&self) -> Vec<StageRecord> {
        let mut records: Vec<StageRecord> = json_files(&self.layout().stages())
            .filter_map(|path| serde_json::from_slice(&fs_err::read(path).ok()?).ok())
            .collect();
        records.sort_by_key(|record| record.created);
        records
    }

    /// Every output record in the cache, with the size of its directory.
    pub fn output_headers(&self) -> Vec<(OutputHeader, u64)> {
        let Ok(entries) = fs_err::read_dir(self.layout().outputs()) else { return Vec::new() };
        let mut records: Vec<(OutputHeader, u64)> = entries
            .flatten()
            .filter_map(|entry| {
                let record: OutputHeader =
                    serde_json::from_slice(&fs_err::read(entry.path().join(OUTPUT_RECORD)).ok()?).ok()?;
                Some((record, dir_size(&entry.path())))
            })
            .collect();
        records.sort_by_key(|(record, _)| record.created);
        records
    }

    /// The entries of the least-recently-used areas: (area, path, last use, size).
    fn loose_entries(&self) -> Vec<(&'static str, PathBuf, u64, u64)> {
        let mut entries = Vec::new();
        for area in self.layout().areas().into_iter().filter(|area| area.collect == Collect::LeastRecentlyUsed) {
            let Ok(children) = fs_err::read_dir(&area.path) else { continue };
            for child in children.flatten() {
                let path = child.path();
                let name = child.file_name().to_string_lossy().into_owned();
                // Lock files, apt's own `lock` and `partial/`, and half-made entries are not entries.
                // A kept tree's record goes with its tree.
                if name.ends_with(".lock")
                    || name.ends_with(".record")
                    || name.ends_with(".recipe")
                    || name.ends_with(".evicted")
                    || name == "lock"
                    || name == "partial"
                    || name.starts_with('.')
                {
                    continue;
                }
                let Ok(metadata) = fs_err::symlink_metadata(&path) else { continue };
                let used = metadata
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let size = if metadata.is_dir() { dir_size(&path) } else { metadata.len() };
                entries.push((area.name, path, used, size));
            }
        }
        entries
    }

    /// Everything in the cache: stage records, outputs, and the entries of
    /// every other area that grows (pulled OCI blobs, kernel sources and
    /// builds, downloads, logs, apt's packages).
    pub fn list(&self) -> Vec<CacheEntry> {
        let mut entries: Vec<CacheEntry> = self
            .stage_records()
            .into_iter()
            .map(|record| CacheEntry {
                kind: record.kind,
                key: record.key,
                recipe: record.recipe,
                stage: record.stage,
                size: record.layer_size,
                created: record.created,
            })
            .collect();
        for (record, size) in self.output_headers() {
            entries.push(CacheEntry {
                kind: "outputs".into(),
                key: record.key,
                recipe: String::new(),
                stage: String::new(),
                size,
                created: record.created,
            });
        }
        let referenced = self.referenced_products();
        if let Ok(children) = fs_err::read_dir(self.layout().products()) {
            for child in children.flatten() {
                let name = child.file_name().to_string_lossy().into_owned();
                let used = child
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let stage = if referenced.contains(&name) { String::new() } else { "(unreferenced)".into() };
                entries.push(CacheEntry {
                    kind: "products".into(),
                    key: name,
                    recipe: String::new(),
                    stage,
                    size: dir_size(&child.path()),
                    created: used,
                });
            }
        }
        for (area, path, used, size) in self.loose_entries() {
            let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            entries.push(CacheEntry {
                kind: area.into(),
                key: name,
                recipe: String::new(),
                stage: String::new(),
                size,
                created: used,
            });
        }
        entries.sort_by_key(|entry| entry.created);
        entries
    }

    fn referenced_products(&self) -> BTreeSet<String> {
        self.stage_records().into_iter().filter_map(|record| record.products.map(|products| products.dir)).collect()
    }

    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let now = now_seconds();
        let mut report = GcReport::default();
        let mut candidates: Vec<Candidate> = Vec::new();
        for record in self.stage_records() {
            candidates.push(Candidate {
                at: record.created,
                size: record.layer_size,
                what: Removal::Stage(record.key),
            });
        }
        for (record, size) in self.output_headers() {
            candidates.push(Candidate { at: record.created, size, what: Removal::Output(record.key) });
        }
        for (area, path, used, size) in self.loose_entries() {
            candidates.push(Candidate { at: used, size, what: Removal::Loose(area, path) });
        }
        candidates.sort_by_key(|candidate| candidate.at);
        let mut total: u64 = candidates.iter().map(|candidate| candidate.size).sum();
        for candidate in candidates {
            if now.saturating_sub(candidate.at) < options.grace_seconds {
                continue;
            }
            let too_old = options.older_than.is_some_and(|limit| now.saturating_sub(candidate.at) > limit);
            let too_big = options.keep_size.is_some_and(|limit| total > limit);
            if !(too_old || too_big) {
                continue;
            }
            match candidate.what {
                Removal::Stage(key) => {
                    fs_err::remove_file(self.layout().stage_record(&key))?;
                    report.removed_stages += 1;
                }
                Removal::Output(key) => {
                    remove_tree(&self.layout().output(&key))?;
                    report.removed_outputs += 1;
                    report.freed_bytes += candidate.size;
                }
                Removal::Loose(area, path) => {
                    // A directory a running build holds (its `.lock` is taken) stays.
                    let lock = path.with_extension("lock");
                    let _held = if lock.exists() {
                        match crate::fileops::try_lock_file(&lock)? {
                            Some(held) => Some(held),
                            None => continue,
                        }
                    } else {
                        None
                    };
                    if path.is_dir() {
                        remove_tree(&path)?;
                    } else {
                        fs_err::remove_file(&path)?;
                    }
                    for sidecar in ["record", "recipe"] {
                        let _ = fs_err::remove_file(path.with_extension(sidecar));
                    }
                    *report.removed_other.entry(area.to_string()).or_default() += 1;
                    report.freed_bytes += candidate.size;
                }
            }
            total -= candidate.size;
        }
        // Blobs no record refers to any more.
        let referenced: BTreeSet<String> = self.stage_records().into_iter().map(|record| record.layer).collect();
        for entry in fs_err::read_dir(self.layout().blobs())?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !referenced.contains(&name) && age(&entry.path()) >= options.grace_seconds {
                report.freed_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs_err::remove_file(entry.path())?;
                report.removed_blobs += 1;
            }
        }
        // Products no stage record refers to any more.
        let referenced = self.referenced_products();
        if let Ok(entries) = fs_err::read_dir(self.layout().products()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !referenced.contains(&name) && age(&entry.path()) >= options.grace_seconds {
                    report.freed_bytes += dir_size(&entry.path());
                    remove_tree(&entry.path())?;
                    report.removed_kernels += 1;
                }
            }
        }
        report.kept_bytes = self.list().iter().map(|entry| entry.size).sum();
        Ok(report)
    }

    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        // Content-addressed areas: every entry hashes to its name.
        for area in self.layout().areas().into_iter().filter(|area| area.content_addressed) {
            let Ok(entries) = fs_err::read_dir(&area.path) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let label = if area.name == "layers" { "blob".to_string() } else { format!("{} blob", area.name) };
                report.checked_blobs += 1;
                let broken = if area.name == "layers" {
                    CorruptEntry::Blob(name.clone())
                } else {
                    CorruptEntry::File(entry.path())
                };
                match hash_file(&entry.path()) {
                    Ok(actual) if actual == name => {}
                    Ok(actual) => {
                        report.problems.push(format!("{label} {name}: its bytes hash to {actual}"));
                        report.broken.push(broken);
                    }
                    Err(error) => {
                        report.problems.push(format!("{label} {name}: {error}"));
                        report.broken.push(broken);
                    }
                }
            }
        }
        for path in json_files(&self.layout().stages()) {
            report.checked_stages += 1;
            let record: StageRecord = match fs_err::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
            {
                Ok(record) => record,
                Err(error) => {
                    report.problems.push(format!("stage record {}: {error}", path.display()));
                    report.broken.push(CorruptEntry::Record(
                        path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default(),
                    ));
                    continue;
                }
            };
            let short = &record.key[..record.key.len().min(12)];
            if !self.has_blob(&record.layer) {
                report.problems.push(format!("stage {} ({short}): layer {} is missing", record.stage, record.layer));
                report.broken.push(CorruptEntry::Record(record.key.clone()));
            }
            if let Some(products) = &record.products {
                let present = !products.dir.contains('/')
                    && self.layout().products_dir(&products.dir).join(PRODUCTS_RECORD).is_file();
                if !present {
                    report
                        .problems
                        .push(format!("stage {} ({short}): its products ({}) are missing", record.stage, products.dir));
                    report.broken.push(CorruptEntry::Record(record.key.clone()));
                }
            }
            let stored_as = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(why) = record.inconsistency(&stored_as) {
                report.problems.push(format!("stage {} ({short}): {why}", record.stage));
                report.broken.push(CorruptEntry::Record(stored_as));
            }
        }
        self.verify_kept_trees(&mut report);
        for (record, _) in self.output_headers() {
            report.checked_outputs += 1;
            for (file, digest) in &record.files {
                let path = self.layout().output(&record.key).join(file);
                let problem = match hash_file(&path) {
                    Ok(actual) if &actual == digest => continue,
                    Ok(_) => format!("outputs {}: {file} does not match its digest", &record.key[..12]),
                    Err(error) => format!("outputs {}: {file}: {error}", &record.key[..12]),
                };
                report.problems.push(problem);
                if !report.broken.contains(&CorruptEntry::Output(record.key.clone())) {
                    report.broken.push(CorruptEntry::Output(record.key.clone()));
                }
            }
        }
        Ok(report)
    }

    /// Every kept tree against its record, contents and all (a tree a build
    /// is making has no name of its own yet and is not looked at).
    fn verify_kept_trees(&self, report: &mut VerifyReport) {
        let Ok(entries) = fs_err::read_dir(self.layout().kept_trees()) else { return };
        for entry in entries.flatten() {
            let tree_id = entry.file_name().to_string_lossy().into_owned();
            if !crate::digest::is_sha256_hex(&tree_id) || !entry.path().is_dir() {
                continue;
            }
            report.checked_trees += 1;
            let record = self.layout().kept_tree_record(&tree_id);
            if let Err(difference) = super::tree_record::check_contents(&entry.path(), &record) {
                report.problems.push(format!("kept tree {}: {difference}", &tree_id[..12]));
                report.broken.push(CorruptEntry::KeptTree(tree_id));
            }
        }
    }

    /// Remove every broken entry `verify` found; returns how many.
    pub fn repair(&self, report: &VerifyReport) -> Result<usize> {
        for entry in &report.broken {
            self.discard(entry)?;
        }
        Ok(report.broken.len())
    }
}

/// The record every products directory holds (written last, so a directory
/// without it is incomplete).
pub const PRODUCTS_RECORD: &str = "record.json";

fn age(path: &Path) -> u64 {
    fs_err::symlink_metadata(path)
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json_files(dir: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    fs_err::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
}

fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::cache::{KeyInputs, CACHE_FORMAT};

    fn record(store: &Store, stage: &str, bytes: &[u8], created: u64) -> StageRecord {
        let mut temp = store.temp_file().unwrap();
        temp.write_all(bytes).unwrap();
        let (layer, layer_size) = store.put_blob(temp).unwrap();
        let inputs = KeyInputs {
            format: CACHE_FORMAT,
            kind: "run".into(),
            kind_version: 1,
            arch: "amd64".into(),
            source_date_epoch: 0,
            parent: None,
            params: serde_json::json!({ "stage": stage }),
            files: Vec::new(),
            remote: Default::default(),
        };
        let record = StageRecord {
            key: inputs.key(),
            recipe: "r".into(),
            stage: stage.into(),
            kind: "run".into(),
            tree: crate::cache::tree_id(None, &layer),
            layer,
            layer_size,
            inputs,
            seconds: 0.0,
            created,
            products: None,
            owners_recorded: true,
        };
        store.put_stage(&record).unwrap();
        record
    }

    #[test]
    fn gc_removes_oldest_first_and_unreferenced_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = record(&store, "old", &[1u8; 1000], 100);
        let new = record(&store, "new", &[2u8; 1000], 200);
        let report = store.gc(&GcOptions { keep_size: Some(1500), older_than: None, grace_seconds: 0 }).unwrap();
        assert_eq!(report.removed_stages, 1);
        assert_eq!(report.removed_blobs, 1);
        assert!(store.stage(&old.key).is_none());
        assert!(store.stage(&new.key).is_some());
        assert!(store.verify().unwrap().problems.is_empty());
        let report = store.gc(&GcOptions { keep_size: None, older_than: Some(60), grace_seconds: 0 }).unwrap();
        assert_eq!(report.removed_stages, 1);
        assert!(store.list().is_empty());
    }

    #[test]
    fn gc_spares_young_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fresh = record(&store, "fresh", b"x", now_seconds());
        store.gc(&GcOptions::new(Some(0), None)).unwrap();
        assert!(store.stage(&fresh.key).is_some());
    }

    #[test]
    fn verify_finds_a_corrupt_layer_and_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let corrupt = record(&store, "corrupt", b"good bytes", 1);
        let missing = record(&store, "missing", b"other bytes", 1);
        fs_err::write(store.layout().blob(&corrupt.layer), b"bad bytes").unwrap();
        fs_err::remove_file(store.layout().blob(&missing.layer)).unwrap();
        let problems = store.verify().unwrap().problems;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("hash to")));
        assert!(problems.iter().any(|p| p.contains("is missing")));
        // A corrupt layer is never applied: opening it fails.
        assert!(store.open_blob(&corrupt.layer).unwrap_err().to_string().contains("corrupt"));
    }

    #[test]
    fn gc_and_ls_reach_pulled_oci_blobs_and_kernel_sources() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layout = store.layout().clone();
        let blob = layout.oci_blob(&crate::digest::sha256_hex(b"pulled"));
        fs_err::write(&blob, b"pulled").unwrap();
        let source = layout.kernel_source(&"5".repeat(64));
        fs_err::create_dir_all(&source).unwrap();
        fs_err::write(source.join("Makefile"), vec![0u8; 4096]).unwrap();
        let kinds: Vec<String> = store.list().into_iter().map(|entry| entry.kind).collect();
        assert!(kinds.contains(&"oci-blobs".to_string()) && kinds.contains(&"kernel-src".to_string()), "{kinds:?}");
        // A flipped pulled blob is a problem `verify` names.
        fs_err::write(&blob, b"flipped").unwrap();
        assert!(store.verify().unwrap().problems.iter().any(|problem| problem.contains("oci-blobs blob")));
        let report = store.gc(&GcOptions { keep_size: Some(0), older_than: None, grace_seconds: 0 }).unwrap();
        assert!(!blob.exists() && !source.exists(), "gc left them: {report:?}");
        assert_eq!(report.removed_other.get("oci-blobs"), Some(&1));
        assert_eq!(report.removed_other.get("kernel-src"), Some(&1));
    }

    #[test]
    fn gc_and_ls_reach_the_squashfs_block_cache_one_setting_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layout = store.layout().clone();
        for settings in ["zstd-15-131072", "xz-6-131072"] {
            for block in [b"one".as_slice(), b"two"] {
                let entry = layout.squashfs_block(settings, &crate::digest::sha256_hex(block));
                fs_err::create_dir_all(entry.parent().unwrap()).unwrap();
                fs_err::write(&entry, [&[1u8][..], block].concat()).unwrap();
            }
        }
        let listed: Vec<String> =
            store.list().into_iter().filter(|entry| entry.kind == "squashfs-blocks").map(|entry| entry.key).collect();
        assert_eq!(listed.len(), 2, "one entry per setting: {listed:?}");
        let report = store.gc(&GcOptions { keep_size: Some(0), older_than: None, grace_seconds: 0 }).unwrap();
        assert_eq!(report.removed_other.get("squashfs-blocks"), Some(&2));
        assert!(!layout.squashfs_blocks().join("zstd-15-131072").exists());
    }
}
