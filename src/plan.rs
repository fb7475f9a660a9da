//! Recipe → plan: the stages that will run, each with every input of its cache
//! key resolved (local files digested, the mirror's `InRelease` fetched). Nothing
//! is built here; [`Plan::statuses`] only asks the cache what it already has.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cache::{FileDigest, KeyInputs, Layout, StageRecord, Store, CACHE_FORMAT};
use crate::digest::sha256_hex;
use crate::host::Host;
use crate::recipe::{ConfigBase, Kernel, KernelSource, Recipe, Script, StageKind};
use crate::stage::Resolved;

/// Versions of each stage kind's implementation: bump one when the same inputs
/// would now give a different tree, so old cached layers stop matching.
/// (2: build-time noise is scrubbed after every stage. 3: a kernel package
/// installed by these stages makes no initramfs in the tree, and apt's
/// partial directories no longer depend on where the cache is.)
fn kind_version(kind: &StageKind) -> u32 {
    match kind {
        StageKind::Debootstrap(_) => 3,
        StageKind::Tarball(_) => 2,
        StageKind::Packages(_) => 3,
        StageKind::Files(_) => 2,
        StageKind::Run(_) => 3,
        // 3: the products hold the kernel's device trees.
        StageKind::Kernel(_) => 3,
        StageKind::Release(_) => 1,
        StageKind::Oci(_) => 1,
    }
}

#[derive(Debug, Clone)]
pub struct PlannedStage {
    pub name: String,
    /// The stage as the recipe wrote it.
    pub kind: StageKind,
    /// What the plan resolved it to (an image's manifest, a release's tarball).
    pub resolved: Resolved,
    pub params: serde_json::Value,
    pub files: Vec<FileDigest>,
    pub remote: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Plan {
    pub recipe: String,
    pub version: String,
    pub arch: String,
    pub source_date_epoch: i64,
    /// The mirror apt stages use (`None` for a tarball base).
    pub mirror: Option<String>,
    pub stages: Vec<PlannedStage>,
    /// SHA-256 of the recipe text.
    pub recipe_digest: String,
    pub outputs: crate::recipe::Outputs,
    /// Things the user should know about how the plan was made (offline fallbacks).
    pub warnings: Vec<String>,
}

/// Where a stage stands in the cache.
#[derive(Debug, Clone)]
pub enum StageStatus {
    Hit(Box<StageRecord>),
    Miss {
        key: String,
        inputs: KeyInputs,
    },
    /// After a miss: the key depends on a tree not built yet.
    Pending,
}

#[derive(Debug, Default, Clone)]
pub struct PlanOptions {
    /// `SOURCE_DATE_EPOCH` from the environment; wins over the recipe's.
    pub epoch_from_env: Option<i64>,
    /// The host's apt configuration directory (`/etc/apt`), for the default mirror.
    pub apt_dir: std::path::PathBuf,
    /// Where the last resolved remote digests are remembered (`CACHE/v1/remote`),
    /// for planning when the mirror cannot be reached.
    pub remote_memory: Option<Layout>,
    /// Where published bundles are, for `release:` base stages.
    pub out_dir: std::path::PathBuf,
    /// `build --locked`: the lock's digest, part of every apt stage's key.
    pub lock_digest: Option<String>,
}

impl PlanOptions {
    /// Remember resolved remote digests in the cache at `cache_dir`.
    pub fn remembering_in(mut self, cache_dir: &std::path::Path) -> PlanOptions {
        self.remote_memory = Some(Layout::new(cache_dir));
        self
    }

    pub fn from_environment() -> Result<PlanOptions> {
        let epoch_from_env = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(value) => {
                let epoch: i64 = value
                    .trim()
                    .parse()
                    .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds"))?;
                Some(crate::time::check_epoch(epoch).with_context(|| format!("SOURCE_DATE_EPOCH={value:?}"))?)
            }
            Err(_) => None,
        };
        let out_dir = std::env::var_os("ROOTSMITH_OUT").map(Into::into).unwrap_or_else(|| "out".into());
        Ok(PlanOptions { epoch_from_env, apt_dir: "/etc/apt".into(), remote_memory: None, out_dir, lock_digest: None })
    }
}

