//! Fetch rootfs.img over HTTP: every chunk is checked against the chunk list
//! before a byte of it is unpacked, a broken download resumes with a Range
//! request at the first chunk not yet received whole, and the cpio is
//! unpacked as it streams, so the squashfs lands in tmpfs once, with no
//! second copy in RAM.
//!
//! With one CPU the receiving thread checks and unpacks each chunk itself.
//! With more, receiving, hashing and unpacking overlap: one hashing thread
//! per CPU checks chunks and a writer thread unpacks them in order, with at
//! most [`IN_FLIGHT`] chunks waiting, which bounds the memory used. (Threads
//! cost more than they give on one CPU: measured under QEMU, about 25 %.)

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rootsmith_init::contract::{ChunkList, ROOTFS_COOKIE, ROOTFS_SQUASHFS};
use rootsmith_init::cpio::{CpioSink, CpioStream};
use rootsmith_init::http::{self, Body, Url};
use rootsmith_init::verify::{check_chunk, VerifyError};

use crate::log;

/// Chunks waiting for a hashing thread.
const IN_FLIGHT: usize = 2;

/// Why an attempt stopped.
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
        self.file.as_mut().expect("begin came first").write_all(bytes)
    }
    fn end(&mut self) -> io::Result<()> {
        self.file.take();
        Ok(())
    }
}

/// Unpacks checked chunks, in order, and reports progress.
struct Writer {
    list: Arc<ChunkList>,
    cpio: CpioStream,
    unpack: Unpack,
    started: Instant,
    next_report: u64,
}

impl Writer {
    fn new(list: Arc<ChunkList>, dir: &Path) -> Writer {
        Writer {
            list,
            cpio: CpioStream::new(),
            unpack: Unpack { dir: dir.to_path_buf(), file: None },
            started: Instant::now(),
            next_report: 0,
        }
    }

    fn write(&mut self, index: usize, chunk: &[u8]) -> Result<(), String> {
        self.cpio.push(chunk, &mut self.unpack).map_err(|error| format!("unpacking rootfs.img: {error}"))?;
        let (done, size) = (index as u64 * self.list.chunk_size + chunk.len() as u64, self.list.size);
        if done >= self.next_report || done == size {
            let seconds = self.started.elapsed().as_secs_f64().max(0.001);
            log!(
                "fetched {}% ({} of {} MiB, {:.1} MiB/s)",
                done * 100 / size.max(1),
                done >> 20,
                size >> 20,
                done as f64 / 1048576.0 / seconds
            );
            self.next_report = done + size / 10 + 1;
        }
        Ok(())
    }
}

type Checked = (usize, Vec<u8>, Result<(), VerifyError>);

/// Where whole chunks go: checked and unpacked here, or handed to threads.
enum Chunks {
    Inline {
        writer: Writer,
        spare: Option<Vec<u8>>,
    },
    Threads {
        to_hashers: SyncSender<(usize, Vec<u8>)>,
        recycled: Receiver<Vec<u8>>,
        writer: JoinHandle<Result<Writer, String>>,
    },
}

impl Chunks {
    fn new(list: &ChunkList, dir: &Path) -> Chunks {
        let list = Arc::new(list.clone());
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        if cpus == 1 {
            return Chunks::Inline { writer: Writer::new(list, dir), spare: None };
        }
        let hashers = cpus.min(4);
        let (to_hashers, chunks) = mpsc::sync_channel::<(usize, Vec<u8>)>(IN_FLIGHT);
        let (checked_sender, checked) = mpsc::sync_channel::<Checked>(IN_FLIGHT + hashers);
        let (recycle, recycled) = mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + hashers + 2);
        let chunks = Arc::new(Mutex::new(chunks));
        for _ in 0..hashers {
            let (list, chunks, checked_sender) = (list.clone(), chunks.clone(), checked_sender.clone());
            std::thread::spawn(move || hasher(&list, &chunks, &checked_sender));
        }
        let writer = Writer::new(list, dir);
        let writer = std::thread::spawn(move || write_in_order(writer, checked, recycle));
        Chunks::Threads { to_hashers, recycled, writer }
    }

    /// A buffer for the next chunk, reused when one is free (sparing page faults and zeroing).
    fn buffer(&mut self) -> Vec<u8> {
        match self {
            Chunks::Inline { spare, .. } => spare.take().unwrap_or_default(),
            Chunks::Threads { recycled, .. } => recycled.try_recv().unwrap_or_default(),
        }
    }

    fn take(&mut self, index: usize, chunk: Vec<u8>) -> Result<(), FetchError> {
        match self {
            Chunks::Inline { writer, spare } => {
                check_chunk(&writer.list, index, &chunk).map_err(|error| FetchError::Fatal(error.to_string()))?;
                writer.write(index, &chunk).map_err(FetchError::Fatal)?;
                *spare = Some(chunk);
                Ok(())
            }
            // A closed channel means the writer stopped at a bad chunk; `finish` says which.
            Chunks::Threads { to_hashers, .. } => {
                to_hashers.send((index, chunk)).map_err(|_| FetchError::Fatal("the chunk check stopped".into()))
            }
        }
    }

    /// Wait for every chunk taken to be checked and unpacked.
    fn finish(self) -> Result<Writer, String> {
        match self {
            Chunks::Inline { writer, .. } => Ok(writer),
            Chunks::Threads { to_hashers, writer, .. } => {
                drop(to_hashers);
                writer.join().map_err(|_| "the chunk writer panicked".to_string())?
            }
        }
    }
}

