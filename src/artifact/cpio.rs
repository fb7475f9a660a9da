//! The rootfs image: an uncompressed newc cpio holding `root.squashfs` first and
//! the cookie after it (the format is fixed in the init crate's contract).

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Result};
use rootsmith_init::contract::{BuildId, ChunkList, CHUNK_SIZE, ROOTFS_COOKIE, ROOTFS_SQUASHFS, SQUASHFS_MAGIC_OFFSET};
use sha2::{Digest, Sha256};

/// Where `root.squashfs`'s bytes start in a rootfs image: after its entry's header.
pub const SQUASHFS_OFFSET: u64 = SQUASHFS_MAGIC_OFFSET as u64;

/// A finished rootfs image: its build id, SHA-256 and chunk list.
#[derive(Debug)]
pub struct RootfsImage {
    pub build: BuildId,
    pub sha256: String,
    pub chunks: ChunkList,
}

/// A new rootfs image at `path`, positioned where the squashfs goes: the
/// squashfs is written there in place (not copied in afterwards), then
/// [`finish_rootfs_image`] adds what goes around it.
pub fn start_rootfs_image(path: &Path) -> Result<std::fs::File> {
    // Read back as well: finishing hashes the squashfs.
    let mut file =
        fs_err::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?.into_parts().0;
    file.seek(SeekFrom::Start(SQUASHFS_OFFSET))?;
    Ok(file)
}

/// Finish the image in `file` whose `squashfs_len` squashfs bytes are in
/// place: the squashfs entry's header before them; after them the build id
/// (the recipe `name` and the cookie of the squashfs's digest) and the
/// trailer. The squashfs is hashed three ways at once, each on a thread of
/// its own reading the image: its digest (for the cookie), the image's digest
/// and the image's chunk list (the init's contract); the last two take the
/// tail once the cookie is known.
pub fn finish_rootfs_image(file: &mut std::fs::File, squashfs_len: u64, name: &str, epoch: i64) -> Result<RootfsImage> {
    if squashfs_len > u32::MAX as u64 {
        bail!("the squashfs is {squashfs_len} bytes; a newc cpio entry holds at most 4 GiB");
    }
    let mtime = epoch.clamp(0, u32::MAX as i64) as u32;
    let header = cpio::newc::Builder::new(ROOTFS_SQUASHFS)
        .ino(1)
        .mode(0o100644)
        .nlink(1)
        .mtime(mtime)
        .write(Vec::new(), squashfs_len as u32)
        .finish()?;
    if header.len() as u64 != SQUASHFS_OFFSET {
        bail!("internal error: the squashfs entry's header is {} bytes, not {SQUASHFS_OFFSET}", header.len());
    }
    let image: &std::fs::File = file;
    // The squashfs's bytes, piece by piece, into `update`.
    let hash_squashfs = |update: &mut dyn FnMut(&[u8])| -> std::io::Result<()> {
        let mut buffer = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < squashfs_len {
            let len = (squashfs_len - at).min(buffer.len() as u64) as usize;
            image.read_exact_at(&mut buffer[..len], SQUASHFS_OFFSET + at)?;
            update(&buffer[..len]);
            at += len as u64;
        }
        Ok(())
    };
    let (squashfs, mut whole, mut chunks) = std::thread::scope(|scope| -> std::io::Result<_> {
        let whole = scope.spawn(|| {
            let mut whole = Sha256::new();
            whole.update(&header);
            hash_squashfs(&mut |piece| whole.update(piece)).map(|()| whole)
        });
        let chunks = scope.spawn(|| {
            let mut chunks = ChunkHasher::default();
            chunks.update(&header);
            hash_squashfs(&mut |piece| chunks.update(piece)).map(|()| chunks)
        });
        let mut squashfs = Sha256::new();
        hash_squashfs(&mut |piece| squashfs.update(piece))?;
        let whole = whole.join().expect("a hashing thread panicked")?;
        let chunks = chunks.join().expect("a hashing thread panicked")?;
        Ok((squashfs, whole, chunks))
    })?;
    let build = BuildId {
        cookie: rootsmith_init::contract::cookie_for(&hex::encode(squashfs.finalize())),
        name: name.to_string(),
    };
    // newc pads the squashfs's data to 4 bytes; then the cookie and the trailer.
    let mut tail =
        vec![0u8; ((SQUASHFS_OFFSET + squashfs_len).div_ceil(4) * 4 - (SQUASHFS_OFFSET + squashfs_len)) as usize];
    let cookie_line = build.to_text();
    let mut entry = cpio::newc::Builder::new(ROOTFS_COOKIE)
        .ino(2)
        .mode(0o100644)
        .nlink(1)
        .mtime(mtime)
        .write(&mut tail, cookie_line.len() as u32);
    entry.write_all(cookie_line.as_bytes())?;
    entry.finish()?;
    cpio::newc::trailer(&mut tail)?;
    whole.update(&tail);
    chunks.update(&tail);
    file.write_all_at(&header, 0)?;
    file.write_all_at(&tail, SQUASHFS_OFFSET + squashfs_len)?;
    let length = SQUASHFS_OFFSET + squashfs_len + tail.len() as u64;
    file.set_len(length)?;
    // newc pads every entry to 4 bytes, so the image already ends aligned.
    if !length.is_multiple_of(4) {
        bail!("internal error: rootfs image is {length} bytes, not a multiple of 4");
    }
    Ok(RootfsImage { build, sha256: hex::encode(whole.finalize()), chunks: chunks.finish() })
}

