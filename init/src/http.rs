//! The HTTP/1.1 the init needs to fetch one file: URL parsing, the request,
//! the response head, and the body whether it is framed by Content-Length,
//! chunked, or by the server closing the connection.

use std::io::{self, BufRead, Read};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url}: only http:// URLs can be fetched (the chunk list makes TLS unnecessary for integrity)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host, port.parse().map_err(|_| format!("{url}: bad port {port}"))?)
            }
            _ => (authority, 80),
        };
        Ok(Url { host: host.trim_start_matches('[').trim_end_matches(']').to_string(), port, path: path.to_string() })
    }

    /// Whether the host is [`crate::contract::DHCP_SERVER_HOST`], to be
    /// replaced by the DHCP server's address.
    pub fn names_dhcp_server(&self) -> bool {
        self.host.eq_ignore_ascii_case(crate::contract::DHCP_SERVER_HOST)
    }

    /// `http://HOST:PORT/PATH` (the port always written).
    pub fn to_text(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("http://{host}:{}{}", self.port, self.path)
    }

    /// The request for this URL, from byte `from` on when it is not 0.
    pub fn request(&self, from: u64) -> String {
        let host = if self.port == 80 { self.host.clone() } else { format!("{}:{}", self.host, self.port) };
        let range = if from > 0 { format!("Range: bytes={from}-\r\n") } else { String::new() };
        format!("GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rootsmith-init\r\nAccept-Encoding: identity\r\n{range}Connection: close\r\n\r\n", self.path)
    }
}

/// `url` with the host [`crate::contract::DHCP_SERVER_HOST`] replaced by
/// `server`, the address of the DHCP server that gave the lease (port and path
/// kept). Any other URL is returned as it is. A URL naming the DHCP server
/// when the lease named none is an error that says so.
pub fn at_dhcp_server(url: &str, server: Option<std::net::Ipv4Addr>) -> Result<String, String> {
    let mut parsed = Url::parse(url)?;
    if !parsed.names_dhcp_server() {
        return Ok(url.to_string());
    }
    let Some(server) = server.filter(|address| !address.is_unspecified() && !address.is_broadcast()) else {
        return Err(format!("{url} names the DHCP server, but the lease named none (no option 54 and no siaddr); put the server's address in the URL"));
    };
    parsed.host = server.to_string();
    Ok(parsed.to_text())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|value| value.trim().parse().ok())
    }

    pub fn chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|value| value.to_ascii_lowercase().contains("chunked"))
    }

    /// The first byte of a 206 response, from `Content-Range: bytes A-B/N`.
    pub fn range_start(&self) -> Option<u64> {
        let value = self.header("content-range")?.trim().strip_prefix("bytes ")?;
        value.split('-').next()?.trim().parse().ok()
    }
}

fn line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader.take(16 * 1024).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the response head"));
    }
    Ok(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string())
}

pub fn read_head(reader: &mut impl BufRead) -> io::Result<ResponseHead> {
    let status_line = line(reader)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|code| code.parse().ok());
    let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP/1.x status line: {status_line:?}"),
        ));
    };
    let mut headers = Vec::new();
    loop {
        let header = line(reader)?;
        if header.is_empty() {
            break;
        }
        if let Some((key, value)) = header.split_once(':') {
            headers.push((key.trim().to_string(), value.trim().to_string()));
        }
        if headers.len() > 100 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "more than 100 response headers"));
        }
    }
    Ok(ResponseHead { status, headers })
}

/// A response body as a reader that ends where the body ends. A body framed by
/// Content-Length that ends early is an error (`UnexpectedEof`), so a broken
/// download is told apart from a finished one.
pub enum Body<R> {
    Length { inner: R, left: u64 },
    Chunked { inner: R, left: u64, finished: bool },
    Close { inner: R },
}

impl<R: BufRead> Body<R> {
    pub fn new(head: &ResponseHead, inner: R) -> Body<R> {
        if head.chunked() {
            Body::Chunked { inner, left: 0, finished: false }
        } else if let Some(length) = head.content_length() {
            Body::Length { inner, left: length }
        } else {
            Body::Close { inner }
        }
    }
}