/// The rootfs tarball of a published bundle, and its SHA-256 as the bundle's
/// manifest gives it (the stage checks the file against it when it runs).
fn release_tarball(
    release: &crate::recipe::Release,
    default_out: &Path,
    arch: &str,
) -> Result<(std::path::PathBuf, String)> {
    let out = release.out.as_deref().unwrap_or(default_out);
    let dir = out.join(&release.name).join(&release.version);
    let bundle = crate::bundle::Bundle::open(&dir).with_context(|| format!("the release base {} {} is not in {}\nhint: build or promote it there, or set the stage's `out:` (or build --out)", release.name, release.version, out.display()))?;
    // The manifest found there must be that release's (not a copy of another version).
    bundle.check_place()?;
    if bundle.manifest.arch != arch {
        bail!("the release base {} {} is an {} bundle, and this recipe builds for {arch}\nhint: start from a release built for {arch} (`build --arch {arch}` publishes one as NAME-{arch}: name that in `release:`)", release.name, release.version, bundle.manifest.arch);
    }
    let prefix = crate::bundle::names::BundleNames::new(&release.name, &release.version).rootfs_tarball_prefix();
    let artifact = bundle
        .manifest
        .artifacts
        .iter()
        .find(|artifact| artifact.name.starts_with(&prefix))
        .with_context(|| format!("{} has no rootfs tarball", dir.display()))?;
    // A regular file of the size the manifest states (not a FIFO the stage would wait on).
    let tarball = crate::bundle::files::open_sized(&dir, &artifact.name, artifact.size)?;
    Ok((tarball.path, artifact.sha256.clone()))
}

/// The name of the lock among a stage's remote inputs.
pub const LOCK_INPUT: &str = "rootsmith.lock";

impl Plan {
    /// Every remote input the plan resolved (without the lock itself).
    pub fn remote_inputs(&self) -> BTreeMap<String, String> {
        self.stages.iter().flat_map(|stage| stage.remote.clone()).filter(|(input, _)| input != LOCK_INPUT).collect()
    }
}

