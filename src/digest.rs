//! SHA-256 digests, as lower-case hex: of bytes, of a reader, of a file.
//! Every content address in rootsmith (layers, outputs, artifacts, OCI blobs)
//! is one of these.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The digest of a regular file's bytes; an error names the file. Anything
/// else (a FIFO, a device) is an error before a byte is read.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    hash_opened(path, crate::fileops::open_regular(path)?)
}

/// Like [`hash_file`], refusing a symlink at `path` itself (for a walk of a
/// tree, where the symlink is an entry of its own).
pub fn hash_file_no_follow(path: &Path) -> std::io::Result<String> {
    hash_opened(path, crate::fileops::open_regular_no_follow(path)?)
}

fn hash_opened(path: &Path, file: std::fs::File) -> std::io::Result<String> {
    hash_reader(std::io::BufReader::with_capacity(1 << 16, file))
        .map_err(|error| std::io::Error::new(error.kind(), format!("{}: {error}", path.display())))
        .map(|(digest, _)| digest)
}

/// SHA-256 (hex) and length of everything `reader` gives.
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut reader, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// A writer that passes everything on to `inner` and hashes it on the way,
/// so a file just written needs no second read for its digest.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: std::io::Write> HashingWriter<W> {
    pub fn new(inner: W) -> HashingWriter<W> {
        HashingWriter { inner, hasher: Sha256::new() }
    }

    /// The writer, flushed, and the SHA-256 (hex) of what went through it.
    pub fn finish(mut self) -> std::io::Result<(W, String)> {
        self.inner.flush()?;
        Ok((self.inner, hex::encode(self.hasher.finalize())))
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that passes on what `inner` gives and hashes it on the way, so
/// what a stage reads can be checked against the digest its key was made of.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> HashingReader<R> {
        HashingReader { inner, hasher: Sha256::new(), len: 0 }
    }

    /// Read what is left to the end, then the SHA-256 (hex) and length of
    /// everything read through this reader.
    pub fn finish(mut self) -> std::io::Result<(String, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((hex::encode(self.hasher.finalize()), self.len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        self.len += read as u64;
        Ok(read)
    }
}

/// Whether `text` has the form of a SHA-256 hex digest (64 lower-case hex
/// digits): the check every digest from outside passes before it names a file.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_of_bytes_readers_and_files_agree() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs_err::write(&file, b"abc").unwrap();
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), expected);
        assert_eq!(hash_file(&file).unwrap(), expected);
        assert_eq!(hash_reader(&b"abc"[..]).unwrap(), (expected.to_string(), 3));
        assert!(is_sha256_hex(expected));
        assert!(!is_sha256_hex("../../etc/passwd"));
        assert!(!is_sha256_hex(&expected.to_uppercase()));
        let error = hash_file(&dir.path().join("missing")).unwrap_err();
        assert!(error.to_string().contains("missing"), "the error names the file: {error}");
        let mut reader = HashingReader::new(&b"abc"[..]);
        let mut first = [0u8; 1];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(reader.finish().unwrap(), (expected.to_string(), 3), "what is left is read too");
        let error = hash_file(Path::new("/dev/zero")).unwrap_err();
        assert!(error.to_string().contains("/dev/zero is a character device"), "{error}");
    }
}
