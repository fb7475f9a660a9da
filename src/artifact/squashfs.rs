//! `root.squashfs`: written by rootsmith's own writer ([`writer`]: zstd,
//! gzip, xz; multi-threaded, keeps xattrs, copies blocks compressed before
//! from a [`BlockCache`]), with mksquashfs for the compressors it lacks (lz4,
//! lzo); always read back with backhand to check it.
//!
//! A placeholder standing for a device node (a rootless build, see
//! [`Devices`]) goes in as the device. rootsmith's writer asks `Devices`;
//! mksquashfs cannot be told that a file is a device, so the placeholders
//! leave the tree while it runs and a pseudo file (`-pf`) adds the devices
//! with the placeholders' mode, owner and mtime: the same bytes a real node
//! gives. They come back afterwards, error or not, and the directories they
//! left get their mtimes back.

pub mod blockcache;
mod codec;
pub mod memo;
pub mod writer;
#[cfg(test)]
mod writer_tests;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use filetime::FileTime;
use sha2::{Digest, Sha256};

pub use blockcache::BlockCache;

use crate::host::{Command, Host};
use crate::layer::{Device, DeviceKind, Devices, Placeholder};
use crate::recipe::Compression;

pub use codec::WRITER;

/// Whether rootsmith's own writer has `compression`'s compressor.
fn own_writer(compression: Compression) -> bool {
    codec::Settings::of(compression, writer::BLOCK_SIZE).is_ok()
}

/// Which writer makes a squashfs compressed with `compression`, for the
/// manifest and the output key.
pub fn writer_name(host: &dyn Host, compression: Compression) -> String {
    if own_writer(compression) {
        return WRITER.to_string();
    }
    match crate::tools::find("mksquashfs") {
        Some(path) => {
            let text = host.capture(&Command::on_host(path, ["-version"], Path::new("/dev/null"))).unwrap_or_default();
            let first = text.lines().next().unwrap_or("");
            format!("mksquashfs {}", first.split_whitespace().nth(2).unwrap_or("?"))
        }
        None => "none".to_string(),
    }
}

/// Write `tree` (whose placeholders `devices` knows) as a squashfs into
/// `out` (named `name` in errors) from its current position on, what the
/// writer did to `log`; returns the squashfs's length. rootsmith's writer
/// writes in place, takes compressed blocks from `blocks` and keeps the ones
/// it compresses there; mksquashfs (lz4, lzo) writes into `scratch`, and the
/// image is copied into `out`; placeholders wait beside the tree
/// (`TREE.placeholders`) while it runs.
#[allow(clippy::too_many_arguments)]
pub fn write_into(
    host: &dyn Host,
    tree: &Path,
    devices: &Devices,
    out: &mut std::fs::File,
    name: &Path,
    scratch: &Path,
    compression: Compression,
    epoch: i64,
    log: &Path,
    blocks: Option<&BlockCache>,
) -> Result<u64> {
    if own_writer(compression) {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let started = std::time::Instant::now();
        let summary =
            writer::write_into(tree, devices, out, &writer::Options { compression, epoch, threads, cache: blocks })
                .with_context(|| format!("writing {}", name.display()))?;
        let mut line = format!(
            "{WRITER}: {} inodes, {} bytes, {} threads, {:.1} s",
            summary.inodes,
            summary.bytes,
            threads,
            started.elapsed().as_secs_f64()
        );
        if let Some(cache) = blocks {
            let (hits, misses, corrupt, unwritten) = (
                cache.hits.load(Ordering::Relaxed),
                cache.misses.load(Ordering::Relaxed),
                cache.corrupt.load(Ordering::Relaxed),
                cache.unwritten.load(Ordering::Relaxed),
            );
            line.push_str(&format!("; block cache: {hits} blocks copied, {misses} compressed, {corrupt} corrupt entries replaced, {unwritten} not stored"));
            if let Some(known) = summary.memo_known {
                line.push_str(&format!("; memo: {known} of {} files known, not read", summary.files));
            }
        }
        line.push('\n');
        use std::io::Write;
        fs_err::OpenOptions::new().append(true).create(true).open(log)?.write_all(line.as_bytes())?;
        return Ok(summary.bytes);
    }
    let Some(mksquashfs) = crate::tools::find("mksquashfs") else {
        bail!("a {} squashfs needs mksquashfs\nhint: apt-get install squashfs-tools, or compress the squashfs with zstd, gzip or xz", compression.algorithm.name());
    };
    let output = scratch.join("root.squashfs");
    write_with_mksquashfs(
        host,
        mksquashfs_command(&mksquashfs, tree, &output, compression, epoch, log),
        tree,
        devices,
    )?;
    let length =
        std::io::copy(&mut fs_err::File::open(&output)?, out).with_context(|| format!("writing {}", name.display()))?;
    fs_err::remove_file(&output)?;
    Ok(length)
}

