//! Publishing a bundle: the cached outputs and kernel products copied under
//! their bundle names (checked against their digests on the way), boot menus,
//! the manifest and SHA256SUMS, the OCI image when the recipe asks for one,
//! all written aside and renamed into `OUT/NAME/VERSION` whole. A published
//! version is never overwritten.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::options::{BuildOptions, TOOL};
use super::outputs::{compression_name, output_compressions, OutputRecord};
use super::stages::StageRunner;
use crate::artifact::{self, menus, squashfs, uki};
use crate::bundle::manifest::{
    self, Manifest, ManifestArtifact, ManifestBoot, ManifestKernel, ManifestRootfs, ManifestStage, MANIFEST_VERSION,
};
use crate::bundle::names::{BundleNames, HOSTS_FILE, PACKAGES};
use crate::cache::{Corrupt, CorruptEntry};
use crate::digest::sha256_hex;
use crate::fileops::remove_tree;
use crate::progress::Progress;
use crate::recipe::Recipe;
use crate::stage::kernel::kernels_of;

/// Before any stage runs: the out directory can be written, and the version
/// is not already published from another recipe or with other settings (a
/// published version is never overwritten, so such a build could only fail
/// at its end).
pub fn preflight(
    recipe: &Recipe,
    plan: &crate::plan::Plan,
    options: &BuildOptions,
    host: &dyn crate::host::Host,
) -> Result<()> {
    let parent = options.out_dir.join(&plan.recipe);
    fs_err::create_dir_all(&options.out_dir)
        .with_context(|| format!("the out directory {} cannot be made", options.out_dir.display()))?;
    no_link_under_out(&options.out_dir, &format!("{}/{}", plan.recipe, options.version))?;
    if fs_err::symlink_metadata(&parent).is_err() {
        fs_err::create_dir(&parent)
            .with_context(|| format!("the out directory {} cannot be made", parent.display()))?;
    }
    tempfile::tempfile_in(&parent)
        .with_context(|| format!("the out directory {} cannot be written", parent.display()))?;
    // A Secure Boot key that cannot sign stops the build before any stage runs.
    if let Some(sign) = plan.outputs.uki.as_ref().and_then(|uki| uki.sign.as_ref()) {
        uki::SecureBootSigner::open(&sign.key.resolved, &sign.cert.resolved)
            .and_then(|signer| signer.check_pair(host))
            .context("outputs.uki.sign")?;
    }
    let bundle = parent.join(&options.version);
    let Ok(bytes) = fs_err::read(bundle.join("manifest.json")) else { return Ok(()) };
    let Ok(existing) = serde_json::from_slice::<Manifest>(&bytes) else { return Ok(()) };
    let mut differences = Vec::new();
    if existing.recipe_sha256 != sha256_hex(recipe.source.as_bytes()) {
        differences.push("another recipe text".to_string());
    }
    if existing.fast != options.fast {
        differences.push(if existing.fast {
            "it was built with --fast".into()
        } else {
            "it was built without --fast".into()
        });
    }
    if existing.source_date_epoch != plan.source_date_epoch {
        differences.push(format!("SOURCE_DATE_EPOCH {}", existing.source_date_epoch));
    }
    // The same recipe and settings: the stages' inputs may still differ.
    if differences.is_empty() {
        differences.extend(stage_differences(plan, options, &existing)?);
    }
    if differences.is_empty() {
        return Ok(());
    }
    if options.replace {
        return replaceable(&bundle, &existing).map_err(|why| {
            anyhow::anyhow!(
                "{} cannot be replaced: {why}; nothing was built\nhint: build another version with `--version`",
                bundle.display()
            )
        });
    }
    bail!(
        "{} already exists with different contents ({}), and a published version is never overwritten; nothing was built\nhint: `--replace` replaces a version that is neither signed nor promoted (the developer loop); `--version` builds another",
        bundle.display(),
        differences.join(", ")
    )
}

