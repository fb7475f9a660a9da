//! `files` stage: copy a directory into the tree at `dest`, owned by root (or
//! `owner`), with `modes` overrides. The copy goes through the layer applier,
//! so paths are resolved inside the tree exactly as for any archive. Only
//! regular files are read: symlinks are copied as symlinks (never followed),
//! FIFOs and device nodes as nodes (a device as a placeholder where mknod is
//! refused), sockets are left out.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::context::StageContext;
use crate::layer::{apply_layer, Devices, TreeTarWriter};
use crate::recipe::Files;

pub fn run(stage: &Files, context: &StageContext<'_>) -> Result<()> {
    let dest = PathBuf::from(stage.dest.trim_start_matches('/'));
    let mut archive = tempfile::tempfile_in(context.scratch)?;
    // The source is a directory of the host's: it has real nodes, never placeholders.
    let source_devices = Devices::default();
    {
        let mut writer =
            TreeTarWriter::new(std::io::BufWriter::new(&mut archive), context.source_date_epoch, &source_devices);
        for entry in walkdir::WalkDir::new(&stage.src.resolved).min_depth(1).sort_by_file_name() {
            let entry = entry.with_context(|| format!("reading {}", stage.src.resolved.display()))?;
            let relative = entry.path().strip_prefix(&stage.src.resolved).expect("under src");
            let mode = stage.modes.get(relative.to_string_lossy().as_ref()).copied();
            writer.append_with(
                &stage.src.resolved,
                relative,
                &dest.join(relative),
                Some((stage.uid, stage.gid)),
                mode,
            )?;
        }
        writer.finish()?;
    }
    use std::io::Seek;
    archive.rewind()?;
    apply_layer(
        std::io::BufReader::new(archive),
        context.tree,
        &format!("files from {}", stage.src.written),
        context.devices,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use super::*;
    use crate::host::RecordingHost;
    use crate::recipe::LocalPath;

    #[test]
    fn copies_a_tree_with_owner_and_mode_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("overlay");
        fs_err::create_dir_all(src.join("etc/ssh")).unwrap();
        fs_err::write(src.join("etc/ssh/key"), "secret").unwrap();
        fs_err::write(src.join("etc/motd"), "hello").unwrap();
        fs_err::set_permissions(src.join("etc/motd"), std::fs::Permissions::from_mode(0o640)).unwrap();
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("opt")).unwrap();
        let stage = Files {
            src: LocalPath { written: "overlay".into(), resolved: src },
            dest: "/opt/app".into(),
            uid: 1000,
            gid: 100,
            modes: BTreeMap::from([("etc/ssh/key".to_string(), 0o600)]),
        };
        let host = RecordingHost::default();
        let layout = crate::cache::Layout::new(Path::new("/nonexistent"));
        let context = StageContext::for_test(&host, &tree, dir.path(), &layout, 1_000);
        run(&stage, &context).unwrap();
        let key = fs_err::metadata(tree.join("opt/app/etc/ssh/key")).unwrap();
        assert_eq!(key.mode() & 0o7777, 0o600);
        let motd = fs_err::metadata(tree.join("opt/app/etc/motd")).unwrap();
        assert_eq!(motd.mode() & 0o7777, 0o640, "a mode without an override is kept");
        assert_eq!(motd.mtime(), 1_000, "mtimes are clamped");
        if nix::unistd::geteuid().is_root() {
            assert_eq!((key.uid(), key.gid()), (1000, 100));
        }
        assert!(host.commands.lock().unwrap().is_empty(), "files runs no command");
    }

    #[test]
    fn special_files_are_copied_as_nodes_and_symlinks_as_symlinks() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("overlay");
        fs_err::create_dir_all(&src).unwrap();
        nix::unistd::mkfifo(&src.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", src.join("shadow")).unwrap();
        std::os::unix::fs::symlink("../../../outside", src.join("up")).unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            use nix::sys::stat::{makedev, mknod, Mode, SFlag};
            mknod(&src.join("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3)).unwrap();
        }
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(&tree).unwrap();
        let stage = Files {
            src: LocalPath { written: "overlay".into(), resolved: src },
            dest: "/etc".into(),
            uid: 0,
            gid: 0,
            modes: BTreeMap::new(),
        };
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let host = RecordingHost::default();
                let layout = crate::cache::Layout::new(Path::new("/nonexistent"));
                let context = StageContext::for_test(&host, &tree, dir.path(), &layout, 1_000);
                sender.send(run(&stage, &context).map_err(|error| format!("{error:#}")))
            });
            receiver.recv_timeout(std::time::Duration::from_secs(20)).expect("the copy hung").unwrap();
        });
        let pipe = fs_err::symlink_metadata(tree.join("etc/pipe")).unwrap();
        assert!(pipe.file_type().is_fifo());
        assert_eq!(pipe.mode() & 0o7777, 0o640);
        assert_eq!(fs_err::read_link(tree.join("etc/shadow")).unwrap(), Path::new("/etc/shadow"));
        assert_eq!(fs_err::read_link(tree.join("etc/up")).unwrap(), Path::new("../../../outside"));
        if root {
            let null = fs_err::symlink_metadata(tree.join("etc/null")).unwrap();
            assert!(null.file_type().is_char_device());
            assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        }
    }
}
