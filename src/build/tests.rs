//! The build logic without root: stages run against a [`RecordingHost`], so
//! what is cached, reused and left behind can be checked on any machine.

use std::path::Path;

use super::materialize;
use crate::cache::Store;
use crate::host::RecordingHost;
use crate::plan::{plan, PlanOptions, StageStatus};
use crate::progress::Silent;
use crate::recipe::{load_str, LoadOptions, Recipe};

/// A recipe directory: a tarball base holding a shell, then a `run` stage and
/// a `files` stage.
fn recipe(dir: &Path) -> Recipe {
    let tree = dir.join("tree");
    for sub in ["bin", "etc", "usr/sbin"] {
        fs_err::create_dir_all(tree.join(sub)).unwrap();
    }
    fs_err::write(tree.join("bin/sh"), "").unwrap();
    fs_err::write(tree.join("etc/hostname"), "test\n").unwrap();
    let mut builder = tar::Builder::new(std::fs::File::create(dir.join("base.tar")).unwrap());
    builder.append_dir_all(".", &tree).unwrap();
    builder.finish().unwrap();
    fs_err::create_dir_all(dir.join("overlay")).unwrap();
    fs_err::write(dir.join("overlay/motd"), "hello\n").unwrap();
    let source = "rootsmith: 1\nname: unit\nversion: 1.0.0\nstages:\n  - tarball: { path: base.tar }\n  - run: { sh: \"echo configured > /etc/configured\" }\n  - files: { src: overlay, dest: /etc }\n";
    load_str(&dir.join("unit.yaml"), source, &LoadOptions::default()).unwrap()
}

/// `/etc/motd` of the tree after every stage of `plan` (building what is missing).
fn motd_after_all_stages(plan: &crate::plan::Plan, cache: &Path, host: &RecordingHost) -> String {
    materialize(plan, cache, plan.stages.len(), host, &Silent, |context| {
        Ok(fs_err::read_to_string(context.tree.join("etc/motd"))?)
    })
    .unwrap()
}

fn options() -> PlanOptions {
    PlanOptions { epoch_from_env: Some(1_000), ..PlanOptions::default() }
}

#[test]
fn a_failed_command_stores_nothing_for_its_stage_and_leaves_no_work_dir() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let cache = dir.path().join("cache");
    let host = RecordingHost::failing_at(0, 3);
    let plan = plan(&recipe, &options(), &host).unwrap();
    let error = materialize(&plan, &cache, 3, &host, &Silent, |_| Ok(())).unwrap_err();
    assert!(format!("{error:#}").contains("exit status 3"), "{error:#}");
    assert_eq!(host.programs(), ["sh"], "only the run stage's command ran");

    let store = Store::open(&cache).unwrap();
    let statuses = plan.statuses(&store, None);
    assert!(matches!(statuses[0], StageStatus::Hit(_)), "the base stage before the failure is kept");
    assert!(matches!(statuses[1], StageStatus::Miss { .. }), "the failed stage is not recorded");
    drop(store);
    let left: Vec<_> = fs_err::read_dir(crate::cache::Layout::new(&cache).tmp()).unwrap().collect();
    assert!(left.is_empty(), "work dirs were left behind: {left:?}");
}

#[test]
fn a_second_build_runs_no_command_and_a_changed_file_rebuilds_only_its_stage() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let cache = dir.path().join("cache");
    let host = RecordingHost::default();
    let first = plan(&recipe, &options(), &host).unwrap();
    let motd = motd_after_all_stages(&first, &cache, &host);
    assert_eq!(motd, "hello\n");
    assert_eq!(host.programs(), ["sh"]);

    let again = RecordingHost::default();
    materialize(&first, &cache, 3, &again, &Silent, |_| Ok(())).unwrap();
    assert!(again.programs().is_empty(), "a cached build ran {:?}", again.programs());

    fs_err::write(dir.path().join("overlay/motd"), "changed\n").unwrap();
    let changed = plan(&recipe, &options(), &again).unwrap();
    let store = Store::open(&cache).unwrap();
    let statuses = changed.statuses(&store, None);
    assert!(
        matches!(statuses[0], StageStatus::Hit(_)) && matches!(statuses[1], StageStatus::Hit(_)),
        "stages before the change stay cached"
    );
    assert!(matches!(statuses[2], StageStatus::Miss { .. }), "the files stage reads the changed file");
    let motd = motd_after_all_stages(&changed, &cache, &again);
    assert_eq!(motd, "changed\n");
    assert!(again.programs().is_empty(), "only the files stage ran, and it runs no command");
}