/// A hashing thread: check each chunk it takes, pass it on with the verdict.
fn hasher(list: &ChunkList, chunks: &Mutex<Receiver<(usize, Vec<u8>)>>, checked: &SyncSender<Checked>) {
    loop {
        let next = chunks.lock().map(|receiver| receiver.recv());
        let Ok(Ok((index, chunk))) = next else { return };
        let verdict = check_chunk(list, index, &chunk);
        if checked.send((index, chunk, verdict)).is_err() {
            return;
        }
    }
}

/// The writer thread: hashers finish out of order; unpack in order and stop
/// at the first bad chunk.
fn write_in_order(
    mut writer: Writer,
    checked: Receiver<Checked>,
    recycle: SyncSender<Vec<u8>>,
) -> Result<Writer, String> {
    let mut waiting = BTreeMap::new();
    let mut expected = 0usize;
    for (index, chunk, verdict) in checked {
        waiting.insert(index, (chunk, verdict));
        while let Some((chunk, verdict)) = waiting.remove(&expected) {
            verdict.map_err(|error| error.to_string())?;
            writer.write(expected, &chunk)?;
            expected += 1;
            // Recycling only spares allocations: with the channel full or the
            // receiver gone, the buffer is simply freed.
            let _ = recycle.try_send(chunk);
        }
    }
    Ok(writer)
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

/// One GET from chunk `*next` to the end (or a failure); `*next` counts the
/// chunks received whole and taken.
fn attempt(url: &Url, list: &ChunkList, next: &mut usize, chunks: &mut Chunks) -> Result<(), FetchError> {
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
        status @ 400..=499 => return Err(FetchError::Fatal(format!("the server answered {status} for {}", url.path))),
        status => return Err(FetchError::Transient(format!("the server answered {status}"))),
    }
    let mut body = Body::new(&head, reader);
    if skip > 0 {
        // A server that ignores Range resends from byte 0.
        io::copy(&mut (&mut body).take(skip), &mut io::sink())?;
    }
    while *next < list.digests.len() {
        let want = list.chunk_len(*next) as usize;
        let mut buffer = chunks.buffer();
        buffer.resize(want, 0);
        let mut filled = 0;
        while filled < want {
            match body.read(&mut buffer[filled..])? {
                0 => break,
                read => filled += read,
            }
        }
        if filled < want {
            let received = from.max(*next as u64 * list.chunk_size) + filled as u64;
            return Err(FetchError::Transient(VerifyError::TooShort { received, size: list.size }.to_string()));
        }
        chunks.take(*next, buffer)?;
        *next += 1;
    }
    if body.read(&mut [0u8; 1])? > 0 {
        return Err(FetchError::Fatal(VerifyError::TooLong { size: list.size }.to_string()));
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
    let mut chunks = Chunks::new(list, dir);
    let mut next = 0usize;
    let mut backoff = Duration::from_millis(500);
    let mut failures = 0;
    let outcome = loop {
        match attempt(&url, list, &mut next, &mut chunks) {
            Ok(()) => break Ok(()),
            Err(FetchError::Fatal(message)) => break Err(message),
            Err(FetchError::Transient(message)) => {
                failures += 1;
                if failures > retries {
                    break Err(format!("fetching {}: {message}; gave up after {retries} retries", url.path));
                }
                log!("download broke ({message}); resuming at verified byte {} in {:.1} s (retry {failures} of {retries})", next as u64 * list.chunk_size, backoff.as_secs_f64());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    // A bad chunk is the cause even when the receiver noticed something second.
    let writer = chunks.finish()?;
    outcome?;
    if !writer.cpio.done() {
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