/// The plan of `recipe`: every stage's key inputs resolved. `host` answers
/// the questions asked of host programs (apt's candidate versions, the compiler's version).
pub fn plan(recipe: &Recipe, options: &PlanOptions, host: &dyn Host) -> Result<Plan> {
    let source_date_epoch = options.epoch_from_env.or(recipe.source_date_epoch).unwrap_or(0);
    let mut mirror = None;
    let mut warnings = Vec::new();
    let mut apt_remote = BTreeMap::new();
    if let Some(StageKind::Debootstrap(base)) = recipe.stages.first().map(|s| &s.kind) {
        let url = match &base.mirror {
            Some(url) => url.clone(),
            None => crate::mirror::host_mirror(&options.apt_dir)?,
        };
        let resolved = crate::mirror::resolve_in_release(
            &url,
            &base.suite,
            options
                .remote_memory
                .as_ref()
                .map(|layout| layout.remote_record(&crate::mirror::in_release_url(&url, &base.suite)))
                .as_deref(),
        )
        .with_context(|| format!("resolving the mirror's release file for suite `{}`", base.suite))?;
        warnings.extend(resolved.warning);
        apt_remote.insert(format!("{url}/dists/{}/InRelease", base.suite), resolved.sha256);
        mirror = Some(url);
    }
    if let Some(digest) = &options.lock_digest {
        apt_remote.insert(LOCK_INPUT.into(), digest.clone());
    }
    let mut stages = Vec::new();
    for stage in &recipe.stages {
        let kind = stage.kind.clone();
        let resolved = match &kind {
            StageKind::Release(release) => {
                let (path, sha256) = release_tarball(release, &options.out_dir, &recipe.arch)?;
                Resolved::ReleaseTarball { path, sha256 }
            }
            StageKind::Oci(oci) => Resolved::Image(crate::stage::oci::resolve(oci, &recipe.arch)?),
            _ => Resolved::Nothing,
        };
        let (params, files, remote) = match (&kind, &resolved) {
            (StageKind::Release(r), Resolved::ReleaseTarball { path, sha256 }) => (
                json!({ "release": r.name, "version": r.version, "tarball": path.file_name().map(|n| n.to_string_lossy().into_owned()), "sha256": sha256 }),
                Vec::new(),
                BTreeMap::new(),
            ),
            (StageKind::Oci(oci), Resolved::Image(resolved)) => {
                // The manifest digest names the config and every layer: the key needs nothing else.
                let (source, remote) = match &oci.source {
                    crate::recipe::OciSource::Layout { dir, reference } => {
                        (json!({ "layout": dir.written, "ref": reference }), BTreeMap::new())
                    }
                    // A registry tag is a remote input: `lock` records its digest, and a plain build warns when it moved.
                    crate::recipe::OciSource::Registry { reference } => (
                        json!({ "image": reference }),
                        BTreeMap::from([(reference.clone(), resolved.manifest_digest.clone())]),
                    ),
                };
                (json!({ "source": source, "manifest": resolved.manifest_digest }), Vec::new(), remote)
            }
            (StageKind::Release(_) | StageKind::Oci(_), _) => unreachable!("resolved above"),
            (StageKind::Debootstrap(d), _) => (
                json!({ "suite": d.suite, "variant": d.variant, "components": d.components, "include": d.include, "mirror": mirror, "tool": crate::stage::debootstrap::resolve_tool(d.tool) }),
                Vec::new(),
                apt_remote.clone(),
            ),
            (StageKind::Tarball(t), _) => (
                json!({ "path": t.path.written }),
                vec![file_digest(&t.path.resolved, &t.path.written)?],
                BTreeMap::new(),
            ),
            (StageKind::Packages(p), _) => {
                (json!({ "install": p.install, "remove": p.remove }), Vec::new(), apt_remote.clone())
            }
            (StageKind::Files(f), _) => (
                json!({ "src": f.src.written, "dest": f.dest, "uid": f.uid, "gid": f.gid, "modes": f.modes }),
                crate::stage::source_digests(&f.src.resolved)?,
                BTreeMap::new(),
            ),
            (StageKind::Kernel(Kernel::Package { package }), _) => {
                (json!({ "package": package }), Vec::new(), apt_remote.clone())
            }
            (StageKind::Kernel(Kernel::Build(k)), _) => {
                let mut remote = BTreeMap::new();
                let source = match &k.source {
                    KernelSource::Package(package) => {
                        let (version, sha256) = crate::stage::kernel::source::resolve_package(host, package)?;
                        remote.insert(crate::stage::kernel::SOURCE_REMOTE.to_string(), format!("{version} {sha256}"));
                        json!({ "package": package })
                    }
                    KernelSource::Tarball { location, sha256, .. } => {
                        remote.insert(crate::stage::kernel::SOURCE_REMOTE.to_string(), sha256.clone());
                        json!({ "tarball": location })
                    }
                };
                let files = kernel_files(k)?;
                let base = match &k.base {
                    ConfigBase::Target(target) => json!(target),
                    ConfigBase::File(file) => json!({ "file": file.written }),
                };
                let params = json!({
                    "source": source,
                    "patches": k.patches.iter().map(|p| &p.written).collect::<Vec<_>>(),
                    "base": base,
                    "fragments": k.fragments.iter().map(|f| &f.written).collect::<Vec<_>>(),
                    "localversion": k.localversion,
                    "install": k.install,
                    "headers": k.headers,
                    "compiler": crate::stage::kernel::build::compiler_version(host, &recipe.arch),
                });
                (params, files, remote)
            }
            (StageKind::Run(r), _) => match &r.script {
                Script::Inline(text) => (json!({ "sh": text, "env": r.env }), Vec::new(), BTreeMap::new()),
                Script::File(path) => (
                    json!({ "script": path.written, "env": r.env }),
                    vec![file_digest(&path.resolved, &path.written)?],
                    BTreeMap::new(),
                ),
            },
        };
        stages.push(PlannedStage { name: stage.name.clone(), kind, resolved, params, files, remote });
    }
    Ok(Plan {
        recipe: recipe.name.clone(),
        version: recipe.version.clone(),
        arch: recipe.arch.clone(),
        source_date_epoch,
        mirror,
        stages,
        recipe_digest: sha256_hex(recipe.source.as_bytes()),
        outputs: recipe.outputs.clone(),
        warnings,
    })
}

impl Plan {
    /// The key inputs of stage `index` given the tree id of the stage before it.
    pub fn inputs(&self, index: usize, parent_tree: Option<&str>) -> KeyInputs {
        let stage = &self.stages[index];
        KeyInputs {
            format: CACHE_FORMAT,
            kind: stage.kind.kind_name().to_string(),
            kind_version: kind_version(&stage.kind),
            arch: self.arch.clone(),
            source_date_epoch: self.source_date_epoch,
            parent: parent_tree.map(str::to_string),
            params: stage.params.clone(),
            files: stage.files.clone(),
            remote: stage.remote.clone(),
        }
    }