#[test]
fn a_corrupt_layer_is_discarded_and_built_again() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let cache = dir.path().join("cache");
    let host = RecordingHost::default();
    let plan = plan(&recipe, &options(), &host).unwrap();
    materialize(&plan, &cache, 3, &host, &Silent, |_| Ok(())).unwrap();
    let store = Store::open(&cache).unwrap();
    let StageStatus::Hit(base) = &plan.statuses(&store, None)[0] else { panic!("the base is cached") };
    let blob = store.layout().blob(&base.layer);
    std::fs::write(&blob, b"flipped bytes").unwrap();
    drop(store);

    let motd = motd_after_all_stages(&plan, &cache, &host);
    assert_eq!(motd, "hello\n");
    assert_eq!(crate::digest::hash_file(&blob).unwrap(), base.layer, "the rebuilt layer replaced the corrupt bytes");
    let store = Store::open(&cache).unwrap();
    assert!(store.verify().unwrap().problems.is_empty());
}

#[test]
fn a_record_whose_layer_was_swapped_is_not_used_and_verify_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let cache = dir.path().join("cache");
    let host = RecordingHost::default();
    let plan = plan(&recipe, &options(), &host).unwrap();
    materialize(&plan, &cache, 3, &host, &Silent, |_| Ok(())).unwrap();
    let store = Store::open(&cache).unwrap();
    let statuses = plan.statuses(&store, None);
    let (StageStatus::Hit(base), StageStatus::Hit(files)) = (&statuses[0], &statuses[2]) else { panic!("all cached") };
    // The files stage's record now claims the base's (valid) layer.
    let path = store.layout().stage_record(&files.key);
    let text = std::fs::read_to_string(&path).unwrap().replace(&files.layer, &base.layer);
    std::fs::write(&path, text).unwrap();
    assert!(store.stage(&files.key).is_none(), "a record that is not what it claims is a miss");
    let report = store.verify().unwrap();
    assert!(report.problems.iter().any(|problem| problem.contains("tree id")), "{:?}", report.problems);
    assert_eq!(store.repair(&report).unwrap(), 1);
    assert!(store.verify().unwrap().problems.is_empty());
    drop(store);
    let motd = motd_after_all_stages(&plan, &cache, &host);
    assert_eq!(motd, "hello\n");
}

