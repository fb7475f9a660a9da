//! `release verify DIR`: is a bundle what its manifest says? Every check is
//! reported, passed or failed, so one run shows everything wrong:
//! the manifest's schema, SHA256SUMS against the files (and no file missing
//! or unlisted), the initramfs's chunk list against rootfs.img, the cookie
//! pair, and the squashfs read back with backhand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rootsmith_init::contract::{BuildId, ChunkList};
use serde::Serialize;

use crate::bundle::files::{self, BundleFile};
use crate::bundle::manifest::{Manifest, MANIFEST_VERSION};
use crate::bundle::names::{check_file_name, MANIFEST, SHA256SUMS, SIGNATURE};
use crate::bundle::Bundle;

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
        self.findings
            .iter()
            .filter(|f| !f.ok)
            .map(|f| format!("{}: {}", f.check, f.detail))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn add(&mut self, check: &'static str, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        self.findings.push(Finding { check, ok, detail });
    }
}

/// `HEX  NAME` lines. A line that is not one, that names a file no bundle
/// may hold ([`check_file_name`]) or whose digest is not SHA-256 hex is a
/// problem, and its file is never opened.
fn parse_sums(text: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let (mut sums, mut problems) = (BTreeMap::new(), Vec::new());
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let Some((digest, name)) = line.split_once("  ") else {
            problems.push(format!("SHA256SUMS line {number} is not `HEX  NAME`"));
            continue;
        };
        if let Err(bad) = check_file_name(name) {
            problems.push(format!("SHA256SUMS line {number}: {bad}"));
        } else if !crate::digest::is_sha256_hex(digest) {
            problems.push(format!("SHA256SUMS line {number}: the digest of {name} is not 64 lower-case hex digits"));
        } else if sums.insert(name.to_string(), digest.to_string()).is_some() {
            problems.push(format!("SHA256SUMS lists {name} twice"));
        }
    }
    (sums, problems)
}

/// Every file under `dir`, as paths relative to it (symbolic links are not followed).
fn files_in(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| !entry.file_type().is_dir())
        .filter_map(|entry| entry.path().strip_prefix(dir).ok().map(|p| p.to_string_lossy().into_owned()))
        .collect()
}

/// The schema version and the bundle's place (`OUT/NAME/VERSION`); the rest
/// of the manifest was checked when it was read ([`Bundle::open`]).
fn check_manifest(bundle: &Bundle) -> Result<String, String> {
    let manifest = &bundle.manifest;
    if manifest.manifest_version != MANIFEST_VERSION {
        return Err(format!(
            "manifest_version {} (this rootsmith reads {MANIFEST_VERSION})",
            manifest.manifest_version
        ));
    }
    bundle.check_place().map_err(|error| format!("{error:#}"))?;
    Ok(format!("{} {}, schema {MANIFEST_VERSION}", manifest.name, manifest.version))
}

