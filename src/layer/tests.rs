//! Layers end to end: capture a stage's changes, apply them elsewhere, and refuse
//! hostile archives without writing outside the target.

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::apply::{apply_layer_with_space, HEADER_ALLOWANCE};
use super::*;
use std::io::Read as _;

/// Capture `before → after` of `root` as a layer tar.
fn capture(root: &Path, before: &Snapshot) -> Vec<u8> {
    capture_with(root, before, &Devices::default())
}

/// [`capture`] of a tree whose placeholders `devices` knows.
fn capture_with(root: &Path, before: &Snapshot, devices: &Devices) -> Vec<u8> {
    let after = Snapshot::take(root).unwrap();
    let mut writer = TreeTarWriter::new(Vec::new(), 2_000_000_000, devices);
    for change in before.changes(&after) {
        match change {
            Change::Write(path) => writer.append(root, &path).unwrap(),
            Change::Delete(path) => writer.append_whiteout(&path).unwrap(),
        }
    }
    writer.finish().unwrap()
}

fn listing(root: &Path) -> Vec<String> {
    let mut paths: Vec<String> = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|entry| {
            let entry = entry.unwrap();
            let metadata = entry.path().symlink_metadata().unwrap();
            let content =
                if metadata.is_file() { fs::read_to_string(entry.path()).unwrap_or_default() } else { String::new() };
            format!("{} {:o} {}", entry.path().strip_prefix(root).unwrap().display(), metadata.mode(), content)
        })
        .collect();
    paths.sort();
    paths
}

#[test]
fn layer_replays_writes_and_deletions() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let replica = work.path().join("replica");
    fs::create_dir_all(source.join("etc/old")).unwrap();
    fs::write(source.join("etc/old/conf"), "old").unwrap();
    fs::write(source.join("etc/hostname"), "a").unwrap();
    fs::write(source.join("removed"), "r").unwrap();
    let base = capture(&source, &Snapshot::default());
    fs::create_dir(&replica).unwrap();
    apply_layer(base.as_slice(), &replica, "base", &Devices::default()).unwrap();
    assert_eq!(listing(&source), listing(&replica));

    let before = Snapshot::take(&source).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    fs::remove_dir_all(source.join("etc/old")).unwrap();
    fs::remove_file(source.join("removed")).unwrap();
    fs::write(source.join("etc/hostname"), "b").unwrap();
    fs::set_permissions(source.join("etc/hostname"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(source.join("etc/new"), "n").unwrap();
    fs::hard_link(source.join("etc/new"), source.join("etc/new-link")).unwrap();
    symlink("hostname", source.join("etc/alias")).unwrap();
    let layer = capture(&source, &before);

    apply_layer(layer.as_slice(), &replica, "change", &Devices::default()).unwrap();
    assert_eq!(listing(&source), listing(&replica));
    assert!(!replica.join("removed").exists());
    assert_eq!(
        fs::metadata(replica.join("etc/new-link")).unwrap().ino(),
        fs::metadata(replica.join("etc/new")).unwrap().ino()
    );
    // Nothing unchanged was carried: the unmodified base file is absent from the layer.
    let names: Vec<String> = tar::Archive::new(layer.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.contains(&"etc/.wh.old".to_string()), "{names:?}");
    assert!(names.contains(&".wh.removed".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("etc/old/")), "{names:?}");
}

#[test]
fn same_tree_gives_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("d")).unwrap();
    fs::write(dir.path().join("d/f"), "x").unwrap();
    let first = capture(dir.path(), &Snapshot::default());
    let second = capture(dir.path(), &Snapshot::default());
    assert_eq!(first, second);
}

/// A tar header with an arbitrary name, bypassing the tar crate's own checks.
fn raw_entry(builder: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

fn hostile(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        raw_entry(&mut builder, name, *kind, *link, if *kind == tar::EntryType::Regular { b"pwned" } else { b"" });
    }
    builder.into_inner().unwrap()
}

