//! A streaming reader of newc cpio archives: bytes come in pieces of any size
//! (as they arrive from the network), entries go out to a sink as they are
//! read, and nothing is buffered beyond one header.

use std::io;

/// Where the entries of an archive go.
pub trait CpioSink {
    fn begin(&mut self, name: &str, mode: u32, size: u64) -> io::Result<()>;
    fn data(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn end(&mut self) -> io::Result<()>;
}

const HEADER_LEN: usize = 110;

#[derive(Debug)]
enum State {
    Header,
    Name { len: usize, padded: usize, mode: u32, size: u64 },
    Data { left: u64, pad: usize },
    Pad { left: usize },
    Done,
}

pub struct CpioStream {
    state: State,
    pending: Vec<u8>,
    /// Bytes consumed, for error messages.
    offset: u64,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn pad4(n: u64) -> u64 {
    (4 - n % 4) % 4
}

impl Default for CpioStream {
    fn default() -> Self {
        Self::new()
    }
}

impl CpioStream {
    pub fn new() -> Self {
        CpioStream { state: State::Header, pending: Vec::new(), offset: 0 }
    }

    /// Whether the trailer has been read.
    pub fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub fn push(&mut self, mut data: &[u8], sink: &mut dyn CpioSink) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                State::Header => {
                    let take = (HEADER_LEN - self.pending.len()).min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.offset += take as u64;
                    if self.pending.len() == HEADER_LEN {
                        self.state = self.header()?;
                        self.pending.clear();
                    }
                }
                State::Name { len, padded, mode, size } => {
                    let take = (*padded - self.pending.len()).min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.offset += take as u64;
                    if self.pending.len() == *padded {
                        let name = std::str::from_utf8(&self.pending[..*len - 1])
                            .map_err(|_| invalid(format!("cpio entry name at byte {} is not UTF-8", self.offset)))?
                            .to_string();
                        let (mode, size) = (*mode, *size);
                        self.pending.clear();
                        if name == "TRAILER!!!" {
                            self.state = State::Done;
                        } else {
                            sink.begin(&name, mode, size)?;
                            self.state = State::Data { left: size, pad: pad4(size) as usize };
                            if size == 0 {
                                sink.end()?;
                            }
                        }
                    }
                }
                State::Data { left, pad } => {
                    if *left == 0 {
                        self.state = State::Pad { left: *pad };
                        continue;
                    }
                    let take = (*left).min(data.len() as u64) as usize;
                    sink.data(&data[..take])?;
                    *left -= take as u64;
                    data = &data[take..];
                    self.offset += take as u64;
                    if *left == 0 {
                        sink.end()?;
                        self.state = State::Pad { left: *pad };
                    }
                }
                State::Pad { left } => {
                    let take = (*left).min(data.len());
                    *left -= take;
                    data = &data[take..];
                    self.offset += take as u64;
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                // Padding after the trailer (the archive is padded so that a
                // next one starts aligned) is not read.
                State::Done => return Ok(()),
            }
        }
        if let State::Pad { left: 0 } = self.state {
            self.state = State::Header;
        }
        Ok(())
    }

    fn header(&self) -> io::Result<State> {
        let header = &self.pending;
        let start = self.offset - HEADER_LEN as u64;
        if &header[..6] != b"070701" && &header[..6] != b"070702" {
            return Err(invalid(format!("no newc cpio header at byte {start}")));
        }
        let field = |index: usize| -> io::Result<u64> {
            let text = std::str::from_utf8(&header[6 + index * 8..14 + index * 8])
                .map_err(|_| invalid(format!("bad cpio header at byte {start}")))?;
            u64::from_str_radix(text, 16).map_err(|_| invalid(format!("bad cpio header at byte {start}")))
        };
        let mode = field(1)? as u32;
        let size = field(6)?;
        let name_len = field(11)? as usize;
        if name_len == 0 || name_len > 4096 {
            return Err(invalid(format!("cpio entry at byte {start} has a name of {name_len} bytes")));
        }
        let padded = name_len + pad4((HEADER_LEN + name_len) as u64) as usize;
        Ok(State::Name { len: name_len, padded, mode, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Default)]
    struct Collect {
        entries: Vec<(String, u32, Vec<u8>)>,
        open: bool,
    }

    impl CpioSink for Collect {
        fn begin(&mut self, name: &str, mode: u32, size: u64) -> io::Result<()> {
            assert!(!self.open);
            self.open = true;
            self.entries.push((name.to_string(), mode, Vec::with_capacity(size as usize)));
            Ok(())
        }
        fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.entries.last_mut().unwrap().2.extend_from_slice(bytes);
            Ok(())
        }
        fn end(&mut self) -> io::Result<()> {
            assert!(self.open);
            self.open = false;
            Ok(())
        }
    }

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (name, data)) in entries.iter().enumerate() {
            let mut writer = cpio::newc::Builder::new(name)
                .ino(ino as u32)
                .mode(0o100644)
                .nlink(1)
                .write(&mut out, data.len() as u32);
            writer.write_all(data).unwrap();
            writer.finish().unwrap();
        }
        cpio::newc::trailer(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_entries_from_pieces_of_any_size() {
        let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let bytes = archive(&[("root.squashfs", &big), ("empty", b""), ("root.cookie", b"abc\n")]);
        for piece in [1, 2, 7, 110, 4096, bytes.len()] {
            let mut stream = CpioStream::new();
            let mut sink = Collect::default();
            for part in bytes.chunks(piece) {
                stream.push(part, &mut sink).unwrap();
            }
            assert!(stream.done(), "piece {piece}");
            assert_eq!(sink.entries.len(), 3);
            assert_eq!(sink.entries[0], ("root.squashfs".into(), 0o100644, big.clone()));
            assert_eq!(sink.entries[1].2, b"");
            assert_eq!(sink.entries[2].2, b"abc\n");
        }
    }

    #[test]
    fn refuses_what_is_not_newc() {
        let mut stream = CpioStream::new();
        let error = stream.push(&[b'x'; 200], &mut Collect::default()).unwrap_err();
        assert!(error.to_string().contains("no newc cpio header at byte 0"), "{error}");
    }

    #[test]
    fn an_unfinished_archive_is_not_done() {
        let bytes = archive(&[("a", b"12345")]);
        let mut stream = CpioStream::new();
        stream.push(&bytes[..120], &mut Collect::default()).unwrap();
        assert!(!stream.done());
    }
}
