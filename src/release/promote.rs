//! `release promote NAME FROM TO`: a release candidate becomes a release
//! without a rebuild. The new bundle's artifacts are the candidate's bytes
//! under names carrying the new version (nothing inside the initramfs or the
//! rootfs names a version, by design); the manifest, SHA256SUMS and the boot
//! menus are written anew, and the manifest records `promoted_from`. Unified
//! Kernel Images name their version (in their os-release and, by default, in
//! their rootfs URL), so they are made anew from the candidate's kernels and
//! initramfs, on the host's EFI stub.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::Bundle;
use crate::artifact::menus::{self, MenuInput};
use crate::artifact::uki;
use crate::bundle::files;
use crate::bundle::manifest::{ManifestArtifact, PromotedFrom};
use crate::bundle::names::{check_file_name, BundleNames};

/// Take the artifact `name` of the bundle `dir` (`size` bytes, as its
/// manifest states) into `to`: hard-linked when the file system allows (the
/// bytes are the same and bundles are never changed in place), else copied.
/// Only the regular file opened is taken: a link that leads to another file
/// (the name changed after it was opened) is undone and the opened file
/// copied, and no existing file is ever written into.
fn take(dir: &Path, name: &str, size: u64, to: &Path) -> Result<()> {
    let file = files::open_sized(dir, name, size)?;
    if let Some(parent) = to.parent() {
        fs_err::create_dir_all(parent)?;
    }
    if std::fs::hard_link(&file.path, to).is_ok() {
        use std::os::unix::fs::MetadataExt;
        let linked = fs_err::symlink_metadata(to)?;
        if linked.is_file() && (linked.dev(), linked.ino()) == file.id {
            return Ok(());
        }
        fs_err::remove_file(to)?;
    }
    let mut out = fs_err::OpenOptions::new().write(true).create_new(true).open(to)?;
    file.copy_exactly(size, &mut out)?;
    Ok(())
}

