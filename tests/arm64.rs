//! arm64 bundles from this (amd64) host: `recipes/debian-arm64.yaml`
//! (minbase, a package, Debian's packaged arm64 kernel, a run stage that
//! checks it runs as aarch64) built under QEMU user-mode emulation, then
//! booted in qemu-system-aarch64 (`virt`, TCG) with the rootfs appended and
//! over HTTP to its marker; a rootfs.img with a flipped byte is refused. One
//! recipe built for amd64 and with `--arch arm64` beside it; a tinyconfig
//! arm64 kernel cross-compiled and booted to a marker.
//! Needs root, the package archive, qemu-user-static, binfmt-support,
//! arch-test, qemu-system-arm and gcc-aarch64-linux-gnu (CI has them all).
//! As root, rootsmith mounts binfmt_misc and enables `qemu-aarch64` itself
//! when they are not: the test leaves them enabled, which only lets arm64
//! programs run. The emulation check's every gap and its error are unit
//! tests of `rootsmith::arch` (a fake root directory).

mod common;

use std::time::Instant;

use common::*;

const MARKER: &str = "debian-arm64: rootfs is up on aarch64";

/// The binfmt_misc entry of arm64 programs, as the kernel shows it.
const ENTRY: &str = "/proc/sys/fs/binfmt_misc/qemu-aarch64";

#[test]
fn arm64_bundle_builds_under_emulation_and_boots_in_qemu_system_aarch64() {
    if !needs_root("arm64_bundle_builds_under_emulation_and_boots_in_qemu_system_aarch64") {
        return;
    }
    let was_enabled = std::fs::read_to_string(ENTRY).is_ok_and(|entry| entry.starts_with("enabled"));
    let dir = tempfile::tempdir().unwrap();
    let (cache, out) = (dir.path().join("cache"), dir.path().join("out"));
    let started = Instant::now();
    let mut command = rootsmith();
    command
        .arg("build")
        .arg("--fast")
        .arg("--cache")
        .arg(&cache)
        .arg("--out")
        .arg(&out)
        .arg(repo().join("recipes/debian-arm64.yaml"))
        .env_remove("SOURCE_DATE_EPOCH");
    let (code, _, stderr) = run(&mut command);
    eprintln!("arm64 build: {:.0} s\n{stderr}", started.elapsed().as_secs_f64());
    assert_eq!(code, 0, "{stderr}");
    if !was_enabled {
        assert!(
            stderr.contains("(as root) to enable QEMU user-mode emulation"),
            "rootsmith says what it enabled:\n{stderr}"
        );
    }
    assert!(std::fs::read_to_string(ENTRY).unwrap().starts_with("enabled"));

    let bundle = out.join("debian-arm64/0.1.0");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["arch"], "arm64");
    let release = manifest["kernels"][0]["release"].as_str().unwrap();
    assert!(release.ends_with("-arm64"), "{release}");
    // The tree's packages are arm64's, and the kernel's modules are arm64 ELF files.
    let packages = std::fs::read_to_string(bundle.join("packages.txt")).unwrap();
    assert!(packages.lines().any(|line| line.starts_with("iproute2\t") && line.ends_with("\tarm64")), "{packages}");
    let modules = manifest["boot"]["modules"][release].as_array().unwrap();
    for needed in ["/squashfs.ko", "/overlay.ko", "/virtio_net.ko"] {
        assert!(modules.iter().any(|m| m.as_str().unwrap().ends_with(needed)), "{needed} in {modules:?}");
    }
    // The packaged kernel's device trees, as one archive beside it.
    assert_eq!(manifest["kernels"][0]["device_trees"], "kernel/debian-dtbs.tar");
    let trees = device_trees_in(&bundle.join("kernel/debian-dtbs.tar"));
    assert!(trees.len() > 100 && trees.iter().any(|t| t == "broadcom/bcm2711-rpi-4-b.dtb"), "{trees:?}");
    assert!(std::fs::read_to_string(bundle.join("SHA256SUMS")).unwrap().contains("  kernel/debian-dtbs.tar\n"));
    // Menus for the loaders that boot arm64: iPXE and GRUB arm64-efi, no PXELINUX.
    assert!(bundle.join("boot.ipxe").is_file());
    assert!(std::fs::read_to_string(bundle.join("grub.cfg")).unwrap().contains("GRUB arm64-efi"));
    assert!(!bundle.join("pxelinux.cfg").exists());
    let (code, listing, _) = run(rootsmith().args(["release", "ls", "--out"]).arg(&out));
    assert_eq!(code, 0);
    assert!(listing.lines().any(|line| line.starts_with("debian-arm64") && line.contains(" arm64 ")), "{listing}");

    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    for via in ["appended", "http"] {
        let started = Instant::now();
        let (code, _, console) = boot_test(&bundle, via, &[], &logs.join(format!("{via}.log")));
        eprintln!("arm64 boot --via {via}: {:.0} s", started.elapsed().as_secs_f64());
        assert_eq!(code, 0, "--via {via}:\n{console}");
        assert!(console.contains(MARKER) && console.contains("rootsmith-init: switching root"), "{console}");
        assert!(console.contains("Machine model: linux,dummy-virt"), "a virt machine booted:\n{console}");
        if via == "http" {
            assert!(console.contains("rootsmith-init: rootfs.img verified"), "{console}");
        }
    }
    a_flipped_byte_is_refused(&bundle, dir.path(), &logs);

    // The network boot of a virt machine needs UEFI firmware boot-test does not set up: said, not tried.
    let (code, _, stderr) = run(rootsmith().args(["boot-test", "--via", "pxe"]).arg(&bundle));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("boot-test boots it --via appended or --via http"), "{stderr}");
}

