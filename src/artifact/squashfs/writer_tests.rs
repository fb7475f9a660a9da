//! rootsmith's squashfs writer checked against mksquashfs and unsquashfs
//! (squashfs-tools) and backhand's reader.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use filetime::FileTime;

use super::blockcache::BlockCache;
use super::writer::{self, Options, BATCH_BYTES, BLOCK_SIZE};
use crate::artifact::noise;
use crate::layer::{DeviceKind, Devices};
use crate::recipe::{Algorithm, Compression};

const EPOCH: i64 = 1_700_000_000;

fn zstd15() -> Compression {
    Compression { algorithm: Algorithm::Zstd, level: Some(15) }
}

fn text(len: usize) -> Vec<u8> {
    let line = b"the quick brown fox jumps over the lazy dog 0123456789\n";
    line.iter().copied().cycle().take(len).collect()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A tree with every kind of entry the writer has. Devices are real nodes as
/// root, placeholders `devices` knows otherwise.
fn sample_tree(dir: &Path, devices: &Devices) -> PathBuf {
    let tree = dir.join("tree");
    let block = BLOCK_SIZE as usize;
    fs_err::create_dir_all(tree.join("etc/empty-dir")).unwrap();
    fs_err::create_dir_all(tree.join("usr/bin")).unwrap();
    fs_err::create_dir_all(tree.join("big")).unwrap();
    fs_err::create_dir_all(tree.join("dev")).unwrap();
    fs_err::write(tree.join("etc/empty"), b"").unwrap();
    fs_err::write(tree.join("etc/motd"), b"hello\n").unwrap();
    fs_err::write(tree.join("etc/motd-copy"), b"hello\n").unwrap();
    fs_err::write(tree.join("etc/one-block"), noise(block, 1)).unwrap();
    fs_err::write(tree.join("etc/text"), text(3 * block + 1234)).unwrap();
    fs_err::write(tree.join("etc/text-copy"), text(3 * block + 1234)).unwrap();
    fs_err::write(tree.join("etc/noise"), noise(2 * block + 77, 2)).unwrap();
    fs_err::write(tree.join("etc/small-noise"), noise(5000, 3)).unwrap();
    let mut zeros = vec![0u8; 2 * block + 10];
    zeros[2 * block + 5] = 1;
    fs_err::write(tree.join("etc/zeros"), zeros).unwrap();
    fs_err::write(tree.join("etc/all-zeros"), vec![0u8; block + 100]).unwrap();
    // Enough small files to fill more than one fragment block.
    for index in 0..40 {
        fs_err::write(tree.join(format!("usr/bin/tool{index:02}")), noise(7000 + index * 13, 100 + index as u64))
            .unwrap();
    }
    fs_err::write(tree.join("usr/bin/ping"), noise(3000, 9)).unwrap();
    xattr::set(
        tree.join("usr/bin/ping"),
        "security.capability",
        &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )
    .unwrap();
    xattr::set(tree.join("etc/motd"), "user.comment", b"greeting").unwrap();
    xattr::set(tree.join("etc/empty-dir"), "user.dir", b"yes").unwrap();
    fs_err::hard_link(tree.join("etc/text"), tree.join("usr/bin/text-link")).unwrap();
    fs_err::hard_link(tree.join("etc/text"), tree.join("big/text-link")).unwrap();
    std::os::unix::fs::symlink("motd", tree.join("etc/link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", tree.join("usr/dangling")).unwrap();
    std::os::unix::fs::symlink("../etc", tree.join("usr/etc")).unwrap();
    nix::unistd::mkfifo(&tree.join("dev/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    drop(std::os::unix::net::UnixListener::bind(tree.join("dev/socket")).unwrap());
    // More than 256 entries with long names: several runs and index entries.
    for index in 0..600 {
        let name = format!("{index:04}-{}", "n".repeat(150 + index % 50));
        fs_err::write(tree.join("big").join(name), format!("{index}\n")).unwrap();
    }
    fs_err::write(tree.join("big").join("x".repeat(255)), b"longest name\n").unwrap();
    for (relative, kind, major, minor) in [
        ("dev/null", DeviceKind::Char, 1, 3),
        ("dev/sda", DeviceKind::Block, 8, 0),
        ("dev/big", DeviceKind::Char, 300, 70000),
    ] {
        if is_root() {
            use nix::sys::stat::{makedev, mknod, Mode, SFlag};
            let flag = if kind == DeviceKind::Char { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
            mknod(&tree.join(relative), flag, Mode::from_bits_truncate(0o660), makedev(major.into(), minor.into()))
                .unwrap();
        } else {
            devices.make(&tree, Path::new(relative), kind, major, minor, 0o660).unwrap();
        }
    }
    if is_root() {
        nix::unistd::chown(&tree.join("etc/motd"), Some(1000.into()), Some(100.into())).unwrap();
        nix::unistd::chown(&tree.join("usr/bin"), Some(0.into()), Some(50.into())).unwrap();
        nix::unistd::chown(&tree.join("dev/sda"), Some(0.into()), Some(6.into())).unwrap();
    }
    fs_err::set_permissions(tree.join("usr/bin/ping"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    fs_err::set_permissions(tree.join("etc/empty-dir"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // mtimes at or before the epoch (mksquashfs does not clamp them), and one after.
    let mut paths: Vec<PathBuf> =
        walkdir::WalkDir::new(&tree).into_iter().map(|entry| entry.unwrap().into_path()).collect();
    paths.sort();
    for (index, path) in paths.iter().enumerate().rev() {
        let time = FileTime::from_unix_time(EPOCH - 1000 + index as i64, 0);
        filetime::set_symlink_file_times(path, time, time).unwrap();
    }
    tree
}

fn write(tree: &Path, devices: &Devices, output: &Path, threads: usize, cache: Option<&BlockCache>) -> writer::Summary {
    writer::write(tree, devices, output, &Options { compression: zstd15(), epoch: EPOCH, threads, cache }).unwrap()
}

fn tool(name: &str) -> Option<PathBuf> {
    let found = crate::tools::find(name);
    if found.is_none() {
        eprintln!("SKIPPED the {name} half of this test: squashfs-tools is not installed");
    }
    found
}

fn output_of(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn mksquashfs(tree: &Path, output: &Path) {
    let mksquashfs = tool("mksquashfs").unwrap();
    output_of(
        Command::new(mksquashfs)
            .arg(tree)
            .arg(output)
            .args([
                "-noappend",
                "-reproducible",
                "-xattrs",
                "-no-progress",
                "-quiet",
                "-mkfs-time",
                &EPOCH.to_string(),
                "-comp",
                "zstd",
                "-Xcompression-level",
                "15",
            ])
            .env_remove("SOURCE_DATE_EPOCH"),
    );
}

/// Every entry of a tree: path, kind, mode, owner, mtime, size or target or
/// device, contents digest, xattrs.
fn describe(tree: &Path, devices: &Devices) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in walkdir::WalkDir::new(tree).sort_by_file_name() {
        let entry = entry.unwrap();
        let path = entry.path();
        let metadata = path.symlink_metadata().unwrap();
        let relative = path.strip_prefix(tree).unwrap().display().to_string();
        let kind = metadata.file_type();
        let what = if let Some(device) = devices.lookup(&metadata) {
            format!("device {:?} {}:{}", device.kind, device.major, device.minor)
        } else if kind.is_symlink() {
            format!("-> {}", fs_err::read_link(path).unwrap().display())
        } else if kind.is_file() {
            format!("file {} {}", metadata.len(), crate::digest::sha256_hex(&fs_err::read(path).unwrap()))
        } else if kind.is_dir() {
            "dir".to_string()
        } else {
            format!("{:?} rdev {}", kind, metadata.rdev())
        };
        let mut xattrs: Vec<String> = xattr::list(path)
            .unwrap()
            .map(|name| {
                format!(
                    "{}={}",
                    name.to_string_lossy(),
                    hex::encode(xattr::get(path, &name).unwrap().unwrap_or_default())
                )
            })
            .collect();
        xattrs.sort();
        let mode = if devices.lookup(&metadata).is_some() { metadata.mode() & 0o7777 } else { metadata.mode() };
        lines.push(format!(
            "{relative} {what} {mode:o} {}:{} {} {}",
            metadata.uid(),
            metadata.gid(),
            metadata.mtime(),
            xattrs.join(",")
        ));
    }
    lines
}

#[test]
fn the_writer_lists_as_mksquashfs_and_extracts_to_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let devices = Devices::placeholders_only();
    let tree = sample_tree(dir.path(), &devices);
    let ours = dir.path().join("ours.squashfs");
    let summary = write(&tree, &devices, &ours, 2, None);
    assert_eq!(summary.bytes, fs_err::metadata(&ours).unwrap().len());
    assert_eq!(summary.bytes % 4096, 0);

    // backhand reads it back: every entry, the devices, a sample of files.
    let check = super::verify(&ours, 0, &tree, &devices).unwrap();
    assert_eq!(check.entries, summary.entries);

    let Some(unsquashfs) = tool("unsquashfs") else { return };
    let listing = |image: &Path| output_of(Command::new(&unsquashfs).arg("-lln").arg(image));
    let ours_listing = listing(&ours);
    assert!(ours_listing.contains("usr/bin/ping"), "{ours_listing}");
    if is_root() {
        // mksquashfs sees real device nodes only as root.
        let theirs = dir.path().join("theirs.squashfs");
        mksquashfs(&tree, &theirs);
        let theirs_listing = listing(&theirs);
        let differing: Vec<_> =
            ours_listing.lines().zip(theirs_listing.lines()).filter(|(a, b)| a != b).take(5).collect();
        assert!(ours_listing == theirs_listing, "unsquashfs -lln differs from mksquashfs's: {differing:#?}");
        let (ours_size, theirs_size) =
            (fs_err::metadata(&ours).unwrap().len(), fs_err::metadata(&theirs).unwrap().len());
        eprintln!("sample tree: rootsmith {ours_size} bytes, mksquashfs {theirs_size} bytes");
    } else {
        eprintln!("SKIPPED comparing with mksquashfs: the tree's devices are placeholders without root");
    }

    // unsquashfs extracts the tree (xattrs and owners as root).
    let extracted = dir.path().join("extracted");
    output_of(Command::new(&unsquashfs).arg("-no-progress").arg("-d").arg(&extracted).arg(&ours));
    let xattrs = output_of(Command::new(&unsquashfs).arg("-lls").arg(&ours));
    if is_root() {
        assert_eq!(describe(&extracted, &Devices::default()), describe(&tree, &devices));
        let capability = xattr::get(extracted.join("usr/bin/ping"), "security.capability").unwrap().unwrap();
        assert_eq!(capability, xattr::get(tree.join("usr/bin/ping"), "security.capability").unwrap().unwrap());
    } else {
        eprintln!("SKIPPED comparing the extracted tree's owners, devices and xattrs: needs root");
        assert!(xattrs.contains("security.capability"), "{xattrs}");
    }
}

#[test]
fn the_image_does_not_depend_on_threads_runs_or_the_block_cache() {
    let dir = tempfile::tempdir().unwrap();
    let devices = Devices::placeholders_only();
    let tree = sample_tree(dir.path(), &devices);
    let image = |name: &str, threads: usize, cache: Option<&BlockCache>| {
        let path = dir.path().join(name);
        write(&tree, &devices, &path, threads, cache);
        fs_err::read(path).unwrap()
    };
    let one = image("one", 1, None);
    assert!(one == image("one-again", 1, None), "two writes differ");
    assert!(one == image("three", 3, None), "1 and 3 threads differ");

    let cache_dir = dir.path().join("cache");
    let entries = cache_dir.clone();
    let cache = BlockCache::new(Box::new(move |settings, digest| entries.join(format!("{settings}-{digest}"))));
    assert!(one == image("cold", 2, Some(&cache)), "a write filling the cache differs");
    // Blocks repeated in the tree (etc/text-copy) are compressed once, unless
    // two threads happen to take both at the same time.
    let (stored, repeated) = (
        cache.misses.load(std::sync::atomic::Ordering::Relaxed),
        cache.hits.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(stored > 0);
    assert!(repeated <= 4);
    assert!(one == image("warm", 2, Some(&cache)), "a write from the cache differs");
    assert_eq!(cache.hits.load(std::sync::atomic::Ordering::Relaxed), repeated + stored + repeated);
    assert_eq!(cache.misses.load(std::sync::atomic::Ordering::Relaxed), stored);

    // Corrupt entries are found, recompressed and replaced; the image is the same.
    let mut names: Vec<_> = fs_err::read_dir(&cache_dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    names.sort();
    let mut compressed = names.iter().filter(|path| fs_err::read(path).unwrap()[0] == 1);
    let truncated = compressed.next().unwrap();
    let bytes = fs_err::read(truncated).unwrap();
    fs_err::write(truncated, &bytes[..bytes.len() - 1]).unwrap();
    let swapped = compressed.next().unwrap();
    let other = compressed.next().unwrap();
    fs_err::copy(other, swapped).unwrap();
    fs_err::write(names.last().unwrap(), b"\x07garbage").unwrap();
    // Neither a FIFO nor an entry too long for a block is read.
    let fifo = &names[names.len() - 2];
    fs_err::remove_file(fifo).unwrap();
    nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let long = &names[names.len() - 3];
    fs_err::write(long, [&[1u8][..], &vec![0u8; BLOCK_SIZE as usize + 10]].concat()).unwrap();
    let fresh = BlockCache::new(Box::new({
        let entries = cache_dir.clone();
        move |settings, digest| entries.join(format!("{settings}-{digest}"))
    }));
    assert!(one == image("repaired", 2, Some(&fresh)), "a write from a corrupt cache differs");
    assert_eq!(fresh.corrupt.load(std::sync::atomic::Ordering::Relaxed), 5);
    assert!(fs_err::read(truncated).unwrap() == bytes, "the corrupt entry is replaced");

    // A changed file: the other files' blocks come from the cache.
    fs_err::write(tree.join("usr/bin/tool07"), noise(7000, 12345)).unwrap();
    fs_err::write(tree.join("etc/noise"), noise(2 * BLOCK_SIZE as usize + 77, 99)).unwrap();
    let changed_cold = image("changed-cold", 2, None);
    let warm = BlockCache::new(Box::new({
        let entries = cache_dir.clone();
        move |settings, digest| entries.join(format!("{settings}-{digest}"))
    }));
    assert!(changed_cold == image("changed-warm", 2, Some(&warm)), "an incremental write differs from a clean one");
    let (hits, misses) =
        (warm.hits.load(std::sync::atomic::Ordering::Relaxed), warm.misses.load(std::sync::atomic::Ordering::Relaxed));
    assert!(hits > misses, "{hits} blocks from the cache, {misses} compressed");
}

#[test]
fn a_memo_skips_unchanged_files_and_never_changes_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let devices = Devices::placeholders_only();
    let tree = sample_tree(dir.path(), &devices);
    let (entries, memo) = (dir.path().join("cache"), dir.path().join("memo"));
    let cache = || {
        let (entries, memo) = (entries.clone(), memo.clone());
        BlockCache::new(Box::new(move |settings, digest| entries.join(format!("{settings}-{digest}"))))
            .with_memo(Box::new(move |settings| memo.join(settings)))
    };
    let image = |name: &str, cache: Option<&BlockCache>| {
        let path = dir.path().join(name);
        let summary = write(&tree, &devices, &path, 2, cache);
        (fs_err::read(path).unwrap(), summary)
    };
    let (clean, _) = image("clean", None);
    let (first, summary) = image("first", Some(&cache()));
    assert!(clean == first, "a write learning a memo differs");
    assert_eq!(summary.memo_known, Some(0));
    let known = cache();
    let (second, summary) = image("second", Some(&known));
    assert!(clean == second, "a write from the memo differs");
    assert_eq!(summary.memo_known, Some(summary.files), "every file known");
    assert!(summary.files > 10);

    // Rewritten in place with the same size and mtime: only the ctime tells.
    let noise_path = tree.join("etc/noise");
    let before = fs_err::metadata(&noise_path).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    {
        use std::io::Write;
        let mut file = fs_err::OpenOptions::new().write(true).open(&noise_path).unwrap();
        file.write_all(&noise(2 * BLOCK_SIZE as usize + 77, 4242)).unwrap();
    }
    filetime::set_file_mtime(&noise_path, FileTime::from_last_modification_time(&before)).unwrap();
    assert_eq!(fs_err::metadata(&noise_path).unwrap().ino(), before.ino());
    // A small file changed too (its fragment block is made again from the
    // other tails, which the memo knows without their bytes).
    fs_err::write(tree.join("usr/bin/tool07"), noise(7001, 777)).unwrap();
    let (clean, _) = image("changed-clean", None);
    let (changed, summary) = image("changed", Some(&cache()));
    assert!(clean == changed, "an incremental write from the memo differs from a clean one");
    assert_eq!(summary.memo_known, Some(summary.files - 2));

    // Entries the memo names but whose bytes are no longer those: read and checked instead.
    let mut names: Vec<_> = fs_err::read_dir(&entries).unwrap().map(|entry| entry.unwrap().path()).collect();
    names.sort();
    for path in names.iter().filter(|path| fs_err::read(path).unwrap()[0] == 1).take(3) {
        let bytes = fs_err::read(path).unwrap();
        fs_err::write(path, &bytes[..bytes.len() - 1]).unwrap();
    }
    let (repaired, summary) = image("repaired", Some(&cache()));
    assert!(clean == repaired, "a write from a memo over damaged entries differs");
    assert_eq!(summary.memo_known, Some(summary.files));
    // A damaged memo is no memo.
    for path in fs_err::read_dir(&memo).unwrap() {
        let path = path.unwrap().path();
        let mut bytes = fs_err::read(&path).unwrap();
        bytes[100] ^= 0xff;
        fs_err::write(&path, &bytes).unwrap();
    }
    let (unmemoized, summary) = image("unmemoized", Some(&cache()));
    assert!(clean == unmemoized);
    assert_eq!(summary.memo_known, Some(0));
}

#[test]
fn every_compressor_writes_what_unsquashfs_reads() {
    let Some(unsquashfs) = tool("unsquashfs") else { return };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs_err::create_dir_all(tree.join("a")).unwrap();
    fs_err::write(tree.join("a/text"), text(300_000)).unwrap();
    fs_err::write(tree.join("a/noise"), noise(200_000, 5)).unwrap();
    fs_err::write(tree.join("small"), b"small\n").unwrap();
    for (algorithm, level) in [
        (Algorithm::Gzip, None),
        (Algorithm::Gzip, Some(1)),
        (Algorithm::Xz, None),
        (Algorithm::Zstd, Some(3)),
        (Algorithm::Zstd, None),
    ] {
        let image = dir.path().join(format!("{}.squashfs", algorithm.name()));
        writer::write(
            &tree,
            &Devices::default(),
            &image,
            &Options { compression: Compression { algorithm, level }, epoch: EPOCH, threads: 2, cache: None },
        )
        .unwrap();
        let extracted = dir.path().join(format!("{}-{level:?}", algorithm.name()));
        output_of(Command::new(&unsquashfs).arg("-no-progress").arg("-d").arg(&extracted).arg(&image));
        for file in ["a/text", "a/noise", "small"] {
            assert!(
                fs_err::read(tree.join(file)).unwrap() == fs_err::read(extracted.join(file)).unwrap(),
                "{} {file}",
                algorithm.name()
            );
        }
        super::verify(&image, 0, &tree, &Devices::default()).unwrap();
    }
    let error = writer::write(
        &tree,
        &Devices::default(),
        &dir.path().join("lz4"),
        &Options {
            compression: Compression { algorithm: Algorithm::Lz4, level: None },
            epoch: EPOCH,
            threads: 1,
            cache: None,
        },
    )
    .unwrap_err();
    assert!(error.to_string().contains("no lz4 compressor"), "{error}");
}

#[test]
fn mtimes_are_clamped_to_the_epoch_and_an_empty_tree_is_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs_err::create_dir_all(&tree).unwrap();
    let image = dir.path().join("empty.squashfs");
    writer::write(
        &tree,
        &Devices::default(),
        &image,
        &Options { compression: zstd15(), epoch: EPOCH, threads: 1, cache: None },
    )
    .unwrap();
    super::verify(&image, 0, &tree, &Devices::default()).unwrap();
    fs_err::write(tree.join("late"), b"x").unwrap();
    filetime::set_file_mtime(tree.join("late"), FileTime::from_unix_time(EPOCH + 5000, 0)).unwrap();
    writer::write(
        &tree,
        &Devices::default(),
        &image,
        &Options { compression: zstd15(), epoch: EPOCH, threads: 1, cache: None },
    )
    .unwrap();
    let reader =
        backhand::FilesystemReader::from_reader(std::io::BufReader::new(fs_err::File::open(&image).unwrap())).unwrap();
    let late = reader.files().find(|node| node.fullpath.as_os_str().as_bytes() == b"/late").unwrap();
    assert_eq!(late.header.mtime as i64, EPOCH);
    let bytes = fs_err::read(&image).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as i64, EPOCH, "the mkfs time");
}

#[test]
fn a_changed_small_file_changes_few_fragment_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs_err::create_dir_all(&tree).unwrap();
    for index in 0..400 {
        fs_err::write(tree.join(format!("{index:03}")), noise(1500 + index * 37 % 4500, index as u64)).unwrap();
    }
    let entries = dir.path().join("cache");
    let cache = BlockCache::new(Box::new(move |settings, digest| entries.join(format!("{settings}-{digest}"))));
    write(&tree, &Devices::default(), &dir.path().join("before"), 2, Some(&cache));
    let blocks = cache.misses.load(std::sync::atomic::Ordering::Relaxed);
    assert!(blocks > 8, "{blocks} fragment blocks");
    for (file, len) in [("200", 900), ("201", 6000), ("050", 2)] {
        fs_err::write(tree.join(file), noise(len, 777)).unwrap();
        let misses = cache.misses.load(std::sync::atomic::Ordering::Relaxed);
        write(&tree, &Devices::default(), &dir.path().join("incremental"), 2, Some(&cache));
        let changed = cache.misses.load(std::sync::atomic::Ordering::Relaxed) - misses;
        assert!(changed <= 2, "changing {file} changed {changed} of {blocks} fragment blocks");
        write(&tree, &Devices::default(), &dir.path().join("clean"), 2, None);
        assert!(
            fs_err::read(dir.path().join("incremental")).unwrap() == fs_err::read(dir.path().join("clean")).unwrap()
        );
    }
}

/// A file larger than a batch is written a batch's worth of blocks at a time
/// (the writer holds about one batch of compressed blocks, not the file);
/// an identical copy of it is still stored once, and the image is what
/// mksquashfs's lists and extracts to, the same for any thread count and
/// from the memo.
#[test]
fn a_file_larger_than_a_batch_is_written_a_batch_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs_err::create_dir_all(tree.join("data")).unwrap();
    let batch = BATCH_BYTES as usize;
    let large = noise(2 * batch + 3 * BLOCK_SIZE as usize + 4321, 11);
    fs_err::write(tree.join("data/a-small"), noise(9000, 12)).unwrap();
    fs_err::write(tree.join("data/b-large"), &large).unwrap();
    fs_err::write(tree.join("data/c-large-copy"), &large).unwrap();
    // Mostly a hole: blocks of zeros inside a file larger than a batch.
    let mut holes = vec![0u8; batch + 5 * BLOCK_SIZE as usize];
    holes[batch + 7] = 1;
    fs_err::write(tree.join("data/d-holes"), &holes).unwrap();
    fs_err::write(tree.join("data/e-small"), noise(5000, 13)).unwrap();
    // Before the epoch, which mksquashfs does not clamp to.
    for path in ["data/a-small", "data/b-large", "data/c-large-copy", "data/d-holes", "data/e-small", "data", ""] {
        let time = FileTime::from_unix_time(EPOCH - 1000, 0);
        filetime::set_file_times(tree.join(path), time, time).unwrap();
    }
    let devices = Devices::default();
    let (entries, memo) = (dir.path().join("cache"), dir.path().join("memo"));
    let cache = || {
        let (entries, memo) = (entries.clone(), memo.clone());
        BlockCache::new(Box::new(move |settings, digest| entries.join(format!("{settings}-{digest}"))))
            .with_memo(Box::new(move |settings| memo.join(settings)))
    };
    let image = |name: &str, threads: usize, cache: Option<&BlockCache>| {
        let path = dir.path().join(name);
        let summary = write(&tree, &devices, &path, threads, cache);
        (fs_err::read(path).unwrap(), summary)
    };
    let (one, summary) = image("one", 1, None);
    assert!(
        summary.max_held_bytes <= BATCH_BYTES + BATCH_BYTES / 16,
        "{} bytes held at once for a file of {}",
        summary.max_held_bytes,
        large.len()
    );
    assert!(summary.max_held_bytes >= BATCH_BYTES / 2, "{}", summary.max_held_bytes);
    assert!((one.len() as u64) < large.len() as u64 + BATCH_BYTES / 4, "the copy is stored once: {} bytes", one.len());
    assert!(one == image("three", 3, None).0, "1 and 3 threads differ");
    assert!(one == image("learning", 2, Some(&cache())).0, "a write learning a memo differs");
    let (from_memo, summary) = image("from-memo", 2, Some(&cache()));
    assert!(one == from_memo, "a write from the memo differs");
    assert_eq!(summary.memo_known, Some(summary.files));

    let Some(unsquashfs) = tool("unsquashfs") else { return };
    let extracted = dir.path().join("extracted");
    output_of(Command::new(&unsquashfs).arg("-no-progress").arg("-d").arg(&extracted).arg(dir.path().join("one")));
    for name in ["a-small", "b-large", "c-large-copy", "d-holes", "e-small"] {
        assert!(
            fs_err::read(extracted.join("data").join(name)).unwrap()
                == fs_err::read(tree.join("data").join(name)).unwrap(),
            "{name} differs"
        );
    }
    let theirs = dir.path().join("theirs.squashfs");
    mksquashfs(&tree, &theirs);
    let listing = |image: &Path| output_of(Command::new(&unsquashfs).arg("-lln").arg(image));
    assert_eq!(listing(&dir.path().join("one")), listing(&theirs));
}

/// Sizes and counts past what one field or one metadata block holds: a file
/// over 4 GiB (sparse: a hole, then a byte) and, as root, more uids and gids
/// than one id table block holds (2048). unsquashfs lists the image as it
/// lists mksquashfs's and extracts the large file's size and last byte.
#[test]
fn a_file_over_4_gib_and_thousands_of_owners_list_as_mksquashfs() {
    let Some(unsquashfs) = tool("unsquashfs") else { return };
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs_err::create_dir_all(tree.join("owners")).unwrap();
    let large_len = (4u64 << 30) + 3 * u64::from(BLOCK_SIZE) + 5;
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(tree.join("large")).unwrap();
        file.set_len(large_len).unwrap();
        file.write_all_at(b"end", large_len - 3).unwrap();
    }
    let owners = if is_root() { 1100 } else { 0 };
    for index in 0..owners {
        let path = tree.join(format!("owners/{index:04}"));
        fs_err::write(&path, format!("{index}\n")).unwrap();
        nix::unistd::chown(&path, Some((10_000 + index).into()), Some((20_000 + index).into())).unwrap();
    }
    let mut paths: Vec<PathBuf> =
        walkdir::WalkDir::new(&tree).into_iter().map(|entry| entry.unwrap().into_path()).collect();
    paths.sort();
    for path in paths {
        let time = FileTime::from_unix_time(EPOCH - 1000, 0);
        filetime::set_file_times(path, time, time).unwrap();
    }
    let ours = dir.path().join("ours.squashfs");
    let summary = write(&tree, &Devices::default(), &ours, 2, None);
    assert!(summary.bytes < 1 << 20, "a hole is not stored: {} bytes", summary.bytes);
    let theirs = dir.path().join("theirs.squashfs");
    mksquashfs(&tree, &theirs);
    let listing = |image: &Path| output_of(Command::new(&unsquashfs).arg("-lln").arg(image));
    let ours_listing = listing(&ours);
    assert!(ours_listing.contains(&format!(" {large_len} ")), "{}", &ours_listing[..ours_listing.len().min(2000)]);
    assert!(ours_listing == listing(&theirs), "unsquashfs -lln differs from mksquashfs's");
    if owners > 0 {
        assert!(
            ours_listing.contains(&format!(" {}/{} ", 10_000 + owners - 1, 20_000 + owners - 1)),
            "the last owner is listed"
        );
    } else {
        eprintln!("SKIPPED more than 2048 uids and gids: chown needs root");
    }
    let extracted = dir.path().join("extracted");
    output_of(Command::new(&unsquashfs).arg("-no-progress").arg("-d").arg(&extracted).arg(&ours).arg("large"));
    let file = std::fs::File::open(extracted.join("large")).unwrap();
    assert_eq!(file.metadata().unwrap().len(), large_len);
    let mut end = [0u8; 3];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut end, large_len - 3).unwrap();
    assert_eq!(&end, b"end");
}
