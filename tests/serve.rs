//! `rootsmith serve` checked with a real HTTP client (curl): Content-Length
//! always, HEAD, Range, ETag / If-None-Match, no path outside the directory,
//! and a bundle's boot.ipxe generated with the server's own URL; and clients
//! that send their request heads slowly, which neither keep a connection
//! beyond the head's time limit nor keep new clients out. Needs no root.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

struct Served {
    server: ServeProcess,
    _dir: tempfile::TempDir,
}

fn serve(setup: impl FnOnce(&Path)) -> Served {
    serve_with(&[], setup)
}

/// `serve` with `extra` arguments.
fn serve_with(extra: &[&str], setup: impl FnOnce(&Path)) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    setup(&root);
    std::fs::write(dir.path().join("secret"), "outside the served directory").unwrap();
    Served { server: ServeProcess::start_with(&root, false, extra), _dir: dir }
}

/// (status, headers lowercased, body)
fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    let output = Command::new("curl")
        .args(["-s", "-S", "-D", "/dev/stderr", "-o", "-", "--path-as-is"])
        .args(args)
        .output()
        .expect("curl runs (apt-get install curl)");
    let headers = String::from_utf8_lossy(&output.stderr).to_lowercase();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {headers:?}"));
    (status, headers, output.stdout)
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|line| line.strip_prefix(&format!("{name}: "))).map(str::trim)
}

#[test]
fn serves_files_with_length_ranges_and_etags() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let served = serve(|root| std::fs::write(root.join("rootfs.img"), &data).unwrap());
    let url = format!("{}/rootfs.img", served.server.http);

    let (status, headers, body) = curl(&[&url]);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-length"), Some("100000"));
    assert_eq!(body, data);
    let etag = header(&headers, "etag").expect("an ETag").to_string();

    let (status, headers, body) = curl(&["-I", &url]);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-length"), Some("100000"), "HEAD tells the length");
    // curl -I prints the headers as its output: no body may follow them.
    assert!(body.len() < 1000 && body.ends_with(b"\r\n\r\n"), "{}", String::from_utf8_lossy(&body));

    let (status, headers, body) = curl(&["-r", "1000-1999", &url]);
    assert_eq!(status, 206);
    assert_eq!(header(&headers, "content-range"), Some("bytes 1000-1999/100000"));
    assert_eq!(header(&headers, "content-length"), Some("1000"));
    assert_eq!(body, &data[1000..2000]);
    let (status, _, body) = curl(&["-r", "99990-", &url]);
    assert_eq!((status, body.as_slice()), (206, &data[99990..]));
    let (status, headers, _) = curl(&["-r", "200000-", &url]);
    assert_eq!(status, 416);
    assert_eq!(header(&headers, "content-range"), Some("bytes */100000"));

    let (status, headers, body) = curl(&["-H", &format!("If-None-Match: {etag}"), &url]);
    assert_eq!(status, 304);
    assert_eq!(header(&headers, "content-length"), Some("0"));
    assert!(body.is_empty());
    let (status, _, _) = curl(&["-H", "If-None-Match: \"other\"", &url]);
    assert_eq!(status, 200);

    let (status, headers, _) = curl(&["-X", "PUT", &url]);
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("get, head"), "headers are compared lowercased");
}

#[test]
fn nothing_outside_the_directory_is_served() {
    let served = serve(|root| {
        std::fs::write(root.join("inside"), "in").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("link-out")).unwrap();
    });
    for path in ["/../secret", "/%2e%2e/secret", "/a/../../secret", "/link-out", "/%2E%2E%2Fsecret", "/nothing"] {
        let (status, headers, body) = curl(&[&format!("{}{path}", served.server.http)]);
        assert_eq!(status, 404, "{path}");
        assert!(header(&headers, "content-length").is_some(), "errors have a length too");
        assert!(!String::from_utf8_lossy(&body).contains("outside the served"), "{path}");
    }
    let (status, _, body) = curl(&[&format!("{}/inside", served.server.http)]);
    assert_eq!((status, body.as_slice()), (200, &b"in"[..]));
}

