//! `NAME-VERSION-rootfs.tar.zst`: the whole tree as a deterministic tar (a
//! device placeholder as the device it stands for).

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::layer::{Devices, TreeTarWriter};
use crate::recipe::{Algorithm, Compression};

/// A compressing writer with fixed settings. zstd runs multi-threaded; its
/// output does not depend on the number of workers.
pub fn compressor<'a, W: Write + 'a>(writer: W, compression: Compression) -> Result<Box<dyn Write + 'a>> {
    let level = compression.level.unwrap_or(3);
    Ok(match compression.algorithm {
        Algorithm::Zstd => {
            let mut encoder = zstd::Encoder::new(writer, level)?;
            encoder.multithread(std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1))?;
            encoder.include_checksum(true)?;
            Box::new(encoder.auto_finish())
        }
        Algorithm::Gzip => Box::new(flate2::GzBuilder::new().mtime(0).write(writer, flate2::Compression::new(level as u32))),
        Algorithm::Xz => Box::new(xz2::write::XzEncoder::new(writer, level as u32)),
        _ => Box::new(writer),
    })
}

/// File name suffix for a tarball compressed with `compression`.
pub fn extension(compression: Compression) -> &'static str {
    match compression.algorithm {
        Algorithm::Zstd => "tar.zst",
        Algorithm::Gzip => "tar.gz",
        Algorithm::Xz => "tar.xz",
        _ => "tar",
    }
}

pub fn write_rootfs_tarball(tree: &Path, devices: &Devices, output: &Path, compression: Compression, epoch: i64) -> Result<()> {
    let file = std::io::BufWriter::new(fs_err::File::create(output)?);
    let mut writer = TreeTarWriter::new(compressor(file, compression)?, epoch, devices);
    for entry in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
        let entry = entry?;
        writer.append(tree, entry.path().strip_prefix(tree).expect("under tree"))?;
    }
    let mut inner = writer.finish()?;
    inner.flush()?;
    Ok(())
}
