//! A read-only TFTP server (RFC 1350) with the option extension (RFC 2347),
//! `blksize` (RFC 2348) and `tsize` / `timeout` (RFC 2349), for firmware that
//! can only load its first stage (iPXE, PXELINUX) over TFTP. It serves the
//! same directory as `serve`'s HTTP, with the same path rule (nothing outside
//! it), a bounded number of sessions, and retransmission of unacknowledged
//! blocks. A block not acknowledged within its tries' time ends the transfer,
//! whatever else the client sends meanwhile. Write requests are refused.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::hosts::served::ServedInventory;
use super::http::{printable_log, resolve, AccessLog};

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// Tries per block before a session is given up: the block is sent again
/// each `timeout` (2 s, or the client's), and the transfer ends when it is not
/// acknowledged `TRIES` timeouts after it was first sent.
const TRIES: u32 = 5;

/// A read request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub filename: String,
    pub mode: String,
    /// Options the client asked for, names lower-cased, in order.
    pub options: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    Read(ReadRequest),
    Write,
    Ack(u16),
    Error(u16, String),
    Other(u16),
}

pub fn parse(packet: &[u8]) -> Option<Packet> {
    let opcode = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    let rest = &packet[2..];
    Some(match opcode {
        RRQ => {
            let mut fields = rest.split(|b| *b == 0).map(|field| String::from_utf8_lossy(field).into_owned());
            let filename = fields.next()?;
            let mode = fields.next()?.to_ascii_lowercase();
            let mut options = Vec::new();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if name.is_empty() {
                    break;
                }
                options.push((name.to_ascii_lowercase(), value));
            }
            Packet::Read(ReadRequest { filename, mode, options })
        }
        WRQ => Packet::Write,
        ACK if rest.len() >= 2 => Packet::Ack(u16::from_be_bytes([rest[0], rest[1]])),
        ERROR if rest.len() >= 2 => Packet::Error(
            u16::from_be_bytes([rest[0], rest[1]]),
            String::from_utf8_lossy(&rest[2..]).trim_end_matches('\0').to_string(),
        ),
        other => Packet::Other(other),
    })
}

pub fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let mut packet = vec![0, ERROR as u8];
    packet.extend_from_slice(&code.to_be_bytes());
    packet.extend_from_slice(message.as_bytes());
    packet.push(0);
    packet
}

fn data_packet(block: u16, data: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(4 + data.len());
    packet.extend_from_slice(&DATA.to_be_bytes());
    packet.extend_from_slice(&block.to_be_bytes());
    packet.extend_from_slice(data);
    packet
}

/// The options this server takes, with the values it grants.
pub fn negotiate(options: &[(String, String)], size: u64) -> (usize, Duration, Vec<(String, String)>) {
    let (mut blksize, mut timeout, mut granted) = (512usize, Duration::from_secs(2), Vec::new());
    for (name, value) in options {
        match name.as_str() {
            "blksize" => {
                if let Ok(asked) = value.parse::<usize>() {
                    // Above 1468 a block no longer fits one Ethernet frame.
                    blksize = asked.clamp(8, 65464);
                    granted.push((name.clone(), blksize.to_string()));
                }
            }
            "tsize" => granted.push((name.clone(), size.to_string())),
            "timeout" => {
                if let Ok(seconds @ 1..=255) = value.parse::<u64>() {
                    timeout = Duration::from_secs(seconds);
                    granted.push((name.clone(), seconds.to_string()));
                }
            }
            _ => {}
        }
    }
    (blksize, timeout, granted)
}

pub struct TftpServer {
    socket: UdpSocket,
    root: PathBuf,
    max_sessions: usize,
    log: AccessLog,
    hosts: Option<Arc<ServedInventory>>,
}

impl TftpServer {
    pub fn bind(root: &std::path::Path, addr: &str, max_sessions: usize, log: AccessLog) -> Result<TftpServer> {
        let root = root.canonicalize().with_context(|| format!("serving {}", root.display()))?;
        let socket = UdpSocket::bind(addr).with_context(|| format!("listening for TFTP on {addr}"))?;
        Ok(TftpServer { socket, root, max_sessions, log: printable_log(log), hosts: None })
    }

    /// Answer for the per-host files of an inventory too.
    pub fn with_hosts(mut self, hosts: Arc<ServedInventory>) -> TftpServer {
        self.hosts = Some(hosts);
        self
    }

    /// The bytes to send for `name`: a generated per-host file, or a file under the root.
    fn open(&self, name: &str) -> std::result::Result<(Box<dyn Read + Send>, u64), String> {
        if let Some(generated) = self.hosts.as_ref().and_then(|hosts| hosts.file(name.trim_start_matches('/'), None)) {
            let text = generated.map_err(|error| format!("{error:#}"))?;
            let size = text.len() as u64;
            return Ok((Box::new(std::io::Cursor::new(text.into_bytes())), size));
        }
        let private = |path: &std::path::Path| self.hosts.as_ref().is_some_and(|hosts| hosts.is_private(path));
        let file = resolve(&self.root, name)
            .filter(|path| path.is_file() && !private(path))
            .and_then(|path| std::fs::File::open(path).ok())
            .ok_or("file not found")?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((Box::new(file), size))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("a bound socket has an address")
    }

