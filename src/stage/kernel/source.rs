//! Kernel sources: a Debian `linux-source-*` package (fetched with
//! `apt-get download` into the cache, never installed on the host) or a tarball
//! (path or URL) checked against its SHA-256; unpacked once per source and set
//! of patches into the cache and reused by every build.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cache::Layout;
use crate::digest::sha256_hex;
use crate::host::{Command, Host};
use crate::recipe::{KernelBuild, KernelSource};

/// A source package's candidate version and the SHA-256 of its `.deb`, from the
/// host's apt lists: the remote input of a kernel stage's key.
pub fn resolve_package(host: &dyn Host, package: &str) -> Result<(String, String)> {
    let (code, stdout) = host
        .output(&Command::on_host("apt-cache", ["show", "--no-all-versions", package], Path::new("/dev/null")))
        .context("running apt-cache (apt-get install apt)")?;
    let text = String::from_utf8_lossy(&stdout);
    let field = |name: &str| crate::control::field(&text, name);
    match (field("Version"), field("SHA256")) {
        (Some(version), Some(sha256)) if code == 0 => Ok((version, sha256)),
        _ => bail!("the host's apt does not know the package `{package}`\nhint: run `apt-get update`, and check the name (`apt-cache search linux-source`)"),
    }
}

/// An id for a source and its patches, naming its unpacked tree in the cache.
pub fn source_id(build: &KernelBuild, source_digest: &str) -> Result<String> {
    let mut text = format!("source {source_digest}\n");
    for patch in &build.patches {
        text.push_str(&format!("patch {} {}\n", patch.written, sha256_hex(&fs_err::read(&patch.resolved)?)));
    }
    Ok(sha256_hex(text.as_bytes()))
}

/// The unpacked, patched source tree, made on first use.
pub fn prepare(
    host: &dyn Host,
    build: &KernelBuild,
    source_digest: &str,
    layout: &Layout,
    log: &Path,
) -> Result<PathBuf> {
    let id = source_id(build, source_digest)?;
    let sources = layout.kernel_sources();
    let tree = layout.kernel_source(&id);
    if tree.join("Makefile").is_file() {
        // Its mtime is its last use, which `cache gc` goes by.
        let _ = filetime::set_file_mtime(&tree, filetime::FileTime::now());
        return Ok(tree);
    }
    fs_err::create_dir_all(&sources)?;
    let staging = tempfile::Builder::new().prefix(".unpack-").tempdir_in(&sources)?;
    let archive = fetch(host, &build.source, source_digest, layout, staging.path(), log)?;
    let unpacked = staging.path().join("tree");
    fs_err::create_dir(&unpacked)?;
    host.run(&Command::on_host(
        "tar",
        ["-xf".as_ref(), archive.as_os_str(), "-C".as_ref(), unpacked.as_os_str(), "--strip-components=1".as_ref()],
        log,
    ))?;
    for patch in &build.patches {
        let text = fs_err::read(&patch.resolved)?;
        host.run(
            &Command::on_host("patch", ["-p1", "--forward", "--batch"], log).current_dir(&unpacked).stdin_bytes(text),
        )
        .with_context(|| format!("applying patch {}", patch.written))?;
    }
    if !unpacked.join("Makefile").is_file() {
        bail!("the kernel source has no top-level Makefile after unpacking");
    }
    match fs_err::rename(&unpacked, &tree) {
        Ok(()) => Ok(tree),
        // Another build unpacked the same source first.
        Err(_) if tree.join("Makefile").is_file() => Ok(tree),
        Err(error) => Err(error).with_context(|| format!("moving the kernel source to {}", tree.display())),
    }
}

