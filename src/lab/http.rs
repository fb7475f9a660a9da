//! The HTTP/1.1 side of `rootsmith serve`: reading requests (bounded heads
//! and bodies, each with a time limit for the whole of it), writing responses
//! that always carry a Content-Length (iPXE crawls without one), single byte
//! ranges, ETag and If-None-Match, keep-alive, percent-decoding and confining
//! request paths to a root, and a listener with a bounded number of
//! connections that keeps room for new clients. What a request gets is the
//! [`Handler`]'s business (`serve.rs`: bundles, hosts files, reports).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Where access log lines go.
pub type AccessLog = Arc<dyn Fn(&str) + Send + Sync>;

/// `log` with every control character of a line escaped (`\u{1b}`): request
/// targets and TFTP file names are the clients' text, and the log is often
/// read on a terminal.
pub fn printable_log(log: AccessLog) -> AccessLog {
    Arc::new(move |line: &str| {
        let escaped: String =
            line.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect();
        log(&escaped)
    })
}

/// Answers requests; the listener does the protocol around it.
pub trait Handler: Send + Sync + 'static {
    fn respond(&self, request: &Request, local: SocketAddr, peer: &str) -> Response;
}

#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub http10: bool,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The token of `Authorization: Bearer TOKEN` (RFC 6750).
    pub fn bearer_token(&self) -> Option<&str> {
        let (scheme, token) = self.header("authorization")?.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    pub fn keep_alive(&self) -> bool {
        match self.header("connection").map(str::to_ascii_lowercase) {
            Some(value) if value.contains("close") => false,
            Some(value) if value.contains("keep-alive") => true,
            _ => !self.http10,
        }
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    File { file: std::fs::File, start: u64, len: u64 },
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

pub fn error(status: u16, message: &str) -> Response {
    Response {
        status,
        headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
        body: Body::Bytes(format!("{status} {}: {message}\n", reason(status)).into_bytes()),
    }
}

pub fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("ipxe" | "cfg" | "txt") => "text/plain; charset=utf-8",
        _ if path.file_name().is_some_and(|n| n == "SHA256SUMS" || n == "default") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `%2e%2E` and friends decoded; `None` for malformed escapes or NUL.
pub fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.contains('\0')).then_some(text)
}

/// The file under `root` a request path names, or `None` when it would leave
/// `root` (`..`, or a symlink pointing out).
pub fn resolve(root: &Path, request_path: &str) -> Option<PathBuf> {
    let path = request_path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path)?;
    let mut resolved = root.to_path_buf();
    for component in Path::new(decoded.trim_start_matches('/')).components() {
        match component {
            Component::Normal(part) => resolved.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    let canonical = resolved.canonicalize().ok()?;
    canonical.starts_with(root).then_some(canonical)
}

/// `bytes=A-B`, `bytes=A-`, `bytes=-N` against `size`: `Some(Ok((start, len)))`,
/// `Some(Err(()))` when unsatisfiable, `None` to ignore (absent, or several ranges).
pub fn parse_range(value: Option<&str>, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        // RFC 9110 14.1.1: a suffix longer than the representation selects all
        // of it; an empty representation has no last bytes to select.
        if suffix == 0 || size == 0 {
            return Some(Err(()));
        }
        let len = suffix.min(size);
        (size - len, len)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            size.saturating_sub(1)
        } else {
            last.parse::<u64>().ok()?.min(size.saturating_sub(1))
        };
        if start >= size || end < start {
            return Some(Err(()));
        }
        (start, end - start + 1)
    };
    Some(Ok(range))
}

pub fn etag(metadata: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("\"{:x}-{:x}-{modified:x}\"", metadata.ino(), metadata.len())
}

pub fn etag_matches(header: Option<&str>, tag: &str) -> bool {
    header.is_some_and(|value| {
        value.split(',').any(|candidate| {
            let candidate = candidate.trim();
            candidate == "*" || candidate.trim_start_matches("W/") == tag
        })
    })
}

/// Text made for a request (a menu, a per-host file), with an ETag of its bytes.
pub fn generated(request: &Request, text: String) -> Response {
    let tag = format!("\"{}\"", &crate::digest::sha256_hex(text.as_bytes())[..32]);
    file_like(request, Body::Bytes(text.into_bytes()), tag, "text/plain; charset=utf-8")
}

