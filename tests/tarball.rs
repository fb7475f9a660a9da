//! Tarball bases are untrusted input: a hostile archive given to a real build
//! never writes outside the stage's tree. Needs root (device nodes, owners).

mod common;

use std::path::Path;

use common::*;

/// A tar with raw entry names, written without the tar crate's own checks.
fn hostile_tarball(path: &Path, entries: &[(&str, tar::EntryType, &str)]) {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(if *kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        let data: &[u8] = if *kind == tar::EntryType::Regular { b"pwned\n" } else { b"" };
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    let bytes = builder.into_inner().unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &bytes).unwrap();
    encoder.finish().unwrap();
}

fn build(dir: &Path, tarball: &Path) -> (i32, String) {
    let recipe = dir.join("r.yaml");
    std::fs::write(
        &recipe,
        format!(
            "rootsmith: 1\nname: hostile\nversion: 1.0.0\nstages:\n  - tarball: {{ path: {} }}\n",
            tarball.display()
        ),
    )
    .unwrap();
    // Each archive publishes into its own out directory: a version is never
    // published twice, and a clash would stop the build before its stage.
    let out = dir.join("out").join(tarball.file_name().unwrap());
    let (code, _, stderr) =
        run(rootsmith().args(["build", "--fast", "--cache"]).arg(dir.join("cache")).arg("--out").arg(out).arg(&recipe));
    (code, stderr)
}

#[test]
fn hostile_tarball_bases_never_write_outside_the_tree() {
    if !needs_root("hostile_tarball_bases_never_write_outside_the_tree") {
        return;
    }
    use tar::EntryType::*;
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_text = outside.to_str().unwrap();

    // `..` in a path: refused, the error names the archive and the entry.
    let dotdot = dir.path().join("dotdot.tar.gz");
    hostile_tarball(&dotdot, &[("etc", Directory, ""), ("etc/../../outside/evil", Regular, "")]);
    let (code, stderr) = build(dir.path(), &dotdot);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("entry `etc/../../outside/evil`: `..` in its path"), "{stderr}");
    assert!(stderr.contains("dotdot.tar.gz"), "{stderr}");

    // An absolute symlink to a host directory, then a file through it: the
    // file lands inside the tree, under the link's target taken from the root.
    let absolute = dir.path().join("absolute.tar.gz");
    let through = format!("{}/evil", "escape");
    hostile_tarball(&absolute, &[("etc", Directory, ""), ("escape", Symlink, outside_text), (&through, Regular, "")]);
    let (code, stderr) = build(dir.path(), &absolute);
    assert_eq!(code, 0, "{stderr}");

    // A relative symlink climbing out of the tree: refused.
    let climbing = dir.path().join("climbing.tar.gz");
    hostile_tarball(&climbing, &[("up", Symlink, "../../../../../../.."), ("up/tmp/evil", Regular, "")]);
    let (code, stderr) = build(dir.path(), &climbing);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("leaves the tree"), "{stderr}");

    // A hard link to a host file: refused.
    let link = dir.path().join("link.tar.gz");
    hostile_tarball(&link, &[("passwd", Link, "/etc/passwd")]);
    let (code, stderr) = build(dir.path(), &link);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("hard link target: absolute path"), "{stderr}");

    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was written outside the tree");
    let listing = std::process::Command::new("tar")
        .args(["--quoting-style=literal", "-tf"])
        .arg(dir.path().join("out/absolute.tar.gz/hostile/1.0.0/hostile-1.0.0-rootfs.tar.zst"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let inside = format!("{}/evil", outside_text.trim_start_matches('/'));
    assert!(
        listing.lines().any(|line| line == inside),
        "the file written through the symlink is not inside the tree:\n{listing}"
    );
}

/// Build with `tarball` as the base, giving up (and failing) after a minute
/// instead of hanging; `env` is added to the build's environment.
fn build_within_a_minute(dir: &Path, tarball: &Path, env: &[(&str, &str)]) -> (i32, String) {
    build_recipe_within_a_minute(
        dir,
        &format!(
            "rootsmith: 1\nname: special\nversion: 1.0.0\nstages:\n  - tarball: {{ path: {} }}\n",
            tarball.display()
        ),
        env,
    )
}

fn build_recipe_within_a_minute(dir: &Path, recipe_text: &str, env: &[(&str, &str)]) -> (i32, String) {
    let recipe = dir.join("r.yaml");
    std::fs::write(&recipe, recipe_text).unwrap();
    let mut command = rootsmith();
    command.args(["build", "--fast", "--cache"]).arg(dir.join("cache")).arg("--out").arg(dir.join("out")).arg(&recipe);
    command.envs(env.iter().copied()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.code().unwrap_or(-1), stderr);
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the build of {} hung", recipe.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_fifo_or_a_device_as_tarball_is_refused_at_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("base.tar");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let (code, stderr) = build_within_a_minute(dir.path(), &fifo, &[]);
    assert_eq!(code, 2, "a recipe error: {stderr}");
    assert!(stderr.contains("base.tar` is a FIFO, not a regular file"), "{stderr}");
    assert!(stderr.contains("r.yaml:5:22"), "{stderr}");
    let (code, stderr) = build_within_a_minute(dir.path(), Path::new("/dev/zero"), &[]);
    assert_eq!(code, 2, "a recipe error: {stderr}");
    assert!(stderr.contains("`/dev/zero` is a character device, not a regular file"), "{stderr}");
    assert!(stderr.contains("r.yaml:5:22"), "{stderr}");
}

#[test]
fn an_environment_given_as_tarball_is_not_printed() {
    if !needs_root("an_environment_given_as_tarball_is_not_printed") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the environment fills a tar header on its own.
    let secret = format!("hunter2-{}", "s".repeat(600));
    let (code, stderr) =
        build_within_a_minute(dir.path(), Path::new("/proc/self/environ"), &[("ROOTSMITH_TEST_SECRET", &secret)]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        !stderr.contains("hunter2") && !stderr.contains("ROOTSMITH_TEST_SECRET"),
        "the error prints the environment:\n{stderr}"
    );
    assert!(stderr.contains("not a tar archive"), "{stderr}");
}

/// A tarball of a tree that has nothing but the host's /bin/sh and the
/// libraries it loads: enough for a `run` stage.
fn shell_only_tarball(path: &Path) {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(true);
    builder.append_path_with_name(std::fs::canonicalize("/bin/sh").unwrap(), "bin/sh").unwrap();
    let ldd = std::process::Command::new("ldd").arg("/bin/sh").output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let Some(library) = line.split_whitespace().find(|word| word.starts_with('/')) else { continue };
        builder.append_path_with_name(library, library.trim_start_matches('/')).unwrap();
    }
    for directory in ["etc", "tmp"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        builder.append_data(&mut header, directory, std::io::empty()).unwrap();
    }
    std::fs::write(path, builder.into_inner().unwrap()).unwrap();
}

