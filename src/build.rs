//! A build: walk the plan, reuse the longest cached prefix of stages, build the
//! rest one at a time (each under its key's lock), assemble the outputs (cached
//! too) and publish the bundle whole or not at all.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::artifact::manifest::{Manifest, ManifestArtifact, ManifestBoot, ManifestKernel, ManifestRootfs, ManifestStage, MANIFEST_VERSION};
use crate::artifact::{self, squashfs, tarball};
use crate::cache::{sha256_hex, tree_id, OutputRecord, StageRecord, Store, WorkDir, CACHE_FORMAT};
use crate::host::Host;
use crate::netboot::hosts::HOSTS_FILE;
use crate::layer::{apply_layer, Change, Snapshot, TreeTarWriter};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::recipe::{Algorithm, Compression, Recipe};
use crate::stage::{run_stage, StageContext};

pub const TOOL: &str = concat!("rootsmith ", env!("CARGO_PKG_VERSION"));

/// The SPDX document of the rootfs's packages, in every bundle.
pub const SBOM: &str = "sbom.spdx.json";

/// zstd level of stored layers: fast, they are rewritten as outputs anyway.
const LAYER_ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub cache_dir: PathBuf,
    pub out_dir: PathBuf,
    pub version: String,
    /// Stages from this index on are rebuilt even when cached.
    pub rebuild_from: Option<usize>,
    pub fast: bool,
    pub cache_only: bool,
    /// `build --locked`: the lock, its apt pins and its digest.
    pub lock: Option<LockedBuild>,
    /// `--cache-remote`: a registry repository sharing the stage cache.
    pub cache_remote: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LockedBuild {
    pub lock: crate::lock::Lock,
    pub pins: String,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageOutcome {
    pub name: String,
    pub kind: String,
    pub key: String,
    pub state: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    pub name: String,
    pub version: String,
    pub bundle: PathBuf,
    pub stages: Vec<StageOutcome>,
    pub outputs: StageOutcome,
    /// The version already existed with exactly these contents.
    pub up_to_date: bool,
    pub seconds: f64,
}

/// The work tree: the state after `stages_applied` stages.
struct Work {
    dir: WorkDir,
    stages_applied: usize,
}

impl Work {
    fn tree(&self) -> PathBuf {
        self.dir.path().join("tree")
    }
}

struct Builder<'a> {
    plan: &'a Plan,
    options: &'a BuildOptions,
    store: Store,
    host: &'a dyn Host,
    progress: &'a dyn Progress,
    records: Vec<StageRecord>,
    work: Option<Work>,
    /// The shared stage cache while it answers (dropped, with a warning, when it does not).
    remote: Option<crate::cache::remote::RemoteCache>,
}

pub fn build(recipe: &Recipe, plan: &Plan, options: &BuildOptions, host: &dyn Host, progress: &dyn Progress) -> Result<BuildSummary> {
    let started = Instant::now();
    crate::recipe::check_version(&options.version).map_err(|why| anyhow::anyhow!("invalid version `{}`: {why}", options.version))?;
    let store = Store::open(&options.cache_dir)?;
    let remote = match &options.cache_remote {
        Some(repository) => match crate::cache::remote::RemoteCache::connect(repository) {
            Ok(remote) => Some(remote),
            Err(error) if options.cache_only => return Err(error.context(format!("the remote cache {repository} (--cache-only needs it)"))),
            Err(error) => {
                progress.warn(&format!("remote cache {repository}: {error:#}; building without it"));
                None
            }
        },
        None => None,
    };
    let mut builder = Builder { plan, options, store, host, progress, records: Vec::new(), work: None, remote };
    let mut stages = Vec::new();
    for index in 0..plan.stages.len() {
        stages.push(builder.stage(index)?);
    }
    let (outputs, record) = builder.outputs()?;
    let (bundle, up_to_date) = builder.publish(recipe, &record)?;
    Ok(BuildSummary { name: plan.recipe.clone(), version: options.version.clone(), bundle, stages, outputs, up_to_date, seconds: started.elapsed().as_secs_f64() })
}

