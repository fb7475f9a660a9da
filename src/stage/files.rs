//! `files` stage: copy a directory into the tree at `dest`, owned by root (or
//! `owner`), with `modes` overrides. The copy goes through the layer applier,
//! so paths are resolved inside the tree exactly as for any archive. Only
//! regular files are read: symlinks are copied as symlinks (never followed),
//! FIFOs and device nodes as nodes (a device as a placeholder where mknod is
//! refused), sockets are left out.
//!
//! The copy is checked before it is applied: every entry of the archive must
//! be what the plan digested for the stage's key (a file saved by an editor
//! while the build runs would otherwise be cached under the old content's key).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::context::{changed_during_build, StageContext};
use crate::cache::FileDigest;
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
    let copied = digests_of_copy(&mut archive, &dest).context("reading back the copy of the source")?;
    check_copy(stage, context.planned_files, &copied)?;
    archive.rewind()?;
    apply_layer(
        std::io::BufReader::new(archive),
        context.tree,
        &format!("files from {}", stage.src.written),
        context.devices,
    )?;
    Ok(())
}

/// Digests of every entry under `root`, by path relative to it, sorted, as
/// the `files` stage copies them: symlinks by their target (never followed),
/// FIFOs and device nodes by their device numbers (they are copied as nodes,
/// never read), sockets left out (the copy skips them).
pub fn source_digests(root: &Path) -> Result<Vec<FileDigest>> {
    use crate::digest::sha256_hex;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let mut digests = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        let metadata =
            entry.path().symlink_metadata().with_context(|| format!("reading {}", entry.path().display()))?;
        let relative = entry.path().strip_prefix(root).expect("under root").to_string_lossy().into_owned();
        let file_type = metadata.file_type();
        let device =
            || sha256_hex(format!("{}:{}", libc::major(metadata.rdev()), libc::minor(metadata.rdev())).as_bytes());
        let (kind, sha256) = if file_type.is_dir() {
            ("dir", String::new())
        } else if file_type.is_symlink() {
            ("symlink", sha256_hex(fs_err::read_link(entry.path())?.as_os_str().as_encoded_bytes()))
        } else if file_type.is_file() {
            ("file", crate::digest::hash_file_no_follow(entry.path())?)
        } else if file_type.is_fifo() {
            ("fifo", String::new())
        } else if file_type.is_char_device() {
            ("char", device())
        } else if file_type.is_block_device() {
            ("block", device())
        } else {
            continue;
        };
        digests.push(FileDigest {
            path: relative,
            kind: kind.into(),
            mode: metadata.permissions().mode() & 0o7777,
            sha256,
        });
    }
    Ok(digests)
}

/// What the archive of the copy holds, as the plan digests a source tree
/// ([`source_digests`]): each entry by its path under `dest`, its kind,
/// mode and the digest of its content, link target or device numbers.
fn digests_of_copy(archive: &mut std::fs::File, dest: &Path) -> Result<Vec<FileDigest>> {
    let mut digests = Vec::new();
    let mut contents: HashMap<PathBuf, String> = HashMap::new();
    let mut reader = tar::Archive::new(std::io::BufReader::new(archive));
    for entry in reader.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let relative = name.strip_prefix(dest).unwrap_or(&name).to_path_buf();
        let header = entry.header();
        let mode = header.mode()? & 0o7777;
        let device = || -> Result<String> {
            let (major, minor) = (header.device_major()?.unwrap_or(0), header.device_minor()?.unwrap_or(0));
            Ok(crate::digest::sha256_hex(format!("{major}:{minor}").as_bytes()))
        };
        let (kind, sha256) = match header.entry_type() {
            tar::EntryType::Directory => ("dir", String::new()),
            tar::EntryType::Symlink => {
                let target = entry.link_name()?.context("a symlink without a target")?;
                ("symlink", crate::digest::sha256_hex(target.as_os_str().as_encoded_bytes()))
            }
            tar::EntryType::Link => {
                let first = entry.link_name()?.context("a hard link without a target")?.into_owned();
                ("file", contents.get(&first).cloned().unwrap_or_default())
            }
            tar::EntryType::Char => ("char", device()?),
            tar::EntryType::Block => ("block", device()?),
            tar::EntryType::Fifo => ("fifo", String::new()),
            _ => {
                let mut hashing = crate::digest::HashingReader::new(&mut entry);
                std::io::copy(&mut hashing, &mut std::io::sink())?;
                let (digest, _) = hashing.finish()?;
                contents.insert(name.clone(), digest.clone());
                ("file", digest)
            }
        };
        digests.push(FileDigest { path: relative.to_string_lossy().into_owned(), kind: kind.into(), mode, sha256 });
    }
    Ok(digests)
}