/// mksquashfs writing `tree` to `output`, its output to `log`.
fn mksquashfs_command(
    mksquashfs: &Path,
    tree: &Path,
    output: &Path,
    compression: Compression,
    epoch: i64,
    log: &Path,
) -> Command {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut command = Command::on_host(mksquashfs, [tree.as_os_str(), output.as_os_str()], log);
    command.argv.extend(["-noappend", "-reproducible", "-xattrs", "-no-progress", "-quiet"].map(String::from));
    command.argv.extend([
        "-mkfs-time".to_string(),
        epoch.to_string(),
        "-comp".to_string(),
        compression.algorithm.name().to_string(),
    ]);
    if let Some(level) = compression.level {
        command.argv.extend(["-Xcompression-level".to_string(), level.to_string()]);
    }
    command.argv.extend(["-processors".to_string(), threads.to_string()]);
    // mksquashfs refuses SOURCE_DATE_EPOCH beside -mkfs-time.
    command.env_remove("SOURCE_DATE_EPOCH")
}

/// Run `command` (mksquashfs reading `tree`) with the placeholders out of the
/// tree and their devices in a pseudo file.
fn write_with_mksquashfs(host: &dyn Host, mut command: Command, tree: &Path, devices: &Devices) -> Result<()> {
    let placeholders = devices.placeholders(tree)?;
    let stash = if placeholders.is_empty() { None } else { Some(Stash::out_of(tree, &placeholders)?) };
    if let Some(stash) = &stash {
        command.argv.extend(["-pf".to_string(), stash.pseudo_file().display().to_string()]);
    }
    let written = host.run(&command);
    let restored = stash.map_or(Ok(()), Stash::put_back);
    match (written, restored) {
        (Err(error), Err(restoring)) => Err(error.context(format!("and afterwards: {restoring:#}"))),
        (written, restored) => written.and(restored),
    }
}

/// The pseudo file's line for a device: `PATH C MTIME MODE UID GID MAJOR MINOR`,
/// the path's blanks, quotes and backslashes escaped with a backslash.
fn pseudo_line(placeholder: &Placeholder) -> Result<Vec<u8>> {
    let Placeholder { path, device, metadata } = placeholder;
    let mut line = Vec::new();
    for &byte in path.as_os_str().as_bytes() {
        if byte == b'\n' {
            bail!("{}: a device whose name holds a newline cannot be written to a pseudo file", path.display());
        }
        if byte.is_ascii_whitespace() || byte == b'"' || byte == b'\\' {
            line.push(b'\\');
        }
        line.push(byte);
    }
    let kind = match device.kind {
        DeviceKind::Char => 'C',
        DeviceKind::Block => 'B',
    };
    let mtime = u32::try_from(metadata.mtime())
        .map_err(|_| anyhow::anyhow!("{}: mtime {} does not fit a squashfs", path.display(), metadata.mtime()))?;
    let mode = metadata.mode() & 0o7777;
    line.extend_from_slice(
        format!(" {kind} {mtime} {mode:o} {} {} {} {}\n", metadata.uid(), metadata.gid(), device.major, device.minor)
            .as_bytes(),
    );
    Ok(line)
}

/// Placeholders moved out of the tree while mksquashfs reads it, with the
/// pseudo file that adds their devices. They go back by [`Stash::put_back`],
/// or when it is dropped (an error came first).
struct Stash {
    tree: PathBuf,
    /// `TREE.placeholders`, beside the tree (on its filesystem): the
    /// placeholders by number, and the pseudo file.
    dir: PathBuf,
    /// What is out: (path relative to the tree, path in the stash).
    out: Vec<(PathBuf, PathBuf)>,
    /// The directories they leave, with their access and modification times before.
    parents: BTreeMap<PathBuf, (FileTime, FileTime)>,
}

