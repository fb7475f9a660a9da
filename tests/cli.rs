//! The command line, run through the real binary: error reporting, the small
//! commands (init, completions, man, cache dir) and an installed binary (that
//! one builds, so it needs root).

mod common;

use common::{needs_root, repo, rootsmith, run, tar_base};

#[test]
fn recipe_errors_print_file_line_column_caret_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("bad.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: demo\nversion: 1.0.0\nstages:\n  - debootstrap: { suite: bookworm }\n  - packages: { instal: [curl] }\n").unwrap();
    let (code, _, stderr) = run(rootsmith().arg("check").arg(&recipe));
    assert_eq!(code, 2, "{stderr}");
    let location = format!("{}:6:17", recipe.display());
    assert!(stderr.contains(&location), "{stderr}");
    assert!(stderr.contains("6 |   - packages: { instal: [curl] }\n  |                 ^"), "{stderr}");
    assert!(stderr.contains("hint: "), "{stderr}");
}

#[test]
fn a_version_that_is_not_one_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: demo\nversion: 1.0.0\nstages:\n  - tarball: { path: base.tar }\n")
        .unwrap();
    for version in ["v2", "../../evil"] {
        let (code, _, stderr) = run(rootsmith()
            .args(["build", "--cache"])
            .arg(dir.path().join("cache"))
            .arg("--out")
            .arg(dir.path().join("out"))
            .args(["--version", version])
            .arg(&recipe));
        assert_eq!(code, 2, "{version}: {stderr}");
        assert!(stderr.contains(&format!("--version `{version}` is not a valid version")), "{stderr}");
    }
    assert!(!dir.path().join("out").exists() && !dir.path().join("evil").exists());
}

#[test]
fn check_json_gives_each_error_as_fields() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("bad.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: demo\nversion: 1.0.0\nstages:\n  - debootstrap: { suite: bookworm }\n  - packages: { instal: [curl] }\n").unwrap();
    let (code, stdout, stderr) = run(rootsmith().args(["check", "--json"]).arg(&recipe));
    assert_eq!(code, 2, "{stderr}");
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(value["ok"], false);
    let error = &value["errors"][0];
    assert_eq!((error["line"].as_u64(), error["column"].as_u64()), (Some(6), Some(17)), "{value}");
    assert!(error["message"].as_str().unwrap().contains("instal") && error["hint"].is_string(), "{value}");
    std::fs::write(
        &recipe,
        "rootsmith: 1\nname: demo\nversion: 1.0.0\nstages:\n  - debootstrap: { suite: bookworm }\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(rootsmith().args(["check", "--json"]).arg(&recipe));
    assert_eq!(code, 0, "{stderr}");
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((value["ok"].as_bool(), value["name"].as_str()), (Some(true), Some("demo")), "{value}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("bad.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: demo\nversion: 1.0.0\nstages:\n  - run: { script: missing.sh }\n  - tarball: { path: gone.tar }\n").unwrap();
    let (code, _, stderr) = run(rootsmith().arg("check").arg(&recipe));
    assert_eq!(code, 2);
    for expected in [
        ":5:20",
        "file `missing.sh` does not exist",
        ":5:5",
        "not a base stage",
        ":6:22",
        "file `gone.tar` does not exist",
        ":6:5",
        "must be the first stage",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in\n{stderr}");
    }
}

#[test]
fn unknown_rebuild_stage_points_at_the_stages() {
    let recipe = repo().join("recipes/debian-minimal.yaml");
    let cache = tempfile::tempdir().unwrap();
    let (code, _, stderr) =
        run(rootsmith().args(["build", "--rebuild", "nope", "--cache"]).arg(cache.path()).arg(&recipe));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--rebuild names stage `nope`"), "{stderr}");
    assert!(stderr.contains("debian-minimal.yaml:10:1"), "{stderr}");
    assert!(stderr.contains("hint: the stages are: base, tools, overlay, configure"), "{stderr}");
}

#[test]
fn default_recipe_checks_clean() {
    let (code, stdout, stderr) = run(rootsmith().arg("check").arg(repo().join("recipes/debian-minimal.yaml")));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("4 stages: base, tools, overlay, configure"), "{stdout}");
}

