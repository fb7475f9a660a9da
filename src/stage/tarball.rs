//! `tarball` base stage: a root filesystem from a local tar (gzip, zstd, xz or
//! none, told apart by their magic bytes), applied as an untrusted layer.

use std::io::{BufRead, BufReader, Read};

use anyhow::{Context, Result};

use super::context::StageContext;
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

#[cfg(test)]
mod tests {
    static EMPTY: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    use std::io::Write;
    use std::path::Path;

    use super::*;
    use crate::host::RecordingHost;
    use crate::recipe::LocalPath;

    fn sample_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, "etc/hello", &b"hi\n"[..]).unwrap();
        builder.into_inner().unwrap()
    }

    fn unpack(file: &Path) -> std::path::PathBuf {
        let tree = std::path::PathBuf::from(format!("{}.tree", file.display()));
        fs_err::create_dir(&tree).unwrap();
        let host = RecordingHost::default();
        let context = StageContext { host: &host, tree: &tree, log: file.with_extension("log"), arch: "amd64", source_date_epoch: 0, mirror: None, scratch: file.parent().unwrap(), layout: &crate::cache::Layout::new(Path::new("/nonexistent")), recipe: "r", stage_name: "s", stage_key: "k", remote: &EMPTY, apt_pins: None };
        run(&Tarball { path: LocalPath { written: "x".into(), resolved: file.to_path_buf() } }, &context).unwrap();
        tree
    }

    #[test]
    fn every_compression_is_recognised_by_its_magic() {
        let dir = tempfile::tempdir().unwrap();
        let tar = sample_tar();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&tar).unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&tar).unwrap();
        let variants = [("plain.tar", tar.clone()), ("a.tar.gz", gzip.finish().unwrap()), ("a.tar.zst", zstd::encode_all(tar.as_slice(), 3).unwrap()), ("a.tar.xz", xz.finish().unwrap())];
        for (name, bytes) in variants {
            let file = dir.path().join(name);
            fs_err::write(&file, bytes).unwrap();
            let tree = unpack(&file);
            assert_eq!(fs_err::read_to_string(tree.join("etc/hello")).unwrap(), "hi\n", "{name}");
        }
    }
}
