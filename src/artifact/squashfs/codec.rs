//! The compressors of rootsmith's squashfs writer: zstd, gzip (zlib streams)
//! and xz, with fixed settings so the same bytes always compress the same way.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};

use crate::recipe::{Algorithm, Compression};

/// The squashfs compressor ids (the superblock's `compression_id`).
pub const GZIP: u16 = 1;
pub const XZ: u16 = 4;
pub const ZSTD: u16 = 6;

/// Settings of one compressor, fixed for a whole image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub algorithm: Algorithm,
    pub level: i32,
    pub block_size: u32,
}

impl Settings {
    /// The settings of `compression` (mksquashfs's default level when it names
    /// none); refused for the compressors rootsmith's writer does not have.
    pub fn of(compression: Compression, block_size: u32) -> Result<Settings> {
        let level = match compression.algorithm {
            Algorithm::Zstd => compression.level.unwrap_or(15),
            Algorithm::Gzip => compression.level.unwrap_or(9),
            Algorithm::Xz => compression.level.unwrap_or(6),
            other => bail!("rootsmith's squashfs writer has no {} compressor", other.name()),
        };
        let range = match compression.algorithm {
            Algorithm::Zstd => 1..=22,
            Algorithm::Gzip => 1..=9,
            _ => 0..=9,
        };
        if !range.contains(&level) {
            bail!("{} level {level} is out of range for squashfs", compression.algorithm.name());
        }
        Ok(Settings { algorithm: compression.algorithm, level, block_size })
    }

    pub fn id(&self) -> u16 {
        match self.algorithm {
            Algorithm::Zstd => ZSTD,
            Algorithm::Gzip => GZIP,
            _ => XZ,
        }
    }

    /// What the settings are, as the block cache keys its entries by them.
    pub fn label(&self) -> String {
        format!("{}-{}-{}", self.algorithm.name(), self.level, self.block_size)
    }
}

/// One thread's compressor (zstd keeps its context between blocks).
pub struct Codec {
    settings: Settings,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Codec {
    pub fn new(settings: Settings) -> Result<Codec> {
        let zstd = match settings.algorithm {
            Algorithm::Zstd => Some(zstd::bulk::Compressor::new(settings.level).context("a zstd compressor")?),
            _ => None,
        };
        Ok(Codec { settings, zstd })
    }

    /// `raw` compressed; `None` when that does not make it smaller (the block
    /// is then stored as it is).
    pub fn compress(&mut self, raw: &[u8]) -> Result<Option<Vec<u8>>> {
        let compressed = match self.settings.algorithm {
            Algorithm::Zstd => self.zstd.as_mut().expect("a zstd codec").compress(raw).context("zstd compression")?,
            Algorithm::Gzip => {
                let mut encoder = flate2::write::ZlibEncoder::new(Vec::with_capacity(raw.len() / 2), flate2::Compression::new(self.settings.level as u32));
                encoder.write_all(raw)?;
                encoder.finish()?
            }
            _ => {
                let mut options = xz2::stream::LzmaOptions::new_preset(self.settings.level as u32).context("xz preset")?;
                // The kernel's decoder holds a dictionary of one block, no more.
                options.dict_size(self.settings.block_size.max(8192));
                let mut filters = xz2::stream::Filters::new();
                filters.lzma2(&options);
                let stream = xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32).context("an xz encoder")?;
                let mut encoder = xz2::write::XzEncoder::new_stream(Vec::with_capacity(raw.len() / 2), stream);
                encoder.write_all(raw)?;
                encoder.finish()?
            }
        };
        Ok((compressed.len() < raw.len()).then_some(compressed))
    }
}

/// `compressed` decompressed, refused when it would exceed `limit` bytes.
pub fn decompress(settings: &Settings, compressed: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match settings.algorithm {
        Algorithm::Zstd => return zstd::bulk::decompress(compressed, limit).context("zstd decompression"),
        Algorithm::Gzip => flate2::read::ZlibDecoder::new(compressed).take(limit as u64 + 1).read_to_end(&mut out)?,
        _ => xz2::read::XzDecoder::new(compressed).take(limit as u64 + 1).read_to_end(&mut out)?,
    };
    if out.len() > limit {
        bail!("a block decompresses to more than {limit} bytes");
    }
    Ok(out)
}
