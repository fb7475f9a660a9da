//! A bundle as rootsmith reads it back: `OUT/NAME/VERSION` with its
//! `manifest.json`, the names of its files, and listing the bundles under an
//! `--out` directory. A bundle on disk is untrusted input: its manifest is
//! checked before any name in it becomes a path.

pub mod manifest;
pub mod names;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use manifest::Manifest;

/// A published bundle: `OUT/NAME/VERSION` with its manifest.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Bundle {
    pub fn open(dir: &Path) -> Result<Bundle> {
        let path = dir.join("manifest.json");
        let bytes = fs_err::read(&path).with_context(|| format!("{} is not a bundle (no manifest.json)", dir.display()))?;
        let manifest = serde_json::from_slice(&bytes).with_context(|| format!("{} does not follow the manifest schema", path.display()))?;
        Ok(Bundle { dir: dir.to_path_buf(), manifest })
    }

    /// Total bytes of its artifacts.
    pub fn size(&self) -> u64 {
        self.manifest.artifacts.iter().map(|artifact| artifact.size).sum()
    }

    /// A version with a pre-release part (`1.2.0-rc2`) is a candidate; one
    /// without (`1.2.0`) is released.
    pub fn state(&self) -> &'static str {
        if self.manifest.version.contains('-') {
            "candidate"
        } else {
            "released"
        }
    }
}

/// Every bundle under `out` (`OUT/NAME/VERSION`), sorted by name then version.
pub fn list(out: &Path) -> Result<Vec<Bundle>> {
    let mut bundles = Vec::new();
    let Ok(names) = fs_err::read_dir(out) else { return Ok(bundles) };
    for name in names {
        let name = name?;
        if !name.file_type()?.is_dir() {
            continue;
        }
        for version in fs_err::read_dir(name.path())? {
            let version = version?;
            let hidden = version.file_name().to_string_lossy().starts_with('.');
            if !hidden && version.path().join("manifest.json").is_file() {
                bundles.push(Bundle::open(&version.path())?);
            }
        }
    }
    bundles.sort_by(|a, b| (&a.manifest.name, version_key(&a.manifest.version)).cmp(&(&b.manifest.name, version_key(&b.manifest.version))));
    Ok(bundles)
}

/// Numbers compare as numbers, and `1.0.0-rc1` comes before `1.0.0`.
fn version_key(version: &str) -> (Vec<(u64, String)>, bool, String) {
    let (release, pre) = version.split_once('-').map(|(r, p)| (r, Some(p))).unwrap_or((version, None));
    let parts = release.split('.').map(|part| (part.parse().unwrap_or(u64::MAX), part.to_string())).collect();
    (parts, pre.is_none(), pre.unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_releases() {
        let mut versions = vec!["1.10.0", "1.2.0", "1.2.0-rc2", "1.2.0-rc1", "0.9"];
        versions.sort_by_key(|v| version_key(v));
        assert_eq!(versions, ["0.9", "1.2.0-rc1", "1.2.0-rc2", "1.2.0", "1.10.0"]);
    }
}
