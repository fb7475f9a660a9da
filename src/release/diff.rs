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
    /// The diff as text: the versions, a summary line with each section's
    /// count, then each section. A section's lines are shown when they are
    /// few (at most [`SHOWN_LINES`]), or when `view` asks for them all
    /// (`--full`) or for that section (`--section NAME`); a longer one says
    /// how many it holds and how to see them.
    pub fn render(&self, view: &View) -> String {
        let sections = self.sections();
        let mut out = format!("{} → {}\n", self.from, self.to);
        let counts: Vec<String> =
            sections.iter().map(|section| format!("{} {}", section.name, section.count)).collect();
        out.push_str(&format!("summary: {}\n", counts.join(", ")));
        for section in &sections {
            if view.section.as_deref().is_some_and(|only| only != section.name) {
                continue;
            }
            out.push_str(&section.header);
            out.push('\n');
            let all = view.full || view.section.is_some();
            if all || section.lines.len() <= SHOWN_LINES {
                for line in &section.lines {
                    out.push_str(&format!("  {line}\n"));
                }
            } else {
                out.push_str(&format!(
                    "  ({} lines: release diff … --section {} shows them, --full shows every section)\n",
                    section.lines.len(),
                    section.name
                ));
            }
        }
        out
    }

    /// Every section of the text, in order.
    fn sections(&self) -> Vec<Section> {
        let short = |key: &Option<String>| {
            key.as_deref().map(|k| k[..12.min(k.len())].to_string()).unwrap_or_else(|| "-".into())
        };
        let mut sections = Vec::new();
        let mut packages: Vec<String> = Vec::new();
        packages.extend(self.packages_added.iter().map(|(name, version)| format!("+ {name} {version}")));
        packages.extend(self.packages_removed.iter().map(|(name, version)| format!("- {name} {version}")));
        packages.extend(self.packages_changed.iter().map(|(name, (from, to))| format!("~ {name} {from} → {to}")));
        let header = if packages.is_empty() { "packages: no change".to_string() } else { "packages:".to_string() };
        let count =
            format!("+{} -{} ~{}", self.packages_added.len(), self.packages_removed.len(), self.packages_changed.len());
        sections.push(Section { name: "packages", count, header, lines: packages });
        for kernel in &self.kernels {
            let release = |r: &Option<String>| r.clone().unwrap_or_else(|| "-".into());
            let lines: Vec<String> =
                kernel.options.iter().map(|(option, (from, to))| format!("{option}: {from} → {to}")).collect();
            sections.push(Section {
                name: "kernel",
                count: format!("{} {} options", kernel.name, lines.len()),
                header: format!(
                    "kernel {}: {} → {}",
                    kernel.name,
                    release(&kernel.release.0),
                    release(&kernel.release.1)
                ),
                lines,
            });
        }
        if !self.artifacts.is_empty() {
            let lines = self
                .artifacts
                .iter()
                .map(|delta| {
                    let size = |s: Option<u64>| s.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                    let change = match (delta.from, delta.to) {
                        (Some(a), Some(b)) => format!(" ({:+})", b as i64 - a as i64),
                        _ => String::new(),
                    };
                    format!("{}: {} → {} bytes{change}", delta.name, size(delta.from), size(delta.to))
                })
                .collect::<Vec<_>>();
            sections.push(Section {
                name: "artifacts",
                count: lines.len().to_string(),
                header: "artifacts:".into(),
                lines,
            });
        }
        if !self.stages.is_empty() {
            let lines = self
                .stages
                .iter()
                .map(|(name, (from, to))| format!("{name}: {} → {}", short(from), short(to)))
                .collect::<Vec<_>>();
            sections.push(Section {
                name: "stages",
                count: lines.len().to_string(),
                header: "stage keys:".into(),
                lines,
            });
        }
        sections.push(self.files_section());
        sections
    }

    fn files_section(&self) -> Section {
        let files = &self.files;
        let count = format!("+{} -{} ~{}", files.added.len(), files.removed.len(), files.changed.len());
        if files.added.is_empty() && files.removed.is_empty() && files.changed.is_empty() {
            return Section { name: "files", count, header: "files: no change".into(), lines: Vec::new() };
        }
        let header = format!(
            "files: {} added, {} removed, {} changed",
            files.added.len(),
            files.removed.len(),
            files.changed.len()
        );
        let describe = |entry: &Entry| match entry.kind {
            "file" => format!("{} {} {}:{} {} B", entry.kind, entry.mode, entry.uid, entry.gid, entry.size),
            "symlink" => format!("symlink → {}", entry.content),
            _ => format!("{} {} {}:{}", entry.kind, entry.mode, entry.uid, entry.gid),
        };
        let mut lines = Vec::new();
        lines.extend(files.added.iter().map(|(path, entry)| format!("+ {path} ({})", describe(entry))));
        lines.extend(files.removed.iter().map(|(path, entry)| format!("- {path} ({})", describe(entry))));
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
            lines.push(format!("~ {path} ({})", what.join(", ")));
        }
        Section { name: "files", count, header, lines }
    }
}

/// A section is shown whole when it has at most this many lines.
pub const SHOWN_LINES: usize = 40;

/// The sections `release diff --section` names.
pub const SECTIONS: [&str; 5] = ["packages", "kernel", "artifacts", "stages", "files"];

/// What the text shows: every line (`--full`), or one section's.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub full: bool,
    pub section: Option<String>,
}

/// One section of the text: its name, its count for the summary, its header
/// line and its lines.
struct Section {
    name: &'static str,
    count: String,
    header: String,
    lines: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_section_is_summed_up_unless_asked_for() {
        let options: BTreeMap<String, (String, String)> =
            (0..11_823).map(|n| (format!("CONFIG_{n:05}"), ("n".to_string(), "y".to_string()))).collect();
        let mut diff = Diff {
            from: "1.0.0".into(),
            to: "1.1.0".into(),
            packages_added: BTreeMap::from([("jq:amd64".to_string(), "1.6-2.1".to_string())]),
            packages_removed: BTreeMap::new(),
            packages_changed: BTreeMap::new(),
            kernels: vec![KernelDiff { name: "debian".into(), release: (None, Some("6.1.0".into())), options }],
            artifacts: Vec::new(),
            stages: BTreeMap::new(),
            files: FilesDiff::default(),
        };
        let text = diff.render(&View::default());
        assert!(text.lines().count() < 12, "{text}");
        assert!(text.contains("summary: packages +1 -0 ~0, kernel debian 11823 options, files +0 -0 ~0\n"), "{text}");
        assert!(text.contains("  + jq:amd64 1.6-2.1\n"), "a short section is shown whole: {text}");
        assert!(text.contains("(11823 lines: release diff … --section kernel shows them"), "{text}");
        let kernel = diff.render(&View { full: false, section: Some("kernel".into()) });
        assert_eq!(kernel.lines().filter(|line| line.starts_with("  CONFIG_")).count(), 11_823);
        assert!(!kernel.contains("jq:amd64"), "only the section asked for");
        assert_eq!(diff.render(&View { full: true, section: None }).lines().count(), text.lines().count() + 11_822);
        diff.kernels.clear();
        assert!(diff.render(&View::default()).contains("packages:\n  + jq"));
    }

    #[test]
    fn config_options_read_set_and_unset() {
        let options = config_options("#\n# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_C=\"x=y\"\n# comment\n");
        assert_eq!(options["CONFIG_A"], "n");
        assert_eq!(options["CONFIG_B"], "y");
        assert_eq!(options["CONFIG_C"], "\"x=y\"");
        assert_eq!(options.len(), 3);
    }
}
