//! Stage cache keys: the SHA-256 of a canonical JSON encoding of every input.
//!
//! | input              | what it is                                                       |
//! |--------------------|------------------------------------------------------------------|
//! | `format`           | [`CACHE_FORMAT`]: bump when the layout or a stage's behaviour changes |
//! | `kind`, `kind_version` | the stage kind and the version of its implementation         |
//! | `arch`             | the recipe's architecture                                        |
//! | `source_date_epoch`| mtimes are clamped to it inside layers                           |
//! | `parent`           | the tree id of the stage before (its whole output, by digest)    |
//! | `params`           | the stage's parameters after variable substitution               |
//! | `files`            | every local file the stage reads: path, type, mode, SHA-256      |
//! | `remote`           | remote inputs resolved to a digest (the mirror's `InRelease`)    |
//!
//! Serde writes struct fields in declaration order and `BTreeMap`s sorted, so
//! the same inputs always give the same bytes and the same key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::sha256_hex;

/// The on-disk cache format and key scheme. Bump it when a cached layer built
/// by an older rootsmith would no longer be what this one builds.
pub const CACHE_FORMAT: u32 = 1;

/// Everything that decides what a stage produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub format: u32,
    pub kind: String,
    pub kind_version: u32,
    pub arch: String,
    pub source_date_epoch: i64,
    pub parent: Option<String>,
    pub params: serde_json::Value,
    pub files: Vec<FileDigest>,
    pub remote: BTreeMap<String, String>,
}

/// One local file or directory entry a stage reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: String,
    pub kind: String,
    pub mode: u32,
    /// SHA-256 of the content (files), of the target (symlinks) or of
    /// `MAJOR:MINOR` (device nodes); empty for directories and FIFOs.
    pub sha256: String,
}

impl KeyInputs {
    pub fn key(&self) -> String {
        sha256_hex(&serde_json::to_vec(self).expect("key inputs serialize"))
    }

    /// The inputs that differ from `previous`, as `dotted.path: old → new` lines.
    pub fn differences(&self, previous: &KeyInputs) -> Vec<String> {
        let mut old = BTreeMap::new();
        let mut new = BTreeMap::new();
        flatten("", &serde_json::to_value(previous).unwrap(), &mut old);
        flatten("", &serde_json::to_value(self).unwrap(), &mut new);
        let mut lines = Vec::new();
        for (path, value) in &new {
            match old.get(path) {
                None => lines.push(format!("{path}: added ({value})")),
                Some(before) if before != value => lines.push(format!("{path}: {before} → {value}")),
                _ => {}
            }
        }
        for (path, value) in &old {
            if !new.contains_key(path) {
                lines.push(format!("{path}: removed (was {value})"));
            }
        }
        lines
    }
}

/// Files are listed by their path, so a changed file shows as `files[PATH]`.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&path, child, out);
            }
        }
        serde_json::Value::Array(items) if prefix == "files" => {
            for item in items {
                let name = item.get("path").and_then(|p| p.as_str()).unwrap_or("?");
                let summary = format!(
                    "{} {:o} {}",
                    item["kind"].as_str().unwrap_or(""),
                    item["mode"].as_u64().unwrap_or(0),
                    short(item["sha256"].as_str().unwrap_or(""))
                );
                out.insert(format!("files[{name}]"), summary);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// The id of the tree after a stage: its parent tree and its own layer.
pub fn tree_id(parent: Option<&str>, layer_digest: &str) -> String {
    sha256_hex(format!("{}\n{layer_digest}", parent.unwrap_or("")).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> KeyInputs {
        KeyInputs {
            format: CACHE_FORMAT,
            kind: "run".into(),
            kind_version: 1,
            arch: "amd64".into(),
            source_date_epoch: 1,
            parent: Some("p".into()),
            params: serde_json::json!({"sh": "true"}),
            files: vec![FileDigest { path: "a.sh".into(), kind: "file".into(), mode: 0o755, sha256: "00".into() }],
            remote: BTreeMap::from([("apt".into(), "r".into())]),
        }
    }

    #[test]
    fn same_inputs_same_key() {
        assert_eq!(inputs().key(), inputs().key());
        assert_eq!(inputs().key().len(), 64);
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = inputs().key();
        type Mutation = Box<dyn Fn(&mut KeyInputs)>;
        let mutations: Vec<(&str, Mutation)> = vec![
            ("format", Box::new(|i| i.format += 1)),
            ("kind", Box::new(|i| i.kind = "files".into())),
            ("kind_version", Box::new(|i| i.kind_version += 1)),
            ("arch", Box::new(|i| i.arch = "arm64".into())),
            ("epoch", Box::new(|i| i.source_date_epoch = 2)),
            ("parent", Box::new(|i| i.parent = Some("q".into()))),
            ("params", Box::new(|i| i.params = serde_json::json!({"sh": "false"}))),
            ("file content", Box::new(|i| i.files[0].sha256 = "01".into())),
            ("file mode", Box::new(|i| i.files[0].mode = 0o644)),
            ("file path", Box::new(|i| i.files[0].path = "b.sh".into())),
            ("remote", Box::new(|i| i.remote.insert("apt".into(), "s".into()).map(|_| ()).unwrap_or(()))),
        ];
        for (name, mutate) in mutations {
            let mut changed = inputs();
            mutate(&mut changed);
            assert_ne!(changed.key(), base, "{name} did not change the key");
        }
    }

    #[test]
    fn differences_name_the_changed_input() {
        let mut changed = inputs();
        changed.files[0].sha256 = "ff".into();
        changed.params = serde_json::json!({"sh": "false"});
        let lines = changed.differences(&inputs());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("files[a.sh]: file 755 00 → file 755 ff"), "{lines:?}");
        assert!(lines[1].starts_with("params.sh: \"true\" → \"false\""), "{lines:?}");
    }
}