#[test]
fn hostile_entries_never_write_outside_the_target() {
    use tar::EntryType::*;
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
        (hostile(&[("../outside/evil", Regular, None)]), Some("`..` in its path")),
        (hostile(&[("/abs/evil", Regular, None)]), Some("absolute path")),
        (hostile(&[("up", Symlink, Some("../..")), ("up/outside/evil", Regular, None)]), Some("leaves the tree")),
        (hostile(&[("link", Link, Some("../outside/secret"))]), Some("hard link target")),
        (hostile(&[(".wh...", Regular, None)]), Some("a whiteout must name an entry of its directory")),
        (
            hostile(&[("sub/", Directory, None), ("sub/.wh..", Regular, None)]),
            Some("a whiteout must name an entry of its directory"),
        ),
        // An absolute symlink is followed inside the tree, like a chroot would.
        (hostile(&[("abs", Symlink, Some(outside.to_str().unwrap())), ("abs/evil", Regular, None)]), None),
        // A symlink at the final component is replaced, not written through.
        (
            hostile(&[("target", Symlink, Some(outside.join("evil").to_str().unwrap())), ("target", Regular, None)]),
            None,
        ),
    ];
    for (index, (archive, expected)) in cases.into_iter().enumerate() {
        let root = work.path().join(format!("root{index}"));
        fs::create_dir(&root).unwrap();
        let result = apply_layer(archive.as_slice(), &root, "hostile.tar", &Devices::default());
        match expected {
            Some(reason) => {
                let error = result.unwrap_err();
                assert!(error.to_string().contains(reason), "case {index}: {error}");
                assert!(error.to_string().starts_with("layer hostile.tar: entry `"), "case {index}: {error}");
            }
            None => {
                result.unwrap();
            }
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "case {index} wrote outside");
    }
    let inside = work.path().join("root6").join(outside.strip_prefix("/").unwrap()).join("evil");
    assert_eq!(fs::read_to_string(inside).unwrap(), "pwned");
}

#[test]
fn opaque_directory_hides_lower_entries_only() {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("d")).unwrap();
    fs::write(root.path().join("d/lower"), "l").unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    raw_entry(&mut builder, "d/.wh..wh..opq", tar::EntryType::Regular, None, b"");
    raw_entry(&mut builder, "d/upper", tar::EntryType::Regular, None, b"u");
    raw_entry(&mut builder, "e/.wh..wh..opq", tar::EntryType::Regular, None, b"");
    let archive = builder.into_inner().unwrap();
    apply_layer(archive.as_slice(), root.path(), "opaque", &Devices::default()).unwrap();
    assert!(!root.path().join("d/lower").exists());
    assert_eq!(fs::read_to_string(root.path().join("d/upper")).unwrap(), "u");
    assert!(root.path().join("e").is_dir());
}

#[test]
fn xattrs_survive_a_layer_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    fs::create_dir(&source).unwrap();
    fs::write(source.join("ping"), "binary").unwrap();
    // File capabilities need root; a user xattr shows the same path through the code.
    let name = if nix::unistd::geteuid().is_root() { "security.capability" } else { "user.rootsmith" };
    let value: &[u8] = if name == "security.capability" {
        &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    } else {
        b"kept"
    };
    if xattr::set(source.join("ping"), name, value).is_err() {
        panic!(
            "the test directory's filesystem does not take xattrs; run the tests on one that does (ext4, xfs, tmpfs)"
        );
    }
    let layer = capture(&source, &Snapshot::default());
    let replica = work.path().join("replica");
    fs::create_dir(&replica).unwrap();
    apply_layer(layer.as_slice(), &replica, "xattrs", &Devices::default()).unwrap();
    assert_eq!(xattr::get(replica.join("ping"), name).unwrap().as_deref(), Some(value));
}

#[test]
fn a_user_xattr_on_a_symlink_is_an_error_that_names_the_entry_and_the_attribute() {
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_pax_extensions([("SCHILY.xattr.user.comment", &b"hello"[..])]).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_mode(0o777);
    header.set_size(0);
    builder.append_link(&mut header, "etc/link", "target").unwrap();
    let archive = builder.into_inner().unwrap();
    let root = tempfile::tempdir().unwrap();
    let error = apply_layer(archive.as_slice(), root.path(), "xattr", &Devices::default()).unwrap_err().to_string();
    assert!(
        error.contains("etc/link")
            && error.contains("user.comment")
            && error.contains("no user.* attribute on a symlink"),
        "{error}"
    );
}

/// A reader that counts what was taken from it.
struct Counting<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.count.set(self.count.get() + count as u64);
        Ok(count)
    }
}