/// Headers, conditional and range handling shared by files and generated text.
pub fn file_like(request: &Request, body: Body, tag: String, kind: &'static str) -> Response {
    let size = body.len();
    let mut headers = vec![("ETag", tag.clone()), ("Accept-Ranges", "bytes".into()), ("Content-Type", kind.into())];
    if etag_matches(request.header("if-none-match"), &tag) {
        return Response { status: 304, headers, body: Body::Empty };
    }
    match parse_range(request.header("range"), size) {
        None => Response { status: 200, headers, body },
        Some(Err(())) => {
            headers.push(("Content-Range", format!("bytes */{size}")));
            Response { status: 416, headers, body: Body::Empty }
        }
        Some(Ok((start, len))) => {
            headers.push(("Content-Range", format!("bytes {start}-{}/{size}", start + len - 1)));
            let body = match body {
                Body::File { file, .. } => Body::File { file, start, len },
                Body::Bytes(bytes) => Body::Bytes(bytes[start as usize..(start + len) as usize].to_vec()),
                Body::Empty => Body::Empty,
            };
            Response { status: 206, headers, body }
        }
    }
}

/// The whole request head, and on a kept-alive connection the wait for it,
/// must arrive within this; a read timeout alone would let a client that
/// sends a byte now and then keep its connection forever.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body (a report's log) must arrive within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// A response write that makes no progress for this long ends the connection
/// (a client that stops reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound listener serving at most `max_connections` at once. When all are
/// taken, a new connection takes the slot of the one that has waited longest
/// for a request head (that one is closed); only when every connection is
/// busy with a request does the new one get `503`.
pub struct Listener {
    listener: TcpListener,
    max_connections: usize,
    /// Request bodies (reports) larger than this are refused.
    max_body: u64,
    log: AccessLog,
}

