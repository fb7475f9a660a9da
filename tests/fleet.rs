//! A lab in QEMU: machines PXE-boot through their NIC's iPXE ROM, which loads
//! `boot.ipxe` over TFTP from `rootsmith serve --hosts`, chains the script for
//! its own MAC, and takes the kernel, initramfs and rootfs over HTTP. The
//! provisioning agent (recipes/provision-agent.yaml) writes a disk image and
//! reports with the token its command line gave it; the one-shot entry ends
//! and the next boot is from the disk (the image's boot sector prints a
//! marker). A corrupted image is refused before
//! the disk is touched. A host the inventory lacks boots its disk. Debian's
//! PXELINUX finds a host's own file by MAC, and `default` for the others.
//! Needs root, the package archive and QEMU (CI has all three); TCG unless a
//! probe boot proves KVM works.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use rootsmith::lab::qemu::{self, Accel, Guest, UserNetwork};

const DISK_MARKER: &str = "rootsmith-test-disk: booted from disk";

/// A boot sector that writes DISK_MARKER to the first serial port and halts,
/// then `payload` bytes of pseudo-random data: a disk image whose boot shows.
fn disk_image(payload: usize) -> Vec<u8> {
    // cli; xor ax,ax; mov ds,ax; mov si,0x7c17; mov dx,0x3f8; cld;
    // next: lodsb; test al,al; jz done; out dx,al; jmp next; done: hlt; jmp done
    let code = [
        0xFA, 0x31, 0xC0, 0x8E, 0xD8, 0xBE, 0x17, 0x7C, 0xBA, 0xF8, 0x03, 0xFC, 0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE,
        0xEB, 0xF8, 0xF4, 0xEB, 0xFD,
    ];
    let mut image = code.to_vec();
    image.extend_from_slice(format!("{DISK_MARKER}\r\n\0").as_bytes());
    image.resize(510, 0);
    image.extend_from_slice(&[0x55, 0xAA]);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    image.extend((0..payload).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 24) as u8
    }));
    image
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Lab {
    accel: Accel,
    tftp_port: u16,
    bundle_path: String,
}

impl Lab {
    /// Boot a machine with `mac` and `disk` from the network (its iPXE ROM
    /// loads `boot.ipxe` over TFTP) until `expect`.
    fn boot(&self, mac: &str, disk: &Path, expect: &str, log: &Path) -> String {
        self.boot_file(&format!("{}boot.ipxe", self.bundle_path), mac, disk, expect, log)
    }

    /// The same, the ROM loading `file` (under the served root) over TFTP.
    fn boot_file(&self, file: &str, mac: &str, disk: &Path, expect: &str, log: &Path) -> String {
        let guest = Guest {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            memory_mib: 1024,
            accel: self.accel,
            network: Some(UserNetwork {
                tftp: None,
                bootfile: Some(format!("tftp://10.0.2.2:{}/{file}", self.tftp_port)),
                mac: Some(mac.into()),
            }),
            disk: Some(disk.to_path_buf()),
            firmware: None,
        };
        let result = qemu::boot_until(&guest.argv(), expect, Duration::from_secs(400)).unwrap();
        std::fs::write(log, &result.console).unwrap();
        assert!(
            result.found,
            "{mac}: {expect:?} did not appear in {:.0} s; console:\n{}",
            result.seconds, result.console
        );
        eprintln!("{mac}: {expect:?} after {:.1} s", result.seconds);
        result.console
    }
}

fn hosts_ls(inventory: &Path) -> serde_json::Value {
    let mut command = rootsmith();
    command.arg("hosts").arg("--hosts").arg(inventory).args(["ls", "--json"]);
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn host<'a>(listed: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    listed["hosts"].as_array().unwrap().iter().find(|host| host["name"] == name).unwrap()
}

