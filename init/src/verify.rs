//! Streaming verification of rootfs.img against its chunk list: bytes are
//! gathered into one chunk, the chunk is hashed, and only a chunk whose digest
//! matches is handed on. Nothing unverified ever reaches the sink.

use sha2::{Digest, Sha256};

use crate::contract::ChunkList;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// A chunk's digest differs from the list.
    Mismatch { index: usize, offset: u64, expected: String, actual: String },
    /// More bytes than the list's size.
    TooLong { size: u64 },
    /// The stream ended before the list's size.
    TooShort { received: u64, size: u64 },
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::Mismatch { index, offset, expected, actual } => {
                write!(f, "rootfs.img chunk {index} at byte offset {offset} does not match: expected sha256 {expected}, got {actual}")
            }
            VerifyError::TooLong { size } => {
                write!(f, "rootfs.img is longer than the {size} bytes its chunk list gives")
            }
            VerifyError::TooShort { received, size } => write!(f, "rootfs.img ended at byte {received} of {size}"),
        }
    }
}

impl std::error::Error for VerifyError {}

pub struct ChunkVerifier<'a> {
    list: &'a ChunkList,
    /// The next chunk to complete.
    index: usize,
    buffer: Vec<u8>,
}

impl<'a> ChunkVerifier<'a> {
    /// Start at chunk `index` (0, or where a resumed download picks up).
    pub fn new(list: &'a ChunkList, index: usize) -> Self {
        ChunkVerifier { list, index, buffer: Vec::with_capacity(list.chunk_size as usize) }
    }

    /// Bytes verified and handed on so far: where a resumed download starts.
    pub fn verified(&self) -> u64 {
        self.index as u64 * self.list.chunk_size
    }

    /// Drop the bytes of a chunk not yet complete (before a resume).
    pub fn discard_partial(&mut self) {
        self.buffer.clear();
    }

    /// Take bytes; each chunk that completes and matches goes to `sink`.
    pub fn push<E: From<VerifyError>>(
        &mut self,
        mut data: &[u8],
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            if self.index >= self.list.digests.len() {
                return Err(VerifyError::TooLong { size: self.list.size }.into());
            }
            let want = self.list.chunk_len(self.index) as usize - self.buffer.len();
            let take = want.min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if take == want {
                self.check()?;
                sink(&self.buffer)?;
                self.buffer.clear();
                self.index += 1;
            }
        }
        Ok(())
    }

    /// The stream ended: every chunk must have come.
    pub fn finish(&self) -> Result<(), VerifyError> {
        let received = self.verified().min(self.list.size) + self.buffer.len() as u64;
        if self.index < self.list.digests.len() {
            return Err(VerifyError::TooShort { received, size: self.list.size });
        }
        Ok(())
    }

    fn check(&self) -> Result<(), VerifyError> {
        check_chunk(self.list, self.index, &self.buffer)
    }
}

/// Check one whole chunk against the list.
pub fn check_chunk(list: &ChunkList, index: usize, chunk: &[u8]) -> Result<(), VerifyError> {
    let Some(expected) = list.digests.get(index) else {
        return Err(VerifyError::TooLong { size: list.size });
    };
    let actual: [u8; 32] = Sha256::digest(chunk).into();
    if &actual != expected || chunk.len() as u64 != list.chunk_len(index) {
        return Err(VerifyError::Mismatch {
            index,
            offset: index as u64 * list.chunk_size,
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(list: &ChunkList, input: &[u8], piece: usize) -> (Vec<u8>, Result<(), VerifyError>) {
        let mut out = Vec::new();
        let mut verifier = ChunkVerifier::new(list, 0);
        let mut sink = |chunk: &[u8]| -> Result<(), VerifyError> {
            out.extend_from_slice(chunk);
            Ok(())
        };
        for part in input.chunks(piece) {
            if let Err(error) = verifier.push(part, &mut sink) {
                return (out, Err(error));
            }
        }
        let result = verifier.finish();
        (out, result)
    }

    fn data() -> Vec<u8> {
        (0..1000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn good_input_passes_whole_whatever_the_pieces() {
        let data = data();
        let list = ChunkList::from_reader(data.as_slice(), 64).unwrap();
        for piece in [1, 3, 64, 100, 1000] {
            let (out, result) = run(&list, &data, piece);
            assert_eq!(result, Ok(()));
            assert_eq!(out, data);
        }
    }

    #[test]
    fn a_flipped_byte_stops_at_its_chunk_before_it_is_handed_on() {
        let data = data();
        let list = ChunkList::from_reader(data.as_slice(), 64).unwrap();
        let mut bad = data.clone();
        bad[200] ^= 1;
        let (out, result) = run(&list, &bad, 50);
        assert_eq!(out, &data[..192], "only the three good chunks before it");
        match result {
            Err(VerifyError::Mismatch { index, offset, expected, actual }) => {
                assert_eq!((index, offset), (3, 192));
                assert_eq!(expected, hex::encode(list.digests[3]));
                assert_ne!(actual, expected);
            }
            other => panic!("{other:?}"),
        }
        let message = run(&list, &bad, 50).1.unwrap_err().to_string();
        assert!(message.contains("chunk 3 at byte offset 192"), "{message}");
    }

    #[test]
    fn short_and_long_input_are_refused() {
        let data = data();
        let list = ChunkList::from_reader(data.as_slice(), 64).unwrap();
        let (_, result) = run(&list, &data[..999], 10);
        assert_eq!(result, Err(VerifyError::TooShort { received: 999, size: 1000 }));
        let (_, result) = run(&list, &data[..640], 64);
        assert_eq!(result, Err(VerifyError::TooShort { received: 640, size: 1000 }));
        let mut long = data.clone();
        long.push(0);
        let (out, result) = run(&list, &long, 7);
        assert_eq!(result, Err(VerifyError::TooLong { size: 1000 }));
        assert_eq!(out, data);
    }

    #[test]
    fn resumes_at_a_chunk_boundary() {
        let data = data();
        let list = ChunkList::from_reader(data.as_slice(), 64).unwrap();
        let mut verifier = ChunkVerifier::new(&list, 0);
        let mut out = Vec::new();
        let mut sink = |chunk: &[u8]| -> Result<(), VerifyError> {
            out.extend_from_slice(chunk);
            Ok(())
        };
        verifier.push(&data[..150], &mut sink).unwrap();
        assert_eq!(verifier.verified(), 128);
        verifier.discard_partial();
        verifier.push(&data[128..], &mut sink).unwrap();
        verifier.finish().unwrap();
        assert_eq!(out, data);
    }
}
