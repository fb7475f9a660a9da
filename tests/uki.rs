//! `outputs.uki`: a Debian kernel's Unified Kernel Image, the same bytes on
//! every publish, its sections what they should hold, made anew by a
//! promotion, and booted by OVMF to a rootfs the init fetches from the DHCP
//! server of its lease. Needs root and the Debian archive.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rootsmith::artifact::uki;

fn build(dir: &Path, out: &str, recipe: &Path) -> PathBuf {
    let mut command = rootsmith();
    command
        .arg("build")
        .arg("--fast")
        .arg("--json")
        .arg("--cache")
        .arg(dir.join("cache"))
        .arg("--out")
        .arg(dir.join(out))
        .arg(recipe);
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    PathBuf::from(summary["bundle"].as_str().unwrap())
}

/// `DIR/NAME.yaml`: bookworm minbase and Debian's kernel, with `outputs.uki`
/// set to `uki` (flow YAML). A minbase rootfs has no /sbin/init: the init
/// runs /bin/sh after switching root.
fn uki_recipe(dir: &Path, name: &str, uki: &str) -> PathBuf {
    let recipe = dir.join(format!("{name}.yaml"));
    let text = format!(
        "rootsmith: 1\nname: {name}\nversion: 1.0.0\nsource_date_epoch: 1700000000\nstages:\n  - debootstrap: {{ suite: bookworm }}\n  - kernel: {{ name: debian, package: linux-image-amd64 }}\noutputs:\n  initramfs: {{ modules: [virtio_pci, virtio_net] }}\n  uki: {uki}\nboot:\n  cmdline: \"console=ttyS0 panic=-1 rootsmith.init=/bin/sh rootsmith.on_fail=poweroff\"\n"
    );
    std::fs::write(&recipe, text).unwrap();
    recipe
}