#[test]
fn pxe_agent_images_the_disk_and_the_next_boot_is_from_it() {
    if !needs_root("pxe_agent_images_the_disk_and_the_next_boot_is_from_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("srv");
    let mut command = rootsmith();
    command
        .arg("build")
        .arg("--fast")
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(root.join("out"))
        .arg(repo().join("recipes/provision-agent.yaml"));
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let bundle = root.join("out/provision-agent/0.1.0");

    // The image to write, zstd-compressed; and a raw one corrupted on the server.
    let image = disk_image(6 << 20);
    std::fs::create_dir_all(root.join("images")).unwrap();
    let compressed = zstd::encode_all(&image[..], 3).unwrap();
    std::fs::write(root.join("images/disk.img.zst"), &compressed).unwrap();
    let mut corrupted = image.clone();
    corrupted[3 << 20] ^= 0x01;
    std::fs::write(root.join("images/corrupted.img"), &corrupted).unwrap();
    let sha = |bytes: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));

    let http_port = free_port();
    let inventory = dir.path().join("lab.yaml");
    std::fs::write(
        &inventory,
        format!(
            "bundle: srv/out/provision-agent/0.1.0\ndefault: local\nhosts:\n  - name: box1\n    mac: 52:54:00:00:00:11\n    entry: local\n    args: rootsmith.agent.image=${{server}}images/disk.img.zst rootsmith.agent.sha256={}\n  - name: box2\n    mac: 52:54:00:00:00:12\n    entry: agent-http\n    args: rootsmith.agent.image=${{server}}images/corrupted.img rootsmith.agent.sha256={}\n  - name: box3\n    mac: 52:54:00:00:00:13\n    entry: agent-http\n    args: rootsmith.agent.on_fail=stay\n",
            sha(&compressed),
            sha(&image)
        ),
    )
    .unwrap();
    let mut command = rootsmith();
    command.arg("hosts").arg("--hosts").arg(&inventory).args(["set", "box1", "agent-http", "--once"]);
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");

    let http = format!("127.0.0.1:{http_port}");
    let public = format!("http://10.0.2.2:{http_port}/");
    let server = ServeProcess::start_with(
        &root,
        true,
        &["--addr", &http, "--hosts", inventory.to_str().unwrap(), "--public-url", &public],
    );
    let probe = Guest {
        kernel: Some(bundle.join("provision-agent-0.1.0-agent-vmlinuz")),
        initrd: Some(bundle.join("provision-agent-0.1.0-initramfs.img")),
        cmdline: "console=ttyS0 panic=-1".into(),
        memory_mib: 512,
        accel: Accel::Kvm,
        network: None,
        disk: None,
        firmware: None,
    };
    let accel = qemu::probe_kvm_remembered(&probe.argv(), "rootsmith-init:", Duration::from_secs(20));
    let lab = Lab {
        accel,
        tftp_port: server.tftp.as_ref().unwrap().rsplit(':').next().unwrap().parse().unwrap(),
        bundle_path: "out/provision-agent/0.1.0/".into(),
    };
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();

    // box1: an empty disk; the one-shot entry boots the agent, which writes the image.
    let disk1 = dir.path().join("disk1.raw");
    std::fs::write(&disk1, vec![0u8; 64 << 20]).unwrap();
    let console = lab.boot("52:54:00:00:00:11", &disk1, "rootsmith-agent: rebooting", &logs.join("box1-agent.log"));
    assert!(console.contains(&format!("image written and verified: {} bytes on /dev/vda", image.len())), "{console}");
    let written = std::fs::read(&disk1).unwrap();
    assert_eq!(&written[..image.len()], &image[..], "the disk holds the image");
    assert!(written[image.len()..].iter().all(|byte| *byte == 0), "nothing past it");
    let log = server.logged();
    for line in [
        "tftp \"out/provision-agent/0.1.0/boot.ipxe\" sent",
        "tftp \"out/provision-agent/0.1.0/hosts/52-54-00-00-00-11.ipxe\" sent",
        "\"GET /out/provision-agent/0.1.0/provision-agent-0.1.0-rootfs.img\" 200",
        "\"POST /.rootsmith/report/box1?status=ok&step=done\" 200",
    ] {
        assert!(log.contains(line), "TFTP for the first stage, HTTP for the rest: {line:?} in\n{log}");
    }
    let listed = hosts_ls(&inventory);
    let box1 = host(&listed, "box1");
    assert_eq!(
        (box1["entry"].as_str(), box1["report"]["status"].as_str(), box1["report"]["cleared"].as_bool()),
        (Some("local"), Some("ok"), Some(true)),
        "{listed}"
    );
    let report = std::fs::read_to_string(box1["report"]["log"].as_str().unwrap()).unwrap();
    assert!(report.contains("image written and verified"), "the agent's log came with its report:\n{report}");

    // box1 again: the one-shot entry is over, so iPXE boots the disk, and the image's boot sector speaks.
    lab.boot("52:54:00:00:00:11", &disk1, DISK_MARKER, &logs.join("box1-disk.log"));

    // A machine the inventory lacks gets the default (local): it boots that disk too.
    lab.boot("52:54:00:00:00:99", &disk1, DISK_MARKER, &logs.join("unknown.log"));
    let log = server.logged();
    assert!(
        log.contains("tftp \"out/provision-agent/0.1.0/hosts/52-54-00-00-00-99.ipxe\" file not found")
            && log.contains("tftp \"out/provision-agent/0.1.0/hosts/default.ipxe\" sent"),
        "{log}"
    );

    // box2: the image on the server does not match its checksum; the disk is left as it was.
    let disk2 = dir.path().join("disk2.raw");
    let before = disk_image(1 << 20);
    let mut disk = before.clone();
    disk.resize(64 << 20, 0x5a);
    std::fs::write(&disk2, &disk).unwrap();
    let console = lab.boot("52:54:00:00:00:12", &disk2, "rootsmith-agent: powering off", &logs.join("box2.log"));
    assert!(
        console.contains(&format!(
            "failed at verify: the image does not match: expected sha256 {}, got {}; the disk was not touched",
            sha(&image),
            sha(&corrupted)
        )),
        "{console}"
    );
    assert_eq!(std::fs::read(&disk2).unwrap(), disk, "the disk is unchanged");
    let listed = hosts_ls(&inventory);
    let box2 = host(&listed, "box2");
    assert_eq!(
        (box2["report"]["status"].as_str(), box2["report"]["step"].as_str(), box2["entry"].as_str()),
        (Some("failed"), Some("verify"), Some("agent-http")),
        "{listed}"
    );

    // PXELINUX (Debian's lpxelinux.0, loaded by the ROM's iPXE with the bundle's
    // URL as its path prefix, DHCP option 210): box3 finds its own file by MAC
    // and boots the agent with its arguments; a machine the inventory lacks
    // walks PXELINUX's search down to `default` and boots its disk.
    for file in ["/usr/lib/PXELINUX/lpxelinux.0", "/usr/lib/syslinux/modules/bios/ldlinux.c32"] {
        std::fs::copy(file, bundle.join(Path::new(file).file_name().unwrap())).unwrap();
    }
    let base = format!("{public}{}", lab.bundle_path);
    std::fs::write(root.join("pxelinux.ipxe"), format!("#!ipxe\nset 210:string {base}\nchain {base}lpxelinux.0\n"))
        .unwrap();
    let console = lab.boot_file(
        "pxelinux.ipxe",
        "52:54:00:00:00:13",
        &disk2,
        "rootsmith-init: fetching",
        &logs.join("box3-pxelinux.log"),
    );
    let command_line = console.lines().find(|line| line.contains("Command line:")).unwrap_or_default();
    assert!(
        command_line.contains("rootsmith.agent.on_fail=stay rootsmith.host=box3 rootsmith.report=")
            && command_line.contains(" rootsmith.report_token="),
        "{command_line}"
    );
    lab.boot_file("pxelinux.ipxe", "52:54:00:00:00:98", &disk1, DISK_MARKER, &logs.join("unknown-pxelinux.log"));
    let log = server.logged();
    for line in [
        "\"GET /out/provision-agent/0.1.0/pxelinux.cfg/01-52-54-00-00-00-13\" 200",
        "\"GET /out/provision-agent/0.1.0/pxelinux.cfg/01-52-54-00-00-00-98\" 404",
        "\"GET /out/provision-agent/0.1.0/pxelinux.cfg/0A00020F\" 404",
        "\"GET /out/provision-agent/0.1.0/pxelinux.cfg/default\" 200",
    ] {
        assert!(log.contains(line), "{line:?} in\n{log}");
    }
}
