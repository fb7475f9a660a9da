//! Making a tree's outputs: the squashfs wrapped in the rootfs image, the
//! thin initramfs, the tarball, the package list and the SBOM. They are cached
//! in two entries, each under a key of everything that decides its bytes, so
//! a rebuild with nothing changed does no work, and a new init (or other
//! initramfs settings) makes only the initramfs again: the rootfs entry
//! (rootfs image, tarball, package list, SBOM) is keyed by the tree and the
//! rootfs settings, the initramfs entry by the rootfs entry's key, the init,
//! the kernels and the initramfs settings.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::options::StageOutcome;
use super::stages::StageRunner;
use crate::artifact::thin_initramfs::{self, KernelFiles};
use crate::artifact::{self, squashfs, tarball};
use crate::bundle::names::{PACKAGES, SBOM};
use crate::cache::CACHE_FORMAT;
use crate::digest::sha256_hex;
use crate::host::Host;
use crate::plan::Plan;
use crate::recipe::{Algorithm, Compression};
use crate::stage::kernel::{kernels_of, KernelProducts};
use rootsmith_init::contract::ChunkList;

/// The rootfs entry: what is made from the tree alone (the record in its
/// output directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsRecord {
    pub key: String,
    /// file name in the output directory → SHA-256
    pub files: std::collections::BTreeMap<String, String>,
    pub cookie: String,
    pub squashfs_entries: u64,
    pub created: u64,
}

/// Assembled outputs of one tree, by output key: the initramfs entry's
/// record, which names the rootfs entry it was made for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRecord {
    pub key: String,
    /// file name in the output directory → SHA-256 (the initramfs)
    pub files: std::collections::BTreeMap<String, String>,
    pub rootfs: RootfsRecord,
    pub cookie: String,
    pub squashfs_entries: u64,
    /// The thin initramfs's size and modules.
    pub initramfs: thin_initramfs::Built,
    pub created: u64,
}

impl OutputRecord {
    /// Every output file: (the key of the entry holding it, its name, its SHA-256).
    pub fn all_files(&self) -> Vec<(&str, &str, &str)> {
        let mut all: Vec<(&str, &str, &str)> = self
            .rootfs
            .files
            .iter()
            .map(|(name, digest)| (self.rootfs.key.as_str(), name.as_str(), digest.as_str()))
            .collect();
        all.extend(self.files.iter().map(|(name, digest)| (self.key.as_str(), name.as_str(), digest.as_str())));
        all.sort_by_key(|(_, name, _)| *name);
        all
    }
}