/// The stages whose key the plan knows now (every cached one, and the first
/// that is not) and that differ from those the published manifest records:
/// the bundle this build makes would not be that one.
fn stage_differences(plan: &crate::plan::Plan, options: &BuildOptions, existing: &Manifest) -> Result<Vec<String>> {
    if existing.stages.len() != plan.stages.len() {
        return Ok(vec![format!("{} stages instead of {}", plan.stages.len(), existing.stages.len())]);
    }
    let store = crate::cache::Store::open(&options.cache_dir)?;
    let mut differences = Vec::new();
    for (index, status) in plan.statuses(&store, options.rebuild_from).iter().enumerate() {
        let key = match status {
            crate::plan::StageStatus::Hit(record) => &record.key,
            crate::plan::StageStatus::Miss { key, .. } => key,
            crate::plan::StageStatus::Pending => break,
        };
        if &existing.stages[index].key != key {
            differences.push(format!("stage `{}` has other inputs", plan.stages[index].name));
            break;
        }
    }
    Ok(differences)
}

/// Whether the published `bundle` may be replaced by `--replace`: it is not
/// signed, not a promotion, and no other version was promoted from it.
fn replaceable(bundle: &Path, existing: &Manifest) -> std::result::Result<(), String> {
    if fs_err::symlink_metadata(bundle.join(crate::bundle::names::SIGNATURE)).is_ok() {
        return Err("it is signed".into());
    }
    if let Some(from) = &existing.promoted_from {
        return Err(format!("it was promoted from {}", from.version));
    }
    let parent = bundle.parent().unwrap_or(Path::new("."));
    for sibling in fs_err::read_dir(parent).map_err(|error| error.to_string())?.flatten() {
        let Ok(text) = crate::fileops::read_regular_no_follow(&sibling.path().join(MANIFEST_FILE), 16 << 20) else {
            continue;
        };
        let Ok(other) = serde_json::from_slice::<Manifest>(&text) else { continue };
        if other.promoted_from.as_ref().is_some_and(|from| from.version == existing.version) {
            return Err(format!("version {} was promoted from it", other.version));
        }
    }
    Ok(())
}

/// Under `--out` nothing is a symlink: `OUT/NAME` or `OUT/NAME/VERSION`
/// planted as one (by another user of a shared directory, say) would send
/// the bundle where it points. `--out` itself is the user's to choose.
fn no_link_under_out(out: &Path, relative: &str) -> Result<()> {
    let mut path = out.to_path_buf();
    for part in relative.split('/') {
        path.push(part);
        match fs_err::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                let target = fs_err::read_link(&path).map(|t| t.display().to_string()).unwrap_or_default();
                bail!(
                    "{} is a symlink (to {target}); rootsmith follows no link under --out, so nothing was published there\nhint: remove the link, or give --out the directory it points to",
                    path.display()
                );
            }
            Ok(metadata) if !metadata.is_dir() => {
                bail!("{} is not a directory; a bundle cannot be published under it", path.display())
            }
            _ => {}
        }
    }
    Ok(())
}

const MANIFEST_FILE: &str = crate::bundle::names::MANIFEST;

/// Put `staging` where `bundle` is, in one step (renameat2 RENAME_EXCHANGE:
/// a reader sees the old bundle or the new one, never neither), then remove
/// the old one; where the file system cannot exchange, move the old aside
/// first.
fn replace_bundle(staging: &Path, bundle: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |path: &Path| std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in a path");
    let (from, to) = (c(staging), c(bundle));
    // SAFETY: both are NUL-terminated paths that live across the call.
    let exchanged =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_EXCHANGE) }
            == 0;
    if !exchanged {
        // Named as a partial of this version: a build that dies here leaves
        // what the next publish sweeps.
        let mut name = staging.file_name().unwrap_or_default().to_os_string();
        name.push(".old");
        let aside = staging.with_file_name(name);
        fs_err::rename(bundle, &aside)?;
        fs_err::rename(staging, bundle)?;
        return Ok(remove_tree(&aside)?);
    }
    Ok(remove_tree(staging)?)
}