const TIB: u64 = 1 << 40;
const MIB: u64 = 1 << 20;

/// A GNU sparse entry `big` of `real_size` bytes whose data segments are
/// `segments` (offset, bytes), each a whole number of 512-byte blocks but the last.
fn sparse_archive(real_size: u64, segments: &[(u64, &[u8])]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("big").unwrap();
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_mode(0o644);
    let data: Vec<u8> = segments.iter().flat_map(|(_, bytes)| bytes.iter().copied()).collect();
    header.set_size(data.len() as u64);
    let gnu = header.as_gnu_mut().unwrap();
    gnu.set_real_size(real_size);
    for (slot, (offset, bytes)) in gnu.sparse.iter_mut().zip(segments) {
        slot.set_offset(*offset);
        slot.set_length(bytes.len() as u64);
    }
    // The hole at the end: an empty segment at the real size.
    gnu.sparse[segments.len()].set_offset(real_size);
    gnu.sparse[segments.len()].set_length(0);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, data.as_slice()).unwrap();
    builder.into_inner().unwrap()
}

#[test]
fn a_sparse_entry_of_a_tebibyte_is_refused_or_kept_sparse_quickly() {
    let root = tempfile::tempdir().unwrap();
    let archive = sparse_archive(TIB, &[(0, &[b'x'; 512])]);
    assert!(archive.len() < 3 * 1024, "{} bytes", archive.len());
    let started = std::time::Instant::now();
    let result = apply_layer(archive.as_slice(), root.path(), "sparse.tar", &Devices::default());
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
    match result {
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.starts_with("layer sparse.tar: entry `big`: it claims 1099511627776 bytes (1.0 TiB)"),
                "{text}"
            );
            assert!(text.contains("free on the filesystem of"), "{text}");
            assert!(!root.path().join("big").exists());
        }
        Ok(_) => {
            let metadata = fs::metadata(root.path().join("big")).unwrap();
            assert_eq!(metadata.len(), TIB);
            assert!(metadata.blocks() * 512 < 16 * MIB, "{} blocks allocated", metadata.blocks());
        }
    }
}

#[test]
fn sparse_holes_stay_holes() {
    use std::os::unix::fs::FileExt;
    let root = tempfile::tempdir().unwrap();
    let archive = sparse_archive(TIB, &[(0, &[b'x'; 512]), (1 << 30, b"tail of the middle")]);
    let started = std::time::Instant::now();
    apply_layer_with_space(archive.as_slice(), root.path(), "sparse.tar", &Devices::default(), 2 * TIB).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
    let file = fs::File::open(root.path().join("big")).unwrap();
    let metadata = file.metadata().unwrap();
    assert_eq!(metadata.len(), TIB);
    assert!(metadata.blocks() * 512 < 16 * MIB, "{} blocks allocated", metadata.blocks());
    let mut buffer = [0u8; 18];
    file.read_exact_at(&mut buffer, 1 << 30).unwrap();
    assert_eq!(&buffer, b"tail of the middle");
    file.read_exact_at(&mut buffer, 0).unwrap();
    assert_eq!(buffer, [b'x'; 18]);
    file.read_exact_at(&mut buffer, TIB - 18).unwrap();
    assert_eq!(buffer, [0; 18]);
}

