//! Builds as an ordinary user: rootsmith runs itself in a user namespace of
//! the user's /etc/subuid and /etc/subgid ranges, and the bundle it publishes
//! is byte for byte the one root publishes from the same recipe. These tests
//! need root (to make the user and to build as root for the comparison) and
//! the Debian package archive; CI has both (see `common::needs_root`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A directory both the user and root can use: the binary and its init copied
/// where the user can run them (bin/, lib/rootsmith/), the recipes, and a
/// cache and out directory for each of the two.
struct Place {
    dir: tempfile::TempDir,
    bin: PathBuf,
    recipes: PathBuf,
}

impl Place {
    fn new(user: &User) -> Place {
        let dir = tempfile::Builder::new().prefix("rootsmith-rootless-").tempdir().unwrap();
        let bin = install_for_users(dir.path());
        let recipes = dir.path().join("recipes");
        copy_tree(&repo().join("recipes"), &recipes);
        for sub in ["user", "root"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        // Everything but root's own directory belongs to the user.
        for entry in walkdir::WalkDir::new(dir.path()) {
            let entry = entry.unwrap();
            if !entry.path().starts_with(dir.path().join("root")) {
                std::os::unix::fs::lchown(entry.path(), Some(user.uid), Some(user.gid)).unwrap();
            }
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Place { dir, bin, recipes }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// rootsmith as `who` ("user" or "root"), with that one's cache.
    fn rootsmith(&self, who: &str, user: &User, args: &[&str]) -> Command {
        let mut command = self.bare(who, user);
        command.arg(args[0]).arg("--cache").arg(self.path(&format!("{who}/cache"))).args(&args[1..]);
        command
    }

    /// rootsmith as `who`, without arguments.
    fn bare(&self, who: &str, user: &User) -> Command {
        let mut command = Command::new(&self.bin);
        if who == "user" {
            user.command(&mut command);
        } else {
            // Root builds in the user's place on purpose (to compare the
            // two): a directory of another user's above root's cache is
            // otherwise refused.
            command
                .env_clear()
                .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .env("LANG", "C.UTF-8")
                .env("HOME", "/root")
                .env("ROOTSMITH_SHARED_DIRS", "1");
        }
        command.current_dir(self.dir.path());
        command
    }

    /// `build --fast --json RECIPE` as `who`; the bundle's directory.
    fn build(&self, who: &str, user: &User, recipe: &Path) -> PathBuf {
        let mut command = self.rootsmith(who, user, &["build", "--fast", "--json", "--out"]);
        command.arg(self.path(&format!("{who}/out"))).arg(recipe);
        let (code, stdout, stderr) = run(&mut command);
        assert_eq!(code, 0, "{who}'s build of {} failed:\n{stderr}", recipe.display());
        let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        PathBuf::from(summary["bundle"].as_str().unwrap())
    }
}

fn sums(bundle: &Path) -> String {
    std::fs::read_to_string(bundle.join("SHA256SUMS")).unwrap()
}

/// The debootstrap recipe (packages, files, run), a tarball recipe (whose
/// base holds device nodes) with an OCI image output, and recipes on `oci`
/// and `release` bases give the same SHA256SUMS as the user and as root;
/// the user's builds leave the host's mount table as it was; `plan`,
/// `shell`, `lock` and `release verify --rebuild` work as the user too.
#[test]
fn a_user_build_gives_the_bytes_of_a_root_build() {
    if !needs_root("a_user_build_gives_the_bytes_of_a_root_build") {
        return;
    }
    let user = ordinary_user();
    let place = Place::new(&user);
    let recipe = place.recipes.join("debian-minimal.yaml");
    let mounts_before = mount_table();
    let user_bundle = place.build("user", &user, &recipe);
    assert_eq!(mount_table(), mounts_before, "a build as {USER} changed the host's mount table");
    let metadata = std::fs::metadata(user_bundle.join("SHA256SUMS")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&metadata), user.uid, "the user's bundle belongs to the user");
    let root_bundle = place.build("root", &user, &recipe);
    assert_eq!(sums(&user_bundle), sums(&root_bundle), "the user's bundle differs from root's");

    // A tarball base with device nodes, owners and modes from the archive.
    let base = user_bundle.join("debian-minimal-0.1.0-rootfs.tar.zst");
    let listing = Command::new("tar").args(["--numeric-owner", "-tvf"]).arg(&base).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().any(|line| line.starts_with("crw-rw-rw- 0/0") && line.ends_with(" dev/null")),
        "the base has /dev/null:\n{listing}"
    );
    let tarball_recipe = place.recipes.join("from-tarball.yaml");
    std::fs::write(
        &tarball_recipe,
        format!("rootsmith: 1\nname: from-tarball\nversion: 1.0.0\nstages:\n  - tarball: {{ path: {} }}\n  - run: {{ sh: \"chown _apt /etc/motd && echo ok > /etc/from-tarball\" }}\noutputs:\n  oci: {{ layout: image }}\n", base.display()),
    )
    .unwrap();
    std::os::unix::fs::lchown(&tarball_recipe, Some(user.uid), Some(user.gid)).unwrap();
    let user_tarball = place.build("user", &user, &tarball_recipe);
    let root_tarball = place.build("root", &user, &tarball_recipe);
    // The manifests (in the sums) name the OCI image's digest too.
    assert_eq!(
        sums(&user_tarball),
        sums(&root_tarball),
        "the tarball recipe's bundle differs between the user and root"
    );

    // `oci` and `release` bases: that OCI image, and the bundle just published.
    // The release one also gives a file a capability (setcap in the chroot).
    let capability = "  - packages: { install: [libcap2-bin] }\n  - run: { sh: \"cp /bin/true /usr/local/bin/capped && setcap cap_net_raw+ep /usr/local/bin/capped\" }\n";
    for (name, base, more) in [
        ("from-oci", "oci: { layout: image, ref: 1.0.0 }", ""),
        ("from-release", "release: { name: from-tarball, version: 1.0.0 }", capability),
    ] {
        let recipe = place.recipes.join(format!("{name}.yaml"));
        std::fs::write(&recipe, format!("rootsmith: 1\nname: {name}\nversion: 1.0.0\nstages:\n  - {base}\n  - run: {{ sh: \"chown 4242:4243 /etc/from-tarball\" }}\n{more}")).unwrap();
        std::os::unix::fs::lchown(&recipe, Some(user.uid), Some(user.gid)).unwrap();
        let user_bundle = place.build("user", &user, &recipe);
        let root_bundle = place.build("root", &user, &recipe);
        assert_eq!(sums(&user_bundle), sums(&root_bundle), "{name}: the user's bundle differs from root's");
        if !more.is_empty() {
            let tarball = user_bundle.join(format!("{name}-1.0.0-rootfs.tar.zst"));
            let listing =
                Command::new("tar").args(["--xattrs", "--xattrs-include=*", "-tvvf"]).arg(&tarball).output().unwrap();
            let unpacked = Command::new("zstd").args(["-dc"]).arg(&tarball).output().unwrap();
            let needle: &[u8] = b"SCHILY.xattr.security.capability";
            let capability_record = unpacked.stdout.windows(needle.len()).any(|w| w == needle);
            assert!(
                capability_record,
                "the user's rootfs tarball carries no file capability:\n{}",
                String::from_utf8_lossy(&listing.stdout)
            );
        }
    }

    // The other commands that make trees.
    let recipe_arg = recipe.to_str().unwrap();
    let (code, stdout, stderr) = run(&mut place.rootsmith("user", &user, &["plan", "--fast", recipe_arg]));
    assert_eq!(code, 0, "plan as the user: {stderr}");
    assert!(stdout.contains(" hit") && !stdout.contains(" miss"), "the user's plan finds everything cached:\n{stdout}");
    let (code, stdout, stderr) =
        run(&mut place.rootsmith("user", &user, &["shell", recipe_arg, "--", "cat", "/etc/hostname"]));
    assert_eq!((code, stdout.trim()), (0, "debian-minimal"), "shell as the user: {stderr}");
    let (code, _, stderr) = run(&mut place.rootsmith("user", &user, &["lock", recipe_arg]));
    assert_eq!(code, 0, "lock as the user: {stderr}");
    assert!(recipe.with_extension("lock").is_file(), "lock wrote no lock file");
    let mut verify = place.bare("user", &user);
    verify.args(["release", "verify"]).arg(&user_bundle).arg("--rebuild").arg(&recipe);
    let (code, stdout, stderr) = run(&mut verify);
    assert_eq!(code, 0, "release verify --rebuild as the user:\n{stdout}{stderr}");
    assert_eq!(mount_table(), mounts_before, "the user's commands changed the host's mount table");
}

/// An arm64 recipe built by the user on this amd64 host: its `run` stage runs
/// under QEMU user-mode emulation inside the user's namespace (binfmt's
/// `F` flag opened the interpreter when it was enabled), and the bundle is
/// root's, byte for byte. The tree's /bin/sh is a static aarch64 program
/// (aarch64-linux-gnu-gcc) that writes the machine `uname` reports.
#[test]
fn a_user_builds_for_arm64_under_emulation() {
    if !needs_root("a_user_builds_for_arm64_under_emulation") {
        return;
    }
    let user = ordinary_user();
    let place = Place::new(&user);
    let tree = place.path("arm64/tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    let source = place.path("arm64/machine.c");
    std::fs::write(&source, "#include <sys/utsname.h>\n#include <fcntl.h>\n#include <string.h>\n#include <unistd.h>\nint main(void) { struct utsname u; uname(&u); int fd = open(\"/etc/machine\", O_WRONLY | O_CREAT | O_TRUNC, 0644); if (fd < 0) return 1; write(fd, u.machine, strlen(u.machine)); write(fd, \"\\n\", 1); return close(fd); }\n").unwrap();
    let status = Command::new("aarch64-linux-gnu-gcc")
        .args(["-static", "-Os", "-o"])
        .arg(tree.join("bin/sh"))
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success(), "aarch64-linux-gnu-gcc -static (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross)");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .args(["-cf"])
        .arg(place.path("arm64/base.tar"))
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let recipe = place.path("arm64/emu.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: emu\nversion: 1.0.0\narch: arm64\nstages:\n  - tarball: { path: base.tar }\n  - run: { sh: \"uname -m > /etc/machine\" }\n").unwrap();
    for entry in walkdir::WalkDir::new(place.path("arm64")) {
        std::os::unix::fs::lchown(entry.unwrap().path(), Some(user.uid), Some(user.gid)).unwrap();
    }
    let user_bundle = place.build("user", &user, &recipe);
    let root_bundle = place.build("root", &user, &recipe);
    assert_eq!(sums(&user_bundle), sums(&root_bundle), "the user's arm64 bundle differs from root's");
    let machine = Command::new("tar")
        .args(["--zstd", "-xOf"])
        .arg(user_bundle.join("emu-1.0.0-rootfs.tar.zst"))
        .arg("etc/machine")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&machine.stdout), "aarch64\n", "the run stage ran as aarch64");
}