fn early_eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed in the middle of the body")
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Length { inner, left } => {
                if *left == 0 {
                    return Ok(0);
                }
                let max = (*left).min(buf.len() as u64) as usize;
                let read = inner.read(&mut buf[..max])?;
                if read == 0 {
                    return Err(early_eof());
                }
                *left -= read as u64;
                Ok(read)
            }
            Body::Chunked { inner, left, finished } => {
                if *finished {
                    return Ok(0);
                }
                if *left == 0 {
                    let size_line = line(inner)?;
                    let size = size_line.split(';').next().unwrap_or("").trim();
                    *left = u64::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size line {size_line:?}"))
                    })?;
                    if *left == 0 {
                        // Trailers, then the empty line.
                        while !line(inner)?.is_empty() {}
                        *finished = true;
                        return Ok(0);
                    }
                }
                let max = (*left).min(buf.len() as u64) as usize;
                let read = inner.read(&mut buf[..max])?;
                if read == 0 {
                    return Err(early_eof());
                }
                *left -= read as u64;
                if *left == 0 && !line(inner)?.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "no CRLF after a chunk"));
                }
                Ok(read)
            }
            Body::Close { inner } => inner.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dhcp_server_host_becomes_the_lease_server() {
        let server = Some(std::net::Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(
            at_dhcp_server("http://dhcp-server:8080/demo/1.0/demo-1.0-rootfs.img", server).unwrap(),
            "http://10.0.2.2:8080/demo/1.0/demo-1.0-rootfs.img"
        );
        assert_eq!(at_dhcp_server("http://DHCP-Server/r.img?x=1", server).unwrap(), "http://10.0.2.2:80/r.img?x=1");
        assert_eq!(at_dhcp_server("http://dhcp-server", server).unwrap(), "http://10.0.2.2:80/");
        // Other hosts, and host names that only start like it, stay as written.
        assert_eq!(at_dhcp_server("http://192.0.2.7:81/r.img", server).unwrap(), "http://192.0.2.7:81/r.img");
        assert_eq!(at_dhcp_server("http://dhcp-server.lab/r.img", server).unwrap(), "http://dhcp-server.lab/r.img");
        assert_eq!(at_dhcp_server("http://x/dhcp-server/r.img", None).unwrap(), "http://x/dhcp-server/r.img");
        let error = at_dhcp_server("http://dhcp-server/r.img", None).unwrap_err();
        assert!(error.contains("the lease named none"), "{error}");
        assert!(at_dhcp_server("http://dhcp-server/r.img", Some(std::net::Ipv4Addr::UNSPECIFIED)).is_err());
        assert!(at_dhcp_server("https://dhcp-server/r.img", server).unwrap_err().contains("only http://"));
        assert!(at_dhcp_server("http://dhcp-server:x/r.img", server).unwrap_err().contains("bad port"));
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            Url::parse("http://10.0.2.2:8080/a/b.img?x=1").unwrap(),
            Url { host: "10.0.2.2".into(), port: 8080, path: "/a/b.img?x=1".into() }
        );
        assert_eq!(
            Url::parse("http://boot.test").unwrap(),
            Url { host: "boot.test".into(), port: 80, path: "/".into() }
        );
        assert_eq!(Url::parse("http://[fd00::1]:81/r").unwrap().host, "fd00::1");
        assert!(Url::parse("https://x/").unwrap_err().contains("only http://"));
        assert!(Url::parse("http://x:port/").unwrap_err().contains("bad port"));
        assert!(Url::parse("http:///x").unwrap_err().contains("no host"));
    }

    #[test]
    fn requests_a_range_when_resuming() {
        let url = Url::parse("http://h:81/r.img").unwrap();
        assert!(!url.request(0).contains("Range"));
        let request = url.request(4096);
        assert!(request.starts_with("GET /r.img HTTP/1.1\r\nHost: h:81\r\n"));
        assert!(request.contains("Range: bytes=4096-\r\n") && request.ends_with("\r\n\r\n"));
    }

    fn body(response: &[u8]) -> (ResponseHead, io::Result<Vec<u8>>) {
        let mut reader = io::BufReader::new(response);
        let head = read_head(&mut reader).unwrap();
        let mut out = Vec::new();
        let result = Body::new(&head, reader).read_to_end(&mut out).map(|_| out);
        (head, result)
    }

    #[test]
    fn reads_bodies_by_length_chunks_or_close() {
        let (head, data) = body(
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\ncontent-range: bytes 10-14/15\r\n\r\nhelloEXTRA",
        );
        assert_eq!((head.status, head.range_start()), (206, Some(10)));
        assert_eq!(data.unwrap(), b"hello");
        let (head, data) =
            body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n");
        assert!(head.chunked());
        assert_eq!(data.unwrap(), b"abcde");
        let (head, data) = body(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil the end");
        assert_eq!(head.content_length(), None);
        assert_eq!(data.unwrap(), b"until the end");
    }

    #[test]
    fn a_body_cut_short_is_an_error() {
        let (_, data) = body(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort");
        assert_eq!(data.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let (_, data) = body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc");
        assert_eq!(data.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let mut reader = io::BufReader::new(&b"garbage\r\n\r\n"[..]);
        assert!(read_head(&mut reader).unwrap_err().to_string().contains("not an HTTP/1.x status line"));
    }
}