/// The entries of a device-tree archive, checked to be plain `.dtb`/`.dtbo` files owned by 0.
fn device_trees_in(archive: &std::path::Path) -> Vec<String> {
    let listing = std::process::Command::new("tar").arg("-tvf").arg(archive).output().unwrap();
    assert!(listing.status.success(), "tar -tvf {}", archive.display());
    let text = String::from_utf8(listing.stdout).unwrap();
    text.lines()
        .map(|line| {
            assert!(line.starts_with("-rw-r--r-- 0/0 "), "{line}");
            let name = line.rsplit(' ').next().unwrap().to_string();
            assert!(name.ends_with(".dtb") || name.ends_with(".dtbo"), "{line}");
            name
        })
        .collect()
}

/// `--arch` and `--set arch=` build one recipe for arm64 beside its amd64
/// bundle, as NAME-arm64, which `release verify --rebuild` rebuilds for arm64.
/// A tarball base runs nothing in the tree, so this needs no emulation.
#[test]
fn one_recipe_builds_for_both_architectures_into_separate_bundles() {
    if !needs_root("one_recipe_builds_for_both_architectures_into_separate_bundles") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tree/etc")).unwrap();
    std::fs::write(dir.path().join("tree/etc/hello"), "hello\n").unwrap();
    tar_base(dir.path());
    let recipe = dir.path().join("both.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: both\nversion: 1.0.0\nstages:\n  - tarball: { path: base.tar }\n")
        .unwrap();
    let (cache, out) = (dir.path().join("cache"), dir.path().join("out"));
    for extra in [&[][..], &["--arch", "arm64"][..], &["--set", "arch=arm64"][..]] {
        let (code, _, stderr) =
            run(rootsmith().arg("build").arg("--cache").arg(&cache).arg("--out").arg(&out).arg(&recipe).args(extra));
        assert_eq!(code, 0, "{extra:?}: {stderr}");
    }
    for (name, arch) in [("both", "amd64"), ("both-arm64", "arm64")] {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(name).join("1.0.0/manifest.json")).unwrap()).unwrap();
        assert_eq!((manifest["name"].as_str(), manifest["arch"].as_str()), (Some(name), Some(arch)));
    }
    let (code, stdout, stderr) =
        run(rootsmith().args(["release", "verify"]).arg(out.join("both-arm64/1.0.0")).arg("--rebuild").arg(&recipe));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("ok     rebuild"), "{stdout}");
    // An arm64 recipe starts from the arm64 release, a `files` stage on top;
    // the amd64 release is refused as its base, saying why.
    std::fs::create_dir_all(dir.path().join("extra/etc")).unwrap();
    std::fs::write(dir.path().join("extra/etc/on-top"), "arm64 development\n").unwrap();
    let on_top = dir.path().join("on-top.yaml");
    for (base, ok) in [("both-arm64", true), ("both", false)] {
        std::fs::write(&on_top, format!("rootsmith: 1\nname: on-top\nversion: 0.1.0\narch: arm64\nstages:\n  - release: {{ name: {base}, version: 1.0.0 }}\n  - files: {{ src: extra, dest: / }}\n")).unwrap();
        let (code, _, stderr) =
            run(rootsmith().arg("build").arg("--fast").arg("--cache").arg(&cache).arg("--out").arg(&out).arg(&on_top));
        if ok {
            assert_eq!(code, 0, "{stderr}");
            let listing = std::process::Command::new("tar")
                .arg("--zstd")
                .arg("-tf")
                .arg(out.join("on-top/0.1.0/on-top-0.1.0-rootfs.tar.zst"))
                .output()
                .unwrap();
            let listing = String::from_utf8_lossy(&listing.stdout);
            assert!(listing.contains("etc/hello") && listing.contains("etc/on-top"), "{listing}");
        } else {
            assert_ne!(code, 0);
            assert!(stderr.contains("amd64") && stderr.contains("arm64"), "{stderr}");
        }
    }
    let (code, _, stderr) = run(rootsmith().args(["check", "--arch", "armhf"]).arg(&recipe));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("[possible values: amd64, arm64]"), "{stderr}");
}