    /// Answer read requests until the process ends; each transfer runs on its
    /// own socket (its own transfer id) in its own thread.
    pub fn run(self) {
        let active = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(self);
        let mut buffer = [0u8; 1024];
        loop {
            let Ok((len, peer)) = shared.socket.recv_from(&mut buffer) else { continue };
            let request = match parse(&buffer[..len]) {
                Some(Packet::Read(request)) => request,
                Some(Packet::Write) => {
                    let _ = shared.socket.send_to(&error_packet(2, "this server is read-only"), peer);
                    (shared.log)(&format!("{peer} tftp write refused"));
                    continue;
                }
                _ => continue,
            };
            if active.fetch_add(1, Ordering::SeqCst) >= shared.max_sessions {
                active.fetch_sub(1, Ordering::SeqCst);
                let _ = shared.socket.send_to(&error_packet(0, "too many transfers, try again"), peer);
                continue;
            }
            let (server, active) = (shared.clone(), active.clone());
            std::thread::spawn(move || {
                let outcome = server.transfer(&request, peer);
                (server.log)(&format!("{peer} tftp \"{}\" {}", request.filename, outcome));
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }

    pub fn spawn(self) -> SocketAddr {
        let addr = self.local_addr();
        std::thread::spawn(move || self.run());
        addr
    }

    fn transfer(&self, request: &ReadRequest, peer: SocketAddr) -> String {
        let Ok(socket) = UdpSocket::bind((self.local_addr().ip(), 0)) else { return "no socket".into() };
        let name = format!("/{}", request.filename.trim_start_matches('/'));
        let (mut file, size) = match self.open(&name) {
            Ok(opened) => opened,
            Err(message) => {
                let _ = socket.send_to(&error_packet(1, &message), peer);
                return message;
            }
        };
        let (blksize, timeout, granted) = negotiate(&request.options, size);
        // With options, an OACK first, acknowledged as block 0.
        if !granted.is_empty() {
            let mut oack = OACK.to_be_bytes().to_vec();
            for (name, value) in &granted {
                oack.extend_from_slice(name.as_bytes());
                oack.push(0);
                oack.extend_from_slice(value.as_bytes());
                oack.push(0);
            }
            if let Err(outcome) = send_until_acked(&socket, peer, &oack, 0, timeout) {
                return outcome;
            }
        }
        let mut buffer = vec![0u8; blksize];
        let mut sent = 0u64;
        // Block numbers wrap after 65535 blocks, as most clients expect.
        let mut block: u16 = 1;
        loop {
            let mut filled = 0;
            while filled < blksize {
                match file.read(&mut buffer[filled..]) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => filled += read,
                }
            }
            if let Err(outcome) =
                send_until_acked(&socket, peer, &data_packet(block, &buffer[..filled]), block, timeout)
            {
                return outcome;
            }
            sent += filled as u64;
            if filled < blksize {
                return format!("sent {sent} bytes in blocks of {blksize}");
            }
            block = block.wrapping_add(1);
        }
    }
}

/// Send `packet` until `peer` acknowledges `block`, retransmitting each
/// `timeout`, `TRIES` times in all. Duplicate or old acknowledgements are
/// ignored (no resend on them, which would double every later block), and
/// like any other packet that is not the acknowledgement they do not put off
/// the next resend or the end: time counts, not packets.
fn send_until_acked(
    socket: &UdpSocket,
    peer: SocketAddr,
    packet: &[u8],
    block: u16,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let mut reply = [0u8; 516];
    for _ in 0..TRIES {
        socket.send_to(packet, peer).map_err(|error| error.to_string())?;
        let resend_at = Instant::now() + timeout;
        loop {
            let left = resend_at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left)).map_err(|error| error.to_string())?;
            match socket.recv_from(&mut reply) {
                Ok((len, from)) if from == peer => match parse(&reply[..len]) {
                    Some(Packet::Ack(acked)) if acked == block => return Ok(()),
                    Some(Packet::Error(code, message)) => return Err(format!("client error {code}: {message}")),
                    _ => {}
                },
                Ok((_, from)) => {
                    // Another host on this transfer's port: tell it, carry on.
                    let _ = socket.send_to(&error_packet(5, "unknown transfer id"), from);
                }
                Err(_) => break,
            }
        }
    }
    Err(format!("no acknowledgement of block {block} after {TRIES} tries"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_with_options() {
        let packet = b"\x00\x01boot.ipxe\x00octet\x00BLKSIZE\x001468\x00tsize\x000\x00";
        assert_eq!(
            parse(packet),
            Some(Packet::Read(ReadRequest {
                filename: "boot.ipxe".into(),
                mode: "octet".into(),
                options: vec![("blksize".into(), "1468".into()), ("tsize".into(), "0".into())]
            }))
        );
        assert_eq!(parse(b"\x00\x04\x00\x07"), Some(Packet::Ack(7)));
        assert_eq!(parse(b"\x00\x05\x00\x01nope\x00"), Some(Packet::Error(1, "nope".into())));
        assert_eq!(parse(b"\x00\x02f\x00octet\x00"), Some(Packet::Write));
        assert_eq!(parse(b"\x00"), None);
    }

    #[test]
    fn negotiates_blksize_tsize_and_timeout() {
        let options = vec![
            ("blksize".to_string(), "100000".to_string()),
            ("tsize".to_string(), "0".to_string()),
            ("timeout".to_string(), "3".to_string()),
            ("windowsize".to_string(), "4".to_string()),
        ];
        let (blksize, timeout, granted) = negotiate(&options, 4242);
        assert_eq!((blksize, timeout), (65464, Duration::from_secs(3)));
        assert_eq!(
            granted,
            vec![
                ("blksize".to_string(), "65464".to_string()),
                ("tsize".to_string(), "4242".to_string()),
                ("timeout".to_string(), "3".to_string())
            ]
        );
        assert_eq!(negotiate(&[], 1).0, 512);
    }
}