/// Write `OUT/NAME/VERSION` aside and rename it into place. An existing
/// version is never overwritten: identical contents are "up to date",
/// anything else is an error.
/// `made_here` names the output entries this build wrote: their files are
/// not hashed again.
pub fn publish(
    runner: &StageRunner<'_>,
    options: &BuildOptions,
    recipe: &Recipe,
    record: &OutputRecord,
    made_here: &[String],
) -> Result<(PathBuf, bool)> {
    let name = &runner.plan.recipe;
    let version = &options.version;
    let names = BundleNames::new(name, version);
    let parent = options.out_dir.join(name);
    fs_err::create_dir_all(&options.out_dir)?;
    no_link_under_out(&options.out_dir, name)?;
    if fs_err::symlink_metadata(&parent).is_err() {
        fs_err::create_dir(&parent)?;
    }
    no_link_under_out(&options.out_dir, name)?;
    let bundle = parent.join(version);
    no_link_under_out(&options.out_dir, &format!("{name}/{version}"))?;
    // One publisher of this bundle at a time; whatever partial copy of it
    // is left is from a build that died while publishing.
    let _lock = runner.store.lock(&format!("publish-{}", sha256_hex(bundle.as_os_str().as_encoded_bytes())))?;
    let partial_prefix = format!(".{version}.partial-");
    for entry in fs_err::read_dir(&parent)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&partial_prefix) {
            remove_tree(&entry.path())?;
        }
    }
    if let Some(locked) = &options.lock {
        let list = fs_err::read_to_string(runner.store.layout().output(&record.rootfs.key).join(PACKAGES))?;
        let differences = locked.lock.differences(&artifact::packages::parse(&list, Some(&runner.plan.arch)));
        if !differences.is_empty() {
            bail!("the tree's packages differ from the lock, so nothing is published:\n  {}", differences.join("\n  "));
        }
    }
    let staging = tempfile::Builder::new().prefix(&partial_prefix).tempdir_in(&parent)?;
    // The outputs are copied and checked on every core: the rootfs image and
    // the tarball are hundreds of megabytes each.
    let outputs = record.all_files();
    let layout = runner.store.layout();
    // The bundle may share the cache's inodes only where nobody else can
    // write either: another user who owns the cache (or may write into it)
    // could otherwise rewrite a published release through the link.
    let linkable = crate::fileops::owner_only(&layout.output(&record.rootfs.key), &options.cache_dir)
        && crate::fileops::owner_only(staging.path(), &options.out_dir);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let copied: Vec<Result<ManifestArtifact>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..std::thread::available_parallelism().map_or(1, |n| n.get()).min(outputs.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while let Some(&(entry, file, digest)) =
                        outputs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        let link = linkable && entry == record.rootfs.key;
                        let check = !made_here.iter().any(|made| made == entry);
                        done.push((
                            file,
                            copy_output(layout, staging.path(), &names, entry, file, digest, link, check),
                        ));
                    }
                    done
                })
            })
            .collect();
        let mut all: Vec<_> =
            workers.into_iter().flat_map(|worker| worker.join().expect("a copying thread panicked")).collect();
        all.sort_by_key(|(file, _)| *file);
        all.into_iter().map(|(_, result)| result).collect()
    });
    let mut artifacts = copied.into_iter().collect::<Result<Vec<_>>>()?;
    let mut kernels = Vec::new();
    for kernel in kernels_of(&runner.records)? {
        let products = kernel.dir(runner.store.layout());
        let mut copy = |from: &str, to: String| -> Result<()> {
            let target = staging.path().join(&to);
            if let Some(parent) = target.parent() {
                fs_err::create_dir_all(parent)?;
            }
            fs_err::copy(products.join(from), &target).with_context(|| {
                format!(
                    "kernel {} products are missing from the cache; rebuild with --rebuild {}",
                    kernel.name, kernel.name
                )
            })?;
            artifacts.push(ManifestArtifact {
                size: fs_err::metadata(&target)?.len(),
                sha256: crate::digest::hash_file(&target)?,
                name: to,
            });
            Ok(())
        };
        let vmlinuz = names.vmlinuz(&kernel.name);
        copy("vmlinuz", vmlinuz.clone())?;
        copy("config", format!("kernel/{}-config", kernel.name))?;
        if products.join("System.map").is_file() {
            copy("System.map", format!("kernel/{}-System.map", kernel.name))?;
        }
        for deb in &kernel.debs {
            copy(deb, format!("kernel/{deb}"))?;
        }
        let device_trees = (kernel.device_trees > 0).then(|| names.device_trees(&kernel.name));
        if let Some(name) = &device_trees {
            copy(crate::stage::kernel::device_trees::ARCHIVE, name.clone())?;
        }
        kernels.push(ManifestKernel {
            name: kernel.name.clone(),
            release: kernel.release.clone(),
            config_sha256: kernel.config_sha256.clone(),
            vmlinuz,
            debs: kernel.debs.iter().map(|d| format!("kernel/{d}")).collect(),
            device_trees,
            uki: None,
        });
    }
    let initramfs_compression = runner.plan.outputs.initramfs.compression;
    let mut boot = ManifestBoot {
        initramfs: names.initramfs(),
        initramfs_size: record.initramfs.size,
        initramfs_compression: compression_name(initramfs_compression),
        rootfs_image: names.rootfs_image(),
        cmdline: recipe.boot.cmdline.clone(),
        marker: recipe.boot.marker.clone(),
        modules: record.initramfs.modules.clone(),
        shell: runner.plan.outputs.initramfs.shell,
        uki: None,
    };
    if let Some(settings) = &runner.plan.outputs.uki {
        // Made here, not cached with the outputs: a UKI names the bundle's
        // version, and making one is a fast objcopy of files already here.
        let signer = settings
            .sign
            .as_ref()
            .map(|sign| uki::SecureBootSigner::open(&sign.key.resolved, &sign.cert.resolved))
            .transpose()
            .context("outputs.uki.sign")?;
        let ukis = uki::BundleUkis {
            covers: &|kernel| settings.covers(kernel),
            rootfs_url: settings.rootfs_url.as_deref(),
            cookie: &record.cookie,
            epoch: runner.plan.source_date_epoch,
            signer: signer.as_ref(),
        };
        let (made, files) = uki::write_for_bundle(runner.host, staging.path(), &names, &mut kernels, &boot, &ukis)?;
        boot.uki = Some(made);
        artifacts.extend(files);
    }
    artifacts.extend(menus::write_all(
        staging.path(),
        &menus::MenuInput::new(name, version, &runner.plan.arch, &kernels, &boot),
    )?);
    if let Some(hosts) = &recipe.hosts {
        // The inventory travels with the bundle it describes (`serve --hosts BUNDLE/hosts.yaml`).
        let bytes = fs_err::read(&hosts.resolved)?;
        fs_err::write(staging.path().join(HOSTS_FILE), &bytes)?;
        artifacts.push(ManifestArtifact {
            name: HOSTS_FILE.into(),
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        });
    }
    artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    let image = match &runner.plan.outputs.oci {
        Some(_) => Some(crate::oci::image::assemble(
            &runner.store,
            &runner.records,
            &runner.plan.arch,
            runner.plan.source_date_epoch,
        )?),
        None => None,
    };
    let (squashfs_compression, _) = output_compressions(runner.plan, options.fast);
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        tool: TOOL.into(),
        name: name.clone(),
        version: version.clone(),
        arch: runner.plan.arch.clone(),
        recipe_sha256: sha256_hex(recipe.source.as_bytes()),
        source_date_epoch: runner.plan.source_date_epoch,
        fast: options.fast,
        stages: runner
            .records
            .iter()
            .map(|r| ManifestStage {
                name: r.stage.clone(),
                kind: r.kind.clone(),
                key: r.key.clone(),
                layer: r.layer.clone(),
            })
            .collect(),
        rootfs: ManifestRootfs {
            cookie: record.cookie.clone(),
            squashfs_writer: squashfs::writer_name(runner.host, squashfs_compression),
            squashfs_compression: compression_name(squashfs_compression),
            squashfs_entries: record.squashfs_entries,
            contract_version: rootsmith_init::contract::CONTRACT_VERSION,
        },
        kernels,
        boot,
        artifacts,
        promoted_from: None,
        lock_sha256: options.lock.as_ref().map(|locked| locked.digest.clone()),
        oci_image: image.as_ref().map(|image| image.manifest_digest.clone()),
    };
    let manifest_bytes = manifest::write_index(staging.path(), &manifest)?;
    // The image goes out before the bundle is published: a failed push leaves no bundle.
    if let (Some(image), Some(oci)) = (&image, &runner.plan.outputs.oci) {
        write_image(image, oci, version, runner.progress)?;
    }
    if bundle.exists() {
        let existing = fs_err::read(bundle.join(MANIFEST_FILE)).unwrap_or_default();
        if existing == manifest_bytes || !options.replace {
            return same_bundle(&bundle, &manifest_bytes).map(|()| (bundle, true));
        }
        let old: Manifest =
            serde_json::from_slice(&existing).with_context(|| format!("reading {}", bundle.display()))?;
        replaceable(&bundle, &old).map_err(|why| anyhow::anyhow!("{} cannot be replaced: {why}", bundle.display()))?;
        let staging = staging.keep();
        replace_bundle(&staging, &bundle).with_context(|| format!("replacing {}", bundle.display()))?;
        runner.progress.note(&format!("replaced {} (--replace)", bundle.display()));
        return Ok((bundle, false));
    }
    let staging = staging.keep();
    if let Err(error) = fs_err::rename(&staging, &bundle) {
        let _ = fs_err::remove_dir_all(&staging);
        if bundle.exists() {
            return same_bundle(&bundle, &manifest_bytes).map(|()| (bundle, true));
        }
        return Err(error).with_context(|| format!("moving the bundle into {}", bundle.display()));
    }
    Ok((bundle, false))
}