impl Listener {
    pub fn bind(addr: &str, max_connections: usize, max_body: u64, log: AccessLog) -> Result<Listener> {
        let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        Ok(Listener { listener, max_connections, max_body, log: printable_log(log) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serve `handler` until the process ends.
    pub fn run(self, handler: Arc<dyn Handler>) {
        let shared = Arc::new(self);
        let slots = Arc::new(Slots { max: shared.max_connections, table: Mutex::new(SlotTable::default()) });
        for stream in shared.listener.incoming() {
            let mut stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    // Out of descriptors (or another passing failure): wait a
                    // moment instead of spinning on the same error.
                    (shared.log)(&format!("accept: {error}"));
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let Some((slot, evicted)) = Slots::admit(&slots, &stream, &peer) else {
                let _ = write_response(&mut stream, error(503, "too many connections"), false, false);
                (shared.log)(&format!("{peer} - 503 too many connections"));
                continue;
            };
            if let Some(evicted) = evicted {
                (shared.log)(&format!(
                    "{evicted} - closed: it waited longest for a request head, and {peer} needed its slot"
                ));
            }
            let (listener, handler) = (shared.clone(), handler.clone());
            std::thread::spawn(move || {
                // The slot is freed when `slot` drops, even if the handler panics.
                let _ = listener.connection(stream, &peer, &slot, handler.as_ref());
            });
        }
    }

    fn connection(&self, stream: TcpStream, peer: &str, slot: &Slot, handler: &dyn Handler) -> io::Result<()> {
        let local = stream.local_addr()?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(Deadline { stream, until: Instant::now() + HEAD_TIMEOUT });
        loop {
            slot.waiting();
            reader.get_mut().until = Instant::now() + HEAD_TIMEOUT;
            let head = read_request(&mut reader)?;
            if !slot.busy() {
                // Closed for a new client while the head came in.
                return Ok(());
            }
            let request = match head {
                Some(Ok(mut request)) => {
                    reader.get_mut().until = Instant::now() + BODY_TIMEOUT;
                    if let Err((status, message)) = read_body(&mut reader, &mut request, self.max_body) {
                        // Logged first: a client that is gone may not take the answer.
                        (self.log)(&format!("{peer} \"{} {}\" {status} {message}", request.method, request.path));
                        let _ = write_response(&mut writer, error(status, &message), false, false);
                        return Ok(());
                    }
                    request
                }
                Some(Err((status, message))) => {
                    // Logged first: a client that is gone may not take the answer.
                    (self.log)(&format!("{peer} \"?\" {status} {message}"));
                    let _ = write_response(&mut writer, error(status, &message), false, false);
                    return Ok(());
                }
                None => return Ok(()),
            };
            let keep_alive = request.keep_alive();
            let response = handler.respond(&request, local, peer);
            let (status, length) = (response.status, response.body.len());
            (self.log)(&format!("{peer} \"{} {}\" {status} {length}", request.method, request.path));
            write_response(&mut writer, response, request.method == "HEAD", keep_alive)?;
            if !keep_alive {
                return Ok(());
            }
        }
    }
}

/// The connections being served, and since when each has waited for a request head.
struct Slots {
    max: usize,
    table: Mutex<SlotTable>,
}

#[derive(Default)]
struct SlotTable {
    next: u64,
    open: HashMap<u64, Open>,
}

struct Open {
    /// A handle to close the connection with.
    stream: TcpStream,
    peer: String,
    /// `Some` while it waits for a request head, `None` while it is served.
    waiting_since: Option<Instant>,
}

impl Slots {
    fn table(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for `stream`: a free one, else the one of the connection that
    /// has waited longest for a request head, which is closed (its peer is
    /// returned). `None` when every connection is being served.
    fn admit(slots: &Arc<Slots>, stream: &TcpStream, peer: &str) -> Option<(Slot, Option<String>)> {
        let handle = stream.try_clone().ok()?;
        let mut table = slots.table();
        let mut evicted = None;
        if table.open.len() >= slots.max {
            let (&oldest, _) = table
                .open
                .iter()
                .filter_map(|(id, open)| Some((id, open.waiting_since?)))
                .min_by_key(|(_, since)| *since)?;
            let open = table.open.remove(&oldest).expect("just found");
            let _ = open.stream.shutdown(Shutdown::Both);
            evicted = Some(open.peer);
        }
        let id = table.next;
        table.next += 1;
        table.open.insert(id, Open { stream: handle, peer: peer.to_string(), waiting_since: Some(Instant::now()) });
        Some((Slot { slots: slots.clone(), id }, evicted))
    }
}

/// One connection's place among the `max_connections`; freed on drop.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
}

impl Slot {
    /// The connection waits for a request head: it may be closed for a new client.
    fn waiting(&self) {
        if let Some(open) = self.slots.table().open.get_mut(&self.id) {
            open.waiting_since.get_or_insert_with(Instant::now);
        }
    }

    /// The connection has a request to answer; `false` when it was closed for a new client.
    fn busy(&self) -> bool {
        self.slots.table().open.get_mut(&self.id).map(|open| open.waiting_since = None).is_some()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.table().open.remove(&self.id);
    }
}

/// A connection's reading side whose reads all end by `until`: a limit for
/// the whole of a head or body, not for each read.
struct Deadline {
    stream: TcpStream,
    until: Instant,
}

impl Read for Deadline {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buffer)
    }
}

fn timed_out(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// `None` at a clean end of the connection (or when no request came before
/// the head's deadline); `Some(Err)` with a status for a malformed request or
/// a head that did not arrive in time.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Result<Request, (u16, String)>>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let read = match reader.take(8192).read_until(b'\n', &mut line) {
            Ok(read) => read,
            Err(error) if timed_out(&error) && total == 0 && line.is_empty() => return Ok(None),
            Err(error) if timed_out(&error) => {
                return Ok(Some(Err((
                    408,
                    format!("the request head did not arrive within {} s", HEAD_TIMEOUT.as_secs()),
                ))))
            }
            Err(error) => return Err(error),
        };
        if read == 0 {
            return Ok(None);
        }
        total += read;
        if total > 32 * 1024 || !line.ends_with(b"\n") {
            return Ok(Some(Err((400, "request head too long".into()))));
        }
        let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string();
        if text.is_empty() {
            if lines.is_empty() {
                continue;
            }
            break;
        }
        lines.push(text);
    }
    let mut parts = lines[0].split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(Some(Err((400, format!("malformed request line {:?}", lines[0])))));
    };
    if !version.starts_with("HTTP/1.") {
        return Ok(Some(Err((400, format!("unsupported protocol {version}")))));
    }
    let headers = lines[1..]
        .iter()
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Some(Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        http10: version == "HTTP/1.0",
        body: Vec::new(),
    })))
}

