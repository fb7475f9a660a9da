//! Kernel stages for real: linux-source-6.1 from apt, tinyconfig + fragments,
//! `make bindeb-pkg` with ccache, a QEMU boot of the result, and a packaged
//! kernel. Needs root and the Debian archive (CI has both); a cold kernel
//! build takes several minutes, so one test walks the whole life on one cache.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rootsmith::lab::qemu::{boot_until, choose_accel, Accel, DirectBoot};

const MARKER: &str = "ROOTSMITH-KERNEL-BOOT-MARKER";

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab { dir: tempfile::tempdir().unwrap() };
        copy_tree(&repo().join("fixtures/kernel"), &lab.path("fragments"));
        std::fs::create_dir_all(lab.path("base/etc")).unwrap();
        std::fs::write(lab.path("base/etc/motd"), "kernel test\n").unwrap();
        let status = std::process::Command::new("tar")
            .arg("-C")
            .arg(lab.path("base"))
            .arg("-cf")
            .arg(lab.path("base.tar"))
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        lab
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// A recipe with a tarball base and the given kernel stages (YAML items).
    fn recipe(&self, file: &str, kernels: &str) -> PathBuf {
        let path = self.path(file);
        std::fs::write(&path, format!("rootsmith: 1\nname: ktest\nversion: 1.0.0\nsource_date_epoch: 1700000000\nstages:\n  - tarball: {{ path: base.tar }}\n{kernels}")).unwrap();
        path
    }

    fn build(&self, recipe: &Path, version: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
        let mut command = rootsmith();
        command
            .arg("build")
            .arg("--cache")
            .arg(self.path("cache"))
            .arg("--out")
            .arg(self.path("out"))
            .args(["--json", "--fast", "--version", version])
            .args(extra)
            .arg(recipe);
        let (code, stdout, stderr) = run(&mut command);
        (code, serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null), stderr)
    }

    /// The cache's record of a built stage (with its kernel products).
    fn stage_record(&self, key: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path(&format!("cache/v1/stages/{key}.json"))).unwrap()).unwrap()
    }
}

fn kernel_stage(name: &str, fragments: &[&str], localversion: &str) -> String {
    kernel_stage_with(name, fragments, localversion, "")
}

/// A kernel stage item; `extra` adds lines such as `install: true`.
fn kernel_stage_with(name: &str, fragments: &[&str], localversion: &str, extra: &str) -> String {
    let fragments: Vec<String> = fragments.iter().map(|f| format!("fragments/{f}")).collect();
    format!("  - kernel:\n      name: {name}\n      source: {{ package: linux-source-6.1 }}\n      config: {{ base: tinyconfig, fragments: [{}] }}\n      localversion: \"{localversion}\"\n{extra}", fragments.join(", "))
}

/// A tiny initramfs: a static `/init` that prints the marker, and `/dev/console`.
fn vmlinuz(summary: &serde_json::Value, kernel: &str) -> PathBuf {
    PathBuf::from(summary["bundle"].as_str().unwrap())
        .join(format!("ktest-{}-{kernel}-vmlinuz", summary["version"].as_str().unwrap()))
}

fn kernel_outcome<'a>(summary: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    summary["stages"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