impl Stash {
    fn out_of(tree: &Path, placeholders: &[Placeholder]) -> Result<Stash> {
        let mut pseudo = Vec::new();
        for placeholder in placeholders {
            let full = tree.join(&placeholder.path);
            if placeholder.metadata.nlink() > 1 {
                bail!(
                    "{} stands for a {} and has {} hard links: mksquashfs takes a device from a pseudo file only as one link\nhint: build as root, or remove the extra links in a stage",
                    full.display(),
                    placeholder.device.kind.name(),
                    placeholder.metadata.nlink()
                );
            }
            if xattr::list(&full).map(|mut names| names.next().is_some()).unwrap_or(false) {
                bail!("{} stands for a device and has extended attributes, which mksquashfs cannot give a device from a pseudo file\nhint: build as root", full.display());
            }
            pseudo.extend(pseudo_line(placeholder)?);
        }
        let name = tree
            .file_name()
            .with_context(|| format!("{} has no name to put its placeholders beside", tree.display()))?;
        let mut dir = tree.with_file_name(name);
        dir.as_mut_os_string().push(".placeholders");
        fs_err::create_dir(&dir)?;
        let mut stash = Stash { tree: tree.to_path_buf(), dir, out: Vec::new(), parents: BTreeMap::new() };
        fs_err::write(stash.pseudo_file(), pseudo)?;
        for placeholder in placeholders {
            let parent = tree.join(placeholder.path.parent().unwrap_or(Path::new("")));
            if let std::collections::btree_map::Entry::Vacant(vacant) = stash.parents.entry(parent) {
                let metadata = fs_err::metadata(vacant.key())?;
                vacant.insert((
                    FileTime::from_last_access_time(&metadata),
                    FileTime::from_last_modification_time(&metadata),
                ));
            }
        }
        for (index, placeholder) in placeholders.iter().enumerate() {
            let stashed = stash.dir.join(index.to_string());
            fs_err::rename(tree.join(&placeholder.path), &stashed)?;
            stash.out.push((placeholder.path.clone(), stashed));
        }
        stash.restore_times()?;
        Ok(stash)
    }

    fn pseudo_file(&self) -> PathBuf {
        self.dir.join("pseudo")
    }

    fn restore_times(&self) -> Result<()> {
        for (parent, (atime, mtime)) in &self.parents {
            filetime::set_file_times(parent, *atime, *mtime)
                .with_context(|| format!("restoring the times of {}", parent.display()))?;
        }
        Ok(())
    }

    /// Every placeholder back in the tree, the directories' times restored,
    /// the stash removed; on an error, what is still out stays in the stash.
    fn restore(&mut self) -> Result<()> {
        let mut failed = Vec::new();
        while let Some((relative, stashed)) = self.out.pop() {
            if let Err(error) = fs_err::rename(&stashed, self.tree.join(&relative)) {
                failed.push(error.to_string());
            }
        }
        let times = self.restore_times();
        if !failed.is_empty() {
            bail!(
                "cannot put device placeholders back into {} (they stay in {}): {}",
                self.tree.display(),
                self.dir.display(),
                failed.join("; ")
            );
        }
        times?;
        let _ = fs_err::remove_file(self.pseudo_file());
        let _ = fs_err::remove_dir(&self.dir);
        Ok(())
    }

    fn put_back(mut self) -> Result<()> {
        self.restore()
    }
}

impl Drop for Stash {
    fn drop(&mut self) {
        if !self.out.is_empty() {
            let _ = self.restore();
        }
    }
}

/// What reading the squashfs back found.
#[derive(Debug)]
pub struct Check {
    pub entries: u64,
    pub sampled_files: usize,
}