/// A tar of `count` regular entries of `size` zero bytes each, as zstd.
fn zeros_archive_zstd(count: usize, size: u64) -> Vec<u8> {
    let mut builder = tar::Builder::new(zstd::Encoder::new(Vec::new(), 3).unwrap());
    for index in 0..count {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(size);
        builder.append_data(&mut header, format!("zeros-{index}"), std::io::repeat(0).take(size)).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn entries_may_claim_no_more_than_the_free_space() {
    let root = tempfile::tempdir().unwrap();
    // One entry larger than the free space: refused before its data is read.
    let compressed = zeros_archive_zstd(1, 64 * MIB);
    assert!(compressed.len() < 64 * 1024, "{} bytes", compressed.len());
    let read = std::rc::Rc::new(std::cell::Cell::new(0));
    let reader = Counting { inner: zstd::Decoder::new(compressed.as_slice()).unwrap(), count: read.clone() };
    let error = apply_layer_with_space(reader, root.path(), "bomb.tar.zst", &Devices::default(), 8 * MIB)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("layer bomb.tar.zst: entry `zeros-0`: it claims 67108864 bytes (64.0 MiB), and with the 0 bytes the archive's earlier entries claimed that is more than the 8388608 bytes (8.0 MiB) free"), "{error}");
    assert!(read.get() <= HEADER_ALLOWANCE, "{} bytes of the stream were read", read.get());
    assert!(!root.path().join("zeros-0").exists());

    // Entries that fit one by one but not together: refused at the first one too many.
    let compressed = zeros_archive_zstd(16, MIB);
    let error = apply_layer_with_space(
        zstd::Decoder::new(compressed.as_slice()).unwrap(),
        root.path(),
        "many.tar.zst",
        &Devices::default(),
        8 * MIB,
    )
    .unwrap_err()
    .to_string();
    assert!(error.starts_with("layer many.tar.zst: entry `zeros-8`: it claims 1048576 bytes (1.0 MiB), and with the 8388608 bytes (8.0 MiB)"), "{error}");
    assert!(root.path().join("zeros-7").exists() && !root.path().join("zeros-8").exists());

    // A whiteout's data is read as well, so it counts too.
    let mut builder = tar::Builder::new(Vec::new());
    raw_entry(&mut builder, ".wh.gone", tar::EntryType::Regular, None, &vec![0; 2 * MIB as usize]);
    let archive = builder.into_inner().unwrap();
    let error = apply_layer_with_space(archive.as_slice(), root.path(), "whiteout.tar", &Devices::default(), MIB)
        .unwrap_err()
        .to_string();
    assert!(error.contains("entry `.wh.gone`: it claims 2097152 bytes"), "{error}");
}

#[test]
fn a_decompression_bomb_in_the_headers_is_cut_off() {
    // A PAX record and a GNU long name the tar reader would hold in memory whole.
    let bomb = |kind: tar::EntryType, size: u64, writer: &mut dyn std::io::Write| {
        let mut header = tar::Header::new_ustar();
        header.set_path("bomb").unwrap();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        writer.write_all(header.as_bytes()).unwrap();
        std::io::copy(&mut std::io::repeat(b'a').take(size), writer).unwrap();
    };
    let size = 4 * HEADER_ALLOWANCE;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    bomb(tar::EntryType::XHeader, size, &mut gzip);
    let gzip = gzip.finish().unwrap();
    let mut zstd = zstd::Encoder::new(Vec::new(), 3).unwrap();
    bomb(tar::EntryType::GNULongName, size, &mut zstd);
    let zstd = zstd.finish().unwrap();
    let root = tempfile::tempdir().unwrap();
    for (name, reader) in [
        ("pax.tar.gz", Box::new(flate2::read::GzDecoder::new(gzip.as_slice())) as Box<dyn std::io::Read>),
        ("longname.tar.zst", Box::new(zstd::Decoder::new(zstd.as_slice()).unwrap())),
    ] {
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let started = std::time::Instant::now();
        let error =
            apply_layer(Counting { inner: reader, count: read.clone() }, root.path(), name, &Devices::default())
                .unwrap_err()
                .to_string();
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{name}: took {:?}", started.elapsed());
        assert!(error.contains("entry `(archive)`: the archive runs on past byte 16777216 with more than 16777216 bytes (16.0 MiB) of headers"), "{name}: {error}");
        assert!(read.get() <= HEADER_ALLOWANCE, "{name}: {} bytes of the stream were read", read.get());
    }
}

#[test]
fn an_archive_that_is_no_tar_is_named_by_offset_never_quoted() {
    let root = tempfile::tempdir().unwrap();
    let secret: Vec<u8> = (0..64).flat_map(|index| format!("TOKEN_{index}=hunter2\0").into_bytes()).collect();
    let error = apply_layer(secret.as_slice(), root.path(), "environ", &Devices::default()).unwrap_err().to_string();
    assert!(!error.contains("hunter2") && !error.contains("TOKEN"), "{error}");
    assert!(error.contains("not a tar archive, or a damaged one: the header before byte 512"), "{error}");

    // Cut in the middle of a header: truncated.
    let mut builder = tar::Builder::new(Vec::new());
    raw_entry(&mut builder, "a", tar::EntryType::Regular, None, b"a");
    raw_entry(&mut builder, "b", tar::EntryType::Regular, None, b"b");
    let archive = builder.into_inner().unwrap();
    let error =
        apply_layer(&archive[..1024 + 100], root.path(), "cut.tar", &Devices::default()).unwrap_err().to_string();
    assert!(error.contains("the archive ends after 1124 bytes"), "{error}");
}

/// A base image's devices: a character and a block device, a hard link to one
/// that sorts before it and one after it, and a FIFO, with owners, modes and
/// mtimes of their own.
fn devices_archive() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut entry = |name: &str,
                     kind: tar::EntryType,
                     mode: u32,
                     owner: (u64, u64),
                     mtime: u64,
                     device: (u32, u32),
                     link: Option<&str>| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(owner.0);
        header.set_gid(owner.1);
        header.set_mtime(mtime);
        header.set_size(0);
        header.set_device_major(device.0).unwrap();
        header.set_device_minor(device.1).unwrap();
        match link {
            Some(target) => builder.append_link(&mut header, name, target).unwrap(),
            None => builder.append_data(&mut header, name, std::io::empty()).unwrap(),
        }
    };
    entry("dev", tar::EntryType::Directory, 0o755, (0, 0), 500, (0, 0), None);
    entry("dev/fifo", tar::EntryType::Fifo, 0o600, (0, 0), 600, (0, 0), None);
    entry("dev/null", tar::EntryType::Char, 0o666, (0, 0), 900, (1, 3), None);
    entry("dev/nvme0n1p1", tar::EntryType::Block, 0o660, (0, 6), 901, (259, 65537), None);
    entry("dev/a-null", tar::EntryType::Link, 0o666, (0, 0), 900, (0, 0), Some("dev/null"));
    entry("dev/null-too", tar::EntryType::Link, 0o666, (0, 0), 900, (0, 0), Some("dev/null"));
    entry("dev/tty", tar::EntryType::Char, 0o620, (0, 5), 902, (5, 0), None);
    builder.into_inner().unwrap()
}