/// The copy must be the source the plan digested: the same entries, each of
/// the same kind and content, with the mode the plan saw or its override.
fn check_copy(stage: &Files, planned: &[FileDigest], copied: &[FileDigest]) -> Result<()> {
    let named = |path: &str| format!("{}/{path}", stage.src.written.trim_end_matches('/'));
    let expected = planned
        .iter()
        .map(|file| FileDigest { mode: stage.modes.get(&file.path).copied().unwrap_or(file.mode), ..file.clone() });
    let mut copied = copied.iter();
    for want in expected {
        match copied.next() {
            Some(got) if got == &want => {}
            Some(got) if got.path == want.path => {
                let describe = |file: &FileDigest| format!("{} {:o} {}", file.kind, file.mode, file.sha256);
                return Err(changed_during_build(&named(&want.path), &describe(&want), &describe(got)));
            }
            Some(got) => {
                let first = got.path.as_str().min(want.path.as_str());
                return Err(changed_during_build(&named(first), "another list of files", "an entry added or removed"));
            }
            None => return Err(changed_during_build(&named(&want.path), "this file", "nothing (removed)")),
        }
    }
    if let Some(extra) = copied.next() {
        return Err(changed_during_build(&named(&extra.path), "nothing", "a new file"));
    }
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
        let planned = source_digests(&stage.src.resolved).unwrap();
        let context = StageContext::for_test(&host, &tree, dir.path(), &layout, 1_000).with_planned_files(&planned);
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
                let planned = source_digests(&stage.src.resolved).unwrap();
                let context =
                    StageContext::for_test(&host, &tree, dir.path(), &layout, 1_000).with_planned_files(&planned);
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

    #[test]
    fn a_source_that_changed_since_the_plan_is_refused_and_nothing_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("overlay");
        fs_err::create_dir_all(src.join("etc")).unwrap();
        fs_err::write(src.join("etc/motd"), "hello").unwrap();
        fs_err::write(src.join("etc/issue"), "Debian").unwrap();
        let planned = source_digests(&src).unwrap();
        let stage = Files {
            src: LocalPath { written: "overlay".into(), resolved: src.clone() },
            dest: "/".into(),
            uid: 0,
            gid: 0,
            modes: BTreeMap::from([("etc/issue".to_string(), 0o600)]),
        };
        let host = RecordingHost::default();
        let layout = crate::cache::Layout::new(Path::new("/nonexistent"));
        let attempt = |name: &str| {
            let tree = dir.path().join(name);
            fs_err::create_dir_all(&tree).unwrap();
            let context = StageContext::for_test(&host, &tree, dir.path(), &layout, 1_000).with_planned_files(&planned);
            (run(&stage, &context).map_err(|error| format!("{error:#}")), tree)
        };
        // As planned (a mode override is not a change).
        let (result, tree) = attempt("as-planned");
        result.unwrap();
        assert_eq!(fs_err::read_to_string(tree.join("etc/motd")).unwrap(), "hello");
        let cases: [(&str, &dyn Fn()); 4] = [
            ("same size, other bytes", &|| fs_err::write(src.join("etc/motd"), "HELLO").unwrap()),
            ("a file added", &|| fs_err::write(src.join("etc/added"), "").unwrap()),
            ("a file removed", &|| fs_err::remove_file(src.join("etc/issue")).unwrap()),
            ("a file replaced by a symlink", &|| {
                fs_err::remove_file(src.join("etc/motd")).unwrap();
                std::os::unix::fs::symlink("issue", src.join("etc/motd")).unwrap();
            }),
        ];
        for (index, (what, change)) in cases.iter().enumerate() {
            change();
            let (result, tree) = attempt(&format!("changed-{index}"));
            let error = result.expect_err(what);
            assert!(error.contains("changed during the build") && error.contains("overlay/etc/"), "{what}: {error}");
            assert!(fs_err::read_dir(&tree).unwrap().next().is_none(), "{what}: the copy was applied");
            // Back as planned for the next case.
            let _ = fs_err::remove_file(src.join("etc/added"));
            let _ = fs_err::remove_file(src.join("etc/motd"));
            fs_err::write(src.join("etc/motd"), "hello").unwrap();
            fs_err::write(src.join("etc/issue"), "Debian").unwrap();
        }
    }
}
