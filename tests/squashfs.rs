//! The kernel mounts what rootsmith's squashfs writer writes (needs root:
//! a loop device and a mount): every entry, its contents, owner, mode, mtime
//! and xattrs, and every name of a directory large enough to be looked up
//! through its directory index.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use rootsmith::artifact::squashfs::writer::{self, Options};
use rootsmith::layer::Devices;
use rootsmith::recipe::{Algorithm, Compression};

const EPOCH: i64 = 1_700_000_000;

fn tree(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("big")).unwrap();
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("dev")).unwrap();
    let mut state = 7u64;
    let noise: Vec<u8> = (0..400_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(tree.join("bin/noise"), &noise).unwrap();
    std::fs::write(tree.join("bin/small"), &noise[..1000]).unwrap();
    std::fs::write(tree.join("bin/numbers"), (0..100_000).map(|n| format!("{n}\n")).collect::<String>()).unwrap();
    std::fs::hard_link(tree.join("bin/numbers"), tree.join("numbers-link")).unwrap();
    xattr::set(
        tree.join("bin/small"),
        "security.capability",
        &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )
    .unwrap();
    xattr::set(tree.join("bin/numbers"), "user.note", b"counted").unwrap();
    std::os::unix::fs::symlink("bin/numbers", tree.join("link")).unwrap();
    for index in 0..2000 {
        std::fs::write(
            tree.join("big").join(format!("{index:05}-{}", "x".repeat(100 + index % 120))),
            format!("{index}\n"),
        )
        .unwrap();
    }
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(&tree.join("dev/null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
    mknod(&tree.join("dev/loop9"), SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), makedev(7, 9)).unwrap();
    nix::unistd::mkfifo(&tree.join("dev/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    nix::unistd::chown(&tree.join("bin/small"), Some(123.into()), Some(456.into())).unwrap();
    std::fs::set_permissions(tree.join("bin/small"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    for entry in walkdir::WalkDir::new(&tree).contents_first(true) {
        let time = filetime::FileTime::from_unix_time(EPOCH - 10, 0);
        filetime::set_symlink_file_times(entry.unwrap().path(), time, time).unwrap();
    }
    tree
}

fn describe(tree: &Path) -> Vec<String> {
    walkdir::WalkDir::new(tree)
        .sort_by_file_name()
        .into_iter()
        .map(|entry| {
            let entry = entry.unwrap();
            let path = entry.path();
            let metadata = path.symlink_metadata().unwrap();
            let contents = if metadata.is_file() {
                rootsmith::digest::sha256_hex(&std::fs::read(path).unwrap())
            } else {
                String::new()
            };
            let mut xattrs: Vec<String> = xattr::list(path)
                .unwrap()
                .map(|name| format!("{}={:?}", name.to_string_lossy(), xattr::get(path, &name).unwrap()))
                .collect();
            xattrs.sort();
            let size = if metadata.is_dir() { 0 } else { metadata.len() };
            format!(
                "{} {:o} {}:{} {} {} nlink {} rdev {} {contents} {}",
                path.strip_prefix(tree).unwrap().display(),
                metadata.mode(),
                metadata.uid(),
                metadata.gid(),
                metadata.mtime(),
                size,
                metadata.nlink(),
                metadata.rdev(),
                xattrs.join(",")
            )
        })
        .collect()
}

#[test]
fn kernel_mounts_rootsmiths_squashfs_as_root() {
    if !common::needs_root("kernel_mounts_rootsmiths_squashfs_as_root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = tree(dir.path());
    for (algorithm, level) in [(Algorithm::Zstd, Some(15)), (Algorithm::Xz, None), (Algorithm::Gzip, Some(9))] {
        let image = dir.path().join(format!("{}.squashfs", algorithm.name()));
        writer::write(
            &tree,
            &Devices::default(),
            &image,
            &Options { compression: Compression { algorithm, level }, epoch: EPOCH, threads: 2, cache: None },
        )
        .unwrap();
        let mountpoint = dir.path().join(format!("mnt-{}", algorithm.name()));
        std::fs::create_dir(&mountpoint).unwrap();
        let status = Command::new("mount")
            .args(["-t", "squashfs", "-o", "loop,ro"])
            .arg(&image)
            .arg(&mountpoint)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t squashfs {}", image.display());
        let mounted = std::panic::catch_unwind(|| {
            assert_eq!(describe(&mountpoint), describe(&tree), "{}", algorithm.name());
            // Looked up by name (through the directory index), not listed.
            for entry in std::fs::read_dir(tree.join("big")).unwrap() {
                let name = entry.unwrap().file_name();
                assert!(mountpoint.join("big").join(&name).symlink_metadata().is_ok(), "{name:?}");
            }
            assert!(mountpoint.join("big/00000-missing").symlink_metadata().is_err());
        });
        let status = Command::new("umount").arg(&mountpoint).status().unwrap();
        assert!(status.success());
        if let Err(panic) = mounted {
            std::panic::resume_unwind(panic);
        }
    }
}