/// Read `squashfs` (from `offset` in that file) with backhand: it must hold as many entries as `tree`, the
/// same device nodes (a placeholder `devices` knows counting as its device),
/// and a sample of its files must hash as the tree's do.
pub fn verify(squashfs: &Path, offset: u64, tree: &Path, devices: &Devices) -> Result<Check> {
    use backhand::{FilesystemReader, InnerNode};
    let reader = BufReader::new(fs_err::File::open(squashfs)?);
    let filesystem = FilesystemReader::from_reader_with_offset(reader, offset)
        .with_context(|| format!("reading back {}", squashfs.display()))?;
    let mut tree_entries = 0;
    // Device nodes by path, with their kind and squashfs device number.
    let mut tree_devices = BTreeMap::new();
    for entry in walkdir::WalkDir::new(tree) {
        let entry = entry?;
        tree_entries += 1;
        let kind = entry.file_type();
        if kind.is_char_device() || kind.is_block_device() || (kind.is_file() && !devices.is_empty()) {
            let metadata = entry.path().symlink_metadata()?;
            if let Some(device) = Device::of_node(&metadata).or_else(|| devices.lookup(&metadata)) {
                tree_devices.insert(
                    Path::new("/").join(entry.path().strip_prefix(tree).expect("under tree")),
                    (device.kind, device.rdev() as u32),
                );
            }
        }
    }
    let nodes: Vec<_> = filesystem.files().collect();
    let entries = nodes.len() as u64;
    if entries != tree_entries {
        bail!("{} holds {entries} entries but the tree has {tree_entries}", squashfs.display());
    }
    let image_devices: BTreeMap<PathBuf, (DeviceKind, u32)> = nodes
        .iter()
        .filter_map(|node| match &node.inner {
            InnerNode::CharacterDevice(device) => {
                Some((node.fullpath.clone(), (DeviceKind::Char, device.device_number)))
            }
            InnerNode::BlockDevice(device) => Some((node.fullpath.clone(), (DeviceKind::Block, device.device_number))),
            _ => None,
        })
        .collect();
    if image_devices != tree_devices {
        let differing = image_devices
            .keys()
            .chain(tree_devices.keys())
            .find(|path| image_devices.get(*path) != tree_devices.get(*path))
            .expect("the maps differ");
        let shown = |device: Option<&(DeviceKind, u32)>| match device {
            Some((kind, number)) => {
                format!("{} {}:{}", kind.name(), libc::major(u64::from(*number)), libc::minor(u64::from(*number)))
            }
            None => "no device".to_string(),
        };
        bail!(
            "{}: {} is {} in the image but {} in the tree",
            squashfs.display(),
            differing.display(),
            shown(image_devices.get(differing)),
            shown(tree_devices.get(differing))
        );
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
    use crate::recipe::Algorithm;

    /// rootsmith's writer, with no block cache.
    fn write_own(tree: &Path, devices: &Devices, output: &Path) {
        writer::write(
            tree,
            devices,
            output,
            &writer::Options { compression: zstd(), epoch: 1_000, threads: 2, cache: None },
        )
        .unwrap();
    }

    #[test]
    fn own_writer_output_reads_back_and_matches_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("etc/sub")).unwrap();
        fs_err::write(tree.join("etc/motd"), "hello\n").unwrap();
        fs_err::write(tree.join("etc/sub/big"), vec![7u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("motd", tree.join("etc/link")).unwrap();
        let output = dir.path().join("root.squashfs");
        let log = dir.path().join("log");
        let host = crate::host::RecordingHost::default();
        let blocks = dir.path().join("blocks");
        let cache = BlockCache::new(Box::new(move |settings, hex| blocks.join(settings).join(hex)));
        // Written in place from an offset, as into a rootfs image.
        let mut file = fs_err::File::create(&output).unwrap().into_parts().0;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(112)).unwrap();
        let length = write_into(
            &host,
            &tree,
            &Devices::default(),
            &mut file,
            &output,
            dir.path(),
            zstd(),
            1_000,
            &log,
            Some(&cache),
        )
        .unwrap();
        drop(file);
        assert_eq!(length, 4096);
        assert_eq!(fs_err::metadata(&output).unwrap().len(), 112 + 4096);
        assert!(host.commands.lock().unwrap().is_empty(), "no host program ran");
        assert_eq!(writer_name(&host, zstd()), WRITER);
        let logged = fs_err::read_to_string(&log).unwrap();
        assert!(
            logged.starts_with("rootsmith-squashfs 1: 6 inodes, 4096 bytes") && logged.contains("block cache: "),
            "{logged}"
        );
        // Three blocks of etc/sub/big (two alike) and a fragment block, each looked up once.
        assert_eq!(cache.hits.load(Ordering::Relaxed) + cache.misses.load(Ordering::Relaxed), 4);
        assert_eq!(&fs_err::read(&output).unwrap()[112..116], rootsmith_init::contract::SQUASHFS_MAGIC);
        let check = verify(&output, 112, &tree, &Devices::default()).unwrap();
        assert_eq!(check.entries, 6);
        assert_eq!(check.sampled_files, 2);
        // A tree that differs from the image is caught.
        fs_err::write(tree.join("etc/motd"), "changed\n").unwrap();
        assert!(verify(&output, 112, &tree, &Devices::default())
            .unwrap_err()
            .to_string()
            .contains("differs from the tree"));
    }

    use std::os::unix::fs::PermissionsExt;

    /// A small root filesystem under `dir/name`; its devices are made by
    /// `make_device` (a node or a placeholder), then given owner, mode and mtime.
    fn device_tree(dir: &Path, name: &str, make_device: &dyn Fn(&Path, &Path, DeviceKind, u32, u32)) -> PathBuf {
        let tree = dir.join(name);
        fs_err::create_dir_all(tree.join("etc")).unwrap();
        fs_err::create_dir_all(tree.join("dev/disk")).unwrap();
        fs_err::write(tree.join("etc/motd"), "hello\n").unwrap();
        for (relative, kind, major, minor, mode, gid, mtime) in [
            ("dev/null", DeviceKind::Char, 1, 3, 0o666, 0, 900),
            ("dev/tty", DeviceKind::Char, 5, 0, 0o620, 5, 901),
            ("dev/disk/sda", DeviceKind::Block, 8, 0, 0o660, 6, 902),
        ] {
            make_device(&tree, Path::new(relative), kind, major, minor);
            let path = tree.join(relative);
            nix::unistd::chown(&path, Some(0.into()), Some(gid.into())).unwrap();
            fs_err::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            filetime::set_symlink_file_times(
                &path,
                FileTime::from_unix_time(mtime, 0),
                FileTime::from_unix_time(mtime, 0),
            )
            .unwrap();
        }
        for (relative, mtime) in [("etc/motd", 700), ("etc", 701), ("dev/disk", 702), ("dev", 703), ("", 704)] {
            filetime::set_file_mtime(tree.join(relative), FileTime::from_unix_time(mtime, 123)).unwrap();
        }
        tree
    }

    /// Every path's kind, mode, owner, mtime (with nanoseconds) and size.
    fn tree_state(tree: &Path) -> Vec<String> {
        walkdir::WalkDir::new(tree)
            .sort_by_file_name()
            .into_iter()
            .map(|entry| {
                let entry = entry.unwrap();
                let metadata = entry.path().symlink_metadata().unwrap();
                format!(
                    "{} {:o} {}:{} {}.{} {} {}",
                    entry.path().display(),
                    metadata.mode(),
                    metadata.uid(),
                    metadata.gid(),
                    metadata.mtime(),
                    metadata.mtime_nsec(),
                    metadata.len(),
                    metadata.ino()
                )
            })
            .collect()
    }

    fn zstd() -> Compression {
        Compression { algorithm: Algorithm::Zstd, level: Some(3) }
    }

    #[test]
    fn placeholders_give_the_squashfs_a_real_node_gives() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED placeholders_give_the_squashfs_a_real_node_gives: a real device node needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let nodes = device_tree(dir.path(), "nodes", &|tree, relative, kind, major, minor| {
            use nix::sys::stat::{makedev, mknod, Mode, SFlag};
            let flag = if kind == DeviceKind::Char { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
            mknod(&tree.join(relative), flag, Mode::from_bits_truncate(0o600), makedev(major.into(), minor.into()))
                .unwrap();
        });
        let devices = Devices::placeholders_only();
        let placeholders = device_tree(dir.path(), "placeholders", &|tree, relative, kind, major, minor| {
            devices.make(tree, relative, kind, major, minor, 0o600).unwrap()
        });
        assert_eq!(devices.placeholders(&placeholders).unwrap().len(), 3);
        let state = tree_state(&placeholders);

        // rootsmith's writer, which asks `devices`.
        let from_nodes = dir.path().join("nodes.own");
        let from_placeholders = dir.path().join("placeholders.own");
        write_own(&nodes, &Devices::default(), &from_nodes);
        write_own(&placeholders, &devices, &from_placeholders);
        assert!(
            fs_err::read(&from_nodes).unwrap() == fs_err::read(&from_placeholders).unwrap(),
            "rootsmith's writer: the images differ"
        );
        assert_eq!(tree_state(&placeholders), state, "the tree is left alone");
        verify(&from_placeholders, 0, &placeholders, &devices).unwrap();

        // mksquashfs, which must not see the placeholders.
        let Some(mksquashfs) = crate::tools::find("mksquashfs") else {
            eprintln!("SKIPPED the mksquashfs half of placeholders_give_the_squashfs_a_real_node_gives: mksquashfs is not installed");
            return;
        };
        let host = crate::host::RealHost::default();
        let log = dir.path().join("log");
        let from_nodes = dir.path().join("nodes.squashfs");
        let from_placeholders = dir.path().join("placeholders.squashfs");
        write_with_mksquashfs(
            &host,
            mksquashfs_command(&mksquashfs, &nodes, &from_nodes, zstd(), 1_000, &log),
            &nodes,
            &Devices::default(),
        )
        .unwrap();
        write_with_mksquashfs(
            &host,
            mksquashfs_command(&mksquashfs, &placeholders, &from_placeholders, zstd(), 1_000, &log),
            &placeholders,
            &devices,
        )
        .unwrap();
        assert!(
            fs_err::read(&from_nodes).unwrap() == fs_err::read(&from_placeholders).unwrap(),
            "mksquashfs: the images differ"
        );
        assert_eq!(tree_state(&placeholders), state, "the placeholders are back, their directories' mtimes unchanged");
        assert_eq!(devices.placeholders(&placeholders).unwrap().len(), 3);
        assert!(!dir.path().join("placeholders.placeholders").exists(), "the stash is removed");
        verify(&from_placeholders, 0, &placeholders, &devices).unwrap();
        verify(&from_nodes, 0, &nodes, &Devices::default()).unwrap();

        // A tree whose placeholder stands for another device does not pass.
        let other = Devices::placeholders_only();
        let wrong = device_tree(dir.path(), "wrong", &|tree, relative, kind, major, minor| {
            other.make(tree, relative, kind, major, minor + 1, 0o600).unwrap()
        });
        let error = verify(&from_placeholders, 0, &wrong, &other).unwrap_err().to_string();
        assert!(
            error.contains("/dev/disk/sda is block device 8:0 in the image but block device 8:1 in the tree"),
            "{error}"
        );

        // mksquashfs failing: the placeholders come back all the same.
        let command =
            mksquashfs_command(&mksquashfs, &placeholders, &dir.path().join("missing/x.squashfs"), zstd(), 1_000, &log);
        let error = write_with_mksquashfs(&host, command, &placeholders, &devices).unwrap_err();
        assert!(format!("{error:#}").contains("mksquashfs"), "{error:#}");
        assert_eq!(tree_state(&placeholders), state);
        assert!(!dir.path().join("placeholders.placeholders").exists());
    }

    #[test]
    fn a_hard_linked_placeholder_is_refused_for_mksquashfs_and_the_tree_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let devices = Devices::placeholders_only();
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("dev")).unwrap();
        devices.make(&tree, Path::new("dev/null"), DeviceKind::Char, 1, 3, 0o666).unwrap();
        fs_err::hard_link(tree.join("dev/null"), tree.join("dev/null-too")).unwrap();
        let state = tree_state(&tree);
        let host = crate::host::RecordingHost::default();
        let command = mksquashfs_command(
            Path::new("/usr/bin/mksquashfs"),
            &tree,
            &dir.path().join("x.squashfs"),
            zstd(),
            1_000,
            &dir.path().join("log"),
        );
        let error = write_with_mksquashfs(&host, command, &tree, &devices).unwrap_err().to_string();
        assert!(error.contains("dev/null stands for a character device and has 2 hard links"), "{error}");
        assert!(host.commands.lock().unwrap().is_empty(), "mksquashfs did not run");
        assert_eq!(tree_state(&tree), state);
        // rootsmith's writer gives the device its two links.
        let output = dir.path().join("own.squashfs");
        write_own(&tree, &devices, &output);
        verify(&output, 0, &tree, &devices).unwrap();
        assert_eq!(tree_state(&tree), state);
    }

    #[test]
    fn pseudo_lines_escape_what_mksquashfs_would_split_on() {
        let dir = tempfile::tempdir().unwrap();
        let devices = Devices::placeholders_only();
        devices.make(dir.path(), Path::new("a b\\\"c"), DeviceKind::Block, 259, 65537, 0o640).unwrap();
        filetime::set_file_mtime(dir.path().join("a b\\\"c"), FileTime::from_unix_time(900, 0)).unwrap();
        let placeholders = devices.placeholders(dir.path()).unwrap();
        let line = String::from_utf8(pseudo_line(&placeholders[0]).unwrap()).unwrap();
        let metadata = &placeholders[0].metadata;
        assert_eq!(line, format!("a\\ b\\\\\\\"c B 900 640 {} {} 259 65537\n", metadata.uid(), metadata.gid()));
    }
}