/// The outputs of the runner's final tree: from the cache (or the remote
/// cache), or assembled and stored there. Also the keys of the entries this
/// call made: their digests were taken from the bytes as they were written.
pub fn outputs(
    runner: &mut StageRunner<'_>,
    fast: bool,
    cache_only: bool,
) -> Result<(StageOutcome, OutputRecord, Vec<String>)> {
    let started = Instant::now();
    let final_tree = runner.parent_tree().expect("a recipe has stages").to_string();
    let kernels = kernels_of(&runner.records)?;
    let rootfs_key = rootfs_key(runner.plan, fast, &final_tree, runner.host);
    let key = initramfs_key(runner.plan, &rootfs_key, &kernels);
    let outcome = |state: &str, seconds: f64| StageOutcome {
        name: "outputs".into(),
        kind: "outputs".into(),
        key: key.clone(),
        state: state.into(),
        seconds,
    };
    if let Some(record) = cached(runner, &key, &rootfs_key) {
        runner.share_outputs(&record.rootfs.key)?;
        runner.share_outputs(&key)?;
        runner.progress.done("outputs", "cached", 0.0);
        return Ok((outcome("cached", started.elapsed().as_secs_f64()), record, Vec::new()));
    }
    if runner.pull_outputs(&key)?
        && (runner.store.output::<RootfsRecord>(&rootfs_key).is_some() || runner.pull_outputs(&rootfs_key)?)
    {
        if let Some(record) = cached(runner, &key, &rootfs_key) {
            let seconds = started.elapsed().as_secs_f64();
            runner.progress.done("outputs", "pulled from the remote cache", seconds);
            return Ok((outcome("pulled", seconds), record, Vec::new()));
        }
        // Records this rootsmith does not read, or that do not belong together: built here instead.
        runner.progress.warn(&format!(
            "the outputs {} pulled from the remote cache are not usable here; building them",
            &key[..12]
        ));
    }
    if cache_only {
        bail!("the outputs are not in the cache (key {key}) and --cache-only forbids building them");
    }
    let _lock = runner.store.lock(&key)?;
    if let Some(record) = cached(runner, &key, &rootfs_key) {
        return Ok((outcome("cached", started.elapsed().as_secs_f64()), record, Vec::new()));
    }
    // An initramfs entry that is not for this rootfs entry (or unreadable) is replaced.
    runner.store.discard(&crate::cache::CorruptEntry::Output(key.clone()))?;
    let rootfs = {
        // The rootfs entry has its own lock: builds that differ only in the
        // initramfs share it, and one of them makes it.
        let _rootfs_lock = runner.store.lock(&rootfs_key)?;
        match runner.store.output::<RootfsRecord>(&rootfs_key).filter(|rootfs| rootfs.key == rootfs_key) {
            Some(rootfs) => {
                runner.progress.start("outputs", "initramfs (the rootfs image, tarball and SBOM are cached)");
                (rootfs, None, false)
            }
            None => {
                runner.progress.start("outputs", "squashfs, rootfs image, initramfs, tarball");
                runner.store.discard(&crate::cache::CorruptEntry::Output(rootfs_key.clone()))?;
                let (rootfs, chunks, stored) = build_rootfs(runner, fast, &rootfs_key)?;
                (rootfs, Some(chunks), stored)
            }
        }
    };
    let (rootfs, chunks, rootfs_stored) = rootfs;
    // The entries whose files are the ones this build wrote (not another
    // build's, stored under the same key first).
    let mut made_here = Vec::new();
    if rootfs_stored {
        made_here.push(rootfs_key.clone());
    }
    let mut steps = Steps::start();
    // A rootfs image just made was hashed as it was written; a cached one is
    // checked against its record, and its chunk list made, in one read.
    let chunks = match chunks {
        Some(chunks) => chunks,
        None => {
            let (image_digest, chunks) =
                artifact::cpio::hash_rootfs_image(&runner.store.layout().output(&rootfs.key).join("rootfs.img"))?;
            if rootfs.files.get("rootfs.img") != Some(&image_digest) {
                return Err(crate::cache::Corrupt {
                    what: format!("cached output rootfs.img ({})", &rootfs.key[..12]),
                    why: "its bytes do not match its digest".into(),
                    entry: crate::cache::CorruptEntry::Output(rootfs.key.clone()),
                }
                .into());
            }
            steps.done("rootfs-image-check");
            chunks
        }
    };
    let stages = runner.plan.stages.len();
    runner.prepare_tree(stages)?;
    let work = runner.work();
    let tree = work.tree();
    // depmod's and dpkg-deb's output; it outlives the build.
    let log = runner.store.layout().stage_log(&key);
    fs_err::write(&log, b"")?;
    let staged = work.dir.path().join("initramfs-output");
    fs_err::create_dir(&staged)?;
    let layout = runner.store.layout().clone();
    let frames = artifact::frames::FrameCache::new(
        Box::new(move |settings, hex| layout.tarball_frame(settings, hex)),
        runner.store.entry_key()?,
    );
    let kernels = kernels
        .iter()
        .map(|kernel| KernelFiles {
            name: &kernel.name,
            release: &kernel.release,
            debs: &kernel.debs,
            products: kernel.dir(runner.store.layout()),
        })
        .collect();
    let request = thin_initramfs::Request {
        host: runner.host,
        log: &log,
        settings: &runner.plan.outputs.initramfs,
        tree: &tree,
        kernels,
        scratch: work.dir.path(),
        chunks,
        build: rootsmith_init::contract::BuildId { cookie: rootfs.cookie.clone(), name: runner.plan.recipe.clone() },
        epoch: runner.plan.source_date_epoch,
        arch: &runner.plan.arch,
        frames: Some(&frames),
    };
    let initramfs = thin_initramfs::write(&request, &staged.join("initramfs.img"))?;
    steps.done("initramfs");
    let files = digests_of(&staged, BTreeMap::new())?;
    let record = OutputRecord {
        key: key.clone(),
        files,
        cookie: rootfs.cookie.clone(),
        squashfs_entries: rootfs.squashfs_entries,
        rootfs,
        initramfs,
        created: crate::time::now_seconds(),
    };
    let initramfs_stored = runner.store.put_output(&key, &staged, &record)?;
    steps.done("store");
    steps.append_to(&log)?;
    runner.share_outputs(&record.rootfs.key)?;
    runner.share_outputs(&key)?;
    let seconds = started.elapsed().as_secs_f64();
    runner.progress.done("outputs", "built", seconds);
    if initramfs_stored {
        made_here.push(key.clone());
    }
    Ok((outcome("built", seconds), record, made_here))
}