/// The SHA-256 and the chunk list of a rootfs image already written (one
/// read for both).
pub fn hash_rootfs_image(path: &Path) -> Result<(String, ChunkList)> {
    use std::io::Read;
    let mut file = crate::fileops::open_regular(path)?;
    let mut image = ImageHasher::default();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(image.finish());
        }
        image.update(&buffer[..read]);
    }
}

/// The SHA-256 and the chunk list of bytes given in pieces.
#[derive(Default)]
struct ImageHasher {
    whole: Sha256,
    chunks: ChunkHasher,
}

impl ImageHasher {
    fn update(&mut self, bytes: &[u8]) {
        self.whole.update(bytes);
        self.chunks.update(bytes);
    }

    fn finish(self) -> (String, ChunkList) {
        (hex::encode(self.whole.finalize()), self.chunks.finish())
    }
}

/// The chunk list of the bytes given to it.
#[derive(Default)]
struct ChunkHasher {
    chunk: Sha256,
    in_chunk: u64,
    size: u64,
    digests: Vec<[u8; 32]>,
}

impl ChunkHasher {
    fn update(&mut self, mut bytes: &[u8]) {
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (CHUNK_SIZE - self.in_chunk).min(bytes.len() as u64) as usize;
            self.chunk.update(&bytes[..take]);
            self.in_chunk += take as u64;
            bytes = &bytes[take..];
            if self.in_chunk == CHUNK_SIZE {
                self.digests.push(std::mem::take(&mut self.chunk).finalize().into());
                self.in_chunk = 0;
            }
        }
    }

    fn finish(mut self) -> ChunkList {
        if self.in_chunk > 0 {
            self.digests.push(self.chunk.finalize().into());
        }
        ChunkList { chunk_size: CHUNK_SIZE, size: self.size, digests: self.digests }
    }
}

/// Where `root.squashfs` lies in a rootfs image (offset, length), and the
/// build id the image carries.
pub fn read_rootfs_image(image: &Path) -> Result<(u64, u64, BuildId)> {
    read_rootfs_image_from(std::io::BufReader::new(fs_err::File::open(image)?), image)
}

