//! `root.squashfs`: written with mksquashfs when installed (multi-threaded,
//! keeps xattrs), else with backhand; always read back with backhand to check it.

use std::io::{BufReader, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::host::{Command, Host};
use crate::recipe::{Algorithm, Compression};

/// Which writer made the squashfs, for the manifest and the output key.
pub fn writer_name(host: &dyn Host) -> String {
    match crate::tools::find("mksquashfs") {
        Some(path) => {
            let text = host.capture(&Command::on_host(path, ["-version"], Path::new("/dev/null"))).unwrap_or_default();
            let first = text.lines().next().unwrap_or("");
            format!("mksquashfs {}", first.split_whitespace().nth(2).unwrap_or("?"))
        }
        None => "backhand 0.20".to_string(),
    }
}

pub fn write(host: &dyn Host, tree: &Path, output: &Path, compression: Compression, epoch: i64, log: &Path) -> Result<()> {
    match crate::tools::find("mksquashfs") {
        Some(mksquashfs) => write_with_mksquashfs(host, &mksquashfs, tree, output, compression, epoch, log),
        None => write_with_backhand(tree, output, compression, epoch),
    }
}

fn write_with_mksquashfs(host: &dyn Host, mksquashfs: &Path, tree: &Path, output: &Path, compression: Compression, epoch: i64, log: &Path) -> Result<()> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut command = Command::on_host(mksquashfs, [tree.as_os_str(), output.as_os_str()], log);
    command.argv.extend(["-noappend", "-reproducible", "-xattrs", "-no-progress", "-quiet"].map(String::from));
    command.argv.extend(["-mkfs-time".to_string(), epoch.to_string(), "-comp".to_string(), compression.algorithm.name().to_string()]);
    if let Some(level) = compression.level {
        command.argv.extend(["-Xcompression-level".to_string(), level.to_string()]);
    }
    command.argv.extend(["-processors".to_string(), threads.to_string()]);
    // mksquashfs refuses SOURCE_DATE_EPOCH beside -mkfs-time.
    host.run(&command.env_remove("SOURCE_DATE_EPOCH"))
}

/// Opens its file on first read, so a tree of thousands of files does not hold
/// thousands of descriptors while backhand collects them.
enum LazyFile {
    Unopened(PathBuf),
    Open(std::fs::File),
    /// Read to the end and closed again; further reads give end of file.
    Done,
}

impl Read for LazyFile {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if let LazyFile::Unopened(path) = self {
            *self = LazyFile::Open(fs_err::File::open(&*path)?.into_parts().0);
        }
        let LazyFile::Open(file) = self else { return Ok(0) };
        let read = file.read(buffer)?;
        if read == 0 && !buffer.is_empty() {
            *self = LazyFile::Done;
        }
        Ok(read)
    }
}

