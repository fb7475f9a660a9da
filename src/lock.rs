//! Lock files: `rootsmith lock RECIPE` writes `RECIPE.lock` (beside the recipe,
//! `.yaml` replaced by `.lock`) with every remote input the plan resolved
//! (the mirror's `InRelease` digests, kernel source packages) and the exact
//! version of every package installed in the final tree. `build --locked`
//! checks the mirror still has each version, pins apt to exactly those (an
//! apt preferences file while each stage runs) and refuses to publish a tree
//! whose packages differ from the lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub lock: u32,
    pub recipe: String,
    /// The recipe text's SHA-256: a changed recipe makes the lock stale.
    pub recipe_sha256: String,
    /// What each remote input resolved to (URL or package → digest).
    pub remote: BTreeMap<String, String>,
    /// Every package installed in the final tree → its version.
    pub packages: BTreeMap<String, String>,
}

/// `recipes/demo.yaml` → `recipes/demo.lock`.
pub fn path_for(recipe: &Path) -> PathBuf {
    recipe.with_extension("lock")
}

pub fn read(path: &Path) -> Result<Lock> {
    let text = fs_err::read_to_string(path)
        .with_context(|| format!("no lock file {}\nhint: write it with `rootsmith lock`", path.display()))?;
    let lock: Lock =
        serde_yaml::from_str(&text).with_context(|| format!("{} is not a rootsmith lock file", path.display()))?;
    if lock.lock != LOCK_VERSION {
        bail!("{} is lock format {}, this rootsmith reads {LOCK_VERSION}", path.display(), lock.lock);
    }
    Ok(lock)
}

pub fn write(path: &Path, lock: &Lock) -> Result<()> {
    let text = format!(
        "# Written by `rootsmith lock`; `rootsmith build --locked` installs exactly these.\n{}",
        serde_yaml::to_string(lock)?
    );
    let temp = path.with_extension("lock.partial");
    fs_err::write(&temp, text)?;
    fs_err::rename(&temp, path)?;
    Ok(())
}

impl Lock {
    /// The lock's identity, for stage keys and the manifest.
    pub fn digest(&self) -> String {
        crate::digest::sha256_hex(&serde_json::to_vec(self).expect("a lock serializes"))
    }

    /// An apt preferences file that makes every locked version the only candidate.
    pub fn apt_pins(&self) -> String {
        let mut text = String::from("# rootsmith build --locked: exactly the versions of the lock file\n");
        for (name, version) in &self.packages {
            let name = name.split(':').next().unwrap_or(name);
            text.push_str(&format!("\nPackage: {name}\nPin: version {version}\nPin-Priority: 1001\n"));
        }
        text
    }

    /// Why the lock no longer describes `recipe_sha256` and the plan's remote inputs.
    pub fn staleness(&self, recipe_sha256: &str, remote: &BTreeMap<String, String>) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.recipe_sha256 != recipe_sha256 {
            reasons.push("the recipe changed since it was locked".to_string());
        }
        for (input, digest) in remote {
            match self.remote.get(input) {
                Some(locked) if locked != digest => reasons.push(format!("{input} changed since it was locked")),
                None => reasons.push(format!("{input} is not in the lock")),
                _ => {}
            }
        }
        reasons
    }

    /// Locked package versions `available` lacks, each with what it has.
    pub fn missing_from(&self, available: &BTreeMap<String, std::collections::BTreeSet<String>>) -> Vec<String> {
        let mut missing = Vec::new();
        for (name, version) in &self.packages {
            let bare = name.split(':').next().unwrap_or(name);
            match available.get(bare) {
                Some(versions) if versions.contains(version) => {}
                Some(versions) => missing.push(format!(
                    "{bare} {version} (the mirror has {})",
                    versions.iter().cloned().collect::<Vec<_>>().join(", ")
                )),
                None => missing.push(format!("{bare} {version} (the mirror has no such package)")),
            }
        }
        missing
    }

    /// How `installed` differs from the lock.
    pub fn differences(&self, installed: &BTreeMap<String, String>) -> Vec<String> {
        let mut lines = Vec::new();
        for (name, version) in &self.packages {
            match installed.get(name) {
                None => lines.push(format!("{name} {version} is locked but not installed")),
                Some(actual) if actual != version => lines.push(format!("{name} is {actual}, the lock says {version}")),
                _ => {}
            }
        }
        for (name, version) in installed {
            if !self.packages.contains_key(name) {
                lines.push(format!("{name} {version} is installed but not locked"));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> Lock {
        Lock {
            lock: 1,
            recipe: "demo".into(),
            recipe_sha256: "r".into(),
            remote: [("http://m/dists/bookworm/InRelease".to_string(), "aa".to_string())].into(),
            packages: [("curl".to_string(), "7.88.1-10".to_string()), ("libc6:i386".to_string(), "2.36-9".to_string())]
                .into(),
        }
    }

    #[test]
    fn round_trips_and_pins_every_package() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("demo.yaml"));
        assert_eq!(path.file_name().unwrap(), "demo.lock");
        write(&path, &lock()).unwrap();
        assert_eq!(read(&path).unwrap(), lock());
        let pins = lock().apt_pins();
        assert!(pins.contains("\nPackage: curl\nPin: version 7.88.1-10\nPin-Priority: 1001\n"));
        assert!(pins.contains("\nPackage: libc6\nPin: version 2.36-9\n"));
    }

    #[test]
    fn says_what_is_stale_missing_or_different() {
        let remote: BTreeMap<String, String> =
            [("http://m/dists/bookworm/InRelease".to_string(), "bb".to_string())].into();
        assert_eq!(
            lock().staleness("r2", &remote),
            vec![
                "the recipe changed since it was locked",
                "http://m/dists/bookworm/InRelease changed since it was locked"
            ]
        );
        assert!(lock().staleness("r", &lock().remote).is_empty());
        let available = [("curl".to_string(), ["7.88.1-10+deb12u5".to_string()].into())].into();
        assert_eq!(
            lock().missing_from(&available),
            vec!["curl 7.88.1-10 (the mirror has 7.88.1-10+deb12u5)", "libc6 2.36-9 (the mirror has no such package)"]
        );
        let installed = crate::artifact::packages::parse("curl\t7.88.1-11\tamd64\njq\t1.6\tamd64\n", Some("amd64"));
        assert_eq!(
            lock().differences(&installed),
            vec![
                "curl is 7.88.1-11, the lock says 7.88.1-10",
                "libc6:i386 2.36-9 is locked but not installed",
                "jq 1.6 is installed but not locked"
            ]
        );
    }
}