#[test]
fn a_bundles_boot_ipxe_carries_the_servers_url() {
    let served = serve(|root| {
        let bundle = root.join("demo/1.0");
        std::fs::create_dir_all(&bundle).unwrap();
        let manifest = serde_json::json!({
            "manifest_version": 1, "tool": "rootsmith", "name": "demo", "version": "1.0", "arch": "amd64",
            "recipe_sha256": "00", "source_date_epoch": 0, "fast": false, "stages": [],
            "rootfs": { "cookie": "c", "squashfs_writer": "mksquashfs", "squashfs_compression": "zstd 15", "squashfs_entries": 1, "contract_version": 2 },
            "kernels": [{ "name": "k", "release": "6.1", "config_sha256": "00", "vmlinuz": "demo-1.0-k-vmlinuz", "debs": [] }],
            "boot": { "initramfs": "demo-1.0-initramfs.img", "initramfs_size": 1, "initramfs_compression": "zstd 19", "rootfs_image": "demo-1.0-rootfs.img", "cmdline": "console=ttyS0", "marker": null, "modules": {}, "shell": false },
            "artifacts": []
        });
        std::fs::write(bundle.join("manifest.json"), manifest.to_string()).unwrap();
        std::fs::write(bundle.join("boot.ipxe"), "#!ipxe\n# the static one\n").unwrap();
    });
    let (status, headers, body) = curl(&[&format!("{}/demo/1.0/boot.ipxe", served.server.http)]);
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert_eq!(header(&headers, "content-length"), Some(text.len().to_string().as_str()));
    assert!(text.starts_with("#!ipxe\n"), "{text}");
    assert!(text.contains(&format!("kernel {}/demo/1.0/demo-1.0-k-vmlinuz", served.server.http)), "{text}");
    assert!(
        text.contains(&format!("rootsmith.rootfs_url={}/demo/1.0/demo-1.0-rootfs.img", served.server.http)),
        "{text}"
    );
}

#[test]
fn a_suffix_range_longer_than_the_file_follows_rfc_9110() {
    let served = serve(|root| {
        std::fs::write(root.join("empty"), "").unwrap();
        std::fs::write(root.join("three"), "abc").unwrap();
    });
    // A suffix range on an empty representation selects nothing: 416.
    let (status, headers, body) = curl(&["-r", "-5", &format!("{}/empty", served.server.http)]);
    assert_eq!(status, 416, "{headers}");
    assert_eq!(header(&headers, "content-range"), Some("bytes */0"), "{headers}");
    assert!(body.is_empty());
    // On a file shorter than the suffix, the whole file as a 206.
    let (status, headers, body) = curl(&["-r", "-5", &format!("{}/three", served.server.http)]);
    assert_eq!(status, 206, "{headers}");
    assert_eq!(header(&headers, "content-range"), Some("bytes 0-2/3"), "{headers}");
    assert_eq!(header(&headers, "content-length"), Some("3"));
    assert_eq!(body, b"abc");
    // Other ranges on an empty file are unsatisfiable too; without one it is a 200.
    let (status, headers, _) = curl(&["-r", "0-", &format!("{}/empty", served.server.http)]);
    assert_eq!((status, header(&headers, "content-range")), (416, Some("bytes */0")), "{headers}");
    let (status, headers, _) = curl(&[&format!("{}/empty", served.server.http)]);
    assert_eq!((status, header(&headers, "content-length")), (200, Some("0")), "{headers}");
    let log = served.server.log_containing("\"GET /three\" 206 3");
    assert!(log.contains("\"GET /three\" 206 3"), "{log}");
}

/// The address of a served URL, for raw TCP clients.
fn address(served: &Served) -> String {
    served.server.http.trim_start_matches("http://").to_string()
}

#[test]
fn connections_waiting_for_a_request_head_give_way_to_new_clients() {
    let served = serve_with(&["--max-connections", "4"], |root| std::fs::write(root.join("f"), "hello").unwrap());
    // Every slot taken by a client that sent part of a head and then nothing.
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = TcpStream::connect(address(&served)).unwrap();
            stream.write_all(b"GET /f HTTP/1.1\r\nX-Slow: ").unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, _, body) = curl(&["--max-time", "5", &format!("{}/f", served.server.http)]);
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]), "a new client is served: {}", served.server.logged());
    // The one that had waited longest lost its slot; it reads the end of its connection.
    slow[0].set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let closed = slow[0].read_to_end(&mut rest);
    assert!(
        closed.is_ok() || closed.as_ref().is_err_and(|error| error.kind() == std::io::ErrorKind::ConnectionReset),
        "{closed:?}"
    );
    let log = served.server.log_containing("waited longest for a request head");
    assert!(log.contains("waited longest for a request head"), "{log}");
}

#[test]
fn a_request_head_has_ten_seconds_in_all_not_per_read() {
    let served = serve(|root| std::fs::write(root.join("f"), "hello").unwrap());
    let mut stream = TcpStream::connect(address(&served)).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let started = Instant::now();
    // A byte every half second: each read is quick, the head never ends.
    let head = b"GET /f HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut answer = Vec::new();
    for byte in head.iter().cycle().take(40) {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        let mut buffer = [0u8; 1024];
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if !answer.is_empty() && stream.read_to_end(&mut answer).is_ok() {
            break;
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(15),
        "the connection was closed after {took:?}"
    );
    // The server answers 408 and closes; the client's next byte may meet a
    // reset that discards that answer, so it is checked only when it came.
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let wanted = "\"?\" 408 the request head did not arrive within 10 s";
    let log = served.server.log_containing(wanted);
    assert!(log.contains(wanted), "{log}");
}
