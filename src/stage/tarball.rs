//! `tarball` base stage: a root filesystem from a local tar (gzip, zstd, xz or
//! none, told apart by their magic bytes), applied as an untrusted layer.

use std::io::{BufRead, BufReader, Read};

use anyhow::{Context, Result};

use super::StageContext;
use crate::recipe::Tarball;

pub fn run(stage: &Tarball, context: &StageContext<'_>) -> Result<()> {
    let path = &stage.path.resolved;
    let mut reader = BufReader::new(fs_err::File::open(path)?);
    let magic = reader.fill_buf()?.to_vec();
    let decoded: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::Decoder::with_buffer(reader)?)
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(reader))
    } else {
        Box::new(reader)
    };
    crate::layer::apply_layer(decoded, context.tree, &stage.path.written).with_context(|| format!("unpacking {}", path.display()))?;
    Ok(())
}
