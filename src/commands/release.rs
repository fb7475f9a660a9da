//! `release ls|show|promote|verify`: the bundles in an `--out` directory.

use std::path::Path;

use anyhow::{bail, Result};

use rootsmith::release::{self, Bundle};

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// When the bundle was published: its manifest.json's mtime (written once,
/// when the bundle was renamed into place; signing it later changes the
/// directory, not the manifest).
fn published(bundle: &Bundle) -> String {
    let manifest = bundle.dir.join(rootsmith::bundle::names::MANIFEST);
    let Ok(modified) = fs_err::symlink_metadata(manifest).and_then(|m| m.modified()) else { return "-".into() };
    let seconds = modified.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    rootsmith::time::utc_string(seconds)
}

/// Who signed it: the key's fingerprint, "-" when unsigned, or why the
/// signature does not hold.
fn signed(bundle: &Bundle) -> (serde_json::Value, String) {
    match rootsmith::bundle::signature::signer(&bundle.dir) {
        None => (serde_json::Value::Null, "-".into()),
        Some(Ok(fingerprint)) => (serde_json::json!(fingerprint), fingerprint),
        Some(Err(why)) => (serde_json::json!(format!("invalid: {why}")), "invalid signature".into()),
    }
}

fn kernels(bundle: &Bundle) -> String {
    if bundle.manifest.kernels.is_empty() {
        return "-".into();
    }
    bundle.manifest.kernels.iter().map(|k| format!("{} ({})", k.name, k.release)).collect::<Vec<_>>().join(", ")
}

pub fn ls(out: &Path, json: bool) -> Result<()> {
    let listing = release::list(out)?;
    let bundles = &listing.bundles;
    // A broken bundle is named, and hides none of the others.
    let place = |dir: &Path| {
        (
            dir.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()),
            dir.file_name().map(|n| n.to_string_lossy().into_owned()),
        )
    };
    if json {
        let mut rows: Vec<_> = bundles
            .iter()
            .map(|b| serde_json::json!({ "name": b.manifest.name, "version": b.manifest.version, "arch": b.manifest.arch, "published": published(b), "size": b.size(), "kernels": b.manifest.kernels.iter().map(|k| &k.release).collect::<Vec<_>>(), "state": b.state(), "promoted_from": b.manifest.promoted_from.as_ref().map(|p| &p.version), "signed_by": signed(b).0, "dir": b.dir }))
            .collect();
        rows.extend(listing.broken.iter().map(|broken| {
            let (name, version) = place(&broken.dir);
            serde_json::json!({ "name": name, "version": version, "state": "broken", "error": format!("{:#}", broken.error), "dir": broken.dir })
        }));
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if bundles.is_empty() {
        outln!("no bundles in {}", out.display());
    } else {
        outln!(
            "{:<20} {:<14} {:<6} {:<20} {:>11}  {:<10} {:<20} kernels",
            "name",
            "version",
            "arch",
            "published (UTC)",
            "size",
            "state",
            "signed by"
        );
    }
    for bundle in bundles {
        let state = match &bundle.manifest.promoted_from {
            Some(from) => format!("{} (from {})", bundle.state(), from.version),
            None => bundle.state().to_string(),
        };
        let signer = signed(bundle).1;
        // A fingerprint is long: its first characters tell keys apart.
        let signer =
            if signer.starts_with("SHA256:") { format!("{}…", &signer[..19.min(signer.len())]) } else { signer };
        outln!(
            "{:<20} {:<14} {:<6} {:<20} {:>11}  {:<10} {:<20} {}",
            bundle.manifest.name,
            bundle.manifest.version,
            bundle.manifest.arch,
            published(bundle),
            mib(bundle.size()),
            state,
            signer,
            kernels(bundle)
        );
    }
    for broken in &listing.broken {
        eprintln!("warning: {} is broken and not listed: {:#}", broken.dir.display(), broken.error);
    }
    Ok(())
}

