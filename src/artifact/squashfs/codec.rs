//! The compressors of rootsmith's squashfs writer: zstd, gzip (zlib streams)
//! and xz, with fixed settings so the same bytes always compress the same way.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};

use crate::recipe::{Algorithm, Compression};

/// The writer's name and version, in manifests, output keys and the block
/// cache's fingerprints: bump it when the same tree would give other bytes.
pub const WRITER: &str = "rootsmith-squashfs 1";

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

    /// What the settings are, as the block cache keys its entries by them:
    /// the algorithm, level and block size, and a fingerprint of the
    /// compressor itself (the digest of what it makes of a fixed probe), so a
    /// block compressed by another library version, backend or writer is
    /// never copied into an image a fresh compression would write otherwise.
    pub fn label(&self) -> String {
        static FINGERPRINTS: std::sync::Mutex<Vec<(Settings, String)>> = std::sync::Mutex::new(Vec::new());
        let mut known = FINGERPRINTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let fingerprint = match known.iter().find(|(settings, _)| settings == self) {
            Some((_, fingerprint)) => fingerprint.clone(),
            None => {
                let fingerprint = self.fingerprint();
                known.push((*self, fingerprint.clone()));
                fingerprint
            }
        };
        format!("{}-{}-{}-{fingerprint}", self.algorithm.name(), self.level, self.block_size)
    }

    /// 12 hex digits of the SHA-256 of the writer's name and of the probe
    /// compressed with these settings ("unknown" if it would not compress,
    /// which leaves the label usable and the image's own errors to tell).
    fn fingerprint(&self) -> String {
        use sha2::Digest;
        let probe: Vec<u8> = (0..self.block_size as usize)
            .map(|i| if i % 3 == 0 { (i * 7 % 251) as u8 } else { b"rootsmith squashfs probe "[i % 25] })
            .collect();
        let Ok(Some(compressed)) = Codec::new(*self).and_then(|mut codec| codec.compress(&probe)) else {
            return "unknown".into();
        };
        let mut hasher = sha2::Sha256::new();
        hasher.update(WRITER.as_bytes());
        hasher.update(&compressed);
        hex::encode(&hasher.finalize()[..6])
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
                let mut encoder = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(raw.len() / 2),
                    flate2::Compression::new(self.settings.level as u32),
                );
                encoder.write_all(raw)?;
                encoder.finish()?
            }
            _ => {
                let mut options =
                    xz2::stream::LzmaOptions::new_preset(self.settings.level as u32).context("xz preset")?;
                // The kernel's decoder holds a dictionary of one block, no more.
                options.dict_size(self.settings.block_size.max(8192));
                let mut filters = xz2::stream::Filters::new();
                filters.lzma2(&options);
                let stream = xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32)
                    .context("an xz encoder")?;
                let mut encoder = xz2::write::XzEncoder::new_stream(Vec::with_capacity(raw.len() / 2), stream);
                encoder.write_all(raw)?;
                encoder.finish()?
            }
        };
        Ok((compressed.len() < raw.len()).then_some(compressed))
    }
}

/// `compressed` decompressed, refused when it would exceed `limit` bytes or
/// when the kernel's decoder would read it otherwise: it must be one zstd
/// frame (a window no larger than a block) or one zlib or xz stream, with
/// nothing after it. (Block cache entries are checked with this before they
/// are copied into an image.)
pub fn decompress(settings: &Settings, compressed: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let consumed = match settings.algorithm {
        Algorithm::Zstd => {
            let frame = zstd::zstd_safe::find_frame_compressed_size(compressed)
                .map_err(|code| anyhow::anyhow!("not a zstd frame ({})", zstd::zstd_safe::get_error_name(code)))?;
            if frame != compressed.len() {
                bail!("{} bytes after the zstd frame", compressed.len().saturating_sub(frame));
            }
            // The kernel streams with a window of one block at most (a
            // one-shot decompression would not hold a frame to that).
            let window_log = settings.block_size.max(1024).next_power_of_two().trailing_zeros();
            let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)?.single_frame();
            decoder.window_log_max(window_log)?;
            (&mut decoder).take(limit as u64 + 1).read_to_end(&mut out).context("zstd decompression")?;
            frame as u64
        }
        Algorithm::Gzip => {
            let mut decoder = flate2::read::ZlibDecoder::new(compressed);
            (&mut decoder).take(limit as u64 + 1).read_to_end(&mut out)?;
            decoder.total_in()
        }
        _ => {
            // One stream, its dictionary bounded (the kernel's is one block).
            let stream = xz2::stream::Stream::new_stream_decoder(64 << 20, 0).context("an xz decoder")?;
            let mut decoder = xz2::read::XzDecoder::new_stream(compressed, stream);
            (&mut decoder).take(limit as u64 + 1).read_to_end(&mut out)?;
            decoder.total_in()
        }
    };
    if out.len() > limit {
        bail!("a block decompresses to more than {limit} bytes");
    }
    if consumed != compressed.len() as u64 {
        bail!("{} bytes after the compressed stream", compressed.len() as u64 - consumed.min(compressed.len() as u64));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(algorithm: Algorithm, level: i32) -> Settings {
        Settings::of(Compression { algorithm, level: Some(level) }, 128 * 1024).unwrap()
    }

    #[test]
    fn only_what_the_kernel_reads_decompresses() {
        let raw: Vec<u8> = b"rootsmith block ".iter().cycle().take(100_000).copied().collect();
        for algorithm in [Algorithm::Zstd, Algorithm::Gzip, Algorithm::Xz] {
            let settings = settings(algorithm, 3);
            let compressed = Codec::new(settings).unwrap().compress(&raw).unwrap().unwrap();
            assert_eq!(decompress(&settings, &compressed, 128 * 1024).unwrap(), raw);
            // Bytes after the stream would reach an image the kernel reads otherwise.
            let trailing = [&compressed[..], b"planted"].concat();
            assert!(decompress(&settings, &trailing, 128 * 1024).is_err(), "{algorithm:?} with trailing bytes");
            let twice = [&compressed[..], &compressed[..]].concat();
            assert!(decompress(&settings, &twice, 256 * 1024).is_err(), "{algorithm:?} twice");
        }
        // A zstd frame needing a window larger than a block.
        let big: Vec<u8> = (0..600_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let wide = zstd::bulk::compress(&[&big[..], &big[..]].concat(), 19).unwrap();
        assert!(decompress(&settings(Algorithm::Zstd, 19), &wide, 2 << 20).is_err());
    }

    #[test]
    fn labels_name_the_settings_and_the_compressor() {
        let (a, b) = (settings(Algorithm::Zstd, 15).label(), settings(Algorithm::Zstd, 3).label());
        assert!(a.starts_with("zstd-15-131072-") && b.starts_with("zstd-3-131072-"), "{a} {b}");
        assert_eq!(a.len(), "zstd-15-131072-".len() + 12, "{a}");
        assert_eq!(a, settings(Algorithm::Zstd, 15).label(), "the same compressor, the same label");
        assert_ne!(a[15..], b[14..], "another level compresses the probe otherwise");
    }
}
