//! Running a plan's stages: reuse the longest cached prefix, pull what the
//! remote cache has, build the rest one at a time (each under its key's
//! lock), and keep one work tree that follows the stages.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::kept_tree::{self, KeptTree};
use super::options::{BuildOptions, StageFailed, StageOutcome};
use crate::cache::{tree_id, StageRecord, Store, WorkDir};
use crate::host::overlay::{self, OverlayMount};
use crate::host::Host;
use crate::layer::{apply_layer, Change, Devices, Snapshot, TreeTarWriter};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::share::RemoteCache;
use crate::stage::kernel::KernelProducts;
use crate::stage::{run_stage, StageContext};

/// zstd level of stored layers: fast, they are rewritten as outputs anyway.
const LAYER_ZSTD_LEVEL: i32 = 3;

/// The work tree: the state after `stages_applied` stages.
pub struct Work {
    /// When the tree is an overlay over a kept tree: the mount (dropped, so
    /// unmounted, before the work dir is removed) and the kept tree's lock.
    _overlay: Option<(OverlayMount, KeptTree)>,
    pub dir: WorkDir,
    stages_applied: usize,
    /// The tree's device placeholders (a new tree starts without any).
    devices: Devices,
}

impl Work {
    /// Whether the tree's unchanged files are those of a kept tree, which
    /// outlives this build (their inodes and ctimes are the same in the next
    /// build's overlay); an extracted tree's files are new every time.
    pub fn files_outlive_the_build(&self) -> bool {
        self._overlay.is_some()
    }

    pub fn tree(&self) -> PathBuf {
        self.dir.path().join("tree")
    }

    /// What stands for a device node in the tree (where mknod was refused).
    pub fn devices(&self) -> &Devices {
        &self.devices
    }
}

/// Runs the stages of one plan against one store.
pub struct StageRunner<'a> {
    pub plan: &'a Plan,
    pub store: Store,
    pub host: &'a dyn Host,
    pub progress: &'a dyn Progress,
    /// The records of the stages handled so far, in order.
    pub records: Vec<StageRecord>,
    pub work: Option<Work>,
    rebuild_from: Option<usize>,
    cache_only: bool,
    apt_pins: Option<&'a str>,
    /// The shared stage cache while it answers (dropped, with a warning, when it does not).
    remote: Option<RemoteCache>,
    /// Whether the host's emulation of a foreign architecture was checked (at
    /// the first stage that runs: a build whose stages are all cached needs none).
    emulation_ready: bool,
    /// The snapshot of the work tree the last built stage left (with the
    /// number of stages applied to it): the next stage's "before", instead of
    /// a second walk of the same tree. Taken out by each stage; dropped
    /// whenever the work tree is replaced.
    snapshot: Option<(usize, Snapshot)>,
}

