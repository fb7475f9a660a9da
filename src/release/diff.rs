//! `release diff NAME A B`: what changed between two versions: packages
//! added, removed or changed (with versions), each kernel's release and
//! configuration options, artifact sizes, the stage keys that differ, and the
//! rootfs's files added, removed or changed (with sizes, modes and owners).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::tree::{entries, Entry};
use super::Bundle;
use crate::bundle::files;
use crate::bundle::names::{KERNEL_DIR, PACKAGES};

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Diff {
    pub from: String,
    pub to: String,
    /// name → version
    pub packages_added: BTreeMap<String, String>,
    pub packages_removed: BTreeMap<String, String>,
    /// name → (from, to)
    pub packages_changed: BTreeMap<String, (String, String)>,
    pub kernels: Vec<KernelDiff>,
    pub artifacts: Vec<ArtifactDelta>,
    /// stage → (from key, to key); `None` where the stage is absent
    pub stages: BTreeMap<String, (Option<String>, Option<String>)>,
    /// The rootfs's files that changed.
    pub files: FilesDiff,
}

/// Paths of the rootfs added, removed or changed (content, type, mode or
/// owner; a changed mtime alone is not a change).
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct FilesDiff {
    pub added: BTreeMap<String, Entry>,
    pub removed: BTreeMap<String, Entry>,
    /// path → (from, to)
    pub changed: BTreeMap<String, (Entry, Entry)>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct KernelDiff {
    pub name: String,
    pub release: (Option<String>, Option<String>),
    /// option → (from, to); `n` for "is not set" or absent
    pub options: BTreeMap<String, (String, String)>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ArtifactDelta {
    /// With the version replaced by `VERSION`.
    pub name: String,
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// A text file of a bundle, read as [`files::read`] allows: no further than
/// the size the manifest states (a kernel config it does not list, as far as
/// [`files::MAX_INDEX_BYTES`]); empty when there is none or it cannot be read.
fn text(bundle: &Bundle, name: &str) -> String {
    let limit = bundle.stated_size(name).unwrap_or(files::MAX_INDEX_BYTES);
    files::read(&bundle.dir, name, limit).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
}

/// Each package of a bundle's `packages.txt`, keyed `name:arch` (`name` for `all`).
fn packages(bundle: &Bundle) -> BTreeMap<String, String> {
    crate::artifact::packages::parse(&text(bundle, PACKAGES), None)
}

/// `CONFIG_X=v` lines and `# CONFIG_X is not set` (as `n`).
pub fn config_options(text: &str) -> BTreeMap<String, String> {
    let mut options = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ").and_then(|rest| rest.strip_suffix(" is not set")) {
            options.insert(rest.to_string(), "n".to_string());
        } else if let Some((key, value)) = line.split_once('=') {
            if key.starts_with("CONFIG_") {
                options.insert(key.to_string(), value.to_string());
            }
        }
    }
    options
}

fn generic(name: &str, bundle: &Bundle) -> String {
    let prefix = crate::bundle::names::BundleNames::new(&bundle.manifest.name, &bundle.manifest.version).prefix();
    match name.strip_prefix(&prefix) {
        Some(rest) => format!("{}-VERSION-{rest}", bundle.manifest.name),
        None => name.to_string(),
    }
}

/// The rootfs files of two bundles compared.
fn files(a: &Bundle, b: &Bundle) -> anyhow::Result<FilesDiff> {
    let (left, right) = (entries(a, &a.manifest.boot.rootfs_image)?, entries(b, &b.manifest.boot.rootfs_image)?);
    let mut files = FilesDiff::default();
    for (path, entry) in &right {
        match left.get(path) {
            None => {
                files.added.insert(path.clone(), entry.clone());
            }
            Some(old) if Entry { mtime: entry.mtime, ..old.clone() } != *entry => {
                files.changed.insert(path.clone(), (old.clone(), entry.clone()));
            }
            Some(_) => {}
        }
    }
    for (path, entry) in &left {
        if !right.contains_key(path) {
            files.removed.insert(path.clone(), entry.clone());
        }
    }
    Ok(files)
}

pub fn diff(a: &Bundle, b: &Bundle) -> anyhow::Result<Diff> {
    let mut diff = Diff { from: a.manifest.version.clone(), to: b.manifest.version.clone(), ..Diff::default() };
    let (pa, pb) = (packages(a), packages(b));
    for (name, version) in &pb {
        match pa.get(name) {
            None => {
                diff.packages_added.insert(name.clone(), version.clone());
            }
            Some(old) if old != version => {
                diff.packages_changed.insert(name.clone(), (old.clone(), version.clone()));
            }
            Some(_) => {}
        }
    }
    for (name, version) in &pa {
        if !pb.contains_key(name) {
            diff.packages_removed.insert(name.clone(), version.clone());
        }
    }
    let kernel_names: BTreeSet<&String> =
        a.manifest.kernels.iter().chain(&b.manifest.kernels).map(|k| &k.name).collect();
    for name in kernel_names {
        let find =
            |bundle: &Bundle| bundle.manifest.kernels.iter().find(|k| &k.name == name).map(|k| k.release.clone());
        let config = |bundle: &Bundle| config_options(&text(bundle, &format!("{KERNEL_DIR}/{name}-config")));
        let (ca, cb) = (config(a), config(b));
        let mut options = BTreeMap::new();
        for key in ca.keys().chain(cb.keys()) {
            let (va, vb) = (
                ca.get(key).cloned().unwrap_or_else(|| "n".into()),
                cb.get(key).cloned().unwrap_or_else(|| "n".into()),
            );
            if va != vb {
                options.insert(key.clone(), (va, vb));
            }
        }
        let release = (find(a), find(b));
        if release.0 != release.1 || !options.is_empty() {
            diff.kernels.push(KernelDiff { name: name.clone(), release, options });
        }
    }
    let sizes = |bundle: &Bundle| -> BTreeMap<String, u64> {
        bundle.manifest.artifacts.iter().map(|artifact| (generic(&artifact.name, bundle), artifact.size)).collect()
    };
    let (sa, sb) = (sizes(a), sizes(b));
    for name in sa.keys().chain(sb.keys()).collect::<BTreeSet<_>>() {
        let (from, to) = (sa.get(name).copied(), sb.get(name).copied());
        if from != to {
            diff.artifacts.push(ArtifactDelta { name: name.clone(), from, to });
        }
    }
    let keys = |bundle: &Bundle| -> BTreeMap<String, String> {
        bundle.manifest.stages.iter().map(|stage| (stage.name.clone(), stage.key.clone())).collect()
    };
    let (ka, kb) = (keys(a), keys(b));
    for name in ka.keys().chain(kb.keys()).collect::<BTreeSet<_>>() {
        let (from, to) = (ka.get(name).cloned(), kb.get(name).cloned());
        if from != to {
            diff.stages.insert(name.clone(), (from, to));
        }
    }
    diff.files = files(a, b)?;
    Ok(diff)
}

impl Diff {
    pub fn render(&self) -> String {
        let mut out = format!("{} → {}\n", self.from, self.to);
        let short = |key: &Option<String>| {
            key.as_deref().map(|k| k[..12.min(k.len())].to_string()).unwrap_or_else(|| "-".into())
        };
        if self.packages_added.is_empty() && self.packages_removed.is_empty() && self.packages_changed.is_empty() {
            out.push_str("packages: no change\n");
        } else {
            out.push_str("packages:\n");
            for (name, version) in &self.packages_added {
                out.push_str(&format!("  + {name} {version}\n"));
            }
            for (name, version) in &self.packages_removed {
                out.push_str(&format!("  - {name} {version}\n"));
            }
            for (name, (from, to)) in &self.packages_changed {
                out.push_str(&format!("  ~ {name} {from} → {to}\n"));
            }
        }
        for kernel in &self.kernels {
            let release = |r: &Option<String>| r.clone().unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "kernel {}: {} → {}\n",
                kernel.name,
                release(&kernel.release.0),
                release(&kernel.release.1)
            ));
            for (option, (from, to)) in &kernel.options {
                out.push_str(&format!("  {option}: {from} → {to}\n"));
            }
        }
        if !self.artifacts.is_empty() {
            out.push_str("artifacts:\n");
            for delta in &self.artifacts {
                let size = |s: Option<u64>| s.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                let change = match (delta.from, delta.to) {
                    (Some(a), Some(b)) => format!(" ({:+})", b as i64 - a as i64),
                    _ => String::new(),
                };
                out.push_str(&format!("  {}: {} → {} bytes{change}\n", delta.name, size(delta.from), size(delta.to)));
            }
        }
        if !self.stages.is_empty() {
            out.push_str("stage keys:\n");
            for (name, (from, to)) in &self.stages {
                out.push_str(&format!("  {name}: {} → {}\n", short(from), short(to)));
            }
        }
        let files = &self.files;
        if files.added.is_empty() && files.removed.is_empty() && files.changed.is_empty() {
            out.push_str("files: no change\n");
        } else {
            out.push_str(&format!(
                "files: {} added, {} removed, {} changed\n",
                files.added.len(),
                files.removed.len(),
                files.changed.len()
            ));
            let describe = |entry: &Entry| match entry.kind {
                "file" => format!("{} {} {}:{} {} B", entry.kind, entry.mode, entry.uid, entry.gid, entry.size),
                "symlink" => format!("symlink → {}", entry.content),
                _ => format!("{} {} {}:{}", entry.kind, entry.mode, entry.uid, entry.gid),
            };
            for (path, entry) in &files.added {
                out.push_str(&format!("  + {path} ({})\n", describe(entry)));
            }
            for (path, entry) in &files.removed {
                out.push_str(&format!("  - {path} ({})\n", describe(entry)));
            }
            for (path, (from, to)) in &files.changed {
                let mut what = Vec::new();
                if from.kind != to.kind {
                    what.push(format!("{} → {}", from.kind, to.kind));
                }
                if from.content != to.content {
                    what.push(if to.kind == "file" {
                        format!("content, {} → {} B", from.size, to.size)
                    } else {
                        format!("{} → {}", from.content, to.content)
                    });
                }
                if from.mode != to.mode {
                    what.push(format!("mode {} → {}", from.mode, to.mode));
                }
                if (from.uid, from.gid) != (to.uid, to.gid) {
                    what.push(format!("owner {}:{} → {}:{}", from.uid, from.gid, to.uid, to.gid));
                }
                out.push_str(&format!("  ~ {path} ({})\n", what.join(", ")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_options_read_set_and_unset() {
        let options = config_options("#\n# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_C=\"x=y\"\n# comment\n");
        assert_eq!(options["CONFIG_A"], "n");
        assert_eq!(options["CONFIG_B"], "y");
        assert_eq!(options["CONFIG_C"], "\"x=y\"");
        assert_eq!(options.len(), 3);
    }
}
