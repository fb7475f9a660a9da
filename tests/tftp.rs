//! `serve --tftp`: a real client (curl) with and without blksize, a test
//! client that drops one acknowledgement and sees the block sent again, one
//! that sends junk instead of acknowledging and loses its transfer, and
//! requests that try to leave the directory or write. Needs no root.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;

struct Served {
    /// Kept for its lifetime: the server stops when the test's `Served` drops.
    server: ServeProcess,
    tftp: String,
    dir: tempfile::TempDir,
}

fn serve() -> Served {
    serve_with(&[])
}

/// `serve --tftp` with `extra` arguments.
fn serve_with(extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(root.join("sub/image.bin"), &data).unwrap();
    std::fs::write(dir.path().join("secret"), "outside").unwrap();
    std::os::unix::fs::symlink("../secret", root.join("link-out")).unwrap();
    let server = ServeProcess::start_with(&root, true, extra);
    let tftp = server.tftp.clone().expect("serve printed its TFTP address");
    Served { server, tftp, dir }
}

fn expected(served: &Served) -> Vec<u8> {
    std::fs::read(served.dir.path().join("root/sub/image.bin")).unwrap()
}

#[test]
fn curl_fetches_with_and_without_blksize() {
    let served = serve();
    for extra in [&[][..], &["--tftp-blksize", "1468"][..], &["--tftp-blksize", "8192"][..]] {
        let output = std::process::Command::new("curl")
            .args(["-s", "-S"])
            .args(extra)
            .arg(format!("tftp://{}/sub/image.bin", served.tftp))
            .output()
            .expect("curl runs");
        assert!(output.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(output.stdout, expected(&served), "{extra:?}");
    }
}

fn request(filename: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut packet = vec![0, 1];
    for field in [filename, "octet"] {
        packet.extend_from_slice(field.as_bytes());
        packet.push(0);
    }
    for (name, value) in options {
        packet.extend_from_slice(name.as_bytes());
        packet.push(0);
        packet.extend_from_slice(value.as_bytes());
        packet.push(0);
    }
    packet
}

fn ack(block: u16) -> Vec<u8> {
    let mut packet = vec![0, 4];
    packet.extend_from_slice(&block.to_be_bytes());
    packet
}

#[test]
fn a_dropped_acknowledgement_is_recovered() {
    let served = serve();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    client
        .send_to(&request("sub/image.bin", &[("blksize", "512"), ("tsize", "0"), ("timeout", "1")]), &served.tftp)
        .unwrap();
    let mut buffer = [0u8; 2048];
    let (len, transfer) = client.recv_from(&mut buffer).unwrap();
    assert_eq!(&buffer[..2], &[0, 6], "an OACK first");
    let oack = String::from_utf8_lossy(&buffer[2..len]).replace('\0', " ");
    assert!(oack.contains("blksize 512") && oack.contains("tsize 200000") && oack.contains("timeout 1"), "{oack}");
    client.send_to(&ack(0), transfer).unwrap();
    let mut received = Vec::new();
    let mut block_one_seen = 0;
    let mut dropped = false;
    loop {
        let (len, from) = client.recv_from(&mut buffer).unwrap();
        assert_eq!(from, transfer);
        assert_eq!(&buffer[..2], &[0, 3], "DATA");
        let block = u16::from_be_bytes([buffer[2], buffer[3]]);
        if block == 1 {
            block_one_seen += 1;
        }
        // The acknowledgement of block 1 is "lost" once: the server must resend block 1.
        if block == 1 && !dropped {
            dropped = true;
            continue;
        }
        if block as usize == received.len() / 512 + 1 {
            received.extend_from_slice(&buffer[4..len]);
        }
        client.send_to(&ack(block), transfer).unwrap();
        if len - 4 < 512 {
            break;
        }
    }
    assert_eq!(block_one_seen, 2, "block 1 was sent again after its acknowledgement was lost");
    assert_eq!(received, expected(&served));
}

fn first_reply(served: &Served, packet: &[u8]) -> (u16, u16, String) {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.send_to(packet, &served.tftp).unwrap();
    let mut buffer = [0u8; 1024];
    let (len, _) = client.recv_from(&mut buffer).unwrap();
    let opcode = u16::from_be_bytes([buffer[0], buffer[1]]);
    let code = u16::from_be_bytes([buffer[2], buffer[3]]);
    (opcode, code, String::from_utf8_lossy(&buffer[4..len]).trim_end_matches('\0').to_string())
}

#[test]
fn nothing_outside_the_directory_and_no_writes() {
    let served = serve();
    for name in ["../secret", "/../secret", "sub/../../secret", "link-out", "%2e%2e/secret", "missing"] {
        let (opcode, code, message) = first_reply(&served, &request(name, &[]));
        assert_eq!((opcode, code), (5, 1), "{name}: {message}");
    }
    let mut write = request("new.bin", &[]);
    write[1] = 2;
    let (opcode, code, message) = first_reply(&served, &write);
    assert_eq!((opcode, code), (5, 2), "{message}");
    assert!(message.contains("read-only"));
    assert_eq!(std::fs::read_to_string(served.dir.path().join("secret")).unwrap(), "outside");
}

#[test]
fn a_client_sending_junk_instead_of_acknowledging_loses_its_transfer() {
    // One transfer at a time: the junk client's, until it ends.
    let served = serve_with(&["--max-connections", "1"]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.send_to(&request("sub/image.bin", &[("timeout", "1")]), &served.tftp).unwrap();
    let mut buffer = [0u8; 2048];
    let (_, transfer) = client.recv_from(&mut buffer).unwrap();
    assert_eq!(&buffer[..2], &[0, 6], "an OACK first");
    // Acknowledgements of a block never sent and packets of no kind, five a
    // second for 8 s, never the acknowledgement of the OACK (block 0).
    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    let mut oacks = 1;
    while started.elapsed() < Duration::from_secs(8) {
        client.send_to(&ack(7), transfer).unwrap();
        client.send_to(b"\x00\x09junk", transfer).unwrap();
        if let Ok((_, from)) = client.recv_from(&mut buffer) {
            if from == transfer && buffer[..2] == [0, 6] {
                oacks += 1;
            }
        }
    }
    // 1 s per try, 5 tries: the OACK was sent again on time despite the junk, then the transfer ended.
    assert!((4..=5).contains(&oacks), "the OACK was sent {oacks} times");
    let log = served.server.log_containing("no acknowledgement of block 0 after 5 tries");
    assert!(log.contains("tftp \"sub/image.bin\" no acknowledgement of block 0 after 5 tries"), "{log}");
    let output = std::process::Command::new("curl")
        .args(["-s", "-S"])
        .arg(format!("tftp://{}/sub/image.bin", served.tftp))
        .output()
        .expect("curl runs");
    assert!(output.status.success(), "the slot is free again: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.stdout, expected(&served));
}