fn write_with_backhand(tree: &Path, output: &Path, compression: Compression, epoch: i64) -> Result<()> {
    use backhand::compression::Compressor;
    use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};
    let compressor = match compression.algorithm {
        Algorithm::Zstd => Compressor::Zstd,
        Algorithm::Gzip => Compressor::Gzip,
        Algorithm::Xz => Compressor::Xz,
        other => bail!("{} squashfs needs mksquashfs\nhint: apt-get install squashfs-tools", other.name()),
    };
    let mut writer = FilesystemWriter::default();
    use backhand::compression::{CompressionOptions, Gzip, Zstd};
    let options = match (compression.algorithm, compression.level) {
        (Algorithm::Zstd, Some(level)) => Some(CompressionOptions::Zstd(Zstd { compression_level: level as u32 })),
        (Algorithm::Gzip, Some(level)) => Some(CompressionOptions::Gzip(Gzip { compression_level: level as u32, window_size: 15, strategies: 0 })),
        _ => None,
    };
    writer.set_compressor(FilesystemCompressor::new(compressor, options)?);
    writer.set_time(epoch as u32);
    let root_metadata = fs_err::metadata(tree)?;
    writer.set_root_mode((root_metadata.mode() & 0o7777) as u16);
    writer.set_root_uid(root_metadata.uid());
    writer.set_root_gid(root_metadata.gid());
    for entry in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
        let entry = entry?;
        let metadata = entry.path().symlink_metadata()?;
        let path = Path::new("/").join(entry.path().strip_prefix(tree).expect("under tree"));
        let header = NodeHeader::new((metadata.mode() & 0o7777) as u16, metadata.uid(), metadata.gid(), metadata.mtime().clamp(0, epoch) as u32);
        let kind = metadata.file_type();
        if kind.is_dir() {
            writer.push_dir(&path, header)?;
        } else if kind.is_symlink() {
            writer.push_symlink(fs_err::read_link(entry.path())?, &path, header)?;
        } else if kind.is_file() {
            writer.push_file(LazyFile::Unopened(entry.path().to_path_buf()), &path, header)?;
        } else if kind.is_char_device() {
            writer.push_char_device(metadata.rdev() as u32, &path, header)?;
        } else if kind.is_block_device() {
            writer.push_block_device(metadata.rdev() as u32, &path, header)?;
        } else if kind.is_fifo() {
            writer.push_fifo(&path, header)?;
        } else {
            writer.push_socket(&path, header)?;
        }
    }
    let file = fs_err::File::create(output)?;
    writer.write(std::io::BufWriter::new(file)).context("writing squashfs with backhand")?;
    Ok(())
}

/// What reading the squashfs back found.
#[derive(Debug)]
pub struct Check {
    pub entries: u64,
    pub sampled_files: usize,
}

/// Read `squashfs` with backhand: it must hold as many entries as `tree`, and a
/// sample of its files must hash as the tree's do.
pub fn verify(squashfs: &Path, tree: &Path) -> Result<Check> {
    use backhand::{FilesystemReader, InnerNode};
    let reader = BufReader::new(fs_err::File::open(squashfs)?);
    let filesystem = FilesystemReader::from_reader(reader).with_context(|| format!("reading back {}", squashfs.display()))?;
    let tree_entries = walkdir::WalkDir::new(tree).into_iter().count() as u64;
    let nodes: Vec<_> = filesystem.files().collect();
    let entries = nodes.len() as u64;
    if entries != tree_entries {
        bail!("{} holds {entries} entries but the tree has {tree_entries}", squashfs.display());
    }
    let files: Vec<_> = nodes.iter().filter(|node| matches!(node.inner, InnerNode::File(_))).collect();
    let step = (files.len() / 64).max(1);
    let mut sampled = 0;
    for node in files.iter().step_by(step) {
        let InnerNode::File(file) = &node.inner else { continue };
        let mut hasher = Sha256::new();
        std::io::copy(&mut filesystem.file(file).reader(), &mut hasher)?;
        let relative = node.fullpath.strip_prefix("/").unwrap_or(&node.fullpath);
        let expected = crate::digest::sha256_hex(&fs_err::read(tree.join(relative))?);
        if hex::encode(hasher.finalize()) != expected {
            bail!("{}: {} differs from the tree", squashfs.display(), node.fullpath.display());
        }
        sampled += 1;
    }
    Ok(Check { entries, sampled_files: sampled })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backhand_writer_output_reads_back_and_matches_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("etc/sub")).unwrap();
        fs_err::write(tree.join("etc/motd"), "hello\n").unwrap();
        fs_err::write(tree.join("etc/sub/big"), vec![7u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("motd", tree.join("etc/link")).unwrap();
        let output = dir.path().join("root.squashfs");
        write_with_backhand(&tree, &output, Compression { algorithm: Algorithm::Zstd, level: Some(3) }, 1_000).unwrap();
        assert_eq!(&fs_err::read(&output).unwrap()[..4], rootsmith_init::contract::SQUASHFS_MAGIC);
        let check = verify(&output, &tree).unwrap();
        assert_eq!(check.entries, 6);
        assert_eq!(check.sampled_files, 2);
        // A tree that differs from the image is caught.
        fs_err::write(tree.join("etc/motd"), "changed\n").unwrap();
        assert!(verify(&output, &tree).unwrap_err().to_string().contains("differs from the tree"));
    }
}
