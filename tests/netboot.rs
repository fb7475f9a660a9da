//! Netboot end to end: the default recipe built, then booted in QEMU with the
//! rootfs appended, fetched over HTTP, and over PXE (QEMU's iPXE ROM, TFTP,
//! then HTTP); and the ways a boot must fail clearly: a flipped byte, a
//! rootfs.img from another build, no rootfs at all. A proxy that cuts the
//! rootfs download once and hides Content-Length shows the init resuming.
//! Needs root, the package archive and QEMU (CI has all three); TCG unless
//! a probe boot proves KVM works.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rootsmith::artifact::initramfs::{self, Contents};
use rootsmith_init::contract::{BuildId, ChunkList, CHUNK_SIZE};

const MARKER: &str = "debian-netboot: rootfs is up";

/// Forwards to `upstream`; drops Content-Length from every response (the body
/// then ends when the connection closes), and cuts the first full download of
/// rootfs.img after `cut` bytes. Records every request head.
fn start_proxy(upstream: std::net::SocketAddr, cut: u64) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        let mut cut_done = false;
        for client in listener.incoming().take(20) {
            let Ok(client) = client else { continue };
            let mut reader = BufReader::new(client.try_clone().unwrap());
            let head = read_request_head(&mut reader);
            seen.lock().unwrap().push(head.clone());
            let cut_this = !cut_done && head.contains("rootfs.img") && !head.to_lowercase().contains("range:");
            cut_done |= cut_this;
            let mut server = TcpStream::connect(upstream).unwrap();
            server.write_all(format!("{head}\r\n").as_bytes()).unwrap();
            let mut response = BufReader::new(server);
            let mut client = client;
            loop {
                let mut line = String::new();
                if response.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if !line.to_lowercase().starts_with("content-length:") {
                    client.write_all(line.as_bytes()).unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let limit = if cut_this { cut } else { u64::MAX };
            let _ = std::io::copy(&mut (&mut response).take(limit), &mut client);
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    });
    (port, requests)
}

#[test]
fn thin_initramfs_without_modules_is_under_one_mib() {
    let init = initramfs::find_init("amd64").expect("the init is built by `make test` (make init)");
    let dir = tempfile::tempdir().unwrap();
    let contents = Contents {
        init: std::fs::read(&init).unwrap(),
        build: BuildId { cookie: "0".repeat(32), name: "size".into() },
        // The chunk list of a 1 GiB rootfs.
        chunks: ChunkList { chunk_size: CHUNK_SIZE, size: 1 << 30, digests: vec![[7u8; 32]; 512] },
        modules: Vec::new(),
        busybox: None,
    };
    let compression = rootsmith::recipe::Compression { algorithm: rootsmith::recipe::Algorithm::Zstd, level: Some(19) };
    let size = initramfs::write(&contents, compression, 0, &dir.path().join("initramfs.img"), None).unwrap();
    eprintln!("thin initramfs without modules: {size} bytes");
    assert!(size < 1 << 20, "{size} bytes");
}