fn check_sums(bundle: &Bundle) -> Result<String, String> {
    let (dir, manifest) = (&bundle.dir, &bundle.manifest);
    let text = files::read(dir, SHA256SUMS, files::MAX_INDEX_BYTES).map_err(|error| format!("SHA256SUMS: {error}"))?;
    let text = String::from_utf8(text).map_err(|_| "SHA256SUMS is not UTF-8 text".to_string())?;
    let (sums, mut problems) = parse_sums(&text);
    let sizes: BTreeMap<&str, u64> =
        manifest.artifacts.iter().map(|artifact| (artifact.name.as_str(), artifact.size)).collect();
    for (name, digest) in &sums {
        // Only what the manifest lists is read, and no further than the size it states.
        let actual = if name == MANIFEST {
            Ok(bundle.manifest_sha256.clone())
        } else if let Some(size) = sizes.get(name.as_str()) {
            files::sha256(dir, name, *size)
        } else {
            problems.push(format!("{name} is in SHA256SUMS but not among manifest.json's artifacts"));
            continue;
        };
        match actual {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => problems.push(format!("{name} is missing")),
            Err(error) => problems.push(error.to_string()),
            Ok(actual) if &actual != digest => {
                problems.push(format!("{name} differs: SHA256SUMS says {digest}, the file is {actual}"))
            }
            Ok(_) => {}
        }
    }
    for artifact in &manifest.artifacts {
        if sums.get(&artifact.name) != Some(&artifact.sha256) {
            problems.push(format!(
                "{} is in manifest.json with sha256 {}, but SHA256SUMS {}",
                artifact.name,
                artifact.sha256,
                sums.get(&artifact.name).map(|d| format!("says {d}")).unwrap_or("lacks it".into())
            ));
        }
    }
    for file in files_in(dir) {
        if file != SHA256SUMS && file != SIGNATURE && !sums.contains_key(&file) {
            problems.push(format!("{file} is not in SHA256SUMS"));
        }
    }
    if !sums.contains_key(MANIFEST) {
        problems.push("manifest.json is not in SHA256SUMS".into());
    }
    if problems.is_empty() {
        Ok(format!("{} files match", sums.len()))
    } else {
        Err(problems.join("; "))
    }
}

/// What the initramfs expects (its build id and chunk list), read once.
type Contract = Result<(BuildId, ChunkList), String>;
/// Where the squashfs lies in rootfs.img and the build id it carries, read once.
type RootfsImage = Result<(u64, u64, BuildId), String>;

/// An artifact the manifest names, opened as [`files::open_sized`] does, with its stated size.
fn open_artifact(bundle: &Bundle, name: &str) -> Result<(BundleFile, u64), String> {
    let size = bundle.stated_size(name).map_err(|error| format!("{error:#}"))?;
    let file = files::open_sized(&bundle.dir, name, size).map_err(|error| error.to_string())?;
    Ok((file, size))
}

/// Each UKI of a bundle whose manifest records a Secure Boot certificate
/// carries an Authenticode signature of that certificate, valid for its
/// bytes (a signature removed, or made by another key, fails). `None` for a
/// bundle without signed UKIs.
fn check_uki_signatures(bundle: &Bundle) -> Option<Result<String, String>> {
    let cert = bundle.manifest.boot.uki.as_ref()?.signed_cert_sha256.as_ref()?;
    let ukis: Vec<&String> = bundle.manifest.kernels.iter().filter_map(|kernel| kernel.uki.as_ref()).collect();
    Some((|| {
        let host = crate::host::RealHost::default();
        for name in &ukis {
            let (file, _) = open_artifact(bundle, name)?;
            let scratch = tempfile::tempdir().map_err(|error| error.to_string())?;
            crate::artifact::uki::check_signed_by(&host, &file.path, cert, scratch.path())
                .map_err(|error| format!("{error:#}"))?;
        }
        Ok(format!("{} UKIs signed with the recorded certificate (sha256 {})", ukis.len(), &cert[..16.min(cert.len())]))
    })())
}

fn read_contract(bundle: &Bundle) -> Contract {
    let (file, size) = open_artifact(bundle, &bundle.manifest.boot.initramfs)?;
    let bytes = file.read_within(size).map_err(|error| error.to_string())?;
    crate::artifact::initramfs::read_contract_from(bytes, &file.path).map_err(|error| format!("{error:#}"))
}

fn read_rootfs_image(bundle: &Bundle) -> RootfsImage {
    let (file, size) = open_artifact(bundle, &bundle.manifest.boot.rootfs_image)?;
    crate::artifact::cpio::read_rootfs_image_from(std::io::BufReader::new(file.within(size)), &file.path)
        .map_err(|error| format!("{error:#}"))
}