pub fn show(out: &Path, name: &str, version: &str, json: bool) -> Result<()> {
    super::must_be_bundle(&out.join(name).join(version))?;
    let bundle = Bundle::open_in(out, name, version)?;
    let m = &bundle.manifest;
    if json {
        outln!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    outln!(
        "{} {} ({}, {}){}",
        m.name,
        m.version,
        m.arch,
        bundle.state(),
        if m.fast { ", built with --fast" } else { "" }
    );
    if let Some(from) = &m.promoted_from {
        outln!("promoted from {} (manifest sha256 {})", from.version, from.manifest_sha256);
    }
    match rootsmith::bundle::signature::signer(&bundle.dir) {
        None => outln!("not signed"),
        Some(Ok(key)) => outln!("signed by {key} (release verify --key KEY checks it is the key you expect)"),
        Some(Err(why)) => outln!("signature does not hold: {why}"),
    }
    outln!("built by {}, SOURCE_DATE_EPOCH {}, recipe sha256 {}", m.tool, m.source_date_epoch, m.recipe_sha256);
    outln!("\nstages:");
    for stage in &m.stages {
        outln!("  {:<20} {:<12} {}", stage.name, stage.kind, stage.key.get(..12).unwrap_or(&stage.key));
    }
    outln!(
        "\nrootfs: cookie {}, squashfs {} ({}, {} entries)",
        m.rootfs.cookie,
        m.rootfs.squashfs_compression,
        m.rootfs.squashfs_writer,
        m.rootfs.squashfs_entries
    );
    for kernel in &m.kernels {
        let trees = kernel.device_trees.as_ref().map(|t| format!(", device trees {t}")).unwrap_or_default();
        outln!("kernel {}: {} ({}{trees})", kernel.name, kernel.release, kernel.vmlinuz);
    }
    let modules: usize = m.boot.modules.values().map(Vec::len).sum();
    outln!(
        "initramfs: {} ({}, {}, {modules} modules{})",
        m.boot.initramfs,
        mib(m.boot.initramfs_size),
        m.boot.initramfs_compression,
        if m.boot.shell { ", shell" } else { "" }
    );
    outln!("boot: cmdline {:?}, marker {:?}", m.boot.cmdline, m.boot.marker.as_deref().unwrap_or("-"));
    if let Some(uki) = &m.boot.uki {
        let files: Vec<&str> = m.kernels.iter().filter_map(|kernel| kernel.uki.as_deref()).collect();
        let signed = match &uki.signed_cert_sha256 {
            Some(cert) => format!("signed for Secure Boot, certificate sha256 {cert}"),
            None => "not signed for Secure Boot".into(),
        };
        outln!("UKIs: {} ({signed}); rootfs from {}", files.join(", "), uki.rootfs_url);
    }
    outln!("\nartifacts ({}):", mib(bundle.size()));
    for artifact in &m.artifacts {
        outln!("  {:<48} {:>11}  {}", artifact.name, mib(artifact.size), &artifact.sha256[..16]);
    }
    Ok(())
}

pub fn promote(
    out: &Path,
    name: &str,
    from: &str,
    to: &str,
    sign: Option<&Path>,
    uki_sign: Option<(&Path, &Path)>,
) -> Result<()> {
    super::must_be_bundle(&out.join(name).join(from))?;
    // The keys are read before anything is written.
    let key = sign.map(rootsmith::bundle::signature::SigningKey::read).transpose()?;
    let uki_signer =
        uki_sign.map(|(key, cert)| rootsmith::artifact::uki::SecureBootSigner::open(key, cert)).transpose()?;
    let target = release::promote::promote(out, name, from, to, uki_signer.as_ref())?;
    outln!("promoted {name} {from} to {to}: {}", target.display());
    if let Some(key) = key {
        release::sign(out, name, to, &key)?;
        outln!("signed {name} {to} with {}", key.fingerprint());
    }
    Ok(())
}

pub fn sign(out: &Path, name: &str, version: &str, key: &Path) -> Result<()> {
    super::must_be_bundle(&out.join(name).join(version))?;
    let key = rootsmith::bundle::signature::SigningKey::read(key)?;
    let dir = release::sign(out, name, version, &key)?;
    outln!(
        "signed {name} {version} with {}: {}",
        key.fingerprint(),
        dir.join(rootsmith::bundle::names::SIGNATURE).display()
    );
    Ok(())
}

pub fn verify(dir: &Path, rebuild: Option<&Path>, key: Option<&Path>, json: bool) -> Result<()> {
    super::must_be_bundle(dir)?;
    let signed = key.is_some();
    let mut report = match key {
        Some(key) => release::verify::verify_signed(dir, &rootsmith::bundle::signature::read_public_key(key)?),
        None => release::verify::verify(dir),
    };
    // A signature that does not hold ends it: nothing the bundle says is used.
    if let Some(recipe) = rebuild.filter(|_| !signed || report.ok()) {
        let bundle = Bundle::open(dir)?;
        let mut args = crate::cli::RecipeArgs { recipe: recipe.to_path_buf(), sets: Vec::new(), arch: None };
        let mut recipe = super::load_recipe(&args)?;
        if bundle.manifest.name == format!("{}-{}", recipe.name, bundle.manifest.arch) {
            // A bundle `build --arch` made: rebuilt for its architecture.
            args.arch = Some(bundle.manifest.arch.clone());
            recipe = super::load_recipe(&args)?;
        }
        let outcome = release::rebuild::rebuild_and_compare(&bundle, &recipe)?;
        let (ok, detail) = match outcome {
            release::rebuild::Rebuilt::Same(detail) => (true, detail),
            release::rebuild::Rebuilt::Differs(detail) => (false, detail),
        };
        report.findings.push(release::verify::Finding { check: "rebuild", ok, detail });
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for finding in &report.findings {
            outln!("{:<6} {:<11} {}", if finding.ok { "ok" } else { "FAILED" }, finding.check, finding.detail);
        }
    }
    if !report.ok() {
        bail!("{} fails verification", dir.display());
    }
    Ok(())
}

pub fn diff(out: &Path, name: &str, a: &str, b: &str, json: bool, view: &release::diff::View) -> Result<()> {
    super::must_be_bundle(&out.join(name).join(a))?;
    super::must_be_bundle(&out.join(name).join(b))?;
    let (from, to) = (Bundle::open_in(out, name, a)?, Bundle::open_in(out, name, b)?);
    let diff = release::diff::diff(&from, &to)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&diff)?);
    } else {
        out!("{}", diff.render(view));
    }
    Ok(())
}