#[test]
fn empty_cache_verifies_and_lists_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run(rootsmith().args(["cache", "--cache"]).arg(cache.path()).arg("verify"));
    assert_eq!(code, 0);
    assert!(stdout.contains("cache is consistent"), "{stdout}");
    let (code, stdout, _) = run(rootsmith().args(["cache", "--cache"]).arg(cache.path()).args(["ls", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "[]");
}

#[test]
fn every_example_recipe_checks_clean() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (code, _, stderr) = run(rootsmith().arg("check").arg(&path));
            assert_eq!(code, 0, "{}: {stderr}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} recipes found");
}

#[test]
fn an_unreachable_mirror_never_seen_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.yaml");
    // Port 9 (discard) on loopback: nothing answers there.
    std::fs::write(&recipe, "rootsmith: 1\nname: offline\nversion: 1.0.0\nstages:\n  - debootstrap: { suite: bookworm, mirror: \"http://127.0.0.1:9/debian\" }\n").unwrap();
    let (code, _, stderr) = run(rootsmith().args(["plan", "--cache"]).arg(dir.path().join("cache")).arg(&recipe));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("resolving the mirror's release file for suite `bookworm`"), "{stderr}");
    assert!(stderr.contains("127.0.0.1:9/debian/dists/bookworm/InRelease"), "{stderr}");
}

#[test]
fn an_epoch_no_output_can_hold_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.tar"), b"").unwrap();
    let recipe = dir.path().join("epoch.yaml");
    std::fs::write(
        &recipe,
        "rootsmith: 1\nname: demo\nversion: 1.0.0\nsource_date_epoch: -5\nstages:\n  - tarball: { path: base.tar }\n",
    )
    .unwrap();
    let (code, _, stderr) = run(rootsmith().arg("check").arg(&recipe));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("{}:4:20", recipe.display())) && stderr.contains("outside the times"), "{stderr}");

    std::fs::write(&recipe, "rootsmith: 1\nname: demo\nversion: 1.0.0\nstages:\n  - tarball: { path: base.tar }\n")
        .unwrap();
    let cache = dir.path().join("cache");
    let (code, _, stderr) = run(rootsmith()
        .env("SOURCE_DATE_EPOCH", "-1")
        .args(["build", "--cache"])
        .arg(&cache)
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg(&recipe));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("SOURCE_DATE_EPOCH=\"-1\"") && stderr.contains("outside the times"), "{stderr}");
    assert!(
        !cache.join("v1/stages").exists() || std::fs::read_dir(cache.join("v1/stages")).unwrap().next().is_none(),
        "a stage was built"
    );
}

#[test]
fn a_file_the_command_line_names_that_is_not_there_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    for args in
        [vec!["check"], vec!["hosts", "ls", "--hosts"], vec!["boot-test"], vec!["release", "verify"], vec!["serve"]]
    {
        let (code, _, stderr) = run(rootsmith().args(&args).arg(&missing));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(&missing.display().to_string()), "{args:?} names the path: {stderr}");
        assert!(!stderr.contains('^'), "{args:?}: no empty caret snippet for a file that is not there: {stderr}");
    }
}