#[test]
fn a_failing_script_file_is_named_by_its_path_and_line_never_quoted() {
    if !needs_root("a_failing_script_file_is_named_by_its_path_and_line_never_quoted") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.tar");
    shell_only_tarball(&base);
    std::fs::write(
        dir.path().join("fail.sh"),
        "token=hunter2-in-the-script\necho marker-before-failing\nno-such-command-here\n",
    )
    .unwrap();
    let recipe = format!("rootsmith: 1\nname: scripted\nversion: 1.0.0\nstages:\n  - tarball: {{ path: {} }}\n  - run: {{ script: fail.sh }}\n", base.display());
    let (code, stderr) = build_recipe_within_a_minute(dir.path(), &recipe, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("hunter2"), "the error quotes the script:\n{stderr}");
    assert!(stderr.contains("script `fail.sh` failed with exit status 127"), "{stderr}");
    // The shell names the script and its line; the output's tail is shown.
    assert!(stderr.contains("/.rootsmith-run/fail.sh: 3: no-such-command-here: not found"), "{stderr}");
    assert!(stderr.contains("marker-before-failing"), "{stderr}");

    // A script that succeeds leaves no trace of its copy in the tree.
    std::fs::write(dir.path().join("fail.sh"), "echo ran > /etc/ran\n").unwrap();
    let (code, stderr) = build_recipe_within_a_minute(dir.path(), &recipe, &[]);
    assert_eq!(code, 0, "{stderr}");
    let listing = std::process::Command::new("tar")
        .args(["--quoting-style=literal", "-tf"])
        .arg(dir.path().join("out/scripted/1.0.0/scripted-1.0.0-rootfs.tar.zst"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.lines().any(|line| line == "etc/ran"), "{listing}");
    assert!(!listing.contains("rootsmith-run"), "{listing}");
}

/// The outputs are two cache entries: a new init (another initramfs) makes
/// the initramfs again and reuses the rootfs image, tarball and SBOM as they
/// are; nothing changed makes nothing.
#[test]
fn a_new_init_makes_only_the_initramfs_again() {
    if !needs_root("a_new_init_makes_only_the_initramfs_again") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    busybox_tree(dir.path(), &["sh"]);
    let recipe = dir.path().join("r.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: split\nversion: 1.0.0\nsource_date_epoch: 1700000000\nstages:\n  - tarball: { path: base.tar }\n").unwrap();
    let build = |out: &str, env: &[(&str, &std::ffi::OsStr)]| -> serde_json::Value {
        let mut command = rootsmith();
        command
            .args(["build", "--fast", "--json", "--cache"])
            .arg(dir.path().join("cache"))
            .arg("--out")
            .arg(dir.path().join(out))
            .arg(&recipe)
            .envs(env.iter().copied());
        let (code, stdout, stderr) = run(&mut command);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str(&stdout).unwrap()
    };
    let entries = || {
        std::fs::read_dir(dir.path().join("cache/v1/outputs"))
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().path().is_dir())
            .count()
    };
    let first = build("a", &[]);
    assert_eq!(first["outputs"]["state"], "built");
    assert_eq!(entries(), 2, "a rootfs entry and an initramfs entry");
    let again = build("b", &[]);
    assert_eq!((again["outputs"]["state"].as_str(), entries()), (Some("cached"), 2));

    // Another init: the same program with bytes after its end (still a valid ELF).
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_rootsmith"));
    let init = exe.parent().unwrap().parent().unwrap().join("x86_64-unknown-linux-gnu/init/rootsmith-init");
    let mut bytes = std::fs::read(&init).expect("the init is built (make init)");
    bytes.extend_from_slice(b"\0another init");
    let other = dir.path().join("rootsmith-init");
    std::fs::write(&other, bytes).unwrap();
    let changed = build("c", &[("ROOTSMITH_INIT", other.as_os_str())]);
    assert_eq!(changed["outputs"]["state"], "built");
    assert_eq!(entries(), 3, "only an initramfs entry was added");
    let file = |out: &str, name: &str| {
        std::fs::read(dir.path().join(out).join("split/1.0.0").join(format!("split-1.0.0-{name}"))).unwrap()
    };
    assert!(file("a", "rootfs.img") == file("c", "rootfs.img"), "the rootfs image was made again");
    assert!(file("a", "initramfs.img") != file("c", "initramfs.img"), "the initramfs holds the new init");
    let (code, _, stderr) = run(rootsmith().arg("release").arg("verify").arg(dir.path().join("c/split/1.0.0")));
    assert_eq!(code, 0, "{stderr}");
}