    /// Hit or miss for each stage, walking the chain of tree ids from the base.
    /// `force_from`: stages from this index on count as misses (`--rebuild`).
    pub fn statuses(&self, store: &Store, force_from: Option<usize>) -> Vec<StageStatus> {
        let mut statuses = Vec::new();
        let mut parent: Option<String> = None;
        let mut missed = false;
        for index in 0..self.stages.len() {
            if missed {
                statuses.push(StageStatus::Pending);
                continue;
            }
            let inputs = self.inputs(index, parent.as_deref());
            let key = inputs.key();
            let forced = force_from.is_some_and(|from| index >= from);
            match store.stage(&key).filter(|_| !forced) {
                Some(record) => {
                    parent = Some(record.tree.clone());
                    statuses.push(StageStatus::Hit(Box::new(record)));
                }
                None => {
                    missed = true;
                    statuses.push(StageStatus::Miss { key, inputs });
                }
            }
        }
        statuses
    }
}

/// The local files a kernel build reads (patches, a config file, fragments),
/// in the order its key lists them.
fn kernel_files(kernel: &crate::recipe::KernelBuild) -> Result<Vec<FileDigest>> {
    let mut files = Vec::new();
    for patch in &kernel.patches {
        files.push(file_digest(&patch.resolved, &patch.written)?);
    }
    if let ConfigBase::File(file) = &kernel.base {
        files.push(file_digest(&file.resolved, &file.written)?);
    }
    for fragment in &kernel.fragments {
        files.push(file_digest(&fragment.resolved, &fragment.written)?);
    }
    Ok(files)
}

/// After a stage that reads its local files while it runs (a kernel build:
/// patches, config, fragments), whether they are still what the plan
/// digested: a file edited during the build fails the stage, nothing is
/// recorded. (The `files`, `run` and `tarball` stages check what they read
/// as they read it.)
pub fn check_files_unchanged(stage: &PlannedStage) -> Result<()> {
    let StageKind::Kernel(Kernel::Build(kernel)) = &stage.kind else { return Ok(()) };
    let now = kernel_files(kernel)?;
    for (planned, read) in stage.files.iter().zip(&now) {
        if planned != read {
            return Err(crate::stage::changed_during_build(
                &planned.path,
                &format!("sha256 {}", planned.sha256),
                &format!("sha256 {} after the stage", read.sha256),
            ));
        }
    }
    Ok(())
}