/// The source tarball, verified. `.deb` packages are downloaded into the cache
/// and the tarball they carry is taken out of them.
fn fetch(
    host: &dyn Host,
    source: &KernelSource,
    digest: &str,
    layout: &Layout,
    scratch: &Path,
    log: &Path,
) -> Result<PathBuf> {
    let downloads = layout.kernel_downloads();
    fs_err::create_dir_all(&downloads)?;
    match source {
        KernelSource::Package(package) => {
            let (version, sha256) = digest.split_once(' ').context("package digest is VERSION SHA256")?;
            let deb = find_deb(&downloads, package, sha256)?;
            let deb = match deb {
                Some(deb) => deb,
                None => {
                    host.run(
                        &Command::on_host("apt-get", ["download", "-q", &format!("{package}={version}")], log)
                            .current_dir(&downloads),
                    )
                    .with_context(|| format!("downloading {package} {version} with apt-get"))?;
                    find_deb(&downloads, package, sha256)?.with_context(|| {
                        format!("apt-get downloaded {package}, but no file has the SHA-256 apt announced ({sha256})")
                    })?
                }
            };
            let script = "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards './usr/src/*.tar.*'";
            host.run(&Command::on_host(
                "sh",
                ["-c".as_ref(), script.as_ref(), "sh".as_ref(), deb.as_os_str(), scratch.as_os_str()],
                log,
            ))
            .with_context(|| format!("taking the source tarball out of {}", deb.display()))?;
            let mut tarballs: Vec<PathBuf> =
                fs_err::read_dir(scratch.join("usr/src"))?.flatten().map(|e| e.path()).collect();
            tarballs.sort();
            tarballs.pop().with_context(|| format!("{package} holds no /usr/src/*.tar.* source tarball"))
        }
        KernelSource::Tarball { location, local, sha256 } => {
            let stored = downloads.join(format!("{sha256}.tar"));
            if !stored.is_file() {
                let temp = downloads.join(format!(".{sha256}.partial"));
                match local {
                    Some(path) => {
                        fs_err::copy(&path.resolved, &temp)?;
                    }
                    None => {
                        let response = ureq::get(location).call().with_context(|| format!("downloading {location}"))?;
                        let mut file = fs_err::File::create(&temp)?;
                        std::io::copy(&mut response.into_reader(), &mut file)
                            .with_context(|| format!("downloading {location}"))?;
                    }
                }
                let actual = crate::digest::hash_file(&temp)?;
                if &actual != sha256 {
                    let _ = fs_err::remove_file(&temp);
                    bail!("{location} has SHA-256 {actual}, but the recipe says {sha256}");
                }
                fs_err::rename(&temp, &stored)?;
            }
            let _ = digest;
            Ok(stored)
        }
    }
}

fn find_deb(dir: &Path, package: &str, sha256: &str) -> Result<Option<PathBuf>> {
    for entry in fs_err::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.starts_with(&format!("{package}_"))
            && name.ends_with(".deb")
            && crate::digest::hash_file(&path)? == sha256
        {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::LocalPath;

    #[test]
    fn a_tarball_source_is_checked_against_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("linux.tar");
        fs_err::write(&tarball, b"not really a kernel").unwrap();
        let good = crate::digest::hash_file(&tarball).unwrap();
        let source = |sha256: &str| KernelSource::Tarball {
            location: "linux.tar".into(),
            local: Some(LocalPath { written: "linux.tar".into(), resolved: tarball.clone() }),
            sha256: sha256.into(),
        };
        let log = dir.path().join("log");
        let bad = "0".repeat(64);
        let layout = Layout::new(dir.path());
        let host = crate::host::RecordingHost::default();
        let error = fetch(&host, &source(&bad), &bad, &layout, dir.path(), &log).unwrap_err().to_string();
        assert!(error.contains(&format!("has SHA-256 {good}, but the recipe says {bad}")), "{error}");
        let stored = fetch(&host, &source(&good), &good, &layout, dir.path(), &log).unwrap();
        assert_eq!(fs_err::read(&stored).unwrap(), b"not really a kernel");
        assert!(stored.starts_with(layout.kernel_downloads()));
    }
}
