//! `release verify DIR`: is a bundle what its manifest says? Every check is
//! reported, passed or failed, so one run shows everything wrong:
//! the manifest's schema, SHA256SUMS against the files (and no file missing
//! or unlisted), the initramfs's chunk list against rootfs.img, the cookie
//! pair, and the squashfs read back with backhand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rootsmith_init::contract::{BuildId, ChunkList};
use serde::Serialize;

use crate::bundle::manifest::{Manifest, MANIFEST_VERSION};

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bundle: PathBuf,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|finding| finding.ok)
    }

    /// The failures, one per line (for errors that quote a verify).
    pub fn failures(&self) -> String {
        self.findings.iter().filter(|f| !f.ok).map(|f| format!("{}: {}", f.check, f.detail)).collect::<Vec<_>>().join("\n")
    }

    fn add(&mut self, check: &'static str, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        self.findings.push(Finding { check, ok, detail });
    }
}

/// `HEX  NAME` lines.
fn parse_sums(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut sums = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let Some((digest, name)) = line.split_once("  ") else {
            return Err(format!("SHA256SUMS line {} is not `HEX  NAME`", number + 1));
        };
        sums.insert(name.to_string(), digest.to_string());
    }
    Ok(sums)
}

/// Every file under `dir`, as paths relative to it.
fn files_in(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| !entry.file_type().is_dir())
        .filter_map(|entry| entry.path().strip_prefix(dir).ok().map(|p| p.to_string_lossy().into_owned()))
        .collect()
}

fn check_manifest(dir: &Path) -> Result<(Manifest, String), String> {
    let bytes = fs_err::read(dir.join("manifest.json")).map_err(|error| format!("manifest.json: {error}"))?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|error| format!("manifest.json does not follow the schema: {error}"))?;
    if manifest.manifest_version != MANIFEST_VERSION {
        return Err(format!("manifest_version {} (this rootsmith reads {MANIFEST_VERSION})", manifest.manifest_version));
    }
    let (dir_version, dir_name) = (dir.file_name().map(|n| n.to_string_lossy().into_owned()), dir.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()));
    if dir_version.as_deref() == Some(manifest.version.as_str()) && dir_name.as_deref() != Some(manifest.name.as_str()) {
        return Err(format!("the bundle is in {}, but its manifest names {}", dir.display(), manifest.name));
    }
    Ok((manifest.clone(), format!("{} {}, schema {MANIFEST_VERSION}", manifest.name, manifest.version)))
}

fn check_sums(dir: &Path, manifest: &Manifest) -> Result<String, String> {
    let text = fs_err::read_to_string(dir.join("SHA256SUMS")).map_err(|error| format!("SHA256SUMS: {error}"))?;
    let sums = parse_sums(&text)?;
    let mut problems = Vec::new();
    for (name, digest) in &sums {
        let path = dir.join(name);
        match crate::digest::hash_file(&path) {
            Err(_) => problems.push(format!("{name} is missing")),
            Ok(actual) if &actual != digest => problems.push(format!("{name} differs: SHA256SUMS says {digest}, the file is {actual}")),
            Ok(_) => {}
        }
    }
    for artifact in &manifest.artifacts {
        if sums.get(&artifact.name) != Some(&artifact.sha256) {
            problems.push(format!("{} is in manifest.json with sha256 {}, but SHA256SUMS {}", artifact.name, artifact.sha256, sums.get(&artifact.name).map(|d| format!("says {d}")).unwrap_or("lacks it".into())));
        }
    }
    let listed: Vec<&String> = sums.keys().collect();
    for file in files_in(dir) {
        if file != "SHA256SUMS" && !sums.contains_key(&file) {
            problems.push(format!("{file} is not in SHA256SUMS"));
        }
    }
    if !sums.contains_key("manifest.json") {
        problems.push("manifest.json is not in SHA256SUMS".into());
    }
    if problems.is_empty() {
        Ok(format!("{} files match", listed.len()))
    } else {
        Err(problems.join("; "))
    }
}