fn check_chunks(contract: &Contract, bundle: &Bundle) -> Result<String, String> {
    let (_, expected) = contract.as_ref().map_err(Clone::clone)?;
    let (file, size) = open_artifact(bundle, &bundle.manifest.boot.rootfs_image)?;
    let actual = ChunkList::from_reader(std::io::BufReader::new(file.within(size)), expected.chunk_size)
        .map_err(|error| error.to_string())?;
    if actual.size != expected.size {
        return Err(format!("rootfs.img is {} bytes, the initramfs's chunk list says {}", actual.size, expected.size));
    }
    if let Some(index) = expected.digests.iter().zip(&actual.digests).position(|(a, b)| a != b) {
        return Err(format!(
            "chunk {index} (byte offset {}) of rootfs.img does not match the initramfs's chunk list",
            index as u64 * expected.chunk_size
        ));
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

fn check_squashfs(image: &RootfsImage, bundle: &Bundle) -> Result<String, String> {
    let (offset, _, _) = image.as_ref().map_err(Clone::clone)?;
    let (file, size) = open_artifact(bundle, &bundle.manifest.boot.rootfs_image)?;
    let filesystem =
        backhand::FilesystemReader::from_reader_with_offset(std::io::BufReader::new(file.within(size)), *offset)
            .map_err(|error| format!("backhand cannot read the squashfs: {error}"))?;
    let entries = filesystem.files().count() as u64;
    if entries != bundle.manifest.rootfs.squashfs_entries {
        return Err(format!(
            "the squashfs holds {entries} entries, manifest.json says {}",
            bundle.manifest.rootfs.squashfs_entries
        ));
    }
    Ok(format!("{entries} entries"))
}

/// Verify the bundle in `dir`. Its manifest is read and checked first; a
/// manifest that fails ends the report there, before any name in it is used.
pub fn verify(dir: &Path) -> Report {
    match Bundle::open(dir) {
        Ok(bundle) => verify_bundle(&bundle),
        Err(error) => Report {
            bundle: dir.to_path_buf(),
            findings: vec![Finding { check: "manifest", ok: false, detail: format!("{error:#}") }],
        },
    }
}

/// Verify the bundle in `dir` that must be signed by `key`: the signature is
/// checked before anything else, and a bundle whose signature does not hold
/// is reported on that alone (nothing it names is read).
pub fn verify_signed(dir: &Path, key: &ssh_key::PublicKey) -> Report {
    let signature = crate::bundle::signature::check_bundle(dir, key);
    let failed = signature.is_err();
    let mut report = Report { bundle: dir.to_path_buf(), findings: Vec::new() };
    report.add("signature", signature);
    if failed {
        return report;
    }
    let mut rest = verify(dir);
    report.findings.append(&mut rest.findings);
    report
}

/// Verify an opened bundle: the manifest checked is the one the caller holds
/// (`release promote` promotes exactly what was verified).
pub fn verify_bundle(bundle: &Bundle) -> Report {
    let mut report = Report { bundle: bundle.dir.clone(), findings: Vec::new() };
    let manifest = check_manifest(bundle);
    let failed = manifest.is_err();
    report.add("manifest", manifest);
    if failed {
        return report;
    }
    report.add("SHA256SUMS", check_sums(bundle));
    let contract = read_contract(bundle);
    let image = read_rootfs_image(bundle);
    report.add("chunk list", check_chunks(&contract, bundle));
    report.add("cookie", check_cookies(&contract, &image, &bundle.manifest));
    report.add("squashfs", check_squashfs(&image, bundle));
    if let Some(signatures) = check_uki_signatures(bundle) {
        report.add("UKI signatures", signatures);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::{sample, write_index};

    const A: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn sums_parse_and_refuse_other_lines() {
        let (sums, problems) = parse_sums(&format!("{A}  a.img\n{A}  pxelinux.cfg/default\n"));
        assert_eq!(sums["pxelinux.cfg/default"], A);
        assert!(problems.is_empty(), "{problems:?}");
        let (sums, problems) = parse_sums(&format!(
            "aa a.img\n{A}  ../../etc/shadow\n{A}  /etc/shadow\nAA  b.img\n{A}  c.img\n{A}  c.img\n"
        ));
        assert_eq!(sums.keys().collect::<Vec<_>>(), ["c.img"]);
        let problems = problems.join("\n");
        for expected in [
            "line 1 is not `HEX  NAME`",
            "line 2: \"../../etc/shadow\" is not a file a bundle may hold",
            "line 3: \"/etc/shadow\" is not a file",
            "line 4: the digest of b.img",
            "lists c.img twice",
        ] {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
    }

    /// `OUT/rel/1.0.0` with the sample manifest and its rootfs.img, as SHA256SUMS lists them.
    fn bundle(out: &Path) -> Bundle {
        let dir = out.join("rel/1.0.0");
        fs_err::create_dir_all(&dir).unwrap();
        fs_err::write(dir.join("rel-1.0.0-rootfs.img"), b"abc").unwrap();
        write_index(&dir, &sample("rel", "1.0.0")).unwrap();
        Bundle::open(&dir).unwrap()
    }

    #[test]
    fn a_sums_line_outside_the_bundle_is_never_hashed() {
        let out = tempfile::tempdir().unwrap();
        let bundle = bundle(out.path());
        assert_eq!(check_sums(&bundle), Ok("2 files match".into()));
        let secret = out.path().join("secret");
        fs_err::write(&secret, b"host secret").unwrap();
        let secret_digest = crate::digest::sha256_hex(b"host secret");
        let sums = fs_err::read_to_string(bundle.dir.join(SHA256SUMS)).unwrap();
        let zeros = "0".repeat(64);
        fs_err::write(
            bundle.dir.join(SHA256SUMS),
            format!("{sums}{zeros}  ../../secret\n{zeros}  {}\n{zeros}  unlisted.img\n", secret.display()),
        )
        .unwrap();
        fs_err::copy(&secret, bundle.dir.join("unlisted.img")).unwrap();
        let problems = check_sums(&bundle).unwrap_err();
        assert!(!problems.contains(&secret_digest), "a host file's digest was printed: {problems}");
        assert!(problems.contains("\"../../secret\" is not a file a bundle may hold"), "{problems}");
        assert!(problems.contains("it is an absolute path"), "{problems}");
        assert!(
            problems.contains("unlisted.img is in SHA256SUMS but not among manifest.json's artifacts"),
            "{problems}"
        );
    }

    #[test]
    fn a_fifo_or_symlink_artifact_fails_promptly() {
        let out = tempfile::tempdir().unwrap();
        let bundle = bundle(out.path());
        let image = bundle.dir.join("rel-1.0.0-rootfs.img");
        for (make, what) in [(0, "is a FIFO"), (1, "is a symbolic link")] {
            fs_err::remove_file(&image).unwrap();
            match make {
                0 => nix::unistd::mkfifo(&image, nix::sys::stat::Mode::S_IRWXU).unwrap(),
                _ => std::os::unix::fs::symlink("/dev/zero", &image).unwrap(),
            }
            let started = std::time::Instant::now();
            let report = verify(&bundle.dir);
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            let failures = report.failures();
            for check in ["SHA256SUMS", "squashfs"] {
                assert!(
                    failures.lines().any(|line| line.starts_with(check)
                        && line.contains("rel-1.0.0-rootfs.img")
                        && line.contains(what)),
                    "{check} {what}: {failures}"
                );
            }
        }
    }

    #[test]
    fn a_bundle_in_another_versions_directory_fails_the_manifest_check() {
        let out = tempfile::tempdir().unwrap();
        let bundle = bundle(out.path());
        let copy = out.path().join("rel/1.0.1");
        fs_err::create_dir_all(&copy).unwrap();
        for file in ["rel-1.0.0-rootfs.img", MANIFEST, SHA256SUMS] {
            fs_err::copy(bundle.dir.join(file), copy.join(file)).unwrap();
        }
        let report = verify(&copy);
        assert_eq!(report.findings.len(), 1);
        assert!(
            report
                .failures()
                .contains("manifest.json says version 1.0.0, but the bundle is in the directory of version \"1.0.1\""),
            "{}",
            report.failures()
        );
    }
}
