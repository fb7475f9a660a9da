//! Fetch rootfs.img over HTTP: every chunk is checked against the chunk list
//! before a byte of it is unpacked, a broken download resumes with a Range
//! request at the first chunk not yet received whole, and the cpio is
//! unpacked as it streams, so the squashfs lands in tmpfs once, with no
//! second copy in RAM.
//!
//! Receiving, hashing and unpacking overlap: this thread reads whole chunks
//! from the socket, one hashing thread per CPU checks them, and a writer
//! thread unpacks them in order. At most [`IN_FLIGHT`] chunks wait for a
//! hasher, which bounds the memory used.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rootsmith_init::contract::{ChunkList, ROOTFS_COOKIE, ROOTFS_SQUASHFS};
use rootsmith_init::cpio::{CpioSink, CpioStream};
use rootsmith_init::http::{self, Body, Url};
use rootsmith_init::verify::{check_chunk, VerifyError};

use crate::log;

/// Chunks waiting between the receiving and the checking thread.
const IN_FLIGHT: usize = 2;

/// Why a fetch stopped.
enum FetchError {
    /// Bad data: no retry can fix it.
    Fatal(String),
    /// The network or the server: worth resuming.
    Transient(String),
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
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("rootfs.img holds an unexpected entry {name:?}"),
            ));
        }
        self.file = Some(File::create(self.dir.join(name))?);
        Ok(())
    }
    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file
            .as_mut()
            .expect("begin came first")
            .write_all(bytes)
    }
    fn end(&mut self) -> io::Result<()> {
        self.file.take();
        Ok(())
    }
}

fn connect(url: &Url) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} resolves to no address", url.host),
    );
    for address in (url.host.as_str(), url.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, Duration::from_secs(10)) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = error,
        }
    }
    Err(last)
}

type Checked = (usize, Vec<u8>, Result<(), VerifyError>);

/// A hashing thread: check each chunk it takes, pass it on with the verdict.
fn hasher(
    list: Arc<ChunkList>,
    chunks: Arc<Mutex<Receiver<(usize, Vec<u8>)>>>,
    checked: SyncSender<Checked>,
) {
    loop {
        let next = chunks.lock().map(|receiver| receiver.recv());
        let Ok(Ok((index, chunk))) = next else { return };
        let verdict = check_chunk(&list, index, &chunk);
        if checked.send((index, chunk, verdict)).is_err() {
            return;
        }
    }
}

/// The writer thread: take checked chunks in order, stop at the first bad
/// one, unpack the good ones, report progress.
fn writer(
    list: Arc<ChunkList>,
    dir: PathBuf,
    checked: Receiver<Checked>,
    recycle: SyncSender<Vec<u8>>,
) -> Result<bool, String> {
    let mut cpio = CpioStream::new();
    let mut unpack = Unpack { dir, file: None };
    let started = Instant::now();
    let mut next_report = 0u64;
    let mut waiting = BTreeMap::new();
    let mut expected = 0usize;
    for (index, chunk, verdict) in checked {
        // Hashers finish out of order; unpacking is in order.
        waiting.insert(index, (chunk, verdict));
        while let Some((chunk, verdict)) = waiting.remove(&expected) {
            verdict.map_err(|error| error.to_string())?;
            cpio.push(&chunk, &mut unpack)
                .map_err(|error| format!("unpacking rootfs.img: {error}"))?;
            let index = expected;
            expected += 1;
            let done = index as u64 * list.chunk_size + chunk.len() as u64;
            if done >= next_report || done == list.size {
                let seconds = started.elapsed().as_secs_f64().max(0.001);
                log!(
                    "fetched {}% ({} of {} MiB, {:.1} MiB/s)",
                    done * 100 / list.size.max(1),
                    done >> 20,
                    list.size >> 20,
                    done as f64 / 1048576.0 / seconds
                );
                next_report = done + list.size / 10 + 1;
            }
            // Back to the receiver: reusing buffers spares page faults and zeroing.
            let _ = recycle.try_send(chunk);
        }
    }
    Ok(cpio.done())
}