/// What the initramfs expects (its build id and chunk list), read once.
type Contract = Result<(BuildId, ChunkList), String>;
/// Where the squashfs lies in rootfs.img and the build id it carries, read once.
type RootfsImage = Result<(u64, u64, BuildId), String>;

fn check_chunks(contract: &Contract, rootfs: &Path) -> Result<String, String> {
    let (_, expected) = contract.as_ref().map_err(Clone::clone)?;
    let file = std::fs::File::open(rootfs).map_err(|error| format!("{}: {error}", rootfs.display()))?;
    let actual = ChunkList::from_reader(std::io::BufReader::new(file), expected.chunk_size).map_err(|error| error.to_string())?;
    if actual.size != expected.size {
        return Err(format!("rootfs.img is {} bytes, the initramfs's chunk list says {}", actual.size, expected.size));
    }
    if let Some(index) = expected.digests.iter().zip(&actual.digests).position(|(a, b)| a != b) {
        return Err(format!("chunk {index} (byte offset {}) of rootfs.img does not match the initramfs's chunk list", index as u64 * expected.chunk_size));
    }
    Ok(format!("{} chunks of {} KiB match", expected.digests.len(), expected.chunk_size >> 10))
}

fn check_cookies(contract: &Contract, image: &RootfsImage, manifest: &Manifest) -> Result<String, String> {
    let (expected, _) = contract.as_ref().map_err(Clone::clone)?;
    let (_, _, found) = image.as_ref().map_err(Clone::clone)?;
    if expected != found {
        return Err(format!("the initramfs expects {expected}, rootfs.img is {found}"));
    }
    if found.cookie != manifest.rootfs.cookie {
        return Err(format!("rootfs.img is {found}, manifest.json says cookie {}", manifest.rootfs.cookie));
    }
    Ok(found.to_string())
}

fn check_squashfs(image: &RootfsImage, rootfs: &Path, manifest: &Manifest) -> Result<String, String> {
    let (offset, _, _) = image.as_ref().map_err(Clone::clone)?;
    let reader = std::io::BufReader::new(fs_err::File::open(rootfs).map_err(|error| error.to_string())?);
    let filesystem = backhand::FilesystemReader::from_reader_with_offset(reader, *offset).map_err(|error| format!("backhand cannot read the squashfs: {error}"))?;
    let entries = filesystem.files().count() as u64;
    if entries != manifest.rootfs.squashfs_entries {
        return Err(format!("the squashfs holds {entries} entries, manifest.json says {}", manifest.rootfs.squashfs_entries));
    }
    Ok(format!("{entries} entries"))
}

pub fn verify(dir: &Path) -> Report {
    let mut report = Report { bundle: dir.to_path_buf(), findings: Vec::new() };
    let manifest = match check_manifest(dir) {
        Ok((manifest, detail)) => {
            report.add("manifest", Ok(detail));
            manifest
        }
        Err(detail) => {
            report.add("manifest", Err(detail));
            return report;
        }
    };
    report.add("SHA256SUMS", check_sums(dir, &manifest));
    let rootfs = dir.join(&manifest.boot.rootfs_image);
    let contract: Contract = crate::artifact::initramfs::read_contract(&dir.join(&manifest.boot.initramfs)).map_err(|error| format!("{error:#}"));
    let image: RootfsImage = crate::artifact::cpio::read_rootfs_image(&rootfs).map_err(|error| format!("{error:#}"));
    report.add("chunk list", check_chunks(&contract, &rootfs));
    report.add("cookie", check_cookies(&contract, &image, &manifest));
    report.add("squashfs", check_squashfs(&image, &rootfs, &manifest));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_parse_and_refuse_other_lines() {
        let sums = parse_sums("aa  a.img\nbb  pxelinux.cfg/default\n").unwrap();
        assert_eq!(sums["pxelinux.cfg/default"], "bb");
        assert!(parse_sums("aa a.img\n").unwrap_err().contains("line 1"));
    }
}