/// Bring the tree after the first `stages` stages into a work dir (building
/// what is missing) and call `use_tree` with a context for it; the tree is
/// thrown away afterwards.
pub fn materialize<T>(
    plan: &Plan,
    cache_dir: &Path,
    stages: usize,
    host: &dyn Host,
    progress: &dyn Progress,
    use_tree: impl FnOnce(&StageContext<'_>) -> Result<T>,
) -> Result<T> {
    let options = BuildOptions { cache_dir: cache_dir.to_path_buf(), out_dir: PathBuf::new(), version: plan.version.clone(), rebuild_from: None, fast: false, cache_only: false, lock: None, cache_remote: None };
    let store = Store::open(cache_dir)?;
    let mut builder = Builder { plan, options: &options, store, host, progress, records: Vec::new(), work: None, remote: None };
    for index in 0..stages {
        builder.stage(index)?;
    }
    builder.prepare_tree(stages)?;
    let work = builder.work.as_ref().expect("prepared above");
    let tree = work.tree();
    let scratch = work.dir.path().join("scratch");
    fs_err::create_dir_all(&scratch)?;
    let archives = builder.store.apt_archives();
    let no_remote = std::collections::BTreeMap::new();
    let context = StageContext {
        host,
        tree: &tree,
        log: work.dir.path().join("shell.log"),
        arch: &plan.arch,
        source_date_epoch: plan.source_date_epoch,
        mirror: plan.mirror.as_deref(),
        apt_archives: &archives,
        scratch: &scratch,
        cache_root: builder.store.root(),
        recipe: &plan.recipe,
        stage_name: "shell",
        stage_key: "shell",
        remote: &no_remote,
        apt_pins: None,
    };
    use_tree(&context)
}

impl Builder<'_> {
    fn parent_tree(&self) -> Option<&str> {
        self.records.last().map(|record| record.tree.as_str())
    }

    fn stage(&mut self, index: usize) -> Result<StageOutcome> {
        let planned = &self.plan.stages[index];
        let label = format!("{} ({})", planned.name, planned.kind.kind_name());
        let started = Instant::now();
        let inputs = self.plan.inputs(index, self.parent_tree());
        let key = inputs.key();
        let forced = self.options.rebuild_from.is_some_and(|from| index >= from);
        let outcome = |state: &str, seconds: f64| StageOutcome { name: planned.name.clone(), kind: planned.kind.kind_name().into(), key: key.clone(), state: state.into(), seconds };
        if !forced {
            if let Some(record) = self.store.stage(&key) {
                self.share(&record)?;
                self.records.push(record);
                self.progress.done(&label, "cached", 0.0);
                return Ok(outcome("cached", started.elapsed().as_secs_f64()));
            }
            if let Some(record) = self.pull(&key)? {
                self.records.push(record);
                let seconds = started.elapsed().as_secs_f64();
                self.progress.done(&label, "pulled from the remote cache", seconds);
                return Ok(outcome("pulled", seconds));
            }
        }
        if self.options.cache_only {
            bail!("stage `{}` is not in the cache (key {key}) and --cache-only forbids building it", planned.name);
        }
        self.progress.start(&label, if forced { "rebuilding (--rebuild)" } else { "building" });
        let _lock = self.store.lock(&key)?;
        if !forced {
            // A build running beside this one may have made it while we waited.
            if let Some(record) = self.store.stage(&key) {
                self.records.push(record);
                self.progress.done(&label, "cached", started.elapsed().as_secs_f64());
                return Ok(outcome("cached", started.elapsed().as_secs_f64()));
            }
        }
        self.prepare_tree(index)?;
        let work = self.work.as_ref().expect("prepared above");
        let tree = work.tree();
        let is_base = planned.kind.is_base();
        let before = if is_base { Snapshot::default() } else { Snapshot::take(&tree)? };
        let log = work.dir.path().join(format!("{}.log", planned.name));
        let scratch = work.dir.path().join("scratch");
        fs_err::create_dir_all(&scratch)?;
        let context = StageContext {
            host: self.host,
            tree: &tree,
            log: log.clone(),
            arch: &self.plan.arch,
            source_date_epoch: self.plan.source_date_epoch,
            mirror: self.plan.mirror.as_deref(),
            apt_archives: &self.store.apt_archives(),
            scratch: &scratch,
            cache_root: self.store.root(),
            recipe: &self.plan.recipe,
            stage_name: &planned.name,
            stage_key: &key,
            remote: &planned.remote,
            apt_pins: self.options.lock.as_ref().map(|lock| lock.pins.as_str()),
        };
        let kernel = run_stage(&planned.kind, &context).with_context(|| format!("stage `{}` ({}) failed", planned.name, planned.kind.kind_name()))?;
        if let Some(kernel) = &kernel {
            let compiled = if kernel.compiled { format!("compiled, ccache {} hits / {} misses, {} in ccache", kernel.ccache_hits, kernel.ccache_misses, crate::commands::cache::human_size(kernel.ccache_size)) } else { "products already cached".to_string() };
            self.progress.note(&format!("kernel {} ({compiled})", kernel.release));
        }
        if is_base {
            set_root_mode(&tree)?;
        }
        crate::stage::scrub::scrub(&tree).context("removing build-time noise from the tree")?;
        let after = Snapshot::take(&tree)?;
        let (layer, layer_size) = self.write_layer(&tree, &before, &after)?;
        let seconds = started.elapsed().as_secs_f64();
        let record = StageRecord {
            key: key.clone(),
            recipe: self.plan.recipe.clone(),
            stage: planned.name.clone(),
            kind: planned.kind.kind_name().into(),
            tree: tree_id(self.parent_tree(), &layer),
            layer,
            layer_size,
            inputs,
            seconds,
            created: crate::cache::store_now(),
            kernel,
        };
        self.store.put_stage(&record)?;
        self.share(&record)?;
        self.records.push(record);
        self.work.as_mut().expect("prepared above").stages_applied = index + 1;
        self.progress.done(&label, "built", seconds);
        Ok(outcome("built", seconds))
    }

    /// A stage from the remote cache, when it has it.
    fn pull(&mut self, key: &str) -> Result<Option<StageRecord>> {
        let Some(remote) = &self.remote else { return Ok(None) };
        let progress = self.progress;
        match remote.pull(&self.store, key, &|line| progress.note(line)) {
            Ok(found) => Ok(found),
            Err(error) => self.remote_failed(error).map(|()| None),
        }
    }

    /// Give the remote cache a stage it lacks.
    fn share(&mut self, record: &StageRecord) -> Result<()> {
        let Some(remote) = &self.remote else { return Ok(()) };
        let progress = self.progress;
        match remote.push(&self.store, record, &|_| {}) {
            Ok(true) => {
                progress.note(&format!("stage `{}` pushed to the remote cache {}", record.stage, remote.repository));
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(error) => self.remote_failed(error),
        }
    }

    /// A remote cache that fails is a warning (and not asked again), unless --cache-only.
    fn remote_failed(&mut self, error: anyhow::Error) -> Result<()> {
        let repository = self.remote.take().map(|remote| remote.repository).unwrap_or_default();
        if self.options.cache_only {
            return Err(error.context(format!("the remote cache {repository} (--cache-only needs it)")));
        }
        self.progress.warn(&format!("remote cache {repository}: {error:#}; going on without it"));
        Ok(())
    }

    /// Make the work tree hold the state after the first `index` stages: reuse
    /// it when it does, otherwise restore it from the cached layers.
    fn prepare_tree(&mut self, index: usize) -> Result<()> {
        if self.work.as_ref().is_some_and(|work| work.stages_applied == index) {
            return Ok(());
        }
        self.work = None;
        let dir = self.store.work_dir(&self.plan.recipe)?;
        let tree = dir.path().join("tree");
        fs_err::create_dir(&tree)?;
        set_root_mode(&tree)?;
        for record in &self.records[..index] {
            let blob = self.store.open_blob(&record.layer)?;
            let decoder = zstd::Decoder::new(blob)?;
            apply_layer(decoder, &tree, &format!("{} ({})", record.stage, &record.layer[..12]))?;
        }
        self.work = Some(Work { dir, stages_applied: index });
        Ok(())
    }

    /// Store what changed between `before` and `after` as a layer blob.
    fn write_layer(&self, tree: &Path, before: &Snapshot, after: &Snapshot) -> Result<(String, u64)> {
        let temp = self.store.temp_file()?;
        {
            let mut encoder = zstd::Encoder::new(std::io::BufWriter::new(temp.as_file()), LAYER_ZSTD_LEVEL)?;
            encoder.multithread(std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1))?;
            let mut writer = TreeTarWriter::new(encoder, self.plan.source_date_epoch);
            let changes = before.changes(after);
            for change in &changes {
                match change {
                    Change::Write(path) => writer.append(tree, path)?,
                    Change::Delete(path) => writer.append_whiteout(path)?,
                }
            }
            writer.finish()?.finish()?;
            // Leave the work tree as a restore from layers would make it (mtimes
            // clamped), so the next stage sees the same tree either way and
            // captures the same layer bytes.
            let epoch = filetime::FileTime::from_unix_time(self.plan.source_date_epoch, 0);
            for change in changes {
                if let Change::Write(path) = change {
                    let full = tree.join(path);
                    let metadata = fs_err::symlink_metadata(&full)?;
                    if filetime::FileTime::from_last_modification_time(&metadata) > epoch {
                        filetime::set_symlink_file_times(&full, epoch, epoch)?;
                    }
                }
            }
        }
        self.store.put_blob(temp)
    }

    /// The `outputs.oci` image: into its layout, to its registry.
    fn write_image(&self, image: &crate::oci::image::Image, oci: &crate::recipe::OciOutput, version: &str) -> Result<()> {
        let progress = self.progress;
        if let Some(dir) = &oci.layout {
            crate::oci::layout::write_image(dir, version, image).with_context(|| format!("writing the OCI image into {}", dir.display()))?;
            progress.note(&format!("oci: {} in {} as `{version}`", image.manifest_digest, dir.display()));
        }
        if let Some(reference) = &oci.push {
            let registry = crate::oci::registry::Registry::connect(reference)?;
            registry.push(image, &|line| progress.note(&format!("oci: {line}"))).with_context(|| format!("pushing the OCI image to {reference}"))?;
            progress.note(&format!("oci: {} pushed to {reference}", image.manifest_digest));
        }
        Ok(())
    }

    fn output_compressions(&self) -> (Compression, Compression) {
        output_compressions(self.plan, self.options.fast)
    }

    fn outputs(&mut self) -> Result<(StageOutcome, OutputRecord)> {
        let started = Instant::now();
        let (squashfs_compression, tarball_compression) = self.output_compressions();
        let final_tree = self.parent_tree().expect("a recipe has stages").to_string();
        let key = output_key(self.plan, self.options.fast, &final_tree, &self.records);
        let outcome = |state: &str, seconds: f64| StageOutcome { name: "outputs".into(), kind: "outputs".into(), key: key.clone(), state: state.into(), seconds };
        if let Some(record) = self.store.output(&key) {
            self.progress.done("outputs", "cached", 0.0);
            return Ok((outcome("cached", started.elapsed().as_secs_f64()), record));
        }
        if self.options.cache_only {
            bail!("the outputs are not in the cache (key {key}) and --cache-only forbids building them");
        }
        self.progress.start("outputs", "squashfs, rootfs image, initramfs, tarball");
        let _lock = self.store.lock(&key)?;
        if let Some(record) = self.store.output(&key) {
            return Ok((outcome("cached", started.elapsed().as_secs_f64()), record));
        }
        let stages = self.plan.stages.len();
        self.prepare_tree(stages)?;
        let work = self.work.as_ref().expect("prepared above");
        let tree = work.tree();
        artifact::clamp_mtimes(&tree, self.plan.source_date_epoch)?;
        let staged = work.dir.path().join("outputs");
        fs_err::create_dir(&staged)?;
        let squashfs_path = work.dir.path().join("root.squashfs");
        squashfs::write(&tree, &squashfs_path, squashfs_compression, self.plan.source_date_epoch, &work.dir.path().join("mksquashfs.log"))?;
        let check = squashfs::verify(&squashfs_path, &tree)?;
        let squashfs_digest = crate::cache::store::hash_file(&squashfs_path)?;
        let cookie = rootsmith_init::contract::cookie_for(&squashfs_digest);
        let build_id = rootsmith_init::contract::BuildId { cookie: cookie.clone(), name: self.plan.recipe.clone() };
        artifact::cpio::write_rootfs_image(&squashfs_path, &build_id, &staged.join("rootfs.img"), self.plan.source_date_epoch)?;
        fs_err::remove_file(&squashfs_path)?;
        let kernels = self.records.iter().filter_map(|record| record.kernel.as_ref()).map(|kernel| (kernel, crate::stage::kernel::build::products_dir(self.store.root(), &kernel.products))).collect();
        let request = crate::netboot::initramfs::Request {
            settings: &self.plan.outputs.initramfs,
            tree: &tree,
            kernels,
            scratch: work.dir.path(),
            rootfs_image: &staged.join("rootfs.img"),
            build: build_id,
            epoch: self.plan.source_date_epoch,
        };
        let initramfs = crate::netboot::initramfs::write(&request, &staged.join("initramfs.img"))?;
        tarball::write_rootfs_tarball(&tree, &staged.join(format!("rootfs.{}", tarball::extension(tarball_compression))), tarball_compression, self.plan.source_date_epoch)?;
        fs_err::write(staged.join("packages.txt"), artifact::packages::installed(&tree))?;
        let created = crate::time::rfc3339(self.plan.source_date_epoch);
        fs_err::write(staged.join(SBOM), artifact::sbom::spdx(&tree, &self.plan.recipe, &cookie, &created))?;
        let mut files = std::collections::BTreeMap::new();
        for entry in fs_err::read_dir(&staged)? {
            let entry = entry?;
            files.insert(entry.file_name().to_string_lossy().into_owned(), crate::cache::store::hash_file(&entry.path())?);
        }
        let record = OutputRecord { key: key.clone(), files, cookie, squashfs_entries: check.entries, initramfs, created: crate::cache::store_now() };
        self.store.put_output(&key, &staged, &record)?;
        let seconds = started.elapsed().as_secs_f64();
        self.progress.done("outputs", "built", seconds);
        Ok((outcome("built", seconds), record))
    }

    /// Write `OUT/NAME/VERSION` aside and rename it into place. An existing
    /// version is never overwritten: identical contents are "up to date",
    /// anything else is an error.
    fn publish(&self, recipe: &Recipe, record: &OutputRecord) -> Result<(PathBuf, bool)> {
        let name = &self.plan.recipe;
        let version = &self.options.version;
        let parent = self.options.out_dir.join(name);
        fs_err::create_dir_all(&parent)?;
        let bundle = parent.join(version);
        // One publisher of this bundle at a time; whatever partial copy of it
        // is left is from a build that died while publishing.
        let _lock = self.store.lock(&format!("publish-{}", sha256_hex(bundle.as_os_str().as_encoded_bytes())))?;
        let partial_prefix = format!(".{version}.partial-");
        for entry in fs_err::read_dir(&parent)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(&partial_prefix) {
                crate::cache::store::remove_tree(&entry.path())?;
            }
        }
        if let Some(locked) = &self.options.lock {
            let list = fs_err::read_to_string(self.store.output_dir(&record.key).join("packages.txt"))?;
            let differences = locked.lock.differences(&artifact::packages::parse(&list, Some(&self.plan.arch)));
            if !differences.is_empty() {
                bail!("the tree's packages differ from the lock, so nothing is published:\n  {}", differences.join("\n  "));
            }
        }
        let staging = tempfile::Builder::new().prefix(&partial_prefix).tempdir_in(&parent)?;
        let source = self.store.output_dir(&record.key);
        let mut artifacts = Vec::new();
        for (file, digest) in &record.files {
            // Files about the tree, not boot artifacts, keep their names.
            let target = if file == "packages.txt" || file == SBOM { file.clone() } else { format!("{name}-{version}-{file}") };
            fs_err::copy(source.join(file), staging.path().join(&target))?;
            let actual = crate::cache::store::hash_file(&staging.path().join(&target))?;
            if &actual != digest {
                bail!("cached output {file} ({}) is corrupt; run `rootsmith cache verify`", &record.key[..12]);
            }
            artifacts.push(ManifestArtifact { size: fs_err::metadata(staging.path().join(&target))?.len(), name: target, sha256: actual });
        }
        let mut kernels = Vec::new();
        for kernel in self.records.iter().filter_map(|record| record.kernel.as_ref()) {
            let products = crate::stage::kernel::build::products_dir(self.store.root(), &kernel.products);
            let mut copy = |from: &str, to: String| -> Result<()> {
                let target = staging.path().join(&to);
                if let Some(parent) = target.parent() {
                    fs_err::create_dir_all(parent)?;
                }
                fs_err::copy(products.join(from), &target).with_context(|| format!("kernel {} products are missing from the cache; rebuild with --rebuild {}", kernel.name, kernel.name))?;
                artifacts.push(ManifestArtifact { size: fs_err::metadata(&target)?.len(), sha256: crate::cache::store::hash_file(&target)?, name: to });
                Ok(())
            };
            let vmlinuz = format!("{name}-{version}-{}-vmlinuz", kernel.name);
            copy("vmlinuz", vmlinuz.clone())?;
            copy("config", format!("kernel/{}-config", kernel.name))?;
            if products.join("System.map").is_file() {
                copy("System.map", format!("kernel/{}-System.map", kernel.name))?;
            }
            for deb in &kernel.debs {
                copy(deb, format!("kernel/{deb}"))?;
            }
            kernels.push(ManifestKernel { name: kernel.name.clone(), release: kernel.release.clone(), config_sha256: kernel.config_sha256.clone(), vmlinuz, debs: kernel.debs.iter().map(|d| format!("kernel/{d}")).collect() });
        }
        let initramfs_compression = self.plan.outputs.initramfs.compression;
        let boot = ManifestBoot {
            initramfs: format!("{name}-{version}-initramfs.img"),
            initramfs_size: record.initramfs.size,
            initramfs_compression: compression_name(initramfs_compression),
            rootfs_image: format!("{name}-{version}-rootfs.img"),
            cmdline: recipe.boot.cmdline.clone(),
            marker: recipe.boot.marker.clone(),
            modules: record.initramfs.modules.clone(),
            shell: self.plan.outputs.initramfs.shell,
        };
        artifacts.extend(crate::netboot::menus::write_all(staging.path(), &crate::netboot::menus::MenuInput::new(name, version, &kernels, &boot))?);
        if let Some(hosts) = &recipe.hosts {
            // The inventory travels with the bundle it describes (`serve --hosts BUNDLE/hosts.yaml`).
            let bytes = fs_err::read(&hosts.resolved)?;
            fs_err::write(staging.path().join(HOSTS_FILE), &bytes)?;
            artifacts.push(ManifestArtifact { name: HOSTS_FILE.into(), size: bytes.len() as u64, sha256: sha256_hex(&bytes) });
        }
        artifacts.sort_by(|a, b| a.name.cmp(&b.name));
        let image = match &self.plan.outputs.oci {
            Some(_) => Some(crate::oci::image::assemble(&self.store, &self.records, &self.plan.arch, self.plan.source_date_epoch)?),
            None => None,
        };
        let (squashfs_compression, _) = self.output_compressions();
        let manifest = Manifest {
            manifest_version: MANIFEST_VERSION,
            tool: TOOL.into(),
            name: name.clone(),
            version: version.clone(),
            arch: self.plan.arch.clone(),
            recipe_sha256: sha256_hex(recipe.source.as_bytes()),
            source_date_epoch: self.plan.source_date_epoch,
            fast: self.options.fast,
            stages: self.records.iter().map(|r| ManifestStage { name: r.stage.clone(), kind: r.kind.clone(), key: r.key.clone(), layer: r.layer.clone() }).collect(),
            rootfs: ManifestRootfs {
                cookie: record.cookie.clone(),
                squashfs_writer: squashfs::writer_name(),
                squashfs_compression: compression_name(squashfs_compression),
                squashfs_entries: record.squashfs_entries,
                contract_version: rootsmith_init::contract::CONTRACT_VERSION,
            },
            kernels,
            boot,
            artifacts,
            promoted_from: None,
            lock_sha256: self.options.lock.as_ref().map(|locked| locked.digest.clone()),
            oci_image: image.as_ref().map(|image| image.manifest_digest.clone()),
        };
        let manifest_bytes = crate::artifact::manifest::write_index(staging.path(), &manifest)?;
        // The image goes out before the bundle is published: a failed push leaves no bundle.
        if let (Some(image), Some(oci)) = (&image, &self.plan.outputs.oci) {
            self.write_image(image, oci, version)?;
        }
        if bundle.exists() {
            return same_bundle(&bundle, &manifest_bytes).map(|()| (bundle, true));
        }
        let staging = staging.keep();
        if let Err(error) = std::fs::rename(&staging, &bundle) {
            let _ = std::fs::remove_dir_all(&staging);
            if bundle.exists() {
                return same_bundle(&bundle, &manifest_bytes).map(|()| (bundle, true));
            }
            return Err(error).with_context(|| format!("moving the bundle into {}", bundle.display()));
        }
        Ok((bundle, false))
    }
}