#[test]
fn a_closed_standard_output_ends_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut child = rootsmith()
        .args(["cache", "ls", "--json", "--cache"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_ne!(status.code(), Some(101), "it panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn init_writes_a_starter_recipe_that_checks_and_overwrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(rootsmith().args(["init", "my-image"]).current_dir(dir.path()));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("my-image.yaml"), "{stdout}");
    for file in ["my-image.yaml", "my-image/overlay/etc/motd", "my-image/configure.sh"] {
        assert!(dir.path().join(file).is_file(), "{file} is not written");
    }
    let (code, stdout, stderr) = run(rootsmith().args(["check", "my-image.yaml"]).current_dir(dir.path()));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("my-image.yaml: ok (my-image 0.1.0"), "{stdout}");
    // The name is replaced where it stands for the recipe, not inside other words.
    let recipe = std::fs::read_to_string(dir.path().join("my-image.yaml")).unwrap();
    assert!(recipe.contains("env: { HOSTNAME: my-image }") && !recipe.contains("HOSTmy-image"), "{recipe}");
    // It netboots: a kernel, the initramfs's drivers, a command line and a marker.
    assert!(
        recipe.contains("kernel: { name: debian") && recipe.contains("marker: \"my-image: rootfs is up\""),
        "{recipe}"
    );
    assert!(dir.path().join("my-image/overlay/etc/systemd/system/rootsmith-marker.service").is_file());

    // Again: refused, nothing changed.
    std::fs::write(dir.path().join("my-image/configure.sh"), "edited\n").unwrap();
    let (code, _, stderr) = run(rootsmith().args(["init", "my-image"]).current_dir(dir.path()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("my-image.yaml already exists"), "{stderr}");
    assert_eq!(std::fs::read_to_string(dir.path().join("my-image/configure.sh")).unwrap(), "edited\n");

    // Only one of its files there: still nothing written.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("x/overlay/etc")).unwrap();
    std::fs::write(other.path().join("x/overlay/etc/motd"), "mine\n").unwrap();
    let (code, _, stderr) = run(rootsmith().args(["init", "x"]).current_dir(other.path()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(!other.path().join("x.yaml").exists(), "x.yaml is written beside a file it would overwrite");

    // A name that cannot be a recipe's.
    let (code, _, stderr) = run(rootsmith().args(["init", "My Image"]).current_dir(dir.path()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is not a recipe name"), "{stderr}");
}

#[test]
fn cache_dir_resolves_as_the_other_commands_do() {
    let cache_dir = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = rootsmith();
        command.args(args).env_remove("ROOTSMITH_CACHE").env_remove("XDG_CACHE_HOME").env("HOME", "/home/someone");
        for (name, value) in env {
            command.env(name, value);
        }
        let (code, stdout, stderr) = run(&mut command);
        assert_eq!(code, 0, "{args:?} {env:?}: {stderr}");
        stdout.trim_end().to_string()
    };
    assert_eq!(cache_dir(&["cache", "dir"], &[]), "/home/someone/.cache/rootsmith");
    assert_eq!(cache_dir(&["cache", "dir"], &[("XDG_CACHE_HOME", "/xdg")]), "/xdg/rootsmith");
    assert_eq!(cache_dir(&["cache", "dir"], &[("XDG_CACHE_HOME", "/xdg"), ("ROOTSMITH_CACHE", "/env")]), "/env");
    assert_eq!(cache_dir(&["cache", "--cache", "/flag", "dir"], &[("ROOTSMITH_CACHE", "/env")]), "/flag");
    assert_eq!(cache_dir(&["cache", "dir", "--cache", "/flag"], &[("XDG_CACHE_HOME", "/xdg")]), "/flag");
    // Printing it makes nothing.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("not-yet");
    assert_eq!(cache_dir(&["cache", "dir", "--cache", cache.to_str().unwrap()], &[]), cache.to_str().unwrap());
    assert!(!cache.exists());
}

#[test]
fn completions_and_man_pages_cover_the_commands() {
    for (shell, marker) in [
        ("bash", "_rootsmith()"),
        ("zsh", "#compdef rootsmith"),
        ("fish", "complete -c rootsmith"),
        ("elvish", "rootsmith"),
        ("powershell", "rootsmith"),
    ] {
        let (code, stdout, stderr) = run(rootsmith().args(["completions", shell]));
        assert_eq!(code, 0, "{shell}: {stderr}");
        assert!(stdout.contains(marker), "{shell}: no {marker:?} in\n{stdout}");
        assert!(
            stdout.contains("boot-test") && stdout.contains("promote"),
            "{shell}: the subcommands are not completed"
        );
    }
    let (code, _, stderr) = run(rootsmith().args(["completions", "tcsh"]));
    assert_eq!(code, 2, "{stderr}");

    let (code, page, stderr) = run(rootsmith().arg("man"));
    assert_eq!(code, 0, "{stderr}");
    assert!(page.contains(".TH rootsmith 1"), "{page}");
    assert!(page.contains("boot\\-test"), "{page}");

    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(rootsmith().arg("man").arg("--dir").arg(dir.path()));
    assert_eq!(code, 0, "{stderr}");
    for page in ["rootsmith.1", "rootsmith-build.1", "rootsmith-cache-dir.1", "rootsmith-release-verify.1"] {
        assert!(dir.path().join(page).is_file(), "{page} is not written");
    }
}

/// `make install-built` (the steps of `make install`, without the release
/// build) into a DESTDIR, then a build with the installed binary alone: its
/// init is found beside it (PREFIX/lib/rootsmith), not through ROOTSMITH_INIT
/// nor cargo's target directory.
#[test]
fn an_installed_binary_builds_without_rootsmith_init() {
    if !needs_root("an_installed_binary_builds_without_rootsmith_init") {
        return;
    }
    let init =
        rootsmith::artifact::initramfs::find_init("amd64").expect("the init is built by `make test` (make init)");
    let dir = tempfile::tempdir().unwrap();
    let destdir = dir.path().join("dest");
    let output = std::process::Command::new("make")
        .arg("-C")
        .arg(repo())
        .args(["--no-print-directory", "install-built", "PREFIX=/usr"])
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("BIN={}", env!("CARGO_BIN_EXE_rootsmith")))
        .arg(format!("INIT_BIN={}", init.display()))
        .arg(format!(
            "INIT_BIN_ARM64={}",
            rootsmith::artifact::initramfs::find_init("arm64")
                .expect("the arm64 init is built by `make test` (make init)")
                .display()
        ))
        .output()
        .expect("make runs");
    assert!(
        output.status.success(),
        "make install-built: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let prefix = destdir.join("usr");
    for file in [
        "bin/rootsmith",
        "lib/rootsmith/rootsmith-init",
        "lib/rootsmith/rootsmith-init-arm64",
        "share/bash-completion/completions/rootsmith",
        "share/zsh/site-functions/_rootsmith",
        "share/fish/vendor_completions.d/rootsmith.fish",
        "share/man/man1/rootsmith.1",
        "share/man/man1/rootsmith-build.1",
    ] {
        let path = prefix.join(file);
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() > 0),
            "{} is not installed",
            path.display()
        );
    }

    // A tiny tarball base, no kernel: the outputs still need the init.
    std::fs::create_dir_all(dir.path().join("tree/etc")).unwrap();
    std::fs::write(dir.path().join("tree/etc/hostname"), "installed\n").unwrap();
    tar_base(dir.path());
    std::fs::write(
        dir.path().join("r.yaml"),
        "rootsmith: 1\nname: installed\nversion: 1.0.0\nstages:\n  - tarball: { path: base.tar }\n",
    )
    .unwrap();
    let (code, _, stderr) = run(std::process::Command::new(prefix.join("bin/rootsmith"))
        .args(["build", "--fast", "r.yaml", "--cache", "cache", "--out", "out"])
        .current_dir(dir.path())
        .env_remove("ROOTSMITH_INIT")
        .env_remove("ROOTSMITH_CACHE")
        .env_remove("ROOTSMITH_OUT"));
    assert_eq!(code, 0, "the installed binary cannot build: {stderr}");
    assert!(dir.path().join("out/installed/1.0.0/installed-1.0.0-initramfs.img").is_file());
}