/// One GET from chunk `*next` to the end (or a failure); `*next` counts the
/// chunks received whole and handed to the checker.
fn attempt(
    url: &Url,
    list: &ChunkList,
    next: &mut usize,
    to_checker: &SyncSender<(usize, Vec<u8>)>,
    recycled: &Receiver<Vec<u8>>,
) -> Result<(), FetchError> {
    let from = *next as u64 * list.chunk_size;
    let mut stream = connect(url)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(url.request(from).as_bytes())?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let head = http::read_head(&mut reader)?;
    let mut skip = 0u64;
    match head.status {
        200 => skip = from,
        206 if head.range_start() == Some(from) => {}
        206 => {
            return Err(FetchError::Transient(format!(
                "asked for bytes from {from}, the server sent a range starting at {:?}",
                head.range_start()
            )))
        }
        status @ 400..=499 => {
            return Err(FetchError::Fatal(format!(
                "the server answered {status} for {}",
                url.path
            )))
        }
        status => {
            return Err(FetchError::Transient(format!(
                "the server answered {status}"
            )))
        }
    }
    let mut body = Body::new(&head, reader);
    if skip > 0 {
        // A server that ignores Range resends from byte 0.
        io::copy(&mut (&mut body).take(skip), &mut io::sink())?;
    }
    while *next < list.digests.len() {
        let want = list.chunk_len(*next) as usize;
        let mut buffer = recycled.try_recv().unwrap_or_default();
        buffer.resize(want, 0);
        let mut filled = 0;
        while filled < want {
            match body.read(&mut buffer[filled..])? {
                0 => break,
                read => filled += read,
            }
        }
        if filled < want {
            let received = *next as u64 * list.chunk_size + filled as u64;
            return Err(FetchError::Transient(
                VerifyError::TooShort {
                    received,
                    size: list.size,
                }
                .to_string(),
            ));
        }
        if to_checker.send((*next, buffer)).is_err() {
            return Err(FetchError::Fatal("the checker stopped".into()));
        }
        *next += 1;
    }
    let mut extra = [0u8; 1];
    if body.read(&mut extra)? > 0 {
        return Err(FetchError::Fatal(
            VerifyError::TooLong { size: list.size }.to_string(),
        ));
    }
    Ok(())
}

/// Fetch `url` into `dir` (root.squashfs and root.cookie), checked against `list`.
pub fn fetch(url: &str, list: &ChunkList, dir: &Path, retries: u32) -> Result<(), String> {
    let url = Url::parse(url)?;
    std::fs::create_dir_all(dir).map_err(|error| format!("creating {}: {error}", dir.display()))?;
    log!(
        "fetching http://{}:{}{} ({} bytes, {} chunks of {} KiB)",
        url.host,
        url.port,
        url.path,
        list.size,
        list.digests.len(),
        list.chunk_size >> 10
    );
    let started = Instant::now();
    let hashers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let (to_checker, chunks) = mpsc::sync_channel::<(usize, Vec<u8>)>(IN_FLIGHT);
    let (checked_sender, checked) = mpsc::sync_channel::<Checked>(IN_FLIGHT + hashers);
    let shared_list = Arc::new(list.clone());
    let chunks = Arc::new(Mutex::new(chunks));
    for _ in 0..hashers {
        let (list, chunks, checked_sender) =
            (shared_list.clone(), chunks.clone(), checked_sender.clone());
        std::thread::spawn(move || hasher(list, chunks, checked_sender));
    }
    drop((chunks, checked_sender));
    let (recycle_sender, recycled) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + hashers + 2);
    let checker_thread = {
        let (list, dir) = (shared_list.clone(), dir.to_path_buf());
        std::thread::spawn(move || writer(list, dir, checked, recycle_sender))
    };
    let mut next = 0usize;
    let mut backoff = Duration::from_millis(500);
    let mut failures = 0;
    let outcome = loop {
        match attempt(&url, list, &mut next, &to_checker, &recycled) {
            Ok(()) => break Ok(()),
            Err(FetchError::Fatal(message)) => break Err(message),
            Err(FetchError::Transient(message)) => {
                failures += 1;
                if failures > retries {
                    break Err(format!(
                        "fetching {}: {message}; gave up after {retries} retries",
                        url.path
                    ));
                }
                log!(
                    "download broke ({message}); resuming at verified byte {} in {:.1} s (retry {failures} of {retries})",
                    next as u64 * list.chunk_size,
                    backoff.as_secs_f64()
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    drop(to_checker);
    let checked = checker_thread
        .join()
        .map_err(|_| "the checker thread panicked".to_string())?;
    // A bad chunk is the real cause even when the receiver saw it second.
    let complete = checked?;
    outcome?;
    if !complete {
        return Err("rootfs.img ended without its cpio trailer".into());
    }
    log!(
        "rootfs.img verified: {} chunks, {} bytes in {:.1} s",
        list.digests.len(),
        list.size,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