/// Copy the cached output `file` of entry `entry` into the bundle under its
/// bundle name; with `check`, checked against its recorded `digest` on the
/// way (an entry this build wrote was hashed as it was written). With
/// `link`, the bundle's file is a hard link to the cache's where the file
/// system allows: the rootfs image and tarball are hundreds of megabytes,
/// and a published bundle is never changed in place (docs/releases.md).
/// Otherwise it shares no inode with the cache: a reflink, or a copy. A
/// cached entry is checked again each time it is published.
#[allow(clippy::too_many_arguments)]
fn copy_output(
    layout: &crate::cache::Layout,
    staging: &Path,
    names: &BundleNames,
    entry: &str,
    file: &str,
    digest: &str,
    link: bool,
    check: bool,
) -> Result<ManifestArtifact> {
    // Files about the tree, not boot artifacts, keep their names.
    let target = staging.join(names.output(file));
    let source = layout.output(entry).join(file);
    if !(link && crate::fileops::hard_link_regular(&source, &target)?) {
        crate::fileops::clone_or_copy(&source, &target)?;
    }
    let actual = if check { crate::digest::hash_file_no_follow(&target)? } else { digest.to_string() };
    if actual != digest {
        return Err(Corrupt {
            what: format!("cached output {file} ({})", &entry[..12]),
            why: "its bytes do not match its digest".into(),
            entry: CorruptEntry::Output(entry.to_string()),
        }
        .into());
    }
    Ok(ManifestArtifact { size: fs_err::metadata(&target)?.len(), name: names.output(file), sha256: actual })
}