/// The outputs `key` when the cache holds both of their entries, and they
/// belong together: the initramfs entry is for this rootfs entry, whose
/// files and cookie are the ones it was made from.
fn cached(runner: &StageRunner<'_>, key: &str, rootfs_key: &str) -> Option<OutputRecord> {
    let record = runner
        .store
        .output::<OutputRecord>(key)
        .filter(|record| record.key == key && record.rootfs.key == rootfs_key)?;
    let rootfs = runner.store.output::<RootfsRecord>(rootfs_key)?;
    (rootfs.key == rootfs_key && rootfs.files == record.rootfs.files && rootfs.cookie == record.rootfs.cookie)
        .then_some(record)
}

/// How long each step of making an entry took: lines `step NAME SECONDS`
/// appended to the entry's log when it is done (bench/iterate.sh reports them).
struct Steps {
    last: Instant,
    lines: String,
}

impl Steps {
    fn start() -> Steps {
        Steps { last: Instant::now(), lines: String::new() }
    }

    /// The step `name` ends now.
    fn done(&mut self, name: &str) {
        let now = Instant::now();
        self.lines.push_str(&format!("step {name} {:.3}\n", (now - self.last).as_secs_f64()));
        self.last = now;
    }

    fn append_to(&self, log: &std::path::Path) -> Result<()> {
        use std::io::Write;
        fs_err::OpenOptions::new().append(true).open(log)?.write_all(self.lines.as_bytes())?;
        Ok(())
    }
}

/// Each file of a staged output directory and its SHA-256: from `known`
/// (digests taken as the files were written), else hashed now.
fn digests_of(staged: &std::path::Path, known: BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for entry in fs_err::read_dir(staged)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let digest = match known.get(&name) {
            Some(digest) => digest.clone(),
            None => crate::digest::hash_file(&entry.path())?,
        };
        files.insert(name, digest);
    }
    Ok(files)
}

