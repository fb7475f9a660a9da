//! `outputs.uki`: a Debian kernel's Unified Kernel Image, the same bytes on
//! every publish, its sections what they should hold, made anew by a
//! promotion, and booted by OVMF to a rootfs the init fetches from the DHCP
//! server of its lease. Needs root and the Debian archive.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rootsmith::artifact::uki;
use rootsmith::lab::qemu::boot_until;

fn build(dir: &Path, out: &str, recipe: &Path) -> PathBuf {
    let mut command = rootsmith();
    command.arg("build").arg("--fast").arg("--json").arg("--cache").arg(dir.join("cache")).arg("--out").arg(dir.join(out)).arg(recipe);
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    PathBuf::from(summary["bundle"].as_str().unwrap())
}

fn section(bytes: &[u8], name: &str) -> Vec<u8> {
    uki::sections(bytes).unwrap().into_iter().find(|(found, _, _)| found == name).unwrap_or_else(|| panic!("no {name}")).2
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
    let recipe = dir.path().join("uki.yaml");
    // A minbase rootfs has no /sbin/init: the init runs /bin/sh after switching root.
    std::fs::write(
        &recipe,
        format!(
            "rootsmith: 1\nname: ukitest\nversion: 1.0.0\nsource_date_epoch: 1700000000\nstages:\n  - debootstrap: {{ suite: bookworm }}\n  - kernel: {{ name: debian, package: linux-image-amd64 }}\noutputs:\n  initramfs: {{ modules: [virtio_pci, virtio_net] }}\n  uki: {{ rootfs_url: \"http://dhcp-server:{port}/ukitest/1.0.0/ukitest-1.0.0-rootfs.img\" }}\nboot:\n  cmdline: \"console=ttyS0 panic=-1 rootsmith.init=/bin/sh rootsmith.on_fail=poweroff\"\n"
        ),
    )
    .unwrap();
    let first = build(dir.path(), "out", &recipe);
    // The same cache, another out directory: the UKI is made again, by a later objcopy.
    std::thread::sleep(Duration::from_millis(1100));
    let second = build(dir.path(), "again", &recipe);
    let name = "ukitest-1.0.0-debian.efi";
    let bytes = std::fs::read(first.join(name)).unwrap();
    assert!(bytes == std::fs::read(second.join(name)).unwrap(), "the UKI differs between two publishes");

    // The manifest and SHA256SUMS list it; verify checks it.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(first.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kernels"][0]["uki"], name);
    let listed = manifest["artifacts"].as_array().unwrap().iter().find(|a| a["name"] == name).expect("the UKI is an artifact");
    assert_eq!(listed["sha256"].as_str().unwrap(), sha256(&first.join(name)));
    assert!(std::fs::read_to_string(first.join("SHA256SUMS")).unwrap().contains(&format!("  {name}\n")));
    let cmdline = format!("console=ttyS0 panic=-1 rootsmith.init=/bin/sh rootsmith.on_fail=poweroff rootsmith.rootfs_url=http://dhcp-server:{port}/ukitest/1.0.0/ukitest-1.0.0-rootfs.img");
    assert_eq!(manifest["boot"]["uki"]["cmdline"], cmdline.as_str());
    let (code, _, stderr) = run(rootsmith().arg("release").arg("verify").arg(&first));
    assert_eq!(code, 0, "{stderr}");

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
        assert!(listing.lines().any(|line| line.split_whitespace().nth(1) == Some(wanted)), "{wanted} missing:\n{listing}");
    }

    // A promotion makes it anew: it names its new version, and verify passes.
    let (code, _, stderr) = run(rootsmith().arg("release").arg("promote").arg("--out").arg(dir.path().join("out")).args(["ukitest", "1.0.0", "1.0.1"]));
    assert_eq!(code, 0, "{stderr}");
    let promoted = dir.path().join("out/ukitest/1.0.1");
    let promoted_uki = std::fs::read(promoted.join("ukitest-1.0.1-debian.efi")).unwrap();
    assert!(String::from_utf8(section(&promoted_uki, ".osrel")).unwrap().contains("VERSION=\"1.0.1\"\n"));
    assert_eq!(section(&promoted_uki, ".linux"), section(&bytes, ".linux"));
    // A URL the recipe gave is kept as it is.
    assert_eq!(section(&promoted_uki, ".cmdline"), cmdline.as_bytes());
    let (code, _, stderr) = run(rootsmith().arg("release").arg("verify").arg(&promoted));
    assert_eq!(code, 0, "{stderr}");

    // OVMF boots it from an ESP; the init fetches the rootfs from `serve` on
    // the host, which QEMU's user network makes the DHCP server 10.0.2.2.
    // TCG: about a minute, and no nested KVM to hang on.
    let _server = ServeProcess::start_with(&dir.path().join("out"), false, &["--addr", &format!("127.0.0.1:{port}")]);
    let esp = dir.path().join("esp");
    std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    std::fs::copy(first.join(name), esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap();
    let vars = dir.path().join("OVMF_VARS_4M.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let argv: Vec<String> = [
        "qemu-system-x86_64", "-machine", "q35", "-m", "1024", "-accel", "tcg", "-display", "none", "-no-reboot", "-serial", "stdio", "-monitor", "none",
        "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["-drive".to_string(), format!("if=pflash,format=raw,file={}", vars.display())])
    .chain(["-drive".to_string(), format!("format=raw,file=fat:rw:{}", esp.display())])
    .chain(["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile="].iter().map(|s| s.to_string()))
    .collect();
    let result = boot_until(&argv, "rootsmith-init: switching root", Duration::from_secs(240)).unwrap();
    assert!(result.found, "the UKI did not reach the rootfs; console:\n{}", result.console);
    assert!(result.console.contains("names the DHCP server, 10.0.2.2"), "{}", result.console);
}
