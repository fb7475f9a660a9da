//! A bundle as rootsmith reads it back: `OUT/NAME/VERSION` with its
//! `manifest.json`, the names of its files, and listing the bundles under an
//! `--out` directory. A bundle on disk is untrusted input: its manifest is
//! checked before any name in it becomes a path.

pub mod files;
pub mod manifest;
pub mod names;
pub mod signature;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use manifest::Manifest;
use names::MANIFEST;

/// A published bundle: `OUT/NAME/VERSION` with its manifest.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The SHA-256 of the `manifest.json` read.
    pub manifest_sha256: String,
}

/// A name and version users give to find a bundle (`release show NAME
/// VERSION`, `promote NAME FROM TO`): checked as a recipe's are, since both
/// become directories under `--out`.
pub fn check_id(name: &str, version: &str) -> Result<()> {
    if !crate::names::valid_name(name) {
        bail!("{name:?} is not a valid name: lower-case letters, digits, `.`, `_` and `-`, starting with a letter or digit");
    }
    crate::names::check_version(version).map_err(|why| anyhow::anyhow!("{version:?} is not a valid version: {why}"))
}

impl Bundle {
    /// Read the manifest of the bundle in `dir` and check it
    /// ([`Manifest::problems`]): a bundle on disk is untrusted input, and no
    /// name in its manifest becomes a path before it passes. `manifest.json`
    /// must be a regular file of reasonable size.
    pub fn open(dir: &Path) -> Result<Bundle> {
        let path = dir.join(MANIFEST);
        let bytes = match files::read(dir, MANIFEST, files::MAX_INDEX_BYTES) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("{} is not a bundle (no manifest.json)", dir.display()))
            }
            other => other?,
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} does not follow the manifest schema", path.display()))?;
        let problems = manifest.problems();
        if !problems.is_empty() {
            bail!("{} is not a manifest rootsmith accepts: {}", path.display(), problems.join("; "));
        }
        Ok(Bundle { dir: dir.to_path_buf(), manifest, manifest_sha256: crate::digest::sha256_hex(&bytes) })
    }

    /// The bundle `name` `version` under `out`: both are checked
    /// ([`check_id`]) before anything is read, and the bundle found there
    /// must be that one ([`Bundle::check_place`]).
    pub fn open_in(out: &Path, name: &str, version: &str) -> Result<Bundle> {
        check_id(name, version)?;
        let bundle = Bundle::open(&out.join(name).join(version))?;
        bundle.check_place()?;
        Ok(bundle)
    }

    /// A bundle is what its place says: `OUT/NAME/VERSION` with a manifest
    /// naming that recipe and version. One copied or moved into another
    /// version's (or recipe's) directory is refused, naming both.
    pub fn check_place(&self) -> Result<()> {
        let (name, version) = (&self.manifest.name, &self.manifest.version);
        let place = |path: &Path| -> Option<(String, String)> {
            Some((
                path.parent()?.file_name()?.to_string_lossy().into_owned(),
                path.file_name()?.to_string_lossy().into_owned(),
            ))
        };
        // The path as given (a symlinked `current`, say), else where it leads.
        let places: Vec<(String, String)> = [std::path::absolute(&self.dir).ok(), fs_err::canonicalize(&self.dir).ok()]
            .into_iter()
            .flatten()
            .filter_map(|path| place(&path))
            .collect();
        if places.iter().any(|(n, v)| n == name && v == version) {
            return Ok(());
        }
        let (dir_name, dir_version) = places.into_iter().next().unwrap_or_default();
        if &dir_version != version {
            bail!(
                "{}: manifest.json says version {version}, but the bundle is in the directory of version {dir_version:?}: a bundle copied or moved into another version's directory is not that version\nhint: a bundle sits in OUT/{name}/{version}; make a new version with `rootsmith build --version` or `rootsmith release promote`",
                self.dir.display()
            );
        }
        bail!("{}: manifest.json names the recipe {name}, but the bundle is in the directory of {dir_name:?} (a bundle sits in OUT/{name}/{version})", self.dir.display())
    }

    /// The size the manifest states for its artifact `name`.
    pub fn stated_size(&self, name: &str) -> Result<u64> {
        match self.manifest.artifacts.iter().find(|artifact| artifact.name == name) {
            Some(artifact) => Ok(artifact.size),
            None => bail!("{name} is not among the artifacts of {}'s manifest", self.dir.display()),
        }
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

/// A directory under `OUT/NAME/` with a `manifest.json` that cannot be read,
/// is not accepted, or belongs to another place.
#[derive(Debug)]
pub struct Broken {
    pub dir: PathBuf,
    pub error: anyhow::Error,
}

/// The bundles under an `--out` directory, and the directories that look
/// like bundles but are broken.
#[derive(Debug, Default)]
pub struct Listing {
    pub bundles: Vec<Bundle>,
    pub broken: Vec<Broken>,
}

/// Every bundle under `out` (`OUT/NAME/VERSION`), sorted by name then
/// version; a broken one is listed apart and does not hide the others.
pub fn list(out: &Path) -> Result<Listing> {
    let mut listing = Listing::default();
    let Ok(names) = fs_err::read_dir(out) else { return Ok(listing) };
    let hidden = |entry: &fs_err::DirEntry| entry.file_name().to_string_lossy().starts_with('.');
    for name in names {
        let name = name?;
        if !name.file_type()?.is_dir() || hidden(&name) {
            continue;
        }
        let versions = match fs_err::read_dir(name.path()) {
            Ok(versions) => versions,
            Err(error) => {
                listing.broken.push(Broken { dir: name.path(), error: error.into() });
                continue;
            }
        };
        for version in versions {
            let version = version?;
            let dir = version.path();
            // A link is no version (`stable -> 2.0.0-rc1` would list that
            // version twice): named, not followed.
            if version.file_type()?.is_symlink() && !hidden(&version) {
                let target = fs_err::read_link(&dir).map(|t| t.display().to_string()).unwrap_or_default();
                listing.broken.push(Broken { dir, error: anyhow::anyhow!("a symlink (to {target}), not a version: rootsmith lists, verifies and promotes versions where they are") });
                continue;
            }
            // Not a bundle at all (no manifest.json): not listed, not broken.
            if hidden(&version) || fs_err::symlink_metadata(dir.join(MANIFEST)).is_err() {
                continue;
            }
            match Bundle::open(&dir).and_then(|bundle| bundle.check_place().map(|()| bundle)) {
                Ok(bundle) => listing.bundles.push(bundle),
                Err(error) => listing.broken.push(Broken { dir, error }),
            }
        }
    }
    listing.bundles.sort_by(|a, b| {
        (&a.manifest.name, version_key(&a.manifest.version)).cmp(&(&b.manifest.name, version_key(&b.manifest.version)))
    });
    listing.broken.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(listing)
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

    /// `OUT/NAME/VERSION` with the manifest of `manifest`.
    fn publish(out: &Path, dir: &str, manifest: &Manifest) -> PathBuf {
        let dir = out.join(dir);
        fs_err::create_dir_all(&dir).unwrap();
        manifest::write_index(&dir, manifest).unwrap();
        dir
    }

    #[test]
    fn a_tampered_manifest_is_refused_before_its_names_are_used() {
        let out = tempfile::tempdir().unwrap();
        let mut manifest = manifest::sample("rel", "1.0.0");
        manifest.artifacts[0].name = "../../../x".into();
        let dir = publish(out.path(), "rel/1.0.0", &manifest);
        let error = format!("{:#}", Bundle::open(&dir).unwrap_err());
        assert!(
            error.contains("is not a manifest rootsmith accepts")
                && error.contains("\"../../../x\" is not a file a bundle may hold"),
            "{error}"
        );
        // A FIFO for a manifest is named, not waited on.
        let fifo = out.path().join("fifo/1.0.0");
        fs_err::create_dir_all(&fifo).unwrap();
        nix::unistd::mkfifo(&fifo.join(MANIFEST), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(format!("{:#}", Bundle::open(&fifo).unwrap_err()).contains("is a FIFO"));
    }

    #[test]
    fn names_and_versions_to_find_a_bundle_are_checked_before_anything_is_read() {
        let out = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        publish(outside.path(), "rel/1.0.0", &manifest::sample("rel", "1.0.0"));
        let from = format!("../../{}/rel/1.0.0", outside.path().display());
        for (name, version) in [
            ("rel", from.as_str()),
            ("../rel", "1.0.0"),
            ("rel", "../1.0.0"),
            ("rel", "/1.0.0"),
            ("", "1.0.0"),
            ("rel", ""),
        ] {
            let error = format!("{:#}", Bundle::open_in(out.path(), name, version).unwrap_err());
            assert!(error.contains("is not a valid"), "{name} {version}: {error}");
        }
    }

    #[test]
    fn a_bundle_is_what_its_place_says() {
        let out = tempfile::tempdir().unwrap();
        let good = publish(out.path(), "rel/1.0.0", &manifest::sample("rel", "1.0.0"));
        assert_eq!(Bundle::open_in(out.path(), "rel", "1.0.0").unwrap().dir, good);
        // Copied into another version's directory, and another recipe's.
        publish(out.path(), "rel/1.0.1", &manifest::sample("rel", "1.0.0"));
        let error = format!("{:#}", Bundle::open_in(out.path(), "rel", "1.0.1").unwrap_err());
        assert!(
            error.contains("manifest.json says version 1.0.0, but the bundle is in the directory of version \"1.0.1\""),
            "{error}"
        );
        publish(out.path(), "other/1.0.0", &manifest::sample("rel", "1.0.0"));
        let error = format!("{:#}", Bundle::open_in(out.path(), "other", "1.0.0").unwrap_err());
        assert!(
            error.contains("manifest.json names the recipe rel, but the bundle is in the directory of \"other\""),
            "{error}"
        );
        // A symlink to a version's directory is that version.
        std::os::unix::fs::symlink("1.0.0", out.path().join("rel/current")).unwrap();
        assert!(Bundle::open(&out.path().join("rel/current")).unwrap().check_place().is_ok());
        // `.` inside the bundle.
        assert!(Bundle::open(&good.join(".")).unwrap().check_place().is_ok());
    }

    #[test]
    fn ls_lists_the_good_bundles_and_names_the_broken_ones() {
        let out = tempfile::tempdir().unwrap();
        publish(out.path(), "rel/1.0.0", &manifest::sample("rel", "1.0.0"));
        publish(out.path(), "rel/1.1.0-rc1", &manifest::sample("rel", "1.1.0-rc1"));
        publish(out.path(), "rel/1.0.1", &manifest::sample("rel", "1.0.0"));
        fs_err::create_dir_all(out.path().join("rel/2.0.0")).unwrap();
        fs_err::write(out.path().join("rel/2.0.0/manifest.json"), "{").unwrap();
        fs_err::create_dir_all(out.path().join("rel/not-a-bundle")).unwrap();
        fs_err::create_dir_all(out.path().join("rel/.1.2.0.partial-x")).unwrap();
        let listing = list(out.path()).unwrap();
        let versions: Vec<&str> = listing.bundles.iter().map(|b| b.manifest.version.as_str()).collect();
        assert_eq!(versions, ["1.0.0", "1.1.0-rc1"]);
        let broken: Vec<String> = listing
            .broken
            .iter()
            .map(|b| format!("{}: {:#}", b.dir.strip_prefix(out.path()).unwrap().display(), b.error))
            .collect();
        assert_eq!(broken.len(), 2, "{broken:?}");
        assert!(broken[0].starts_with("rel/1.0.1: ") && broken[0].contains("says version 1.0.0"), "{broken:?}");
        assert!(
            broken[1].starts_with("rel/2.0.0: ") && broken[1].contains("does not follow the manifest schema"),
            "{broken:?}"
        );
    }
}