#[test]
fn kernel_from_source_lifecycle() {
    if !needs_root("kernel_from_source_lifecycle") {
        return;
    }
    let lab = Lab::new();

    // A fragment option the kernel drops is an error naming it and its dependencies.
    let recipe = lab.recipe("dropped.yaml", &kernel_stage("tiny", &["boot.config", "dropped.config"], "-rootsmith"));
    let (code, _, stderr) = lab.build(&recipe, "0.0.1", &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("CONFIG_E1000=y (from fragments/dropped.config) ended up not set"), "{stderr}");
    assert!(stderr.contains("it depends on") && stderr.contains("PCI"), "{stderr}");

    // Cold build: compiles (ccache misses), publishes vmlinuz, deb and a manifest entry.
    let recipe = lab.recipe("tiny.yaml", &kernel_stage("tiny", &["boot.config"], "-rootsmith"));
    let (code, cold, stderr) = lab.build(&recipe, "1.0.0", &[]);
    assert_eq!(code, 0, "{stderr}");
    let cold_stage = kernel_outcome(&cold, "tiny");
    assert_eq!(cold_stage["state"], "built");
    let cold_record = lab.stage_record(cold_stage["key"].as_str().unwrap());
    assert_eq!(cold_record["kernel"]["compiled"], true);
    assert!(cold_record["kernel"]["ccache_misses"].as_u64().unwrap() > 100, "{}", cold_record["kernel"]);
    let release = cold_record["kernel"]["release"].as_str().unwrap().to_string();
    assert!(release.ends_with("-rootsmith"), "{release}");
    let bundle = PathBuf::from(cold["bundle"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kernels"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["kernels"][0]["release"], release.as_str());
    let deb = manifest["kernels"][0]["debs"][0].as_str().unwrap();
    assert!(deb.starts_with(&format!("kernel/linux-image-{release}_")), "{deb}");
    assert!(bundle.join(deb).is_file());
    let check = std::process::Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(&bundle)
        .status()
        .unwrap();
    assert!(check.success());

    // The bzImage boots under QEMU to the test initramfs's marker.
    let initramfs = marker_initramfs(lab.dir.path(), "gcc", MARKER);
    let mut boot = DirectBoot {
        kernel: vmlinuz(&cold, "tiny"),
        initrd: Some(initramfs),
        cmdline: "console=ttyS0 panic=-1".into(),
        memory_mib: 256,
        accel: Accel::Tcg,
    };
    boot.accel = choose_accel(&boot, MARKER, Duration::from_secs(20));
    let result = boot_until(&boot.argv(), MARKER, Duration::from_secs(180)).unwrap();
    assert!(result.found, "no marker ({:?}); console:\n{}", boot.accel, result.console);
    assert!(result.console.contains(&release), "the console does not show release {release}");

    // A config change misses the stage but compiles little (kbuild's own
    // tracking plus ccache), faster than the cold build.
    let recipe = lab.recipe("ikconfig.yaml", &kernel_stage("tiny", &["boot.config", "ikconfig.config"], "-rootsmith"));
    let (code, changed, stderr) = lab.build(&recipe, "1.1.0", &[]);
    assert_eq!(code, 0, "{stderr}");
    let changed_stage = kernel_outcome(&changed, "tiny");
    let changed_record = lab.stage_record(changed_stage["key"].as_str().unwrap());
    assert_eq!(changed_record["kernel"]["compiled"], true);
    let hits = changed_record["kernel"]["ccache_hits"].as_u64().unwrap();
    assert!(hits > 0, "ccache hits after a config change: {hits}");
    let (cold_seconds, warm_seconds) =
        (cold_stage["seconds"].as_f64().unwrap(), changed_stage["seconds"].as_f64().unwrap());
    assert!(warm_seconds < cold_seconds, "warm {warm_seconds}s is not faster than cold {cold_seconds}s");
    assert_ne!(changed_record["kernel"]["config_sha256"], cold_record["kernel"]["config_sha256"]);

    // release diff between the two names the kernel option, and nothing else changed but the kernel stage.
    let mut command = rootsmith();
    command.args(["release", "diff", "ktest", "1.0.0", "1.1.0", "--json", "--out"]).arg(lab.path("out"));
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let diff: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let options = diff["kernels"][0]["options"].as_object().unwrap();
    assert_eq!(options["CONFIG_IKCONFIG"], serde_json::json!(["n", "y"]), "{diff}");
    // IKCONFIG_PROC is IKCONFIG's own sub-option, which olddefconfig may turn on with it.
    assert!(options.keys().all(|key| key == "CONFIG_IKCONFIG" || key == "CONFIG_IKCONFIG_PROC"), "{diff}");
    assert_eq!(diff["stages"].as_object().unwrap().keys().collect::<Vec<_>>(), ["tiny"], "{diff}");
    assert_eq!(diff["packages_added"], serde_json::json!({}));

    // Same inputs, built again from nothing but ccache: the same bzImage bytes.
    let products = cold_record["kernel"]["products"].as_str().unwrap();
    std::fs::remove_dir_all(lab.path(&format!("cache/v1/kernels/{products}"))).unwrap();
    let recipe = lab.recipe("tiny.yaml", &kernel_stage("tiny", &["boot.config"], "-rootsmith"));
    let (code, again, stderr) = lab.build(&recipe, "1.0.1", &["--rebuild", "tiny"]);
    assert_eq!(code, 0, "{stderr}");
    let again_record = lab.stage_record(kernel_outcome(&again, "tiny")["key"].as_str().unwrap());
    assert_eq!(again_record["kernel"]["compiled"], true);
    assert_eq!(
        sha256(&vmlinuz(&again, "tiny")),
        sha256(&vmlinuz(&cold, "tiny")),
        "two builds of the same inputs gave different bzImages"
    );
    let deb = |summary: &serde_json::Value| {
        PathBuf::from(summary["bundle"].as_str().unwrap()).join(manifest["kernels"][0]["debs"][0].as_str().unwrap())
    };
    assert_eq!(
        sha256(&deb(&again)),
        sha256(&deb(&cold)),
        "two builds of the same inputs gave different kernel packages"
    );

    // An ordinary user (in a user namespace) builds the same bundle bytes.
    user_builds_the_same_kernel_bundle(&lab, &PathBuf::from(cold["bundle"].as_str().unwrap()));

    // Two kernels on a Debian base, one installed into the tree, one patched:
    // two vmlinuz files and two manifest entries.
    let two = format!(
        "{}{}",
        kernel_stage_with("small", &["boot.config"], "-small", "      install: true\n"),
        kernel_stage_with(
            "patched",
            &["boot.config", "ikconfig.config"],
            "-patched",
            "      patches: [fragments/banner.patch]\n"
        )
    );
    let recipe = lab.path("two.yaml");
    std::fs::write(&recipe, format!("rootsmith: 1\nname: ktest\nversion: 1.0.0\nsource_date_epoch: 1700000000\nstages:\n  - debootstrap: {{ suite: bookworm }}\n{two}")).unwrap();
    let (code, both, stderr) = lab.build(&recipe, "2.0.0", &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(vmlinuz(&both, "small").is_file() && vmlinuz(&both, "patched").is_file());
    let bundle = PathBuf::from(both["bundle"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let releases: Vec<String> =
        manifest["kernels"].as_array().unwrap().iter().map(|k| k["release"].as_str().unwrap().to_string()).collect();
    assert_eq!(releases.len(), 2);
    assert!(releases[0].ends_with("-small") && releases[1].ends_with("-patched"), "{releases:?}");
    assert!(bundle.join("kernel/small-config").is_file() && bundle.join("kernel/patched-System.map").is_file());
    let packages = std::fs::read_to_string(bundle.join("packages.txt")).unwrap();
    assert!(
        packages.lines().any(|l| l.starts_with(&format!("linux-image-{}\t", releases[0]))),
        "the installed kernel is not in the tree's dpkg status"
    );
    // The patch is in the kernel: it prints its line at boot.
    let patched = DirectBoot { kernel: vmlinuz(&both, "patched"), ..boot.clone() };
    let result = boot_until(&patched.argv(), MARKER, Duration::from_secs(180)).unwrap();
    assert!(result.found && result.console.contains("rootsmith-patched kernel"), "console:\n{}", result.console);
}

/// The cold build's recipe built again by an ordinary user on a cache of its
/// own: the same SHA256SUMS as root's bundle (make and the .deb packaging
/// run as uid 0 of the user's namespace).
fn user_builds_the_same_kernel_bundle(lab: &Lab, root_bundle: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let user = ordinary_user();
    let place = tempfile::Builder::new().prefix("rootsmith-kernel-user-").tempdir().unwrap();
    std::fs::set_permissions(place.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = install_for_users(place.path());
    copy_tree(&lab.path("fragments"), &place.path().join("fragments"));
    std::fs::copy(lab.path("base.tar"), place.path().join("base.tar")).unwrap();
    std::fs::copy(lab.path("tiny.yaml"), place.path().join("tiny.yaml")).unwrap();
    for entry in walkdir::WalkDir::new(place.path()) {
        std::os::unix::fs::lchown(entry.unwrap().path(), Some(user.uid), Some(user.gid)).unwrap();
    }
    let mut command = std::process::Command::new(&bin);
    user.command(&mut command);
    command.current_dir(place.path()).args([
        "build",
        "--json",
        "--fast",
        "--version",
        "1.0.0",
        "--cache",
        "cache",
        "--out",
        "out",
        "tiny.yaml",
    ]);
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "the user's kernel build failed:\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let bundle = place.path().join(summary["bundle"].as_str().unwrap());
    let sums = |dir: &Path| std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert_eq!(sums(&bundle), sums(root_bundle), "the user's kernel bundle differs from root's");
}

/// `kernel: { package: linux-image-amd64 }`: installed in the tree with apt, no
/// initramfs built in the chroot, its vmlinuz published, its modules kept.
#[test]
fn packaged_kernel_from_the_rootfs() {
    if !needs_root("packaged_kernel_from_the_rootfs") {
        return;
    }
    let lab = Lab::new();
    let recipe = lab.path("packaged.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: ktest\nversion: 1.0.0\nstages:\n  - debootstrap: { suite: bookworm }\n  - kernel: { name: debian, package: linux-image-amd64 }\n").unwrap();
    let (code, summary, stderr) = lab.build(&recipe, "1.0.0", &[]);
    assert_eq!(code, 0, "{stderr}");
    let kernel = vmlinuz(&summary, "debian");
    let header = std::fs::read(&kernel).unwrap();
    assert_eq!(&header[0x202..0x206], b"HdrS", "not a bzImage");
    let bundle = PathBuf::from(summary["bundle"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let release = manifest["kernels"][0]["release"].as_str().unwrap().to_string();
    assert!(release.ends_with("-amd64"), "{release}");
    let listing = std::process::Command::new("tar")
        .args(["--quoting-style=literal", "-tf"])
        .arg(bundle.join("ktest-1.0.0-rootfs.tar.zst"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().any(|l| l == format!("lib/modules/{release}/modules.dep")
            || l == format!("usr/lib/modules/{release}/modules.dep")),
        "no modules.dep for {release}"
    );
    assert!(!listing.lines().any(|l| l.starts_with("boot/initrd.img")), "an initramfs was built inside the chroot");
    assert!(!listing.lines().any(|l| l == "usr/sbin/update-initramfs.distrib"), "the diversion was left behind");
}