#[test]
fn a_host_that_cannot_keep_owners_builds_nothing() {
    struct Unprivileged(RecordingHost);
    impl crate::host::Host for Unprivileged {
        fn status(&self, command: &crate::host::Command) -> anyhow::Result<i32> {
            self.0.status(command)
        }
        fn output(&self, command: &crate::host::Command) -> anyhow::Result<(i32, Vec<u8>)> {
            self.0.output(command)
        }
        fn records_true_owners(&self) -> bool {
            false
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let cache = dir.path().join("cache");
    let host = Unprivileged(RecordingHost::default());
    let plan = plan(&recipe, &options(), &host).unwrap();
    let error = materialize(&plan, &cache, 3, &host, &Silent, |_| Ok(())).unwrap_err();
    assert!(error.to_string().contains("cannot give files their true owners"), "{error}");
    assert!(!crate::cache::Layout::new(&cache).stages().exists(), "nothing may be cached");
}

#[test]
fn an_unwritable_out_dir_or_a_clashing_version_stops_the_build_before_any_stage() {
    use crate::build::{build, BuildOptions};
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let host = RecordingHost::default();
    let plan = plan(&recipe, &options(), &host).unwrap();
    let cache = dir.path().join("cache");
    let options_for = |out: std::path::PathBuf| BuildOptions {
        out_dir: out,
        ..BuildOptions::stages_only(cache.clone(), "1.0.0".into())
    };

    // The out directory is a file.
    std::fs::write(dir.path().join("out-file"), b"").unwrap();
    let error = build(&recipe, &plan, &options_for(dir.path().join("out-file")), &host, &Silent).unwrap_err();
    assert!(format!("{error:#}").contains("cannot be made"), "{error:#}");

    // The version is published already, from another recipe text.
    let bundle = dir.path().join("out/unit/1.0.0");
    std::fs::create_dir_all(&bundle).unwrap();
    let manifest = serde_json::json!({
        "manifest_version": 1, "tool": "rootsmith", "name": "unit", "version": "1.0.0", "arch": "amd64",
        "recipe_sha256": "0".repeat(64), "source_date_epoch": 1000, "fast": false, "stages": [],
        "rootfs": { "cookie": "c", "squashfs_writer": "w", "squashfs_compression": "zstd 15", "squashfs_entries": 1, "contract_version": 1 },
        "boot": { "initramfs": "i", "initramfs_size": 1, "initramfs_compression": "zstd", "rootfs_image": "r", "cmdline": "", "marker": null, "modules": {}, "shell": false },
        "artifacts": []
    });
    std::fs::write(bundle.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let error = build(&recipe, &plan, &options_for(dir.path().join("out")), &host, &Silent).unwrap_err();
    assert!(format!("{error:#}").contains("already exists with different contents (another recipe text)"), "{error:#}");
    assert!(host.programs().is_empty(), "a stage ran: {:?}", host.programs());
    assert!(!crate::cache::Layout::new(&cache).stages().exists(), "a stage was cached");
}

#[test]
fn a_symlink_planted_under_the_out_dir_is_never_followed() {
    use crate::build::{build, BuildOptions};
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let host = RecordingHost::default();
    let plan = plan(&recipe, &options(), &host).unwrap();
    let cache = dir.path().join("cache");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("1.0.0")).unwrap();
    for (planted, link) in [("out-a", "unit"), ("out-b", "unit/1.0.0")] {
        let out = dir.path().join(planted);
        std::fs::create_dir_all(out.join("unit")).unwrap();
        let at = out.join(link);
        let _ = std::fs::remove_dir(&at);
        let target = if link == "unit" { elsewhere.clone() } else { elsewhere.join("1.0.0") };
        std::os::unix::fs::symlink(&target, &at).unwrap();
        let options = BuildOptions { out_dir: out, ..BuildOptions::stages_only(cache.clone(), "1.0.0".into()) };
        let error = format!("{:#}", build(&recipe, &plan, &options, &host, &Silent).unwrap_err());
        assert!(error.contains("is a symlink") && error.contains("follows no link under --out"), "{error}");
    }
    assert!(host.programs().is_empty(), "a stage ran: {:?}", host.programs());
    assert_eq!(std::fs::read_dir(elsewhere.join("1.0.0")).unwrap().count(), 0, "something was written through a link");
}

/// Two recipes with the same tree but other names do not share outputs: the
/// rootfs image's build id, the initramfs and the SBOM name the recipe.
#[test]
fn outputs_are_keyed_by_the_recipe_name() {
    let dir = tempfile::tempdir().unwrap();
    let unit = recipe(dir.path());
    let renamed = load_str(
        &dir.path().join("other.yaml"),
        &unit.source.replace("name: unit", "name: other"),
        &LoadOptions::default(),
    )
    .unwrap();
    let host = RecordingHost::default();
    let key = |recipe: &Recipe| {
        let plan = plan(recipe, &options(), &host).unwrap();
        super::output_key(&plan, false, "tree-id", &[], &host)
    };
    assert_eq!(key(&unit), key(&unit));
    assert_ne!(key(&unit), key(&renamed));
}

/// A stage starts from the snapshot the stage before it ended with: the
/// times that stage's layer writer clamped are recorded again, so the next
/// stage's layer holds only what it changed (with the first stage's
/// snapshot left stale, a layer would carry the stage before's files too).
#[test]
fn each_layer_holds_only_what_its_own_stage_changed() {
    let dir = tempfile::tempdir().unwrap();
    recipe(dir.path());
    for (sub, file) in [("first", "one"), ("second", "two")] {
        fs_err::create_dir_all(dir.path().join(sub)).unwrap();
        fs_err::write(dir.path().join(sub).join(file), file).unwrap();
    }
    // A base with two names of one file (GNU tar keeps the link): the layer
    // writer retimes both through the first.
    fs_err::hard_link(dir.path().join("tree/etc/hostname"), dir.path().join("tree/etc/hostname-link")).unwrap();
    assert!(std::process::Command::new("tar")
        .arg("-C")
        .arg(dir.path().join("tree"))
        .arg("-cf")
        .arg(dir.path().join("base.tar"))
        .arg(".")
        .status()
        .unwrap()
        .success());
    let source = "rootsmith: 1\nname: unit\nversion: 1.0.0\nstages:\n  - tarball: { path: base.tar }\n  - files: { src: first, dest: /etc }\n  - files: { src: second, dest: /usr }\n";
    let recipe = load_str(&dir.path().join("unit.yaml"), source, &LoadOptions::default()).unwrap();
    let cache = dir.path().join("cache");
    let host = RecordingHost::default();
    let plan = plan(&recipe, &options(), &host).unwrap();
    materialize(&plan, &cache, 3, &host, &Silent, |_| Ok(())).unwrap();
    let store = Store::open(&cache).unwrap();
    let layers: Vec<Vec<String>> = plan
        .statuses(&store, None)
        .into_iter()
        .map(|status| {
            let StageStatus::Hit(record) = status else { panic!("every stage was built") };
            let mut archive = tar::Archive::new(zstd::Decoder::new(store.open_blob(&record.layer).unwrap()).unwrap());
            archive
                .entries()
                .unwrap()
                .map(|entry| entry.unwrap().path().unwrap().to_string_lossy().trim_end_matches('/').to_string())
                .collect()
        })
        .collect();
    // A directory shows when its mtime moved; nothing of the base may.
    let first: Vec<&String> = layers[1].iter().filter(|path| *path != "etc").collect();
    assert!(layers[0].contains(&"etc/hostname-link".to_string()), "{:?}", layers[0]);
    assert_eq!(first, ["etc/one"], "the first files stage's layer: {:?}", layers[1]);
    let second: Vec<&String> = layers[2].iter().filter(|path| *path != "usr").collect();
    assert_eq!(second, ["usr/two"], "the second files stage's layer: {:?}", layers[2]);
}

#[test]
fn a_file_edited_during_the_build_and_reverted_is_never_cached_under_its_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let cache = dir.path().join("cache");
    let host = RecordingHost::default();
    // The plan hashes "hello"; an editor saves "edited" before the files
    // stage copies it, and the old text again after the build.
    let planned = plan(&recipe, &options(), &host).unwrap();
    fs_err::write(dir.path().join("overlay/motd"), "edited\n").unwrap();
    let error = materialize(&planned, &cache, 3, &host, &Silent, |_| Ok(())).unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("`overlay/motd` changed during the build"), "{text}");
    fs_err::write(dir.path().join("overlay/motd"), "hello\n").unwrap();

    let reverted = plan(&recipe, &options(), &host).unwrap();
    let store = Store::open(&cache).unwrap();
    let statuses = reverted.statuses(&store, None);
    assert!(matches!(statuses[2], StageStatus::Miss { .. }), "the edited copy was recorded");
    drop(store);
    assert_eq!(motd_after_all_stages(&reverted, &cache, &host), "hello\n");
}

#[test]
fn a_base_tarball_replaced_after_the_plan_records_no_stage() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe(dir.path());
    let cache = dir.path().join("cache");
    let host = RecordingHost::default();
    let planned = plan(&recipe, &options(), &host).unwrap();
    let mut other = fs_err::read(dir.path().join("base.tar")).unwrap();
    other.extend_from_slice(&[0; 1024]);
    fs_err::write(dir.path().join("base.tar"), other).unwrap();
    let error = materialize(&planned, &cache, 1, &host, &Silent, |_| Ok(())).unwrap_err();
    assert!(format!("{error:#}").contains("`base.tar` changed during the build"), "{error:#}");
    let store = Store::open(&cache).unwrap();
    assert!(matches!(planned.statuses(&store, None)[0], StageStatus::Miss { .. }));
}