/// The `outputs.oci` image: into its layout, to its registry.
fn write_image(
    image: &crate::oci::image::Image,
    oci: &crate::recipe::OciOutput,
    version: &str,
    progress: &dyn Progress,
) -> Result<()> {
    if let Some(dir) = &oci.layout {
        crate::oci::layout::write_image(dir, version, image)
            .with_context(|| format!("writing the OCI image into {}", dir.display()))?;
        progress.note(&format!("oci: {} in {} as `{version}`", image.manifest_digest, dir.display()));
    }
    if let Some(reference) = &oci.push {
        let registry = crate::oci::registry::Registry::connect(reference)?;
        registry
            .push(image, &|line| progress.note(&format!("oci: {line}")))
            .with_context(|| format!("pushing the OCI image to {reference}"))?;
        progress.note(&format!("oci: {} pushed to {reference}", image.manifest_digest));
    }
    Ok(())
}

fn same_bundle(bundle: &Path, manifest: &[u8]) -> Result<()> {
    let existing = fs_err::read(bundle.join("manifest.json")).unwrap_or_default();
    if existing == manifest {
        return Ok(());
    }
    bail!(
        "{} already exists with different contents, and a published version is never overwritten\nhint: build another version with `--version`, or remove that directory if it was never released",
        bundle.display()
    )
}