/// A local file's digest, under the name the recipe gave it. Only a regular
/// file is read (streamed, never whole into memory): a FIFO or a device is an
/// error before anything is read.
fn file_digest(path: &Path, written: &str) -> Result<FileDigest> {
    let metadata = fs_err::metadata(path)?;
    let sha256 = crate::digest::hash_file(path).with_context(|| format!("reading `{written}`"))?;
    Ok(FileDigest {
        path: written.to_string(),
        kind: "file".into(),
        mode: metadata.permissions().mode() & 0o7777,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::RecordingHost;
    use crate::recipe::{load_str, LoadOptions};

    fn kernel_recipe(dir: &Path) -> Recipe {
        fs_err::write(dir.join("base.tar"), "").unwrap();
        fs_err::write(dir.join("small.config"), "CONFIG_PRINTK=y\n").unwrap();
        let source = "rootsmith: 1\nname: k\nversion: 1.0.0\nstages:\n  - tarball: { path: base.tar }\n  - kernel: { name: lts, source: { package: linux-source-6.1 }, config: { base: tinyconfig, fragments: [small.config] } }\n";
        load_str(&dir.join("k.yaml"), source, &LoadOptions::default()).unwrap()
    }

    #[test]
    fn a_kernel_fragment_edited_while_the_kernel_builds_fails_the_stage() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = kernel_recipe(dir.path());
        let host = RecordingHost::default();
        host.answer("apt-cache", "Package: linux-source-6.1\nVersion: 6.1.99-1\nSHA256: 0123\n");
        let plan = plan(&recipe, &PlanOptions::default(), &host).unwrap();
        check_files_unchanged(&plan.stages[1]).unwrap();
        fs_err::write(dir.path().join("small.config"), "CONFIG_PRINTK=n\n").unwrap();
        let error = format!("{:#}", check_files_unchanged(&plan.stages[1]).unwrap_err());
        assert!(error.starts_with("`small.config` changed during the build"), "{error}");
    }

    #[test]
    fn a_kernel_source_package_and_the_compiler_are_resolved_through_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = kernel_recipe(dir.path());
        let host = RecordingHost::default();
        host.answer("apt-cache", "Package: linux-source-6.1\nVersion: 6.1.99-1\nSHA256: 0123\n");
        host.answer("gcc", "gcc (Debian 12.2.0-14) 12.2.0\nCopyright\n");
        let plan = plan(&recipe, &PlanOptions::default(), &host).unwrap();
        let kernel = &plan.stages[1];
        assert_eq!(kernel.remote[crate::stage::kernel::SOURCE_REMOTE], "6.1.99-1 0123");
        assert_eq!(kernel.params["compiler"], "gcc (Debian 12.2.0-14) 12.2.0");
        assert_eq!(kernel.files.len(), 1, "the fragment is a local input");
        assert!(host.programs().contains(&"apt-cache".to_string()));

        // Another compiler is another key.
        let other = RecordingHost::default();
        other.answer("apt-cache", "Package: linux-source-6.1\nVersion: 6.1.99-1\nSHA256: 0123\n");
        other.answer("gcc", "gcc (Debian 13.1.0-1) 13.1.0\n");
        let replanned = super::plan(&recipe, &PlanOptions::default(), &other).unwrap();
        assert_ne!(plan.inputs(1, Some("t")).key(), replanned.inputs(1, Some("t")).key());
        assert_eq!(plan.inputs(0, None).key(), replanned.inputs(0, None).key());
    }

    #[test]
    fn a_source_package_apt_does_not_know_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = kernel_recipe(dir.path());
        let host = RecordingHost::failing_at(0, 100);
        let error = plan(&recipe, &PlanOptions::default(), &host).unwrap_err();
        assert!(format!("{error:#}").contains("does not know the package `linux-source-6.1`"), "{error:#}");
    }

    /// Plan `source` (a recipe in `dir`) on a thread: a hang fails the test.
    fn plan_within_seconds(dir: &Path, source: &str) -> Result<Plan, String> {
        let file = dir.join("r.yaml");
        let recipe = load_str(&file, source, &LoadOptions::default()).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let planned =
                plan(&recipe, &PlanOptions::default(), &RecordingHost::default()).map_err(|error| format!("{error:#}"));
            let _ = sender.send(planned);
        });
        receiver.recv_timeout(std::time::Duration::from_secs(20)).expect("planning hung")
    }

    #[test]
    fn special_files_in_a_files_source_are_digested_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("base.tar"), "").unwrap();
        let overlay = dir.path().join("overlay");
        fs_err::create_dir(&overlay).unwrap();
        fs_err::write(overlay.join("motd"), "hi\n").unwrap();
        nix::unistd::mkfifo(&overlay.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", overlay.join("shadow")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", overlay.join("zero")).unwrap();
        let source = "rootsmith: 1\nname: f\nversion: 1.0.0\nstages:\n  - tarball: { path: base.tar }\n  - files: { src: overlay }\n";
        let plan = plan_within_seconds(dir.path(), source).unwrap();
        let kinds: Vec<(&str, &str)> =
            plan.stages[1].files.iter().map(|f| (f.path.as_str(), f.kind.as_str())).collect();
        assert_eq!(kinds, [("motd", "file"), ("pipe", "fifo"), ("shadow", "symlink"), ("zero", "symlink")]);
        assert_eq!(
            plan.stages[1].files[2].sha256,
            sha256_hex(b"/etc/shadow"),
            "a symlink is digested by its target, never followed"
        );
    }

    #[test]
    fn a_tarball_that_became_a_fifo_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("base.tar");
        fs_err::write(&tarball, "").unwrap();
        let file = dir.path().join("r.yaml");
        let recipe = load_str(
            &file,
            "rootsmith: 1\nname: f\nversion: 1.0.0\nstages:\n  - tarball: { path: base.tar }\n",
            &LoadOptions::default(),
        )
        .unwrap();
        // Swapped after the recipe was checked.
        fs_err::remove_file(&tarball).unwrap();
        nix::unistd::mkfifo(&tarball, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let planned =
                plan(&recipe, &PlanOptions::default(), &RecordingHost::default()).map_err(|error| format!("{error:#}"));
            let _ = sender.send(planned);
        });
        let error = receiver.recv_timeout(std::time::Duration::from_secs(20)).expect("planning hung").unwrap_err();
        assert!(error.contains("base.tar is a FIFO, not a regular file"), "{error}");
    }
}