/// The whole tree under `root` written as a tar, in path order.
fn write_tree(root: &Path, devices: &Devices) -> Vec<u8> {
    let mut writer = TreeTarWriter::new(Vec::new(), 2_000_000_000, devices);
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        writer.append(root, entry.unwrap().path().strip_prefix(root).unwrap()).unwrap();
    }
    writer.finish().unwrap()
}

/// Each entry as `path type major:minor mode uid:gid mtime -> link`.
fn tar_entries(archive: &[u8]) -> Vec<String> {
    tar::Archive::new(archive)
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let header = entry.header();
            let link = entry.link_name().unwrap().map(|link| link.display().to_string()).unwrap_or_default();
            format!(
                "{} {:?} {}:{} {:o} {}:{} {} -> {link}",
                entry.path().unwrap().display(),
                header.entry_type(),
                header.device_major().ok().flatten().unwrap_or(0),
                header.device_minor().ok().flatten().unwrap_or(0),
                header.mode().unwrap_or(0),
                header.uid().unwrap_or(0),
                header.gid().unwrap_or(0),
                header.mtime().unwrap_or(0)
            )
        })
        .collect()
}

#[test]
fn placeholders_write_the_same_tar_as_device_nodes() {
    let work = tempfile::tempdir().unwrap();
    let placeholders = work.path().join("placeholders");
    fs::create_dir(&placeholders).unwrap();
    let devices = Devices::placeholders_only();
    apply_layer(devices_archive().as_slice(), &placeholders, "base", &devices).unwrap();
    let null = fs::symlink_metadata(placeholders.join("dev/null")).unwrap();
    assert!(null.is_file() && null.len() == 0 && null.nlink() == 3, "a placeholder with its hard links");
    assert_eq!(null.mode() & 0o7777, 0o666);
    assert_eq!(null.mtime(), 900);
    let written = write_tree(&placeholders, &devices);
    let entries = tar_entries(&written);
    // The first path of the inode (sorted) is the device, the others link to it.
    let expected = [
        "dev Directory 0:0 755 0:0 500 -> ",
        "dev/a-null Char 1:3 666 0:0 900 -> ",
        "dev/fifo Fifo 0:0 600 0:0 600 -> ",
        "dev/null Link 0:0 666 0:0 900 -> dev/a-null",
        "dev/null-too Link 0:0 666 0:0 900 -> dev/a-null",
        "dev/nvme0n1p1 Block 259:65537 660 0:6 901 -> ",
        "dev/tty Char 5:0 620 0:5 902 -> ",
    ];
    // An ordinary user cannot give files away: compare without the owners.
    let without_owner = |line: &str| {
        line.split(' ').enumerate().filter(|(index, _)| *index != 4).map(|(_, part)| part).collect::<Vec<_>>().join(" ")
    };
    if nix::unistd::geteuid().is_root() {
        assert_eq!(entries, expected);
    } else {
        assert_eq!(entries.iter().map(|line| without_owner(line)).collect::<Vec<_>>(), expected.map(without_owner));
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED the comparison with real device nodes: mknod needs root");
        return;
    }
    let nodes = work.path().join("nodes");
    fs::create_dir(&nodes).unwrap();
    let real = Devices::default();
    apply_layer(devices_archive().as_slice(), &nodes, "base", &real).unwrap();
    assert!(real.is_empty(), "as root, mknod made the devices");
    assert!(fs::symlink_metadata(nodes.join("dev/null")).unwrap().file_type().is_char_device());
    assert_eq!(tar_entries(&write_tree(&nodes, &real)), entries);
    assert_eq!(write_tree(&nodes, &real), written, "the same bytes");

    // A layer captured from the placeholder tree is the one captured from the nodes.
    assert_eq!(
        capture_with(&placeholders, &Snapshot::default(), &devices),
        capture_with(&nodes, &Snapshot::default(), &real)
    );
}

