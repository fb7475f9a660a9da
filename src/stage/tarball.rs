//! `tarball` base stage: a root filesystem from a local tar (gzip, zstd, xz or
//! none, told apart by their magic bytes), applied as an untrusted layer. Only
//! a regular file is read: a FIFO or a device is refused when the recipe is
//! checked and again here, on the file as opened (it may have changed since).
//! The file is hashed as it is read: a tarball replaced after the plan
//! hashed it fails the stage instead of being cached under the old key.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result};

use super::context::{changed_during_build, StageContext};
use crate::recipe::Tarball;

pub fn run(stage: &Tarball, context: &StageContext<'_>) -> Result<()> {
    let planned = &context.planned_digest(&stage.path.written)?.sha256;
    let read = unpack(&stage.path.resolved, &stage.path.written, context)?;
    if &read != planned {
        return Err(changed_during_build(&stage.path.written, &format!("sha256 {planned}"), &format!("sha256 {read}")));
    }
    Ok(())
}

/// Apply the tar at `path` (the recipe's `written`) to the tree; the
/// SHA-256 of every byte of the file, read once, for the caller to check.
pub fn unpack(path: &Path, written: &str, context: &StageContext<'_>) -> Result<String> {
    let file = crate::fileops::open_regular(path).with_context(|| format!("tarball `{written}`"))?;
    let mut hashing = crate::digest::HashingReader::new(file);
    apply(&mut hashing, path, written, context)?;
    let (digest, _) = hashing.finish().with_context(|| format!("reading {}", path.display()))?;
    Ok(digest)
}

fn apply(file: impl Read, path: &Path, written: &str, context: &StageContext<'_>) -> Result<()> {
    let mut reader = BufReader::new(file);
    let magic = reader.fill_buf()?.to_vec();
    let decoded: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::Decoder::with_buffer(reader)?)
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(reader))
    } else {
        Box::new(reader)
    };
    crate::layer::apply_layer(decoded, context.tree, written, context.devices)
        .with_context(|| format!("unpacking {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
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

    fn try_unpack(file: &Path) -> (std::path::PathBuf, Result<()>) {
        let tree = std::path::PathBuf::from(format!("{}.tree", file.display()));
        fs_err::create_dir(&tree).unwrap();
        // The plan's digest of it (nothing for a FIFO, which it refuses too).
        let sha256 = crate::digest::hash_file(file).unwrap_or_default();
        try_unpack_planned(file, &sha256, tree)
    }

    fn try_unpack_planned(file: &Path, sha256: &str, tree: std::path::PathBuf) -> (std::path::PathBuf, Result<()>) {
        let host = RecordingHost::default();
        let layout = crate::cache::Layout::new(Path::new("/nonexistent"));
        let planned =
            [crate::cache::FileDigest { path: "x".into(), kind: "file".into(), mode: 0o644, sha256: sha256.into() }];
        let context =
            StageContext::for_test(&host, &tree, file.parent().unwrap(), &layout, 0).with_planned_files(&planned);
        let result = run(&Tarball { path: LocalPath { written: "x".into(), resolved: file.to_path_buf() } }, &context);
        (tree, result)
    }

    fn unpack(file: &Path) -> std::path::PathBuf {
        let (tree, result) = try_unpack(file);
        result.unwrap();
        tree
    }

    /// The stage's error for `file`, on a thread: a hang fails the test.
    fn error_within_seconds(file: std::path::PathBuf) -> String {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || sender.send(try_unpack(&file).1.map_err(|error| format!("{error:#}"))));
        receiver.recv_timeout(std::time::Duration::from_secs(20)).expect("the stage hung").unwrap_err()
    }

    #[test]
    fn a_fifo_or_a_device_is_refused_before_anything_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("base.tar");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let error = error_within_seconds(fifo);
        assert!(error.contains("base.tar is a FIFO, not a regular file"), "{error}");
        let link = dir.path().join("zero.tar");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let error = error_within_seconds(link);
        assert!(error.contains("zero.tar is a character device, not a regular file"), "{error}");
    }

    #[test]
    fn an_unreadable_archive_is_named_never_quoted() {
        // What /proc/self/environ holds: a regular file that is no tar.
        let dir = tempfile::tempdir().unwrap();
        let mut environ = Vec::new();
        for index in 0..40 {
            environ.extend_from_slice(format!("VARIABLE_{index}=hunter2-secret-{index}\0").as_bytes());
        }
        let file = dir.path().join("environ");
        fs_err::write(&file, &environ).unwrap();
        let error = error_within_seconds(file);
        assert!(!error.contains("hunter2") && !error.contains("VARIABLE_"), "the error quotes the file: {error}");
        assert!(error.contains("environ") && error.contains("not a tar archive"), "{error}");
        // The real one, when the test's own environment is long enough to fill a header.
        if fs_err::read("/proc/self/environ").unwrap().len() > 512 {
            let link = dir.path().join("proc-environ");
            std::os::unix::fs::symlink("/proc/self/environ", &link).unwrap();
            let error = error_within_seconds(link);
            let path_variable = std::env::var("PATH").unwrap();
            assert!(!error.contains(&path_variable), "{error}");
            assert!(error.contains("not a tar archive"), "{error}");
        }
    }

    #[test]
    fn every_compression_is_recognised_by_its_magic() {
        let dir = tempfile::tempdir().unwrap();
        let tar = sample_tar();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&tar).unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&tar).unwrap();
        let variants = [
            ("plain.tar", tar.clone()),
            ("a.tar.gz", gzip.finish().unwrap()),
            ("a.tar.zst", zstd::encode_all(tar.as_slice(), 3).unwrap()),
            ("a.tar.xz", xz.finish().unwrap()),
        ];
        for (name, bytes) in variants {
            let file = dir.path().join(name);
            fs_err::write(&file, bytes).unwrap();
            let tree = unpack(&file);
            assert_eq!(fs_err::read_to_string(tree.join("etc/hello")).unwrap(), "hi\n", "{name}");
        }
    }

    #[test]
    fn a_tarball_replaced_after_the_plan_fails_the_stage() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("base.tar");
        fs_err::write(&file, sample_tar()).unwrap();
        let planned = crate::digest::hash_file(&file).unwrap();
        // Another tar in its place, as valid as the first (and longer: the
        // end of the file after the archive is hashed too).
        let mut other = sample_tar();
        other.extend_from_slice(&[0; 10240]);
        fs_err::write(&file, other).unwrap();
        let tree = dir.path().join("tree");
        fs_err::create_dir(&tree).unwrap();
        let (_, result) = try_unpack_planned(&file, &planned, tree);
        let error = format!("{:#}", result.unwrap_err());
        assert!(error.starts_with("`x` changed during the build"), "{error}");
        assert!(error.contains(&planned), "{error}");
    }
}
