//! Layers end to end: capture a stage's changes, apply them elsewhere, and refuse
//! hostile archives without writing outside the target.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

/// Capture `before → after` of `root` as a layer tar.
fn capture(root: &Path, before: &Snapshot) -> Vec<u8> {
    let after = Snapshot::take(root).unwrap();
    let mut writer = TreeTarWriter::new(Vec::new(), 2_000_000_000);
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
            let content = if metadata.is_file() { fs::read_to_string(entry.path()).unwrap_or_default() } else { String::new() };
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
    apply_layer(base.as_slice(), &replica, "base").unwrap();
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

    apply_layer(layer.as_slice(), &replica, "change").unwrap();
    assert_eq!(listing(&source), listing(&replica));
    assert!(!replica.join("removed").exists());
    assert_eq!(fs::metadata(replica.join("etc/new-link")).unwrap().ino(), fs::metadata(replica.join("etc/new")).unwrap().ino());
    // Nothing unchanged was carried: the unmodified base file is absent from the layer.
    let names: Vec<String> = tar::Archive::new(layer.as_slice()).entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
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
        (hostile(&[("sub/", Directory, None), ("sub/.wh..", Regular, None)]), Some("a whiteout must name an entry of its directory")),
        // An absolute symlink is followed inside the tree, like a chroot would.
        (hostile(&[("abs", Symlink, Some(outside.to_str().unwrap())), ("abs/evil", Regular, None)]), None),
        // A symlink at the final component is replaced, not written through.
        (hostile(&[("target", Symlink, Some(outside.join("evil").to_str().unwrap())), ("target", Regular, None)]), None),
    ];
    for (index, (archive, expected)) in cases.into_iter().enumerate() {
        let root = work.path().join(format!("root{index}"));
        fs::create_dir(&root).unwrap();
        let result = apply_layer(archive.as_slice(), &root, "hostile.tar");
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
    apply_layer(archive.as_slice(), root.path(), "opaque").unwrap();
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
    let value: &[u8] = if name == "security.capability" { &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] } else { b"kept" };
    if xattr::set(source.join("ping"), name, value).is_err() {
        panic!("the test directory's filesystem does not take xattrs; run the tests on one that does (ext4, xfs, tmpfs)");
    }
    let layer = capture(&source, &Snapshot::default());
    let replica = work.path().join("replica");
    fs::create_dir(&replica).unwrap();
    apply_layer(layer.as_slice(), &replica, "xattrs").unwrap();
    assert_eq!(xattr::get(replica.join("ping"), name).unwrap().as_deref(), Some(value));
}