/// Squashfs and tarball compression: the recipe's, or cheap ones for `--fast`.
fn output_compressions(plan: &Plan, fast: bool) -> (Compression, Compression) {
    if fast {
        // The developer loop: same tree, cheap compression.
        (Compression { algorithm: Algorithm::Zstd, level: Some(3) }, Compression { algorithm: Algorithm::Zstd, level: Some(1) })
    } else {
        (plan.outputs.squashfs, plan.outputs.tarball)
    }
}

/// The cache key of the outputs of the tree `final_tree`: everything that
/// decides their bytes.
pub fn output_key(plan: &Plan, fast: bool, final_tree: &str, records: &[StageRecord]) -> String {
    let (squashfs_compression, tarball_compression) = output_compressions(plan, fast);
    // A kernel that is not installed in the tree still decides the initramfs's modules.
    let kernels: Vec<(&str, &str, &str)> = records.iter().filter_map(|record| record.kernel.as_ref()).map(|k| (k.name.as_str(), k.release.as_str(), k.products.as_str())).collect();
    let inputs = serde_json::json!({
        "format": CACHE_FORMAT,
        "tree": final_tree,
        "squashfs": squashfs_compression,
        "tarball": tarball_compression,
        "source_date_epoch": plan.source_date_epoch,
        "squashfs_writer": squashfs::writer_name(),
        "contract": rootsmith_init::contract::CONTRACT_VERSION,
        "initramfs": plan.outputs.initramfs,
        "init": crate::netboot::initramfs::init_digest(),
        "kernels": kernels,
        "sbom": 2,
    });
    sha256_hex(&serde_json::to_vec(&inputs).expect("output key inputs serialize"))
}

/// `zstd 19`, `none`: a compression as the manifest writes it.
fn compression_name(compression: Compression) -> String {
    match compression.level {
        Some(level) => format!("{} {level}", compression.algorithm.name()),
        None => compression.algorithm.name().into(),
    }
}

fn same_bundle(bundle: &Path, manifest: &[u8]) -> Result<()> {
    let existing = std::fs::read(bundle.join("manifest.json")).unwrap_or_default();
    if existing == manifest {
        return Ok(());
    }
    bail!(
        "{} already exists with different contents, and a published version is never overwritten\nhint: build another version with `--version`, or remove that directory if it was never released",
        bundle.display()
    )
}

/// The root of a root filesystem is 0755 root:root whatever made it.
fn set_root_mode(tree: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(tree, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