#[test]
fn a_placeholder_a_stage_replaced_or_removed_is_no_longer_a_device() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let devices = Devices::placeholders_only();
    apply_layer(devices_archive().as_slice(), root, "base", &devices).unwrap();
    let before = Snapshot::take(root).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(10));
    // A stage rewrites one, replaces another with an empty file, removes a third.
    fs::write(root.join("dev/tty"), "console output").unwrap();
    fs::remove_file(root.join("dev/nvme0n1p1")).unwrap();
    fs::write(root.join("dev/nvme0n1p1"), "").unwrap();
    for name in ["dev/null", "dev/a-null", "dev/null-too"] {
        fs::remove_file(root.join(name)).unwrap();
    }
    fs::write(root.join("dev/null"), "").unwrap();
    assert!(devices.placeholders(root).unwrap().is_empty());
    let entries = tar_entries(&capture_with(root, &before, &devices));
    let kinds: Vec<String> = entries.iter().map(|line| line.split(' ').take(2).collect::<Vec<_>>().join(" ")).collect();
    assert!(kinds.contains(&"dev/tty Regular".to_string()), "{entries:?}");
    assert!(kinds.contains(&"dev/nvme0n1p1 Regular".to_string()), "{entries:?}");
    assert!(kinds.contains(&"dev/null Regular".to_string()), "{entries:?}");
    assert!(kinds.contains(&"dev/.wh.a-null Regular".to_string()), "{entries:?}");

    // A layer that replaces a placeholder with a regular file, or whites one out, makes it no device either.
    let devices = Devices::placeholders_only();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Char);
    header.set_mode(0o666);
    header.set_size(0);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_device_major(1).unwrap();
    header.set_device_minor(5).unwrap();
    builder.append_data(&mut header.clone(), "dev/zero", std::io::empty()).unwrap();
    builder.append_data(&mut header.clone(), "dev/full", std::io::empty()).unwrap();
    let base = builder.into_inner().unwrap();
    apply_layer(base.as_slice(), root, "zero", &devices).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    raw_entry(&mut builder, "dev/zero", tar::EntryType::Regular, None, b"");
    raw_entry(&mut builder, "dev/.wh.full", tar::EntryType::Regular, None, b"");
    raw_entry(&mut builder, "dev/full", tar::EntryType::Regular, None, b"");
    let change = builder.into_inner().unwrap();
    apply_layer(change.as_slice(), root, "change", &devices).unwrap();
    assert_eq!(devices.lookup(&fs::symlink_metadata(root.join("dev/zero")).unwrap()), None);
    assert_eq!(devices.lookup(&fs::symlink_metadata(root.join("dev/full")).unwrap()), None);
    assert!(devices.is_empty(), "every placeholder the applier removed is forgotten");
}
