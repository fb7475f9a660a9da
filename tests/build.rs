//! Real builds of real recipes: mmdebstrap, apt, chroot, mksquashfs. These need
//! root and the Debian package archive (CI has both); see `common::needs_root`.
//!
//! One test walks the life of the default recipe on one cache, so debootstrap
//! runs once: cold build, no-change rebuild, `--rebuild`, a changed script,
//! outputs rebuilt from cached layers, a killed build, two builds at once, a
//! failing command, and a tarball base made from the first bundle.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;

struct Lab {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    out: PathBuf,
    recipes: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let recipes = dir.path().join("recipes");
        copy_tree(&repo().join("recipes"), &recipes);
        Lab { cache: dir.path().join("cache"), out: dir.path().join("out"), recipes, _dir: dir }
    }

    fn recipe(&self) -> PathBuf {
        self.recipes.join("debian-minimal.yaml")
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = rootsmith();
        command.arg(args[0]).arg("--cache").arg(&self.cache).args(&args[1..]).env_remove("SOURCE_DATE_EPOCH");
        command
    }

    /// `build --json` with extra arguments; returns the parsed summary.
    fn build(&self, recipe: &Path, extra: &[&str]) -> serde_json::Value {
        let mut command = self.command(&["build", "--json", "--fast"]);
        command.arg("--out").arg(&self.out).args(extra).arg(recipe);
        let (code, stdout, stderr) = run(&mut command);
        assert_eq!(code, 0, "build failed:\n{stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }
}

/// (stage name, state) of every stage, then the outputs' state.
fn states(summary: &serde_json::Value) -> Vec<(String, String)> {
    let mut states: Vec<(String, String)> = summary["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["state"].as_str().unwrap().to_string()))
        .collect();
    states.push(("outputs".into(), summary["outputs"]["state"].as_str().unwrap().to_string()));
    states
}

fn expect_states(summary: &serde_json::Value, expected: &[(&str, &str)]) {
    let actual = states(summary);
    let expected: Vec<(String, String)> = expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(actual, expected);
}

fn bundle_file(summary: &serde_json::Value, suffix: &str) -> PathBuf {
    let bundle = PathBuf::from(summary["bundle"].as_str().unwrap());
    let name = format!("{}-{}-{suffix}", summary["name"].as_str().unwrap(), summary["version"].as_str().unwrap());
    bundle.join(name)
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
    lines.sort();
    lines
}

fn tool_output(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn default_recipe_lifecycle() {
    if !needs_root("default_recipe_lifecycle") {
        return;
    }
    let lab = Lab::new();
    let mounts_before = mount_table();

    // Cold build: every stage built, the host's mount table untouched.
    let cold = lab.build(&lab.recipe(), &[]);
    expect_states(
        &cold,
        &[("base", "built"), ("tools", "built"), ("overlay", "built"), ("configure", "built"), ("outputs", "built")],
    );
    assert_eq!(mount_table(), mounts_before, "a build changed the host's mount table");
    check_artifacts(&cold);

    // The packages stage downloaded into the cache's shared apt directory.
    let debs: Vec<String> = std::fs::read_dir(lab.cache.join("v1/apt/archives"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(debs.iter().any(|name| name.starts_with("iproute2_")), "iproute2 is not in the shared apt cache");

    // A partial bundle left by a build killed while publishing is swept.
    let partial = lab.out.join("debian-minimal/.0.1.0.partial-dead");
    std::fs::create_dir_all(&partial).unwrap();

    // No change: nothing is built, and the same version is accepted as identical.
    let again = lab.build(&lab.recipe(), &[]);
    expect_states(
        &again,
        &[
            ("base", "cached"),
            ("tools", "cached"),
            ("overlay", "cached"),
            ("configure", "cached"),
            ("outputs", "cached"),
        ],
    );
    assert_eq!(again["up_to_date"], true);
    assert!(!partial.exists(), "a stale partial bundle was left in place");

    // plan agrees: every stage and the outputs of a --fast build are hits.
    let (code, stdout, _) = run(lab.command(&["plan", "--fast", "--json"]).arg(lab.recipe()));
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let plan_states: Vec<&str> = rows.as_array().unwrap().iter().map(|row| row["state"].as_str().unwrap()).collect();
    assert_eq!(plan_states, ["hit", "hit", "hit", "hit", "hit"]);

    // --cache-only succeeds when everything is cached.
    let only = lab.build(&lab.recipe(), &["--cache-only"]);
    assert_eq!(only["up_to_date"], true);

    // shell: a command in the tree after `tools` (before the overlay); what it
    // changes is thrown away.
    let (code, stdout, stderr) = run(lab.command(&["shell", "--stage", "tools"]).arg(lab.recipe()).args(["--", "/bin/sh", "-c", "test -e /etc/motd && grep -q rootsmith /etc/motd || echo no-overlay-yet; cat /etc/debian_version; touch /etc/shell-was-here"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("no-overlay-yet") && stdout.contains("12."), "{stdout}");
    assert_eq!(mount_table(), mounts_before, "shell left mounts behind");

    // --rebuild forces one stage and what follows it.
    let rebuilt = lab.build(&lab.recipe(), &["--rebuild", "overlay", "--version", "0.1.1"]);
    expect_states(
        &rebuilt,
        &[("base", "cached"), ("tools", "cached"), ("overlay", "built"), ("configure", "built"), ("outputs", "cached")],
    );

    // A changed script rebuilds its stage only; plan --explain names the file.
    std::fs::write(
        lab.recipes.join("debian-minimal/configure.sh"),
        std::fs::read_to_string(lab.recipes.join("debian-minimal/configure.sh")).unwrap()
            + "echo changed > /etc/rootsmith-test\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(lab.command(&["plan", "--explain"]).arg(lab.recipe()));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("configure") && stdout.contains("miss"), "{stdout}");
    assert!(stdout.contains("files[debian-minimal/configure.sh]"), "{stdout}");
    assert!(
        stdout.lines().any(|line| line.trim_start().starts_with("outputs") && line.ends_with("pending")),
        "{stdout}"
    );
    let (code, _, stderr) =
        run(lab.command(&["build", "--cache-only", "--version", "0.2.0", "--out"]).arg(&lab.out).arg(lab.recipe()));
    assert_eq!(code, 1);
    assert!(stderr.contains("stage `configure` is not in the cache") && stderr.contains("--cache-only"), "{stderr}");
    let changed = lab.build(&lab.recipe(), &["--version", "0.2.0"]);
    expect_states(
        &changed,
        &[("base", "cached"), ("tools", "cached"), ("overlay", "cached"), ("configure", "built"), ("outputs", "built")],
    );
    let tar_listing = tool_output(
        "tar",
        &["--quoting-style=literal", "-tf", bundle_file(&changed, "rootfs.tar.zst").to_str().unwrap()],
    );
    assert!(tar_listing.lines().any(|l| l == "etc/rootsmith-test"), "the changed script's file is missing");
    assert!(!tar_listing.lines().any(|l| l == "etc/shell-was-here"), "a change made in `shell` was kept");

    // The same version with other contents is refused, never overwritten.
    let (code, _, stderr) =
        run(lab.command(&["build", "--fast", "--version", "0.1.0", "--out"]).arg(&lab.out).arg(lab.recipe()));
    assert_eq!(code, 1);
    assert!(stderr.contains("already exists with different contents"), "{stderr}");

    // Outputs rebuilt from cached layers (not the fresh work tree) are the same bytes.
    std::fs::remove_dir_all(lab.cache.join("v1/outputs")).unwrap();
    let restored = lab.build(&lab.recipe(), &["--version", "0.2.1"]);
    expect_states(
        &restored,
        &[
            ("base", "cached"),
            ("tools", "cached"),
            ("overlay", "cached"),
            ("configure", "cached"),
            ("outputs", "built"),
        ],
    );
    for suffix in ["rootfs.img", "rootfs.tar.zst"] {
        assert_eq!(
            sha256(&bundle_file(&changed, suffix)),
            sha256(&bundle_file(&restored, suffix)),
            "{suffix} differs when built from cached layers"
        );
    }

    killed_build_leaves_a_consistent_cache(&lab, &mounts_before);
    concurrent_builds_share_the_cache(&lab);
    failing_command_reports_status_and_output(&lab, &mounts_before);
    tarball_base_from_a_bundle(&lab, &cold);

    let (code, stdout, stderr) = run(&mut lab.command(&["cache", "verify"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(mount_table(), mounts_before);
}

/// unsquashfs and tar list the same paths; cpio lists root.squashfs first;
/// sha256sum -c accepts SHA256SUMS.
fn check_artifacts(summary: &serde_json::Value) {
    let bundle = PathBuf::from(summary["bundle"].as_str().unwrap());
    let image = bundle_file(summary, "rootfs.img");
    let cpio =
        std::process::Command::new("cpio").arg("-t").stdin(std::fs::File::open(&image).unwrap()).output().unwrap();
    let names = String::from_utf8_lossy(&cpio.stdout).into_owned();
    assert_eq!(names.lines().collect::<Vec<_>>(), ["root.squashfs", "root.cookie"]);
    let bytes = std::fs::read(&image).unwrap();
    assert_eq!(&bytes[124..128], b"hsqs");
    assert_eq!(bytes.len() % 4, 0);

    // Pull the squashfs out of the cpio and list it with squashfs-tools.
    let work = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cpio")
        .args(["-i", "--quiet", "root.squashfs"])
        .current_dir(work.path())
        .stdin(std::fs::File::open(&image).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let squashfs = work.path().join("root.squashfs");
    let squash_paths: Vec<String> = tool_output("unsquashfs", &["-l", "-d", "", squashfs.to_str().unwrap()])
        .lines()
        .filter_map(|line| line.strip_prefix('/').map(str::to_string))
        .collect();
    let tar_paths = tool_output(
        "tar",
        &["--quoting-style=literal", "-tf", bundle_file(summary, "rootfs.tar.zst").to_str().unwrap()],
    );
    let tar_paths: Vec<String> = tar_paths.lines().map(|l| l.trim_end_matches('/').to_string()).collect();
    assert!(squash_paths.len() > 1000, "suspiciously small squashfs: {}", squash_paths.len());
    let squash_set: std::collections::BTreeSet<String> = sorted_lines(&squash_paths.join("\n")).into_iter().collect();
    let tar_set: std::collections::BTreeSet<String> = sorted_lines(&tar_paths.join("\n")).into_iter().collect();
    let only_squashfs: Vec<&String> = squash_set.difference(&tar_set).take(20).collect();
    let only_tar: Vec<&String> = tar_set.difference(&squash_set).take(20).collect();
    assert!(
        only_squashfs.is_empty() && only_tar.is_empty(),
        "only in squashfs: {only_squashfs:?}\nonly in tar: {only_tar:?}"
    );

    let check = std::process::Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(&bundle)
        .status()
        .unwrap();
    assert!(check.success(), "sha256sum -c failed");
    let packages = std::fs::read_to_string(bundle.join("packages.txt")).unwrap();
    for name in ["iproute2\t", "procps\t", "systemd-sysv\t"] {
        assert!(packages.lines().any(|l| l.starts_with(name)), "{name} missing from packages.txt");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["fast"], true);
    assert_eq!(manifest["stages"].as_array().unwrap().len(), 4);
}

fn pause_recipe(lab: &Lab, name: &str, shell: &str) -> PathBuf {
    let text = std::fs::read_to_string(lab.recipe()).unwrap();
    let text = text.replace("name: debian-minimal", &format!("name: {name}")).replace(
        "outputs:",
        &format!("  - name: extra\n    run:\n      sh: {shell}\n      env: {{ PAUSE: \"${{pause}}\" }}\noutputs:"),
    );
    let text = text.replace("vars:\n", "vars:\n  pause: \"0\"\n");
    let path = lab.recipes.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// SIGKILL in the middle of a stage: the next build succeeds and the cache verifies.
fn killed_build_leaves_a_consistent_cache(lab: &Lab, mounts_before: &[String]) {
    let recipe = pause_recipe(lab, "killed", "\"sleep $PAUSE; touch /etc/killed-test\"");
    let mut child = lab
        .command(&["build", "--fast", "--set", "pause=4", "--out"])
        .arg(&lab.out)
        .arg(&recipe)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the extra stage runs, then kill without warning.
    let mut stderr = child.stderr.take().unwrap();
    read_until(&mut stderr, "extra (run): building", Duration::from_secs(300));
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mount_table(), mounts_before, "a killed build left mounts behind");

    let (code, stdout, stderr) = run(&mut lab.command(&["cache", "verify"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let summary = lab.build(&recipe, &["--set", "pause=4"]);
    assert_eq!(states(&summary).last().unwrap().1, "built");
    assert_eq!(summary["stages"][4]["state"], "built");
    assert!(std::fs::read_dir(lab.cache.join("v1/tmp")).unwrap().next().is_none(), "work dirs were left in the cache");
}

/// Two builds of one new stage at once: both succeed, one waits for the other.
fn concurrent_builds_share_the_cache(lab: &Lab) {
    let recipe = pause_recipe(lab, "twins", "\"sleep $PAUSE; date > /etc/built-at\"");
    let spawn = |out: &str| {
        lab.command(&["build", "--json", "--fast", "--set", "pause=2", "--out"])
            .arg(lab.out.join(out))
            .arg(&recipe)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn("a");
    let second = spawn("b");
    let mut summaries = Vec::new();
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        summaries.push(serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap());
    }
    let built: Vec<String> = summaries.iter().map(|s| s["stages"][4]["state"].as_str().unwrap().to_string()).collect();
    assert!(built.contains(&"built".to_string()) && built.contains(&"cached".to_string()), "{built:?}");
    assert_eq!(sha256(&bundle_file(&summaries[0], "rootfs.img")), sha256(&bundle_file(&summaries[1], "rootfs.img")));
}

/// A failing command fails the build with its status and the tail of its output.
fn failing_command_reports_status_and_output(lab: &Lab, mounts_before: &[String]) {
    let recipe = pause_recipe(lab, "failing", "\"echo boom-marker-$PAUSE; exit 7\"");
    let (code, _, stderr) = run(lab.command(&["build", "--fast", "--out"]).arg(&lab.out).arg(&recipe));
    assert_eq!(code, 1);
    assert!(stderr.contains("stage `extra` (run) failed"), "{stderr}");
    assert!(stderr.contains("exit status 7"), "{stderr}");
    assert!(stderr.contains("boom-marker-0"), "{stderr}");
    assert!(!lab.out.join("failing").join("0.1.0").exists(), "a failed build left a bundle");
    assert_eq!(mount_table(), mounts_before);
}

/// A tarball base (the first bundle's own tarball) plus a command in it.
fn tarball_base_from_a_bundle(lab: &Lab, cold: &serde_json::Value) {
    let tarball = bundle_file(cold, "rootfs.tar.zst");
    let recipe = lab.recipes.join("from-tarball.yaml");
    std::fs::write(
        &recipe,
        format!("rootsmith: 1\nname: from-tarball\nversion: 1.0.0\nstages:\n  - tarball: {{ path: {} }}\n  - run: {{ sh: \"grep -q rootsmith /etc/motd && echo ok > /etc/from-tarball\" }}\n", tarball.display()),
    )
    .unwrap();
    let summary = lab.build(&recipe, &[]);
    expect_states(&summary, &[("tarball", "built"), ("run", "built"), ("outputs", "built")]);
    let listing = tool_output(
        "tar",
        &["--quoting-style=literal", "-tf", bundle_file(&summary, "rootfs.tar.zst").to_str().unwrap()],
    );
    assert!(listing.lines().any(|l| l == "etc/from-tarball"));
}

/// `tool: debootstrap` builds the base with debootstrap (the fallback when
/// mmdebstrap is not installed), downloading into the shared apt cache.
#[test]
fn debootstrap_tool_builds_a_base() {
    if !needs_root("debootstrap_tool_builds_a_base") {
        return;
    }
    let lab = Lab::new();
    let recipe = lab.recipes.join("debootstrap.yaml");
    std::fs::write(
        &recipe,
        "rootsmith: 1\nname: with-debootstrap\nversion: 1.0.0\nstages:\n  - debootstrap: { suite: bookworm, tool: debootstrap }\n  - run: { sh: \"grep -q '^12' /etc/debian_version && touch /etc/debootstrapped\" }\n",
    )
    .unwrap();
    let summary = lab.build(&recipe, &[]);
    expect_states(&summary, &[("debootstrap", "built"), ("run", "built"), ("outputs", "built")]);
    let listing = tool_output(
        "tar",
        &["--quoting-style=literal", "-tf", bundle_file(&summary, "rootfs.tar.zst").to_str().unwrap()],
    );
    assert!(listing.lines().any(|l| l == "etc/debootstrapped"));
    let cached = std::fs::read_dir(lab.cache.join("v1/apt/archives"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "deb"))
        .count();
    assert!(cached > 50, "debootstrap did not download into the shared apt cache ({cached} packages)");
}

/// Two cold builds of the default recipe on two empty caches give the same
/// bytes: mmdebstrap and apt run with SOURCE_DATE_EPOCH, mtimes are clamped,
/// and the logs and caches that record when a build ran are scrubbed. The
/// two caches differ in everything that must not matter: one is under a
/// 0700 directory (apt cannot drop to `_apt` there) with umask 077, the other
/// under a 0755 one with umask 022.
#[test]
fn debootstrap_recipe_is_reproducible_on_two_empty_caches() {
    if !needs_root("debootstrap_recipe_is_reproducible_on_two_empty_caches") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let (a, b) = (Lab::new(), Lab::new());
    std::fs::set_permissions(a.cache.parent().unwrap(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(b.cache.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bundle = |lab: &Lab, umask: libc::mode_t| {
        let mut command = lab.command(&["build", "--json", "--fast"]);
        command.arg("--out").arg(&lab.out).arg(lab.recipe());
        // SAFETY: umask is async-signal-safe and touches no memory.
        unsafe {
            command.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            });
        }
        let (code, stdout, stderr) = run(&mut command);
        assert_eq!(code, 0, "build failed:\n{stderr}");
        let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let keys: Vec<(String, String)> = states(&summary);
        (std::fs::read_to_string(lab.out.join("debian-minimal/0.1.0/SHA256SUMS")).unwrap(), keys)
    };
    let ((sums_a, keys_a), (sums_b, keys_b)) = (bundle(&a, 0o077), bundle(&b, 0o022));
    assert_eq!(keys_a, keys_b);
    assert_eq!(sums_a, sums_b, "two cold builds of recipes/debian-minimal.yaml differ (cache mode and umask)");
    assert!(sums_a.contains("-rootfs.img") && sums_a.contains("sbom.spdx.json"));
    // Each stage's layer is the same bytes under the same key (the stage
    // records of CACHE/v1/stages/KEY.json).
    let layers = |lab: &Lab| {
        let mut pairs: Vec<String> = std::fs::read_dir(lab.cache.join("v1/stages"))
            .unwrap()
            .map(|entry| {
                let record: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
                format!("{} {} {}", record["stage"], record["key"], record["layer"])
            })
            .collect();
        pairs.sort();
        pairs
    };
    let (layers_a, layers_b) = (layers(&a), layers(&b));
    assert!(!layers_a.is_empty());
    assert_eq!(layers_a, layers_b, "one key, two layers");
}

/// `release verify --rebuild` names the paths a non-reproducible step changes.
#[test]
fn verify_rebuild_names_what_is_not_reproducible() {
    if !needs_root("verify_rebuild_names_what_is_not_reproducible") {
        return;
    }
    let lab = Lab::new();
    let script = lab.recipes.join("debian-minimal/configure.sh");
    std::fs::write(&script, std::fs::read_to_string(&script).unwrap() + "date +%s%N > /etc/build-stamp\n").unwrap();
    lab.build(&lab.recipe(), &[]);
    let bundle = lab.out.join("debian-minimal/0.1.0");
    let mut command = rootsmith();
    command.args(["release", "verify"]).arg(&bundle).arg("--rebuild").arg(lab.recipe());
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let line = stdout.lines().find(|line| line.contains("rebuild")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.starts_with("FAILED"), "{line}");
    assert!(line.contains("debian-minimal-0.1.0-rootfs.img differs in 1 path: /etc/build-stamp"), "{line}");
    // The bundle itself is intact: every other check passes.
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok")).count(), 5, "{stdout}");
}

/// `lock` pins what a build installs; `build --locked` installs exactly that,
/// and a version the mirror no longer has stops it before it starts.
#[test]
fn lock_then_locked_build() {
    if !needs_root("lock_then_locked_build") {
        return;
    }
    let lab = Lab::new();
    let (code, stdout, stderr) = run(lab.command(&["lock"]).arg(lab.recipe()));
    assert_eq!(code, 0, "{stderr}");
    let lock_path = lab.recipes.join("debian-minimal.lock");
    assert!(stdout.contains("wrote") && stdout.contains("packages"), "{stdout}");
    let lock: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&lock_path).unwrap()).unwrap();
    let locked_less = lock["packages"]["less"].as_str().expect("less is locked").to_string();
    assert!(lock["remote"]
        .as_mapping()
        .unwrap()
        .keys()
        .any(|k| k.as_str().unwrap().ends_with("/dists/bookworm/InRelease")));

    let summary = lab.build(&lab.recipe(), &["--locked"]);
    let bundle = PathBuf::from(summary["bundle"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["lock_sha256"].as_str().is_some_and(|digest| digest.len() == 64), "{manifest}");
    let packages = std::fs::read_to_string(bundle.join("packages.txt")).unwrap();
    assert!(packages.lines().any(|line| line.starts_with(&format!("less\t{locked_less}\t"))), "{packages}");
    assert_eq!(packages.lines().count(), lock["packages"].as_mapping().unwrap().len());

    let text = std::fs::read_to_string(&lock_path)
        .unwrap()
        .replace(&format!("  less: {locked_less}\n"), "  less: 999-9\n")
        .replace(&format!("  less: '{locked_less}'\n"), "  less: 999-9\n");
    std::fs::write(&lock_path, text).unwrap();
    let mut command = lab.command(&["build", "--locked", "--fast"]);
    command.arg("--out").arg(&lab.out).arg("--version").arg("0.2.0").arg(lab.recipe());
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the lock pins 1 package version the mirror no longer has:\n  less 999-9 (the mirror has "),
        "{stderr}"
    );
    assert!(!lab.out.join("debian-minimal/0.2.0").exists());

    // A plain build says when the lock no longer describes the recipe.
    std::fs::write(lab.recipe(), std::fs::read_to_string(lab.recipe()).unwrap() + "# edited after locking\n").unwrap();
    let mut command = lab.command(&["build", "--fast"]);
    command.arg("--out").arg(&lab.out).arg("--version").arg("0.3.0").arg(lab.recipe());
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("debian-minimal.lock is stale (the recipe changed since it was locked)"), "{stderr}");
}
