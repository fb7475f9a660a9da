//! `cache ls`, `cache gc` and `cache verify`.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::store::{hash_file, now_seconds, remove_tree, OutputRecord, StageRecord, Store};

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
    pub freed_bytes: u64,
    pub kept_bytes: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub checked_blobs: usize,
    pub checked_stages: usize,
    pub checked_outputs: usize,
    pub problems: Vec<String>,
}

/// Entries younger than this are never collected by default.
const GC_GRACE_SECONDS: u64 = 60;

impl Store {
    pub fn stage_records(&self) -> Vec<StageRecord> {
        let mut records: Vec<StageRecord> = json_files(&self.stages_dir()).filter_map(|path| serde_json::from_slice(&std::fs::read(path).ok()?).ok()).collect();
        records.sort_by_key(|record| record.created);
        records
    }

    fn output_records(&self) -> Vec<(OutputRecord, u64)> {
        let Ok(entries) = std::fs::read_dir(self.outputs_dir()) else { return Vec::new() };
        let mut records: Vec<(OutputRecord, u64)> = entries
            .flatten()
            .filter_map(|entry| {
                let record: OutputRecord = serde_json::from_slice(&std::fs::read(entry.path().join("record.json")).ok()?).ok()?;
                Some((record, dir_size(&entry.path())))
            })
            .collect();
        records.sort_by_key(|(record, _)| record.created);
        records
    }

    pub fn list(&self) -> Vec<CacheEntry> {
        let mut entries: Vec<CacheEntry> = self
            .stage_records()
            .into_iter()
            .map(|record| CacheEntry { kind: record.kind, key: record.key, recipe: record.recipe, stage: record.stage, size: record.layer_size, created: record.created })
            .collect();
        for (record, size) in self.output_records() {
            entries.push(CacheEntry { kind: "outputs".into(), key: record.key, recipe: String::new(), stage: String::new(), size, created: record.created });
        }
        entries.sort_by_key(|entry| entry.created);
        entries
    }

    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let now = now_seconds();
        let mut report = GcReport::default();
        let mut candidates: Vec<(u64, u64, Candidate)> = Vec::new();
        for record in self.stage_records() {
            candidates.push((record.created, record.layer_size, Candidate::Stage(record.key)));
        }
        for (record, size) in self.output_records() {
            candidates.push((record.created, size, Candidate::Output(record.key)));
        }
        candidates.sort_by_key(|(created, ..)| *created);
        let mut total: u64 = candidates.iter().map(|(_, size, _)| size).sum();
        for (created, size, candidate) in candidates {
            if now.saturating_sub(created) < options.grace_seconds {
                continue;
            }
            let too_old = options.older_than.is_some_and(|limit| now.saturating_sub(created) > limit);
            let too_big = options.keep_size.is_some_and(|limit| total > limit);
            if !(too_old || too_big) {
                continue;
            }
            match candidate {
                Candidate::Stage(key) => {
                    std::fs::remove_file(self.stages_dir().join(format!("{key}.json")))?;
                    report.removed_stages += 1;
                }
                Candidate::Output(key) => {
                    remove_tree(&self.output_dir(&key))?;
                    report.removed_outputs += 1;
                    report.freed_bytes += size;
                }
            }
            total -= size;
        }
        // Blobs no record refers to any more.
        let referenced: BTreeSet<String> = self.stage_records().into_iter().map(|record| record.layer).collect();
        for entry in std::fs::read_dir(self.blobs_dir())?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let age = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).map(|d| d.as_secs()).unwrap_or(0);
            if !referenced.contains(&name) && age >= options.grace_seconds {
                report.freed_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(entry.path())?;
                report.removed_blobs += 1;
            }
        }
        // Kernel products no stage record refers to any more.
        let kernels: BTreeSet<String> = self.stage_records().into_iter().filter_map(|record| record.kernel.map(|kernel| kernel.products)).collect();
        if let Ok(entries) = std::fs::read_dir(self.root().join("kernels")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let age = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).map(|d| d.as_secs()).unwrap_or(0);
                if !kernels.contains(&name) && age >= options.grace_seconds {
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
        for entry in std::fs::read_dir(self.blobs_dir())?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            report.checked_blobs += 1;
            match hash_file(&entry.path()) {
                Ok(actual) if actual == name => {}
                Ok(actual) => report.problems.push(format!("blob {name}: its bytes hash to {actual}")),
                Err(error) => report.problems.push(format!("blob {name}: {error}")),
            }
        }
        for path in json_files(&self.stages_dir()) {
            report.checked_stages += 1;
            let record: StageRecord = match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string())) {
                Ok(record) => record,
                Err(error) => {
                    report.problems.push(format!("stage record {}: {error}", path.display()));
                    continue;
                }
            };
            if !self.blobs_dir().join(&record.layer).is_file() {
                report.problems.push(format!("stage {} ({}): layer {} is missing", record.stage, &record.key[..12], record.layer));
            }
            if let Some(kernel) = &record.kernel {
                if !self.root().join("kernels").join(&kernel.products).join("vmlinuz").is_file() {
                    report.problems.push(format!("stage {} ({}): the products of kernel {} are missing", record.stage, &record.key[..12], kernel.release));
                }
            }
            if record.inputs.key() != record.key {
                report.problems.push(format!("stage {} ({}): its recorded inputs hash to another key", record.stage, &record.key[..12]));
            }
        }
        for (record, _) in self.output_records() {
            report.checked_outputs += 1;
            for (file, digest) in &record.files {
                let path = self.output_dir(&record.key).join(file);
                match hash_file(&path) {
                    Ok(actual) if &actual == digest => {}
                    Ok(_) => report.problems.push(format!("outputs {}: {file} does not match its digest", &record.key[..12])),
                    Err(error) => report.problems.push(format!("outputs {}: {file}: {error}", &record.key[..12])),
                }
            }
        }
        Ok(report)
    }
}

enum Candidate {
    Stage(String),
    Output(String),
}

fn json_files(dir: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|entry| entry.path()).filter(|path| path.extension().is_some_and(|e| e == "json"))
}

fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir).into_iter().flatten().filter_map(|entry| entry.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
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
        let record = StageRecord { key: inputs.key(), recipe: "r".into(), stage: stage.into(), kind: "run".into(), layer, layer_size, tree: "t".into(), inputs, seconds: 0.0, created, kernel: None };
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
        std::fs::write(store.blobs_dir().join(&corrupt.layer), b"bad bytes").unwrap();
        std::fs::remove_file(store.blobs_dir().join(&missing.layer)).unwrap();
        let problems = store.verify().unwrap().problems;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("hash to")));
        assert!(problems.iter().any(|p| p.contains("is missing")));
        // A corrupt layer is never applied: opening it fails.
        assert!(store.open_blob(&corrupt.layer).unwrap_err().to_string().contains("corrupt"));
    }
}
