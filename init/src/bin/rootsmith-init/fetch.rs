//! Fetch rootfs.img over HTTP: every chunk is checked against the chunk list
//! before a byte of it is unpacked, a broken download resumes with a Range
//! request at the last verified chunk, and the cpio is unpacked as it streams,
//! so the squashfs lands in tmpfs once, with no second copy in RAM.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rootsmith_init::contract::{ChunkList, ROOTFS_COOKIE, ROOTFS_SQUASHFS};
use rootsmith_init::cpio::{CpioSink, CpioStream};
use rootsmith_init::http::{self, Body, Url};
use rootsmith_init::verify::{ChunkVerifier, VerifyError};

use crate::log;

/// Why a fetch stopped.
pub enum FetchError {
    /// Bad data: no retry can fix it.
    Fatal(String),
    /// The network or the server: worth resuming.
    Transient(String),
}

impl From<VerifyError> for FetchError {
    fn from(error: VerifyError) -> Self {
        FetchError::Fatal(error.to_string())
    }
}

impl From<io::Error> for FetchError {
    fn from(error: io::Error) -> Self {
        FetchError::Transient(error.to_string())
    }
}

/// Writes the two entries rootfs.img may hold into `dir`; refuses any other.
struct Unpack {
    dir: PathBuf,
    file: Option<File>,
}

impl CpioSink for Unpack {
    fn begin(&mut self, name: &str, _mode: u32, _size: u64) -> io::Result<()> {
        if name != ROOTFS_SQUASHFS && name != ROOTFS_COOKIE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("rootfs.img holds an unexpected entry {name:?}")));
        }
        self.file = Some(File::create(self.dir.join(name))?);
        Ok(())
    }
    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.as_mut().expect("begin came first").write_all(bytes)
    }
    fn end(&mut self) -> io::Result<()> {
        self.file.take();
        Ok(())
    }
}

fn connect(url: &Url) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{} resolves to no address", url.host));
    for address in (url.host.as_str(), url.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, Duration::from_secs(10)) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = error,
        }
    }
    Err(last)
}

struct Progress {
    started: Instant,
    next_report: u64,
    size: u64,
}

impl Progress {
    fn tick(&mut self, done: u64) {
        if done >= self.next_report || done == self.size {
            let seconds = self.started.elapsed().as_secs_f64().max(0.001);
            log!("fetched {}% ({} of {} MiB, {:.1} MiB/s)", done * 100 / self.size.max(1), done >> 20, self.size >> 20, done as f64 / 1048576.0 / seconds);
            self.next_report = done + self.size / 10 + 1;
        }
    }
}

/// One GET from the verifier's position to the end (or a failure).
fn attempt(url: &Url, verifier: &mut ChunkVerifier, cpio: &mut CpioStream, unpack: &mut Unpack, progress: &mut Progress) -> Result<(), FetchError> {
    let from = verifier.verified();
    let mut stream = connect(url)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(url.request(from).as_bytes())?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let head = http::read_head(&mut reader)?;
    let mut skip = 0u64;
    match head.status {
        200 => skip = from,
        206 if head.range_start() == Some(from) => {}
        206 => return Err(FetchError::Transient(format!("asked for bytes from {from}, the server sent a range starting at {:?}", head.range_start()))),
        status @ 400..=499 => return Err(FetchError::Fatal(format!("the server answered {status} for {}", url.path))),
        status => return Err(FetchError::Transient(format!("the server answered {status}"))),
    }
    let mut body = Body::new(&head, reader);
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = body.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        let mut data = &buffer[..read];
        if skip > 0 {
            // A server that ignores Range resends from byte 0.
            let drop = skip.min(read as u64) as usize;
            skip -= drop as u64;
            data = &data[drop..];
        }
        verifier.push(data, &mut |chunk: &[u8]| -> Result<(), FetchError> {
            cpio.push(chunk, unpack).map_err(|error| FetchError::Fatal(format!("unpacking rootfs.img: {error}")))
        })?;
        progress.tick(verifier.verified());
    }
    verifier.finish().map_err(|error| match error {
        // The connection closed early: resume.
        VerifyError::TooShort { .. } => FetchError::Transient(error.to_string()),
        other => FetchError::Fatal(other.to_string()),
    })
}

/// Fetch `url` into `dir` (root.squashfs and root.cookie), checked against `list`.
pub fn fetch(url: &str, list: &ChunkList, dir: &Path, retries: u32) -> Result<(), String> {
    let url = Url::parse(url)?;
    std::fs::create_dir_all(dir).map_err(|error| format!("creating {}: {error}", dir.display()))?;
    let mut verifier = ChunkVerifier::new(list, 0);
    let mut cpio = CpioStream::new();
    let mut unpack = Unpack { dir: dir.to_path_buf(), file: None };
    let mut progress = Progress { started: Instant::now(), next_report: 0, size: list.size };
    let mut backoff = Duration::from_millis(500);
    let mut failures = 0;
    log!("fetching http://{}:{}{} ({} bytes, {} chunks of {} KiB)", url.host, url.port, url.path, list.size, list.digests.len(), list.chunk_size >> 10);
    loop {
        match attempt(&url, &mut verifier, &mut cpio, &mut unpack, &mut progress) {
            Ok(()) => break,
            Err(FetchError::Fatal(message)) => return Err(message),
            Err(FetchError::Transient(message)) => {
                failures += 1;
                if failures > retries {
                    return Err(format!("fetching {}: {message}; gave up after {retries} retries", url.path));
                }
                verifier.discard_partial();
                log!("download broke ({message}); resuming at verified byte {} in {:.1} s (retry {failures} of {retries})", verifier.verified(), backoff.as_secs_f64());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    if !cpio.done() {
        return Err("rootfs.img ended without its cpio trailer".into());
    }
    let seconds = progress.started.elapsed().as_secs_f64();
    log!("rootfs.img verified: {} chunks, {} bytes in {seconds:.1} s", list.digests.len(), list.size);
    Ok(())
}