impl<'a> StageRunner<'a> {
    /// Open the cache (and the remote cache, when one is set) for `plan`.
    pub fn open(
        plan: &'a Plan,
        options: &'a BuildOptions,
        host: &'a dyn Host,
        progress: &'a dyn Progress,
    ) -> Result<StageRunner<'a>> {
        if !host.records_true_owners() {
            bail!(
                "this process cannot give files their true owners (uid {}, or a user namespace that maps fewer than {} ids), and a layer cached that way would poison later builds; nothing was built\nhint: run rootsmith as an ordinary user (it makes its own user namespace) or as root, not inside a namespace that maps only some ids",
                nix::unistd::geteuid(),
                crate::host::userns::IDS_NEEDED + 1
            );
        }
        let store = Store::open(&options.cache_dir)?;
        let remote = match &options.cache_remote {
            Some(repository) => match RemoteCache::connect(repository) {
                Ok(remote) => Some(remote),
                Err(error) if options.cache_only => {
                    return Err(error.context(format!("the remote cache {repository} (--cache-only needs it)")))
                }
                Err(error) => {
                    progress.warn(&format!("remote cache {repository}: {error:#}; building without it"));
                    None
                }
            },
            None => None,
        };
        Ok(StageRunner {
            plan,
            store,
            host,
            progress,
            records: Vec::new(),
            work: None,
            rebuild_from: options.rebuild_from,
            cache_only: options.cache_only,
            apt_pins: options.lock.as_ref().map(|lock| lock.pins.as_str()),
            remote,
            emulation_ready: false,
            snapshot: None,
        })
    }

    /// The work tree after every stage handled so far (prepared by [`Self::prepare_tree`]).
    pub fn work(&self) -> &Work {
        self.work.as_ref().expect("the work tree is prepared first")
    }

    /// The tree id after the stages handled so far.
    pub fn parent_tree(&self) -> Option<&str> {
        self.records.last().map(|record| record.tree.as_str())
    }

    /// Bring stage `index` into the cache: reuse it, pull it, or build it.
    pub fn stage(&mut self, index: usize) -> Result<StageOutcome> {
        let planned = &self.plan.stages[index];
        let label = format!("{} ({})", planned.name, planned.kind.kind_name());
        let started = Instant::now();
        let inputs = self.plan.inputs(index, self.parent_tree());
        let key = inputs.key();
        let forced = self.rebuild_from.is_some_and(|from| index >= from);
        let outcome = |state: &str, seconds: f64| StageOutcome {
            name: planned.name.clone(),
            kind: planned.kind.kind_name().into(),
            key: key.clone(),
            state: state.into(),
            seconds,
        };
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
        if self.cache_only {
            bail!("stage `{}` is not in the cache (key {key}) and --cache-only forbids building it", planned.name);
        }
        if !self.emulation_ready {
            super::emulation::ready(&self.plan.arch, self.host, self.progress)?;
            self.emulation_ready = true;
        }
        self.progress.start(&label, if forced { "rebuilding (--rebuild)" } else { "building" });
        let progress = self.progress;
        let _lock = self.store.lock_announcing(&key, &|holder| {
            let who = holder.map(|pid| format!(" (process {pid})")).unwrap_or_default();
            progress.note(&format!("{label}: waiting for another build{who} that is building this stage"));
        })?;
        if !forced {
            // A build running beside this one may have made it while we waited.
            if let Some(record) = self.store.stage(&key) {
                self.records.push(record);
                self.progress.done(&label, "cached", started.elapsed().as_secs_f64());
                return Ok(outcome("cached", started.elapsed().as_secs_f64()));
            }
        }
        // The snapshot the last stage left of this work tree, when the tree
        // is still the one it was taken of.
        let remembered = self.snapshot.take();
        self.prepare_tree(index)?;
        let work = self.work.as_ref().expect("prepared above");
        let tree = work.tree();
        let is_base = planned.kind.is_base();
        let before = match remembered {
            _ if is_base => Snapshot::default(),
            Some((applied, snapshot)) if applied == index && work.stages_applied == index => snapshot,
            _ => Snapshot::take(&tree)?,
        };
        // The log outlives the build (a failure names it); each run starts it afresh.
        let log = self.store.layout().stage_log(&key);
        fs_err::write(&log, b"")?;
        let scratch = work.dir.path().join("scratch");
        fs_err::create_dir_all(&scratch)?;
        let context = StageContext {
            host: self.host,
            tree: &tree,
            devices: &work.devices,
            log: log.clone(),
            arch: &self.plan.arch,
            source_date_epoch: self.plan.source_date_epoch,
            mirror: self.plan.mirror.as_deref(),
            scratch: &scratch,
            layout: self.store.layout(),
            recipe: &self.plan.recipe,
            stage_name: &planned.name,
            stage_key: &key,
            remote: &planned.remote,
            planned_files: &planned.files,
            apt_pins: self.apt_pins,
        };
        let ran = run_stage(&planned.kind, &planned.resolved, &context)
            .and_then(|kernel| crate::plan::check_files_unchanged(planned).map(|()| kernel));
        let kernel = match ran {
            Ok(kernel) => kernel,
            Err(error) => {
                self.progress.fail(&label, &format!("{error:#}"));
                return Err(error.context(StageFailed {
                    stage: planned.name.clone(),
                    kind: planned.kind.kind_name().into(),
                    log: log.clone(),
                }));
            }
        };
        if let Some(kernel) = &kernel {
            let compiled = if kernel.compiled {
                format!(
                    "compiled, ccache {} hits / {} misses, {} in ccache",
                    kernel.ccache_hits,
                    kernel.ccache_misses,
                    crate::progress::human_size(kernel.ccache_size)
                )
            } else {
                "products already cached".to_string()
            };
            self.progress.note(&format!("kernel {} ({compiled})", kernel.release));
        }
        if is_base {
            set_root_mode(&tree)?;
        }
        crate::stage::scrub::scrub(&tree).context("removing build-time noise from the tree")?;
        let mut after = Snapshot::take(&tree)?;
        let (layer, layer_size) = self.write_layer(&tree, &work.devices, &before, &mut after)?;
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
            created: crate::time::now_seconds(),
            products: kernel.as_ref().map(KernelProducts::to_products),
            owners_recorded: true,
        };
        self.store.put_stage(&record)?;
        self.share(&record)?;
        self.records.push(record);
        self.work.as_mut().expect("prepared above").stages_applied = index + 1;
        self.snapshot = Some((index + 1, after));
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

    /// The outputs `key` from the remote cache, when it has them: `true`
    /// once they are in the store.
    pub fn pull_outputs(&mut self, key: &str) -> Result<bool> {
        let Some(remote) = &self.remote else { return Ok(false) };
        let progress = self.progress;
        match remote.pull_outputs(&self.store, key, &|line| progress.note(line)) {
            Ok(found) => Ok(found),
            Err(error) => self.remote_failed(error).map(|()| false),
        }
    }

    /// Give the remote cache the outputs `key` when it lacks them.
    pub fn share_outputs(&mut self, key: &str) -> Result<()> {
        let Some(remote) = &self.remote else { return Ok(()) };
        let progress = self.progress;
        match remote.push_outputs(&self.store, key, &|_| {}) {
            Ok(true) => {
                progress.note(&format!("outputs pushed to the remote cache {}", remote.repository));
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(error) => self.remote_failed(error),
        }
    }

    /// A remote cache that fails is a warning (and not asked again), unless --cache-only.
    fn remote_failed(&mut self, error: anyhow::Error) -> Result<()> {
        let repository = self.remote.take().map(|remote| remote.repository).unwrap_or_default();
        if self.cache_only {
            return Err(error.context(format!("the remote cache {repository} (--cache-only needs it)")));
        }
        self.progress.warn(&format!("remote cache {repository}: {error:#}; going on without it"));
        Ok(())
    }

    /// Make the work tree hold the state after the first `index` stages: reuse
    /// it when it does, otherwise restore it from the cached layers.
    pub fn prepare_tree(&mut self, index: usize) -> Result<()> {
        if self.work.as_ref().is_some_and(|work| work.stages_applied == index) {
            return Ok(());
        }
        self.work = None;
        self.snapshot = None;
        let dir = self.store.work_dir(&self.plan.recipe)?;
        if index > 0 && overlay::available() && overlay::works_in(&dir.path().join("probe")) {
            match self.overlay_tree(&dir, index) {
                Ok(mounted) => {
                    self.work =
                        Some(Work { _overlay: Some(mounted), dir, stages_applied: index, devices: Devices::default() });
                    return Ok(());
                }
                // Corrupt layers are healed by the caller; anything else
                // (a filesystem without overlay's needs) falls back.
                Err(error) if error.downcast_ref::<crate::cache::Corrupt>().is_some() => return Err(error),
                Err(error) => {
                    self.progress.warn(&format!("the tree after {index} stages: {error:#}; extracting it instead"));
                    let dir_path = dir.path().to_path_buf();
                    for leftover in ["tree", "upper", "overlay"] {
                        let _ = crate::fileops::remove_tree(&dir_path.join(leftover));
                    }
                }
            }
        }
        let tree = dir.path().join("tree");
        fs_err::create_dir(&tree)?;
        let devices = self.extract(&tree, index)?;
        self.work = Some(Work { _overlay: None, dir, stages_applied: index, devices });
        Ok(())
    }

    /// Extract the layers of the first `index` stages into the empty `tree`;
    /// the device placeholders it needed.
    fn extract(&self, tree: &Path, index: usize) -> Result<Devices> {
        set_root_mode(tree)?;
        let devices = Devices::default();
        for record in &self.records[..index] {
            let blob = self.store.open_blob(&record.layer)?;
            let decoder = zstd::Decoder::new(blob)?;
            apply_layer(decoder, tree, &format!("{} ({})", record.stage, &record.layer[..12]), &devices)?;
        }
        Ok(devices)
    }

    /// The tree after `index` stages as an overlay: an empty upper directory
    /// in `dir` over the kept tree of that tree id (extracted first when
    /// there is none).
    fn overlay_tree(&self, dir: &WorkDir, index: usize) -> Result<(OverlayMount, KeptTree)> {
        let tree_id = &self.records[index - 1].tree;
        let (kept, came, evicted) = kept_tree::ensure(&self.store, tree_id, &self.plan.recipe, |tree| {
            let devices = self.extract(tree, index)?;
            // As root every device is a real node; a placeholder would need
            // its Devices kept beside the tree.
            anyhow::ensure!(devices.is_empty(), "the tree needed device placeholders");
            Ok(())
        })?;
        let short = &tree_id[..12];
        match came {
            kept_tree::Came::Reused => self
                .progress
                .note(&format!("the tree after {index} stages: the kept tree {short} (an overlay, nothing extracted)")),
            kept_tree::Came::Made(why) => self.progress.note(&format!(
                "the tree after {index} stages: extracted once into the kept tree {short}, which later builds overlay{}",
                why.map(|why| format!(" (it had been {why})")).unwrap_or_default()
            )),
            kept_tree::Came::Remade(why) => self.progress.warn(&format!(
                "the kept tree {short} differed from its record ({why}); it was discarded and extracted again"
            )),
        }
        for line in evicted {
            self.progress.note(&line);
        }
        let (tree, upper, scratch) = (dir.path().join("tree"), dir.path().join("upper"), dir.path().join("overlay"));
        for new in [&tree, &upper, &scratch] {
            fs_err::create_dir(new)?;
        }
        // The merged root is the upper directory's: give it the kept root's
        // mode, owner and times, as an extracted tree's root has them.
        let root = fs_err::symlink_metadata(kept.path())?;
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            std::os::unix::fs::lchown(&upper, Some(root.uid()), Some(root.gid()))?;
            fs_err::set_permissions(&upper, std::fs::Permissions::from_mode(root.mode() & 0o7777))?;
        }
        filetime::set_file_times(
            &upper,
            filetime::FileTime::from_last_access_time(&root),
            filetime::FileTime::from_last_modification_time(&root),
        )?;
        let mount = overlay::mount(kept.path(), &upper, &scratch, &tree)?;
        Ok((mount, kept))
    }

    /// Store what changed between `before` and `after` as a layer blob (a
    /// placeholder as the device it stands for).
    /// `after` is refreshed for the paths whose times this sets, so it stays
    /// the tree's snapshot (the next stage starts from it).
    fn write_layer(
        &self,
        tree: &Path,
        devices: &Devices,
        before: &Snapshot,
        after: &mut Snapshot,
    ) -> Result<(String, u64)> {
        let temp = self.store.temp_file()?;
        {
            let mut encoder = zstd::Encoder::new(std::io::BufWriter::new(temp.as_file()), LAYER_ZSTD_LEVEL)?;
            encoder.multithread(std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1))?;
            let mut writer = TreeTarWriter::new(encoder, self.plan.source_date_epoch, devices);
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
            let written: Vec<PathBuf> = changes
                .into_iter()
                .filter_map(|change| if let Change::Write(path) = change { Some(path) } else { None })
                .collect();
            for path in &written {
                let full = tree.join(path);
                let metadata = fs_err::symlink_metadata(&full)?;
                if filetime::FileTime::from_last_modification_time(&metadata) > epoch {
                    filetime::set_symlink_file_times(&full, epoch, epoch)?;
                }
            }
            // Every written path, not only those retimed here: the other
            // names of a hard-linked file were retimed through the first.
            after.refresh(tree, written.iter().map(PathBuf::as_path))?;
        }
        self.store.put_blob(temp)
    }
}

/// The root of a root filesystem is 0755 root:root whatever made it.
fn set_root_mode(tree: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(tree, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