/// A kernel built from source for arm64 on this amd64 host is cross-compiled
/// (`CROSS_COMPILE=aarch64-linux-gnu-`, ccache, `make bindeb-pkg`): an arm64
/// tinyconfig with `fixtures/kernel/arm64-virt.config` gives an `Image` and
/// an arm64 .deb and the device trees of the platform it enables, and boots
/// on QEMU's virt machine to an initramfs's marker.
#[test]
fn a_cross_built_arm64_kernel_boots_to_a_marker() {
    if !needs_root("a_cross_built_arm64_kernel_boots_to_a_marker") {
        return;
    }
    const KERNEL_MARKER: &str = "ROOTSMITH-ARM64-KERNEL-MARKER";
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tree/etc")).unwrap();
    std::fs::write(dir.path().join("tree/etc/motd"), "arm64 kernel test\n").unwrap();
    tar_base(dir.path());
    std::fs::copy(repo().join("fixtures/kernel/arm64-virt.config"), dir.path().join("arm64-virt.config")).unwrap();
    // One platform, so that the build makes device trees (Arm's own boards: juno, fvp).
    std::fs::write(dir.path().join("dtbs.config"), "CONFIG_ARCH_VEXPRESS=y\n").unwrap();
    let recipe = dir.path().join("karm.yaml");
    std::fs::write(
        &recipe,
        "rootsmith: 1\nname: karm\nversion: 1.0.0\narch: arm64\nsource_date_epoch: 1700000000\nstages:\n  - tarball: { path: base.tar }\n  - kernel:\n      name: tiny\n      source: { package: linux-source-6.1 }\n      config: { base: tinyconfig, fragments: [arm64-virt.config, dtbs.config] }\n      localversion: \"-rootsmith\"\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let started = Instant::now();
    let (code, _, stderr) = run(rootsmith()
        .arg("build")
        .arg("--fast")
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(&out)
        .arg(&recipe));
    eprintln!("arm64 tinyconfig cross build: {:.0} s", started.elapsed().as_secs_f64());
    assert_eq!(code, 0, "{stderr}");
    let bundle = out.join("karm/1.0.0");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let release = manifest["kernels"][0]["release"].as_str().unwrap().to_string();
    assert!(release.ends_with("-rootsmith"), "{release}");
    let deb = manifest["kernels"][0]["debs"][0].as_str().unwrap();
    assert!(deb.starts_with(&format!("kernel/linux-image-{release}_")) && deb.ends_with("_arm64.deb"), "{deb}");
    // The device trees it built, published beside it.
    assert_eq!(manifest["kernels"][0]["device_trees"], "kernel/tiny-dtbs.tar");
    let trees = device_trees_in(&bundle.join("kernel/tiny-dtbs.tar"));
    assert!(trees.iter().any(|t| t == "arm/juno.dtb"), "{trees:?}");
    // An arm64 Image: "ARM\x64" at byte 56 of its header.
    let vmlinuz = bundle.join("karm-1.0.0-tiny-vmlinuz");
    assert_eq!(&std::fs::read(&vmlinuz).unwrap()[56..60], b"ARM\x64");

    let initramfs = marker_initramfs(dir.path(), "aarch64-linux-gnu-gcc", KERNEL_MARKER);
    let guest = rootsmith::lab::qemu::Guest {
        kernel: Some(vmlinuz),
        initrd: Some(initramfs),
        cmdline: "console=ttyAMA0 panic=-1".into(),
        memory_mib: 256,
        accel: rootsmith::lab::qemu::Accel::Tcg,
        network: None,
        disk: None,
        firmware: None,
    };
    let result =
        rootsmith::lab::qemu::boot_until(&guest.argv_for("arm64"), KERNEL_MARKER, std::time::Duration::from_secs(180))
            .unwrap();
    assert!(result.found, "no marker; console:\n{}", result.console);
    assert!(result.console.contains(&release), "the console does not show release {release}:\n{}", result.console);
}