#[test]
fn netboot_bundle_boots_three_ways_and_fails_clearly() {
    if !needs_root("netboot_bundle_boots_three_ways_and_fails_clearly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cache, out) = (dir.path().join("cache"), dir.path().join("out"));
    let mut command = rootsmith();
    command
        .arg("build")
        .arg("--fast")
        .arg("--cache")
        .arg(&cache)
        .arg("--out")
        .arg(&out)
        .arg(repo().join("recipes/debian-netboot.yaml"))
        .env_remove("SOURCE_DATE_EPOCH");
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let bundle = out.join("debian-netboot/0.1.0");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let boot = &manifest["boot"];
    let modules = boot["modules"].as_object().unwrap().values().next().unwrap().as_array().unwrap();
    for needed in ["/squashfs.ko", "/overlay.ko", "/loop.ko", "/virtio_net.ko", "/virtio_pci.ko"] {
        assert!(modules.iter().any(|m| m.as_str().unwrap().ends_with(needed)), "{needed} in {modules:?}");
    }
    let initramfs = bundle.join(boot["initramfs"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&initramfs).unwrap().len(), boot["initramfs_size"].as_u64().unwrap());
    for menu in ["boot.ipxe", "pxelinux.cfg/default", "grub.cfg"] {
        let text = std::fs::read_to_string(bundle.join(menu)).unwrap();
        assert!(
            text.contains("debian-netboot-0.1.0-debian-vmlinuz") && text.contains("rootsmith.rootfs_url="),
            "{menu}:\n{text}"
        );
    }
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();

    // The three ways in.
    for via in ["appended", "http", "pxe"] {
        let (code, _, console) = boot_test(&bundle, via, &[], &logs.join(format!("{via}.log")));
        assert_eq!(code, 0, "--via {via}:\n{console}");
        assert!(console.contains(MARKER));
        assert!(console.contains("rootsmith-init: switching root"));
        if via != "appended" {
            assert!(console.contains("rootsmith-init: rootfs.img verified"), "{console}");
        }
    }
    // The first stage over rootsmith's own TFTP server, as firmware that only speaks TFTP would.
    let (code, _, console) = boot_test(
        &bundle,
        "pxe",
        &["--tftp", "--expect", "rootsmith-init: switching root"],
        &logs.join("pxe-tftp.log"),
    );
    assert_eq!(code, 0, "{console}");
    assert!(
        console.contains("tftp \"boot.ipxe\" sent"),
        "iPXE loaded boot.ipxe from rootsmith's TFTP server:\n{console}"
    );

    // A line that never comes: exit 1 with the console's last lines.
    let mut command = rootsmith();
    command
        .args(["boot-test", "--via", "appended", "--expect", "a line no boot prints", "--timeout", "8", "--log"])
        .arg(logs.join("never.log"))
        .arg(&bundle);
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("\"a line no boot prints\" did not appear within")
            && stderr.contains("the console's last lines:"),
        "{stderr}"
    );
    let pxe = std::fs::read_to_string(logs.join("pxe.log")).unwrap();
    assert!(
        pxe.contains("\"GET /debian-netboot-0.1.0-debian-vmlinuz\" 200")
            && pxe.contains("\"GET /debian-netboot-0.1.0-initramfs.img\" 200"),
        "iPXE fetched the kernel and initramfs over HTTP:\n{pxe}"
    );

    // One flipped byte: the fetch stops at its chunk, before unpacking it.
    let original = a_flipped_byte_is_refused(&bundle, dir.path(), &logs);

    // A rootfs.img from another build, appended: the cookies differ and both builds are named.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("tree/etc")).unwrap();
    std::fs::write(other.join("tree/etc/other"), "another build\n").unwrap();
    tar_base(&other);
    std::fs::write(
        other.join("other.yaml"),
        "rootsmith: 1\nname: other\nversion: 1.0.0\nstages:\n  - tarball: { path: base.tar }\n",
    )
    .unwrap();
    let mut command = rootsmith();
    command
        .arg("build")
        .arg("--fast")
        .arg("--cache")
        .arg(&cache)
        .arg("--out")
        .arg(other.join("out"))
        .arg(other.join("other.yaml"));
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let other_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(other.join("out/other/1.0.0/manifest.json")).unwrap()).unwrap();
    let swapped = bundle_with_rootfs(
        &bundle,
        &dir.path().join("swapped"),
        std::fs::read(rootfs_image(&other.join("out/other/1.0.0"))).unwrap(),
    );
    let (code, _, console) =
        boot_test(&swapped, "appended", &["--expect", "from another build"], &logs.join("swapped.log"));
    assert_eq!(code, 0, "{console}");
    let names_both = format!(
        "this initramfs belongs to debian-netboot (cookie {}), the rootfs.img is other (cookie {})",
        manifest["rootfs"]["cookie"].as_str().unwrap(),
        other_manifest["rootfs"]["cookie"].as_str().unwrap()
    );
    assert!(console.contains(&names_both), "wanted {names_both:?} in:\n{console}");

    // No rootfs at all: the init says which kernel arguments would fix it.
    let vmlinuz = bundle.join("debian-netboot-0.1.0-debian-vmlinuz");
    let guest = rootsmith::lab::qemu::DirectBoot {
        kernel: vmlinuz,
        initrd: Some(initramfs.clone()),
        cmdline: "console=ttyS0 panic=-1".into(),
        memory_mib: 1024,
        accel: rootsmith::lab::qemu::Accel::Tcg,
    };
    let result =
        rootsmith::lab::qemu::boot_until(&guest.argv(), "rootsmith.iface=IFACE", Duration::from_secs(240)).unwrap();
    assert!(result.found, "{}", result.console);
    assert!(result.console.contains("rootsmith-init: error: no rootfs: nothing was appended and the kernel command line has no rootsmith.rootfs_url="), "{}", result.console);
    assert!(
        result.console.contains("rootsmith.rootfs_url=http://SERVER/PATH/debian-netboot-VERSION-rootfs.img"),
        "{}",
        result.console
    );

    // A server without Content-Length that drops the rootfs download halfway once.
    let server = rootsmith::lab::serve::Server::bind(&bundle, "127.0.0.1:0", 8, Arc::new(|_: &str| {})).unwrap();
    let upstream = server.spawn();
    let (port, requests) = start_proxy(upstream, original.len() as u64 / 2);
    let base = format!("http://10.0.2.2:{port}/");
    let (code, _, console) = boot_test(&bundle, "http", &["--server", &base], &logs.join("resume.log"));
    assert_eq!(code, 0, "{console}");
    assert!(console.contains("rootsmith-init: download broke"), "{console}");
    let verified = console
        .lines()
        .find_map(|line| line.split("resuming at verified byte ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .expect("the resume line names its byte")
        .to_string();
    let verified: u64 = verified.parse().unwrap();
    assert_eq!(verified % CHUNK_SIZE, 0, "resumes at a chunk boundary");
    assert!(verified > 0 && verified <= original.len() as u64 / 2);
    let requests = requests.lock().unwrap().clone();
    assert!(requests.iter().any(|head| head.contains(&format!("Range: bytes={verified}-"))), "{requests:?}");
    assert!(console.contains(MARKER));
}