/// Processes of the user or of its subordinate ids that belong to the build
/// under `place` (its command line or its root is there: other tests build
/// as the same user at the same time).
fn processes_of(user: &User, place: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let Some(uid) = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if uid == user.uid || (USER_RANGE.0..=USER_RANGE.1).contains(&uid) {
            let cmdline = String::from_utf8_lossy(&std::fs::read(entry.path().join("cmdline")).unwrap_or_default())
                .replace('\0', " ");
            let root = std::fs::read_link(entry.path().join("root")).unwrap_or_default();
            if cmdline.contains(place.to_str().unwrap()) || root.starts_with(place) {
                found.push(format!("{uid}: {cmdline}"));
            }
        }
    }
    found
}

/// SIGKILL to a user's build in the middle of a `run` stage: no process of
/// it is left, nothing is mounted, the cache verifies, and the next build
/// (which sweeps the dead build's work tree, files of subordinate ids and all)
/// succeeds.
#[test]
fn a_killed_user_build_leaves_nothing_behind() {
    if !needs_root("a_killed_user_build_leaves_nothing_behind") {
        return;
    }
    let user = ordinary_user();
    let place = Place::new(&user);
    let base = place.path("base");
    busybox_tree(&base, &["sh", "sleep", "touch", "chown"]);
    let recipe = place.path("base/sleeper.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: sleeper\nversion: 1.0.0\nvars:\n  pause: \"0\"\nstages:\n  - tarball: { path: base.tar }\n  - run: { sh: \"chown 1234:5678 /etc; sleep $PAUSE; touch /etc/done\", env: { PAUSE: \"${pause}\" } }\n").unwrap();
    for entry in walkdir::WalkDir::new(&base) {
        std::os::unix::fs::lchown(entry.unwrap().path(), Some(user.uid), Some(user.gid)).unwrap();
    }
    let mounts_before = mount_table();
    let mut command = place.rootsmith("user", &user, &["build", "--fast", "--set", "pause=381", "--out"]);
    let mut child =
        command.arg(place.path("user/out")).arg(&recipe).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let mut stderr = child.stderr.take().unwrap();
    read_until(&mut stderr, "run (run): building", Duration::from_secs(120));
    while !processes_of(&user, place.dir.path()).iter().any(|line| line.contains("sleep 381")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the stage's sleep never started: {:?}",
            processes_of(&user, place.dir.path())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_of(&user, place.dir.path()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes of the killed build are left: {:?}",
            processes_of(&user, place.dir.path())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mount_table(), mounts_before, "the killed build left mounts");
    let (code, stdout, stderr) = run(&mut place.rootsmith("user", &user, &["cache", "verify"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let bundle = place.build("user", &user, &recipe);
    assert!(bundle.join("SHA256SUMS").is_file());
    let tmp = place.path("user/cache/v1/tmp");
    assert!(std::fs::read_dir(&tmp).unwrap().next().is_none(), "work dirs were left in {}", tmp.display());
}

/// Before anything runs: a user without a subordinate range is told which
/// file and which `usermod` line, a missing newuidmap names `uidmap`, a cache
/// directory the user cannot write is named, and `--privileges root` as a
/// user is refused. None of them leaves a stage in the cache.
#[test]
fn what_a_user_build_needs_is_named_before_anything_runs() {
    if !needs_root("what_a_user_build_needs_is_named_before_anything_runs") {
        return;
    }
    let user = ordinary_user();
    let place = Place::new(&user);
    let recipe = place.recipes.join("debian-minimal.yaml");
    let recipe_arg = recipe.to_str().unwrap();

    // `nobody` has no range.
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let open = place.path("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut command = Command::new(&place.bin);
    command
        .args(["build", "--cache"])
        .arg(open.join("cache"))
        .arg("--out")
        .arg(open.join("out"))
        .arg(&recipe)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &open)
        // The place is the test user's: a shared directory for nobody, on purpose.
        .env("ROOTSMITH_SHARED_DIRS", "1")
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw());
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("for nobody in /etc/subuid"), "{stderr}");
    assert!(stderr.contains("usermod --add-subuids ") && stderr.contains(" nobody"), "{stderr}");
    assert!(stderr.contains("nothing was built"), "{stderr}");
    assert!(
        !open.join("cache/v1/stages").exists()
            || std::fs::read_dir(open.join("cache/v1/stages")).unwrap().next().is_none(),
        "a stage was cached"
    );

    // No newuidmap on PATH.
    let mut command = place.rootsmith("user", &user, &["build", "--out"]);
    command.arg(place.path("user/out")).arg(&recipe).env("PATH", place.path("bin"));
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("`newuidmap`") && stderr.contains("apt-get install uidmap"), "{stderr}");

    // A cache directory of root's.
    let mut command = place.bare("user", &user);
    command
        .args(["build", "--cache"])
        .arg(place.path("root/cache"))
        .arg("--out")
        .arg(place.path("user/out"))
        .arg(&recipe);
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the cache directory {} cannot be written by uid {}",
            place.path("root/cache").display(),
            user.uid
        )),
        "{stderr}"
    );

    // Root only, as the user.
    let (code, _, stderr) = run(&mut place.rootsmith("user", &user, &["build", "--privileges", "root", recipe_arg]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--privileges root, but this is uid"), "{stderr}");
}

/// A tarball entry owned by an id the user's namespace does not map (uid
/// 70000, past the 65536 ids mapped) is named with its owner and the map,
/// and what to do; nothing is cached.
#[test]
fn an_entry_owned_by_an_unmapped_id_is_named_with_the_map() {
    if !needs_root("an_entry_owned_by_an_unmapped_id_is_named_with_the_map") {
        return;
    }
    let user = ordinary_user();
    let place = Place::new(&user);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_uid(70000);
    header.set_gid(70000);
    header.set_size(3);
    builder.append_data(&mut header, "etc/far-away", &b"hi\n"[..]).unwrap();
    std::fs::write(place.path("user/far.tar"), builder.into_inner().unwrap()).unwrap();
    let recipe = place.path("user/far.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: far\nversion: 1.0.0\nstages:\n  - tarball: { path: far.tar }\n")
        .unwrap();
    for path in [place.path("user/far.tar"), recipe.clone()] {
        std::os::unix::fs::lchown(&path, Some(user.uid), Some(user.gid)).unwrap();
    }
    let mut command = place.rootsmith("user", &user, &["build", "--fast", "--out"]);
    let (code, _, stderr) = run(command.arg(place.path("user/out")).arg(&recipe));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("etc/far-away")
            && stderr.contains("owned by uid 70000")
            && stderr.contains("does not map (uids 0-"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: build as root"), "{stderr}");
    assert!(!stderr.contains("os error 22"), "{stderr}");
}