/// The body of a request that has one, up to `max` bytes; else a status and why.
fn read_body(reader: &mut impl BufRead, request: &mut Request, max: u64) -> Result<(), (u16, String)> {
    let Some(length) = request.header("content-length") else { return Ok(()) };
    let length: u64 = length.parse().map_err(|_| (400, format!("bad Content-Length {length:?}")))?;
    if length > max {
        return Err((413, format!("a request body is at most {max} bytes")));
    }
    let mut body = Vec::with_capacity(length as usize);
    match reader.take(length).read_to_end(&mut body) {
        Err(error) if timed_out(&error) => {
            return Err((408, format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs())))
        }
        Err(error) => return Err((400, error.to_string())),
        Ok(_) => {}
    }
    if body.len() as u64 != length {
        return Err((400, "the body ended early".into()));
    }
    request.body = body;
    Ok(())
}

pub fn write_response(stream: &mut TcpStream, response: Response, head_only: bool, keep_alive: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nServer: rootsmith\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    for (key, value) in &response.headers {
        head.push_str(&format!("{key}: {value}\r\n"));
    }
    head.push_str(if keep_alive { "Connection: keep-alive\r\n\r\n" } else { "Connection: close\r\n\r\n" });
    stream.write_all(head.as_bytes())?;
    if head_only {
        return stream.flush();
    }
    match response.body {
        Body::Empty => {}
        Body::Bytes(bytes) => stream.write_all(&bytes)?,
        Body::File { mut file, start, len } => {
            io::Seek::seek(&mut file, io::SeekFrom::Start(start))?;
            io::copy(&mut (&mut file).take(len), stream)?;
        }
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Some(Ok((0, 10))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Some(Ok((90, 10))));
        assert_eq!(parse_range(Some("bytes=-30"), 100), Some(Ok((70, 30))));
        assert_eq!(parse_range(Some("bytes=-300"), 100), Some(Ok((0, 100))));
        assert_eq!(parse_range(Some("bytes=-5"), 3), Some(Ok((0, 3))));
        assert_eq!(parse_range(Some("bytes=-5"), 0), Some(Err(())), "nothing to select in an empty file");
        assert_eq!(parse_range(Some("bytes=0-"), 0), Some(Err(())));
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Some(Err(())));
        assert_eq!(parse_range(Some("bytes=95-200"), 100), Some(Ok((95, 5))));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Some(Err(())));
        assert_eq!(parse_range(Some("bytes=5-2"), 100), Some(Err(())));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), None);
        assert_eq!(parse_range(Some("lines=1-2"), 100), None);
        assert_eq!(parse_range(None, 100), None);
    }

    #[test]
    fn paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs_err::create_dir_all(root.join("b")).unwrap();
        fs_err::write(root.join("b/f"), "x").unwrap();
        fs_err::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("b/out")).unwrap();
        let root = root.canonicalize().unwrap();
        assert_eq!(resolve(&root, "/b/f?x=1"), Some(root.join("b/f")));
        assert_eq!(resolve(&root, "/b/./f"), Some(root.join("b/f")));
        assert_eq!(resolve(&root, "/b/../../secret"), None);
        assert_eq!(resolve(&root, "/%2e%2e/secret"), None);
        assert_eq!(resolve(&root, "/b/out"), None, "a symlink out of the root");
        assert_eq!(resolve(&root, "/b/%00"), None);
    }

    #[test]
    fn bearer_tokens_and_printable_log_lines() {
        let request = |value: &str| Request {
            method: "POST".into(),
            path: "/".into(),
            headers: vec![("authorization".into(), value.into())],
            http10: false,
            body: Vec::new(),
        };
        assert_eq!(request("Bearer abc").bearer_token(), Some("abc"));
        assert_eq!(request("bearer  abc ").bearer_token(), Some("abc"));
        assert_eq!(request("Basic abc").bearer_token(), None);
        assert_eq!(request("Bearer").bearer_token(), None);

        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = lines.clone();
        let log = printable_log(Arc::new(move |line: &str| kept.lock().unwrap().push(line.to_string())));
        log("GET /\x1b[2J\u{9b}x\r\n");
        assert_eq!(lines.lock().unwrap()[0], "GET /\\u{1b}[2J\\u{9b}x\\r\\n");
    }

    #[test]
    fn etags_match_lists_and_stars() {
        assert!(etag_matches(Some("\"a\", \"b\""), "\"b\""));
        assert!(etag_matches(Some("W/\"b\""), "\"b\""));
        assert!(etag_matches(Some("*"), "\"b\""));
        assert!(!etag_matches(Some("\"c\""), "\"b\""));
        assert!(!etag_matches(None, "\"b\""));
    }
}