fn section(bytes: &[u8], name: &str) -> Vec<u8> {
    uki::sections(bytes)
        .unwrap()
        .into_iter()
        .find(|(found, _, _)| found == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .2
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_uki_per_kernel_is_deterministic_and_boots_under_ovmf() {
    if !needs_root("a_uki_per_kernel_is_deterministic_and_boots_under_ovmf") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let recipe = uki_recipe(
        dir.path(),
        "ukitest",
        &format!("{{ rootfs_url: \"http://dhcp-server:{port}/ukitest/1.0.0/ukitest-1.0.0-rootfs.img\" }}"),
    );
    let first = build(dir.path(), "out", &recipe);
    // The same cache, another out directory: the UKI is made again, by a later objcopy.
    std::thread::sleep(Duration::from_millis(1100));
    let second = build(dir.path(), "again", &recipe);
    let name = "ukitest-1.0.0-debian.efi";
    let bytes = std::fs::read(first.join(name)).unwrap();
    assert!(bytes == std::fs::read(second.join(name)).unwrap(), "the UKI differs between two publishes");

    // The manifest and SHA256SUMS list it; verify checks it.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kernels"][0]["uki"], name);
    let listed =
        manifest["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == name).expect("the UKI is an artifact");
    assert_eq!(listed["sha256"].as_str().unwrap(), sha256(&first.join(name)));
    assert!(std::fs::read_to_string(first.join("SHA256SUMS")).unwrap().contains(&format!("  {name}\n")));
    let cmdline = format!("console=ttyS0 panic=-1 rootsmith.init=/bin/sh rootsmith.on_fail=poweroff rootsmith.rootfs_url=http://dhcp-server:{port}/ukitest/1.0.0/ukitest-1.0.0-rootfs.img");
    assert_eq!(manifest["boot"]["uki"]["cmdline"], cmdline.as_str());
    let (code, _, stderr) = run(rootsmith().arg("release").arg("verify").arg(&first));
    assert_eq!(code, 0, "{stderr}");
    // boot.ipxe offers it, passing its own command line.
    let menu = std::fs::read_to_string(first.join("boot.ipxe")).unwrap();
    assert!(menu.contains(&format!("\n:debian-uki\nchain --autofree {name} {cmdline}\n")), "{menu}");

    // Its sections: what went in, where objdump says they are.
    assert_eq!(section(&bytes, ".linux"), std::fs::read(first.join("ukitest-1.0.0-debian-vmlinuz")).unwrap());
    assert_eq!(section(&bytes, ".initrd"), std::fs::read(first.join("ukitest-1.0.0-initramfs.img")).unwrap());
    assert_eq!(section(&bytes, ".cmdline"), cmdline.as_bytes());
    let osrel = String::from_utf8(section(&bytes, ".osrel")).unwrap();
    assert!(osrel.contains("NAME=\"ukitest\"\n") && osrel.contains("VERSION=\"1.0.0\"\n"), "{osrel}");
    assert!(osrel.contains(&format!("BUILD_ID={}\n", manifest["rootfs"]["cookie"].as_str().unwrap())), "{osrel}");
    let objdump = std::process::Command::new("objdump").arg("-h").arg(first.join(name)).output().unwrap();
    let listing = String::from_utf8_lossy(&objdump.stdout);
    for wanted in [".osrel", ".cmdline", ".initrd", ".linux"] {
        assert!(
            listing.lines().any(|line| line.split_whitespace().nth(1) == Some(wanted)),
            "{wanted} missing:\n{listing}"
        );
    }

    // A promotion makes it anew: it names its new version, and verify passes.
    let (code, _, stderr) = run(rootsmith()
        .arg("release")
        .arg("promote")
        .arg("--out")
        .arg(dir.path().join("out"))
        .args(["ukitest", "1.0.0", "1.0.1"]));
    assert_eq!(code, 0, "{stderr}");
    let promoted = dir.path().join("out/ukitest/1.0.1");
    let promoted_uki = std::fs::read(promoted.join("ukitest-1.0.1-debian.efi")).unwrap();
    assert!(String::from_utf8(section(&promoted_uki, ".osrel")).unwrap().contains("VERSION=\"1.0.1\"\n"));
    assert_eq!(section(&promoted_uki, ".linux"), section(&bytes, ".linux"));
    // A URL the recipe gave is kept as it is.
    assert_eq!(section(&promoted_uki, ".cmdline"), cmdline.as_bytes());
    let (code, _, stderr) = run(rootsmith().arg("release").arg("verify").arg(&promoted));
    assert_eq!(code, 0, "{stderr}");

    // OVMF (Secure Boot off) starts iPXE, which fetches the UKI from the
    // server boot-test starts where the baked URL points (the DHCP server,
    // 10.0.2.2 to QEMU, this port); the init fetches the rootfs from it.
    let log = dir.path().join("boot.log");
    let (code, stdout, stderr) = boot_test(&first, &["--secure-boot", "off", "--log", log.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["secure_boot"], false, "{stdout}");
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(console.contains("names the DHCP server, 10.0.2.2"), "{console}");
    assert!(!console.contains("Secure boot enabled"), "{console}");
}

/// `rootsmith boot-test BUNDLE --via uki --json` plus `extra`, expecting the
/// init's switch to the rootfs. TCG: about half a minute.
fn boot_test(bundle: &Path, extra: &[&str]) -> (i32, String, String) {
    run(rootsmith()
        .arg("boot-test")
        .arg(bundle)
        .args(["--via", "uki", "--json", "--timeout", "300", "--expect", "rootsmith-init: switching root"])
        .args(extra))
}

/// A copy of the bundle `bundle` under `root` (the same NAME/VERSION path, so
/// the URL baked into its UKI still finds its rootfs) with `change` applied
/// to its file `name`.
fn tampered_copy(bundle: &Path, root: &Path, name: &str, change: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let copy = root.join(bundle.strip_prefix(bundle.parent().unwrap().parent().unwrap()).unwrap());
    copy_tree(bundle, &copy);
    let mut bytes = std::fs::read(copy.join(name)).unwrap();
    change(&mut bytes);
    std::fs::write(copy.join(name), bytes).unwrap();
    copy
}

/// The chain of trust under OVMF with Secure Boot enforced (Debian's snakeoil
/// test key enrolled): firmware → iPXE signed with the test key → the UKI
/// rootsmith signed with it → the rootfs the init verifies. A UKI with one
/// flipped byte, an unsigned UKI and a flipped rootfs byte are each refused.
#[test]
fn a_signed_uki_boots_with_secure_boot_enforced_and_a_changed_one_does_not() {
    if !needs_root("a_signed_uki_boots_with_secure_boot_enforced_and_a_changed_one_does_not") {
        return;
    }
    let (key, cert) = ("/usr/share/ovmf/PkKek-1-snakeoil.key", "/usr/share/ovmf/PkKek-1-snakeoil.pem");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let recipe = uki_recipe(dir.path(), "ukisb", &format!("{{ rootfs_url: \"http://dhcp-server:{port}/ukisb/1.0.0/ukisb-1.0.0-rootfs.img\", sign: {{ key: {key}, cert: {cert} }} }}"));
    // The snakeoil key is encrypted: without its passphrase nothing is built.
    let (code, _, stderr) = run(rootsmith()
        .arg("build")
        .arg("--fast")
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg(&recipe)
        .env_remove("ROOTSMITH_UKI_KEY_PASSPHRASE"));
    assert_ne!(code, 0);
    assert!(stderr.contains("is encrypted: put its passphrase in ROOTSMITH_UKI_KEY_PASSPHRASE"), "{stderr}");
    assert!(!dir.path().join("out/ukisb/1.0.0").exists());
    std::env::set_var("ROOTSMITH_UKI_KEY_PASSPHRASE", "snakeoil");
    let first = build(dir.path(), "out", &recipe);
    std::thread::sleep(Duration::from_millis(1100));
    let second = build(dir.path(), "again", &recipe);
    let name = "ukisb-1.0.0-debian.efi";
    let signed = std::fs::read(first.join(name)).unwrap();
    assert!(signed == std::fs::read(second.join(name)).unwrap(), "two publishes signed with the same key differ");
    // sbsigntool's verifier accepts the signature; the manifest names the certificate.
    let sbverify =
        std::process::Command::new("sbverify").args(["--cert", cert]).arg(first.join(name)).output().unwrap();
    assert!(sbverify.status.success(), "{}", String::from_utf8_lossy(&sbverify.stderr));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.join("manifest.json")).unwrap()).unwrap();
    let fingerprint = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", cert])
        .output()
        .unwrap();
    let fingerprint =
        String::from_utf8_lossy(&fingerprint.stdout).trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(manifest["boot"]["uki"]["signed_cert_sha256"], fingerprint.as_str());
    let (code, _, stderr) = run(rootsmith().arg("release").arg("verify").arg(&first));
    assert_eq!(code, 0, "{stderr}");
    let (code, shown, stderr) =
        run(rootsmith().args(["release", "show", "ukisb", "1.0.0", "--out"]).arg(dir.path().join("out")));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        shown.contains(&format!("UKIs: {name} (signed for Secure Boot, certificate sha256 {fingerprint})")),
        "{shown}"
    );

    // The signed UKI boots with Secure Boot on, and the kernel says so.
    let log = dir.path().join("secure.log");
    let (code, stdout, stderr) = boot_test(&first, &["--log", log.to_str().unwrap()]);
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 0, "{stderr}\n{console}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["secure_boot"], true, "{stdout}");
    assert!(console.contains("Secure boot enabled") && console.contains("Kernel is locked down"), "{console}");
    assert!(console.contains("rootsmith-init: rootfs.img verified"), "{console}");

    // One flipped byte in the UKI's os-release (harmless to boot, fatal to
    // its signature): iPXE gets the firmware's refusal...
    let tampered = dir.path().join("tampered");
    let changed = tampered_copy(&first, &tampered, name, |bytes| {
        let at = bytes.windows(13).position(|window| window == b"NAME=\"ukisb\"\n").expect("the os-release");
        bytes[at + 6] ^= 0x20;
    });
    let (code, stdout, stderr) = boot_test(&changed, &[]);
    assert_ne!(code, 0, "a changed UKI booted: {stdout}");
    assert!(stderr.contains("the boot was refused") && stderr.contains("Could not boot image"), "{stderr}");
    assert!(!stderr.contains("Linux version"), "{stderr}");
    // ...and OVMF itself says Access Denied when it is the ESP's boot loader.
    let scratch = tempfile::tempdir().unwrap();
    let settings = rootsmith::lab::efi::EfiSettings { secure_boot: true, vars: None, loader_key: None };
    let firmware = rootsmith::lab::efi::firmware(&settings, scratch.path(), 0).unwrap();
    std::fs::copy(changed.join(name), firmware.esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap();
    let guest = rootsmith::lab::qemu::Guest {
        kernel: None,
        initrd: None,
        cmdline: String::new(),
        memory_mib: 1024,
        accel: rootsmith::lab::qemu::Accel::Tcg,
        network: None,
        disk: None,
        firmware: Some(firmware),
    };
    let result = rootsmith::lab::qemu::boot_until_any(
        &guest.argv(),
        "Linux version",
        &["Access Denied"],
        Duration::from_secs(180),
    )
    .unwrap();
    assert!(!result.found, "{}", result.console);
    assert!(result.refused.as_deref().is_some_and(|line| line.contains("HARDDISK")), "{}", result.console);

    // The unsigned UKI (its signature removed) is refused as well.
    let unsigned = dir.path().join("unsigned");
    let stripped = tampered_copy(&first, &unsigned, name, |_| {});
    std::fs::remove_file(stripped.join(name)).unwrap();
    let status = std::process::Command::new("osslsigncode")
        .arg("remove-signature")
        .arg("-in")
        .arg(first.join(name))
        .arg("-out")
        .arg(stripped.join(name))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!std::process::Command::new("sbverify")
        .args(["--cert", cert])
        .arg(stripped.join(name))
        .output()
        .unwrap()
        .status
        .success());
    let (code, _, stderr) = boot_test(&stripped, &["--secure-boot", "on"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("Could not boot image"), "{stderr}");

    // A flipped rootfs byte: the firmware accepts the UKI, the init refuses the rootfs.
    let rootfs = dir.path().join("rootfs");
    let flipped = tampered_copy(&first, &rootfs, "ukisb-1.0.0-rootfs.img", |bytes| {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
    });
    let log = dir.path().join("rootfs.log");
    let (code, _, stderr) = boot_test(&flipped, &["--log", log.to_str().unwrap()]);
    assert_ne!(code, 0);
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(console.contains("Secure boot enabled") && console.contains("does not match"), "{stderr}\n{console}");

    // A promotion makes the UKIs anew: it needs the key, and signs with it.
    let (code, _, stderr) = run(rootsmith()
        .arg("release")
        .arg("promote")
        .arg("--out")
        .arg(dir.path().join("out"))
        .args(["ukisb", "1.0.0", "1.0.1"]));
    assert_ne!(code, 0);
    assert!(stderr.contains("signed for Secure Boot") && stderr.contains("--uki-key KEY --uki-cert CERT"), "{stderr}");
    assert!(!dir.path().join("out/ukisb/1.0.1").exists());
    // Another certificate would change which machines boot it: refused.
    let (other_key, other_cert) = (dir.path().join("other.key"), dir.path().join("other.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-x509",
            "-sha256",
            "-days",
            "30",
            "-subj",
            "/CN=other/",
            "-keyout",
        ])
        .arg(&other_key)
        .arg("-out")
        .arg(&other_cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let (code, _, stderr) = run(rootsmith()
        .arg("release")
        .arg("promote")
        .arg("--out")
        .arg(dir.path().join("out"))
        .args(["ukisb", "1.0.0", "1.0.1", "--uki-key"])
        .arg(&other_key)
        .arg("--uki-cert")
        .arg(&other_cert));
    assert_ne!(code, 0);
    assert!(stderr.contains(&format!("signed for the certificate with SHA-256 {fingerprint}")), "{stderr}");
    let (code, _, stderr) = run(rootsmith()
        .arg("release")
        .arg("promote")
        .arg("--out")
        .arg(dir.path().join("out"))
        .args(["ukisb", "1.0.0", "1.0.1", "--uki-key", key, "--uki-cert", cert]));
    assert_eq!(code, 0, "{stderr}");
    let promoted = dir.path().join("out/ukisb/1.0.1/ukisb-1.0.1-debian.efi");
    assert!(std::process::Command::new("sbverify")
        .args(["--cert", cert])
        .arg(&promoted)
        .output()
        .unwrap()
        .status
        .success());
    assert!(String::from_utf8(section(&std::fs::read(&promoted).unwrap(), ".osrel"))
        .unwrap()
        .contains("VERSION=\"1.0.1\"\n"));
}