/// [`read_rootfs_image`] of an image the caller opened (`image` names it in errors).
pub fn read_rootfs_image_from(
    mut file: impl std::io::Read + std::io::Seek,
    image: &Path,
) -> Result<(u64, u64, BuildId)> {
    use std::io::{Read, SeekFrom};
    let reader = cpio::NewcReader::new(&mut file)
        .map_err(|error| anyhow::anyhow!("{} is not a newc cpio: {error}", image.display()))?;
    if reader.entry().name() != ROOTFS_SQUASHFS {
        bail!("{}: the first entry is {:?}, not {ROOTFS_SQUASHFS}", image.display(), reader.entry().name());
    }
    let length = reader.entry().file_size() as u64;
    let name_len = ROOTFS_SQUASHFS.len() as u64 + 1;
    let offset = (110 + name_len).div_ceil(4) * 4;
    drop(reader);
    file.seek(SeekFrom::Start((offset + length).div_ceil(4) * 4))?;
    let mut reader = cpio::NewcReader::new(&mut file)
        .map_err(|error| anyhow::anyhow!("{}: no entry after {ROOTFS_SQUASHFS}: {error}", image.display()))?;
    if reader.entry().name() != ROOTFS_COOKIE {
        bail!("{}: the second entry is {:?}, not {ROOTFS_COOKIE}", image.display(), reader.entry().name());
    }
    let mut text = String::new();
    reader.read_to_string(&mut text)?;
    let build =
        BuildId::parse(&text).map_err(|error| anyhow::anyhow!("{}: {ROOTFS_COOKIE}: {error}", image.display()))?;
    Ok((offset, length, build))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rootsmith_init::contract::{SQUASHFS_MAGIC, SQUASHFS_MAGIC_OFFSET};

    #[test]
    fn squashfs_data_starts_at_the_contract_offset() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        let mut file = start_rootfs_image(&image).unwrap();
        file.write_all(b"hsqs and the rest").unwrap();
        let made = finish_rootfs_image(&mut file, 17, "t", 5).unwrap();
        drop(file);
        let bytes = fs_err::read(&image).unwrap();
        assert_eq!(&bytes[SQUASHFS_MAGIC_OFFSET..SQUASHFS_MAGIC_OFFSET + 4], SQUASHFS_MAGIC);
        assert_eq!(bytes.len() % 4, 0);
        let reader = cpio::NewcReader::new(bytes.as_slice()).unwrap();
        assert_eq!(reader.entry().name(), ROOTFS_SQUASHFS);
        let (offset, length, build) = read_rootfs_image(&image).unwrap();
        assert_eq!((offset, length), (SQUASHFS_MAGIC_OFFSET as u64, 17));
        assert_eq!(
            build.cookie,
            rootsmith_init::contract::cookie_for(&crate::digest::sha256_hex(b"hsqs and the rest"))
        );
        assert_eq!(build, made.build);
        assert_eq!(made.sha256, crate::digest::sha256_hex(&bytes));
        assert_eq!(made.chunks.to_text(), ChunkList::from_reader(bytes.as_slice(), CHUNK_SIZE).unwrap().to_text());
    }

    #[test]
    fn chunks_of_an_image_of_several_chunks_are_those_the_init_checks() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        let mut file = start_rootfs_image(&image).unwrap();
        // Longer than the read buffer and not a whole number of chunks.
        let squashfs: Vec<u8> = (0..(5 * CHUNK_SIZE as usize + 12_345)).map(|i| (i * 31 % 251) as u8).collect();
        file.write_all(&squashfs).unwrap();
        let made = finish_rootfs_image(&mut file, squashfs.len() as u64, "t", 5).unwrap();
        let bytes = fs_err::read(&image).unwrap();
        let expected = ChunkList::from_reader(bytes.as_slice(), CHUNK_SIZE).unwrap();
        assert_eq!(made.chunks.digests.len(), 6);
        assert_eq!(made.chunks.to_text(), expected.to_text());
        assert_eq!(made.sha256, crate::digest::sha256_hex(&bytes));
        assert_eq!(made.build.cookie, rootsmith_init::contract::cookie_for(&crate::digest::sha256_hex(&squashfs)));
    }

    #[test]
    fn hashing_a_written_image_gives_what_writing_it_gave() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        let mut file = start_rootfs_image(&image).unwrap();
        let squashfs = vec![7u8; 3 * CHUNK_SIZE as usize];
        file.write_all(&squashfs).unwrap();
        let made = finish_rootfs_image(&mut file, squashfs.len() as u64, "t", 5).unwrap();
        let (sha256, chunks) = hash_rootfs_image(&image).unwrap();
        assert_eq!((sha256, chunks.to_text()), (made.sha256, made.chunks.to_text()));
    }

    #[test]
    fn a_squashfs_over_4_gib_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = start_rootfs_image(&dir.path().join("img")).unwrap();
        assert!(finish_rootfs_image(&mut file, u32::MAX as u64 + 1, "t", 5)
            .unwrap_err()
            .to_string()
            .contains("at most 4 GiB"));
    }
}