/// `uki_signer` signs the new UKIs for Secure Boot; it is needed when the
/// candidate's were signed (a promotion makes them anew).
pub fn promote(
    out: &Path,
    name: &str,
    from: &str,
    to: &str,
    uki_signer: Option<&uki::SecureBootSigner>,
) -> Result<PathBuf> {
    // All three become paths under `out`: checked before anything is read.
    crate::bundle::check_id(name, from)?;
    crate::names::check_version(to).map_err(|why| anyhow::anyhow!("`{to}` is not a valid version: {why}"))?;
    let candidate = Bundle::open_in(out, name, from)?;
    let source = &candidate.dir;
    let report = super::verify::verify_bundle(&candidate);
    if !report.ok() {
        bail!(
            "{name} {from} fails verification, so it is not promoted:\n{}\nhint: rootsmith release verify {}",
            report.failures(),
            source.display()
        );
    }
    let signed_for = candidate.manifest.boot.uki.as_ref().and_then(|made| made.signed_cert_sha256.as_ref());
    match (signed_for, uki_signer) {
        (Some(cert), None) => bail!("the UKIs of {name} {from} are signed for Secure Boot (certificate SHA-256 {cert}), and a promotion makes them anew for {to}\nhint: pass the signing key and certificate: --uki-key KEY --uki-cert CERT"),
        // A promotion changes the version, not which machines boot it.
        (Some(cert), Some(signer)) if signer.cert_sha256 != *cert => {
            bail!("the UKIs of {name} {from} are signed for the certificate with SHA-256 {cert}, not {} ({}): machines enrolled for the first would refuse {to}", signer.cert_sha256, signer.cert.display())
        }
        (_, Some(_)) if candidate.manifest.boot.uki.is_none() => bail!("{name} {from} has no UKIs for --uki-key to sign"),
        _ => {}
    }
    let target = out.join(name).join(to);
    if target.exists() {
        bail!("{} already exists, and a published version is never overwritten", target.display());
    }
    let staging = tempfile::Builder::new().prefix(&format!(".{to}.partial-")).tempdir_in(out.join(name))?;
    let (old_prefix, new_prefix) = (format!("{name}-{from}-"), format!("{name}-{to}-"));
    let rename = |file: &str| match file.strip_prefix(&old_prefix) {
        Some(rest) => format!("{new_prefix}{rest}"),
        None => file.to_string(),
    };
    let mut manifest = candidate.manifest.clone();
    let ukis: std::collections::BTreeSet<&str> =
        candidate.manifest.kernels.iter().filter_map(|kernel| kernel.uki.as_deref()).collect();
    let mut artifacts = Vec::new();
    for artifact in &candidate.manifest.artifacts {
        if menus::MENU_FILES.contains(&artifact.name.as_str()) || ukis.contains(artifact.name.as_str()) {
            continue;
        }
        let renamed = rename(&artifact.name);
        // A checked name with a valid version in place of another stays one; checked all the same.
        check_file_name(&renamed)?;
        take(source, &artifact.name, artifact.size, &staging.path().join(&renamed))
            .with_context(|| format!("taking {} into {to}", artifact.name))?;
        artifacts.push(ManifestArtifact { name: renamed, ..artifact.clone() });
    }
    manifest.version = to.to_string();
    for kernel in &mut manifest.kernels {
        kernel.vmlinuz = rename(&kernel.vmlinuz);
    }
    manifest.boot.initramfs = rename(&manifest.boot.initramfs);
    manifest.boot.rootfs_image = rename(&manifest.boot.rootfs_image);
    if let Some(made) = manifest.boot.uki.take() {
        let covered: std::collections::BTreeSet<String> =
            manifest.kernels.iter().filter(|kernel| kernel.uki.is_some()).map(|kernel| kernel.name.clone()).collect();
        let rootfs_url = (!made.rootfs_url_default).then_some(made.rootfs_url.as_str());
        let settings = uki::BundleUkis {
            covers: &|kernel| covered.contains(kernel),
            rootfs_url,
            cookie: &manifest.rootfs.cookie,
            epoch: manifest.source_date_epoch,
            signer: uki_signer,
        };
        let (made, files) = uki::write_for_bundle(
            &crate::host::RealHost { echo: false },
            staging.path(),
            &BundleNames::new(name, to),
            &mut manifest.kernels,
            &manifest.boot,
            &settings,
        )
        .with_context(|| format!("making the UKIs of {name} {to}"))?;
        manifest.boot.uki = Some(made);
        artifacts.extend(files);
    }
    manifest.promoted_from =
        Some(PromotedFrom { version: from.to_string(), manifest_sha256: candidate.manifest_sha256.clone() });
    artifacts.extend(menus::write_all(
        staging.path(),
        &MenuInput::new(name, to, &manifest.arch, &manifest.kernels, &manifest.boot),
    )?);
    artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    manifest.artifacts = artifacts;
    crate::bundle::manifest::write_index(staging.path(), &manifest)?;
    let staging = staging.keep();
    if let Err(error) = fs_err::rename(&staging, &target) {
        let _ = fs_err::remove_dir_all(&staging);
        return Err(error).with_context(|| format!("moving the promoted bundle into {}", target.display()));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions_are_checked_before_anything_is_read() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        fs_err::create_dir_all(out.join("rel")).unwrap();
        // Were FROM followed, this FIFO would be opened (and block).
        let elsewhere = root.path().join("elsewhere/rel/1.0.0");
        fs_err::create_dir_all(&elsewhere).unwrap();
        nix::unistd::mkfifo(&elsewhere.join("manifest.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        for (name, from, to) in [
            ("rel", "../../elsewhere/rel/1.0.0", "2.0.0"),
            ("../elsewhere/rel", "1.0.0", "2.0.0"),
            ("rel", "1.0.0-rc1", "../../x"),
            ("rel", "1.0.0-rc1", ""),
        ] {
            let error = format!("{:#}", promote(&out, name, from, to, None).unwrap_err());
            assert!(error.contains("is not a valid"), "{name} {from} {to}: {error}");
        }
        assert_eq!(fs_err::read_dir(out.join("rel")).unwrap().count(), 0, "nothing was staged");
    }

    #[test]
    fn taking_a_file_never_writes_into_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("a.img"), b"abc").unwrap();
        let to = dir.path().join("staged/a.img");
        take(dir.path(), "a.img", 3, &to).unwrap();
        assert_eq!(fs_err::read(&to).unwrap(), b"abc");
        // Taken again onto itself (a duplicate name): refused, the bytes intact.
        assert!(take(dir.path(), "a.img", 3, &to).is_err());
        assert!(take(dir.path(), "a.img", 3, &dir.path().join("a.img")).is_err());
        assert_eq!(fs_err::read(dir.path().join("a.img")).unwrap(), b"abc");
        // A size other than the manifest's is refused before anything is made.
        assert!(take(dir.path(), "a.img", 2, &dir.path().join("staged/b.img")).is_err());
        assert!(!dir.path().join("staged/b.img").exists());
    }
}