/// The rootfs entry of the final tree: the squashfs in the rootfs image,
/// the tarball, the package list and the SBOM, stored under `key`; the
/// rootfs image's chunk list; and whether the entry stored is this one (not
/// another build's, stored first).
fn build_rootfs(runner: &mut StageRunner<'_>, fast: bool, key: &str) -> Result<(RootfsRecord, ChunkList, bool)> {
    let (squashfs_compression, tarball_compression) = output_compressions(runner.plan, fast);
    let mut steps = Steps::start();
    let stages = runner.plan.stages.len();
    runner.prepare_tree(stages)?;
    let work = runner.work();
    let tree = work.tree();
    artifact::clamp_mtimes(&tree, runner.plan.source_date_epoch)?;
    steps.done("tree");
    // The squashfs writer's output; it outlives the build.
    let log = runner.store.layout().stage_log(key);
    fs_err::write(&log, b"")?;
    let staged = work.dir.path().join("rootfs-output");
    fs_err::create_dir(&staged)?;
    let devices = work.devices();
    let layout = runner.store.layout().clone();
    let memos = runner.store.layout().clone();
    let recipe = runner.plan.recipe.clone();
    // The memos know files by their stamps: those of an extracted tree are
    // never seen again, and would only replace what the last build over a
    // kept tree learnt.
    let memos_apply = work.files_outlive_the_build();
    let mut blocks = squashfs::BlockCache::new(Box::new(move |settings, hex| layout.squashfs_block(settings, hex)));
    if memos_apply {
        blocks = blocks.with_memo(Box::new(move |settings| memos.squashfs_memo(&recipe, settings)));
    }
    let layout = runner.store.layout().clone();
    let frames = artifact::frames::FrameCache::new(
        Box::new(move |settings, hex| layout.tarball_frame(settings, hex)),
        runner.store.entry_key()?,
    );
    let tarball_name = format!("rootfs.{}", tarball::extension(tarball_compression));
    let tarball_path = staged.join(&tarball_name);
    let epoch = runner.plan.source_date_epoch;
    let tarball_memo = {
        let (layout, recipe) = (runner.store.layout().clone(), runner.plan.recipe.clone());
        move |label: &str| layout.tarball_memo(&recipe, label)
    };
    // The tarball is written beside the squashfs: each leaves a core idle
    // part of the time (reading the tree, writing in order).
    let (squashfs, tarball_digest) = std::thread::scope(|scope| {
        let tarball = scope.spawn(|| {
            let mut steps = Steps::start();
            let memo: Option<&tarball::MemoPath> = if memos_apply { Some(&tarball_memo) } else { None };
            let digest = tarball::write_rootfs_tarball(
                &tree,
                devices,
                &tarball_path,
                tarball_compression,
                epoch,
                Some(&frames),
                memo,
            );
            steps.done("tarball");
            digest.map(|digest| (digest, steps))
        });
        let squashfs = (|| -> Result<_> {
            let mut steps = Steps::start();
            // The squashfs is written straight into the rootfs image, after its header.
            let image_path = staged.join("rootfs.img");
            let mut image = artifact::cpio::start_rootfs_image(&image_path)?;
            let squashfs_len = squashfs::write_into(
                runner.host,
                &tree,
                devices,
                &mut image,
                &image_path,
                work.dir.path(),
                squashfs_compression,
                epoch,
                &log,
                Some(&blocks),
            )?;
            steps.done("squashfs");
            let check = squashfs::verify(&image_path, artifact::cpio::SQUASHFS_OFFSET, &tree, devices)?;
            steps.done("squashfs-check");
            let made = artifact::cpio::finish_rootfs_image(&mut image, squashfs_len, &runner.plan.recipe, epoch)?;
            steps.done("rootfs-image");
            Ok((check, made, steps))
        })();
        (squashfs, tarball.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the tarball's thread panicked"))))
    });
    let (check, made, squashfs_steps) = squashfs?;
    let (tarball_digest, tarball_steps) = tarball_digest?;
    steps.done("squashfs-and-tarball");
    // The two threads' own steps, within the one above.
    steps.lines.push_str(&squashfs_steps.lines);
    steps.lines.push_str(&tarball_steps.lines);
    let cookie = made.build.cookie.clone();
    let known = BTreeMap::from([("rootfs.img".to_string(), made.sha256), (tarball_name, tarball_digest)]);
    if tarball_compression.algorithm == Algorithm::Zstd {
        use std::io::Write;
        fs_err::OpenOptions::new()
            .append(true)
            .open(&log)?
            .write_all(format!("{}: {}\n", tarball::WRITER, frames.summary()).as_bytes())?;
    }
    fs_err::write(staged.join(PACKAGES), artifact::packages::installed(&tree))?;
    let created = crate::time::rfc3339(runner.plan.source_date_epoch);
    fs_err::write(staged.join(SBOM), artifact::sbom::spdx(&tree, &runner.plan.recipe, &cookie, &created))?;
    steps.done("packages-sbom");
    let record = RootfsRecord {
        key: key.to_string(),
        files: digests_of(&staged, known)?,
        cookie,
        squashfs_entries: check.entries,
        created: crate::time::now_seconds(),
    };
    let stored = runner.store.put_output(key, &staged, &record)?;
    steps.done("store");
    steps.append_to(&log)?;
    Ok((record, made.chunks, stored))
}

/// Squashfs and tarball compression: the recipe's, or cheap ones for `--fast`.
pub fn output_compressions(plan: &Plan, fast: bool) -> (Compression, Compression) {
    if fast {
        // The developer loop: same tree, cheap compression.
        (
            Compression { algorithm: Algorithm::Zstd, level: Some(3) },
            Compression { algorithm: Algorithm::Zstd, level: Some(1) },
        )
    } else {
        (plan.outputs.squashfs, plan.outputs.tarball)
    }
}

/// The cache key of the outputs of the tree `final_tree` (the initramfs
/// entry's, which names the rootfs entry's): everything that decides their bytes.
pub fn output_key(plan: &Plan, fast: bool, final_tree: &str, kernels: &[KernelProducts], host: &dyn Host) -> String {
    initramfs_key(plan, &rootfs_key(plan, fast, final_tree, host), kernels)
}

/// The key of the rootfs entry: the tree and what decides the rootfs
/// image's, the tarball's and the SBOM's bytes.
pub fn rootfs_key(plan: &Plan, fast: bool, final_tree: &str, host: &dyn Host) -> String {
    let (squashfs_compression, tarball_compression) = output_compressions(plan, fast);
    let inputs = serde_json::json!({
        "format": CACHE_FORMAT,
        "entry": "rootfs",
        // The rootfs image's build id and the SBOM name the recipe.
        "name": plan.recipe,
        "tree": final_tree,
        "squashfs": squashfs_compression,
        "tarball": tarball_compression,
        "source_date_epoch": plan.source_date_epoch,
        "squashfs_writer": squashfs::writer_name(host, squashfs_compression),
        "tarball_writer": tarball::WRITER,
        "contract": rootsmith_init::contract::CONTRACT_VERSION,
        "sbom": 2,
    });
    sha256_hex(&serde_json::to_vec(&inputs).expect("output key inputs serialize"))
}

/// The key of the initramfs entry: the rootfs entry it carries the chunk
/// list of, the init, the kernels and the initramfs settings.
pub fn initramfs_key(plan: &Plan, rootfs_key: &str, kernels: &[KernelProducts]) -> String {
    // A kernel that is not installed in the tree still decides the initramfs's modules.
    let kernels: Vec<(&str, &str, &str)> =
        kernels.iter().map(|k| (k.name.as_str(), k.release.as_str(), k.products.as_str())).collect();
    let inputs = serde_json::json!({
        "format": CACHE_FORMAT,
        "entry": "initramfs",
        "rootfs": rootfs_key,
        "name": plan.recipe,
        "source_date_epoch": plan.source_date_epoch,
        "contract": rootsmith_init::contract::CONTRACT_VERSION,
        "initramfs": plan.outputs.initramfs,
        "init": thin_initramfs::init_digest(&plan.arch),
        "kernels": kernels,
    });
    sha256_hex(&serde_json::to_vec(&inputs).expect("output key inputs serialize"))
}

/// `zstd 19`, `none`: a compression as the manifest writes it.
pub fn compression_name(compression: Compression) -> String {
    match compression.level {
        Some(level) => format!("{} {level}", compression.algorithm.name()),
        None => compression.algorithm.name().into(),
    }
}
