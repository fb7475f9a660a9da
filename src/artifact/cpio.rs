//! The rootfs image: an uncompressed newc cpio holding `root.squashfs` first and
//! the cookie after it (the format is fixed in the init crate's contract).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};
use rootsmith_init::contract::{BuildId, ROOTFS_COOKIE, ROOTFS_SQUASHFS};

pub fn write_rootfs_image(squashfs: &Path, build: &BuildId, output: &Path, epoch: i64) -> Result<()> {
    let size = fs_err::metadata(squashfs)?.len();
    if size > u32::MAX as u64 {
        bail!("{} is {size} bytes; a newc cpio entry holds at most 4 GiB", squashfs.display());
    }
    let mtime = epoch.clamp(0, u32::MAX as i64) as u32;
    let mut out = std::io::BufWriter::new(fs_err::File::create(output)?);
    let mut source = fs_err::File::open(squashfs)?;
    let mut entry = cpio::newc::Builder::new(ROOTFS_SQUASHFS).ino(1).mode(0o100644).nlink(1).mtime(mtime).write(&mut out, size as u32);
    std::io::copy(&mut source, &mut entry)?;
    entry.finish()?;
    let cookie_line = build.to_text();
    let mut entry = cpio::newc::Builder::new(ROOTFS_COOKIE).ino(2).mode(0o100644).nlink(1).mtime(mtime).write(&mut out, cookie_line.len() as u32);
    entry.write_all(cookie_line.as_bytes())?;
    entry.finish()?;
    let mut out = cpio::newc::trailer(out)?;
    out.flush()?;
    drop(out);
    // newc pads every entry to 4 bytes, so the image already ends aligned.
    let length = fs_err::metadata(output)?.len();
    if length % 4 != 0 {
        bail!("internal error: rootfs image is {length} bytes, not a multiple of 4");
    }
    Ok(())
}

/// Where `root.squashfs` lies in a rootfs image (offset, length), and the
/// build id the image carries.
pub fn read_rootfs_image(image: &Path) -> Result<(u64, u64, BuildId)> {
    read_rootfs_image_from(std::io::BufReader::new(fs_err::File::open(image)?), image)
}

/// [`read_rootfs_image`] of an image the caller opened (`image` names it in errors).
pub fn read_rootfs_image_from(mut file: impl std::io::Read + std::io::Seek, image: &Path) -> Result<(u64, u64, BuildId)> {
    use std::io::{Read, SeekFrom};
    let reader = cpio::NewcReader::new(&mut file).map_err(|error| anyhow::anyhow!("{} is not a newc cpio: {error}", image.display()))?;
    if reader.entry().name() != ROOTFS_SQUASHFS {
        bail!("{}: the first entry is {:?}, not {ROOTFS_SQUASHFS}", image.display(), reader.entry().name());
    }
    let length = reader.entry().file_size() as u64;
    let name_len = ROOTFS_SQUASHFS.len() as u64 + 1;
    let offset = (110 + name_len).div_ceil(4) * 4;
    drop(reader);
    file.seek(SeekFrom::Start((offset + length).div_ceil(4) * 4))?;
    let mut reader = cpio::NewcReader::new(&mut file).map_err(|error| anyhow::anyhow!("{}: no entry after {ROOTFS_SQUASHFS}: {error}", image.display()))?;
    if reader.entry().name() != ROOTFS_COOKIE {
        bail!("{}: the second entry is {:?}, not {ROOTFS_COOKIE}", image.display(), reader.entry().name());
    }
    let mut text = String::new();
    reader.read_to_string(&mut text)?;
    let build = BuildId::parse(&text).map_err(|error| anyhow::anyhow!("{}: {ROOTFS_COOKIE}: {error}", image.display()))?;
    Ok((offset, length, build))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rootsmith_init::contract::{SQUASHFS_MAGIC, SQUASHFS_MAGIC_OFFSET};

    #[test]
    fn squashfs_data_starts_at_the_contract_offset() {
        let dir = tempfile::tempdir().unwrap();
        let squashfs = dir.path().join("s");
        fs_err::write(&squashfs, b"hsqs and the rest").unwrap();
        let image = dir.path().join("img");
        write_rootfs_image(&squashfs, &BuildId { cookie: "c0ffee".into(), name: "t".into() }, &image, 5).unwrap();
        let bytes = fs_err::read(&image).unwrap();
        assert_eq!(&bytes[SQUASHFS_MAGIC_OFFSET..SQUASHFS_MAGIC_OFFSET + 4], SQUASHFS_MAGIC);
        assert_eq!(bytes.len() % 4, 0);
        let reader = cpio::NewcReader::new(bytes.as_slice()).unwrap();
        assert_eq!(reader.entry().name(), ROOTFS_SQUASHFS);
        let (offset, length, build) = read_rootfs_image(&image).unwrap();
        assert_eq!((offset, length), (SQUASHFS_MAGIC_OFFSET as u64, 17));
        assert_eq!(build.cookie, "c0ffee");
    }
}
