//! A build that starts after cached stages mounts its work tree as an
//! overlay over a kept tree (CACHE/v1/trees) instead of extracting every
//! layer again: as root, in rootsmith's own mount namespace. Its bundle is
//! byte for byte the one an extracted tree gives (`ROOTSMITH_OVERLAY=0`),
//! also when the stage changes the kept tree in the ways overlayfs treats
//! specially: a hard-linked file changed through one name, a directory
//! renamed, a file deleted, a directory removed and made again, an empty
//! lock file only opened for writing (copied up by the overlay, untouched on
//! a directory: neither is in the layer). The host's
//! mount table is the same before and after. Needs root.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A base with the static busybox as its shell and tools, hard links,
/// directories to rename and remove.
fn base(path: &Path) {
    let mut builder = tar::Builder::new(Vec::new());
    let dir = |builder: &mut tar::Builder<Vec<u8>>, name: &str| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_mtime(1_600_000_000);
        header.set_size(0);
        builder.append_data(&mut header, name, std::io::empty()).unwrap();
    };
    for name in ["bin", "etc", "opt", "opt/d", "srv", "var", "var/keep", "tmp"] {
        dir(&mut builder, name);
    }
    let file = |builder: &mut tar::Builder<Vec<u8>>, name: &str, body: &[u8], mode: u32| {
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_mtime(1_600_000_000);
        header.set_size(body.len() as u64);
        builder.append_data(&mut header, name, body).unwrap();
    };
    file(
        &mut builder,
        "bin/busybox",
        &std::fs::read("/bin/busybox").expect("the static busybox (apt-get install busybox-static)"),
        0o755,
    );
    for (name, body) in [
        ("etc/a", "linked\n"),
        ("opt/d/x", "x\n"),
        ("opt/d/y", "y\n"),
        ("srv/gone", "removed later\n"),
        ("var/keep/old", "old\n"),
        ("etc/.pwd.lock", ""),
    ] {
        file(&mut builder, name, body.as_bytes(), 0o644);
    }
    let link = |builder: &mut tar::Builder<Vec<u8>>, name: &str, target: &str, kind: tar::EntryType| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(0o777);
        header.set_mtime(1_600_000_000);
        header.set_size(0);
        builder.append_link(&mut header, name, target).unwrap();
    };
    link(&mut builder, "etc/b", "etc/a", tar::EntryType::Link);
    for tool in ["sh", "chmod", "mv", "rm", "mkdir", "echo", "cat", "ln"] {
        link(&mut builder, &format!("bin/{tool}"), "busybox", tar::EntryType::Symlink);
    }
    std::fs::write(path, builder.into_inner().unwrap()).unwrap();
}

/// The recipe `kept` at `version` with `script` as its second stage.
fn recipe(dir: &Path, version: &str, script: &str) -> PathBuf {
    let path = dir.join(format!("kept-{version}.yaml"));
    std::fs::write(&path, format!("rootsmith: 1\nname: kept\nversion: {version}\nsource_date_epoch: 1700000000\nstages:\n  - tarball: {{ path: base.tar }}\n  - run: {{ sh: {script:?} }}\n")).unwrap();
    path
}

fn build(dir: &Path, cache: &str, recipe: &Path, overlay: bool) -> (PathBuf, String) {
    let out = dir.join(format!("out-{cache}"));
    let mut command = rootsmith();
    command.arg("build").arg("--fast").arg("--cache").arg(dir.join(cache)).arg("--out").arg(&out).arg(recipe);
    if !overlay {
        command.env("ROOTSMITH_OVERLAY", "0");
    }
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 0, "{}:\n{stderr}", recipe.display());
    let version = recipe.file_stem().unwrap().to_string_lossy().trim_start_matches("kept-").to_string();
    (out.join("kept").join(version), stderr)
}

#[test]
fn an_overlay_over_a_kept_tree_gives_the_bytes_of_an_extracted_tree() {
    if !needs_root("an_overlay_over_a_kept_tree_gives_the_bytes_of_an_extracted_tree") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    base(&dir.path().join("base.tar"));
    let mounts_before = mount_table();
    let first = recipe(dir.path(), "1.0.0", "echo one > /var/one");
    let changes = recipe(dir.path(), "2.0.0", ": >> /etc/.pwd.lock && chmod 600 /etc/a && echo more >> /etc/b && mv /opt/d /opt/e && rm /srv/gone && rm -r /var/keep && mkdir /var/keep && echo new > /var/keep/n");
    let again = recipe(dir.path(), "3.0.0", "echo three > /etc/a && ln -s a /etc/c");
    let mut sums = Vec::new();
    for (cache, overlay) in [("overlay", true), ("extract", false)] {
        build(dir.path(), cache, &first, overlay);
        let (two, stderr) = build(dir.path(), cache, &changes, overlay);
        assert!(!stderr.contains("an overlay, nothing extracted"), "the first time, the kept tree is made:\n{stderr}");
        let (three, stderr) = build(dir.path(), cache, &again, overlay);
        assert_eq!(
            stderr.contains("the kept tree") && stderr.contains("an overlay, nothing extracted"),
            overlay,
            "{stderr}"
        );
        let kept: Vec<String> = std::fs::read_dir(dir.path().join(cache).join("v1/trees"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept.len(), usize::from(overlay), "{cache}: kept trees {kept:?}");
        sums.push([two, three].map(|bundle| std::fs::read_to_string(bundle.join("SHA256SUMS")).unwrap()));

        // What the stage did, as a real filesystem does it: both names of the
        // hard link changed, one file still.
        let listing = std::process::Command::new("tar")
            .args(["--zstd", "-tvf"])
            .arg(dir.path().join(format!("out-{cache}/kept/2.0.0/kept-2.0.0-rootfs.tar.zst")))
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        let line = |name: &str| {
            listing
                .lines()
                .find(|line| line.ends_with(&format!(" {name}")) || line.contains(&format!(" {name} link to ")))
                .unwrap_or_else(|| panic!("{cache}: no {name} in\n{listing}"))
                .to_string()
        };
        assert!(
            line("etc/a").starts_with("-rw------- ")
                && line("etc/b").starts_with("hrw------- ")
                && line("etc/b").contains("etc/b link to etc/a"),
            "{cache}:\n{listing}"
        );
        assert!(
            line("opt/e/x").starts_with('-')
                && !listing.contains(" opt/d")
                && !listing.contains("srv/gone")
                && !listing.contains("var/keep/old")
                && line("var/keep/n").starts_with('-'),
            "{cache}:\n{listing}"
        );
    }
    assert_eq!(sums[0], sums[1], "an overlay work tree and an extracted one gave different bundles");

    // The writers' memos: once the kept tree's files are two seconds old, a
    // build learns them, and the next takes them from the memos without
    // reading them; its bundle is byte for byte the extracted tree's. A
    // build from an extracted tree in between (new inodes, never seen again)
    // leaves the memos alone.
    std::thread::sleep(std::time::Duration::from_secs(3));
    build(dir.path(), "overlay", &recipe(dir.path(), "4.0.0", "echo four > /etc/d"), true);
    build(dir.path(), "overlay", &recipe(dir.path(), "4.5.0", "echo extracted > /etc/d"), false);
    let logs_dir = dir.path().join("overlay/v1/logs");
    let earlier: std::collections::BTreeSet<PathBuf> =
        std::fs::read_dir(&logs_dir).unwrap().flatten().map(|entry| entry.path()).collect();
    let five = recipe(dir.path(), "5.0.0", "echo five > /etc/d");
    let (from_memos, _) = build(dir.path(), "overlay", &five, true);
    let (extracted, _) = build(dir.path(), "extract", &five, false);
    // The logs of the last build only.
    let logs: String = std::fs::read_dir(&logs_dir)
        .unwrap()
        .flatten()
        .filter(|entry| !earlier.contains(&entry.path()))
        .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
        .collect();
    let known = |prefix: &str| {
        logs.lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.split("; memo: ").nth(1))
            .map(|text| text.split(' ').next().unwrap().parse::<u64>().unwrap())
            .max()
            .unwrap_or(0)
    };
    assert!(
        known("rootsmith-squashfs") > 0 && known("rootsmith-tar-frames") > 0,
        "no file was taken from a memo:\n{logs}"
    );
    assert_eq!(
        std::fs::read_to_string(from_memos.join("SHA256SUMS")).unwrap(),
        std::fs::read_to_string(extracted.join("SHA256SUMS")).unwrap(),
        "a build from the memos differs from an extracted tree's"
    );
    assert_eq!(mount_table(), mounts_before, "a build changed the host's mount table");
}

/// A kept tree changed behind the cache's back (a file rewritten with its
/// mtime set back, a file replaced by a symlink) is found: `cache verify`
/// names it, and the next build does not publish its content but extracts
/// the tree again, giving the bundle a clean build gives.
#[test]
fn a_kept_tree_changed_in_place_is_never_published() {
    if !needs_root("a_kept_tree_changed_in_place_is_never_published") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    base(&dir.path().join("base.tar"));
    let first = recipe(dir.path(), "1.0.0", "echo one > /var/one");
    let second = recipe(dir.path(), "2.0.0", "echo two > /var/two");
    let third = recipe(dir.path(), "3.0.0", "echo three > /var/three");
    build(dir.path(), "kept", &first, true);
    // The second build makes the kept tree of the base stage.
    build(dir.path(), "kept", &second, true);
    let trees = dir.path().join("kept/v1/trees");
    let tree = std::fs::read_dir(&trees).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    let file = tree.join("opt/d/x");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    std::fs::write(&file, "X\n").unwrap();
    std::fs::File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
    std::fs::remove_file(tree.join("etc/a")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", tree.join("etc/a")).unwrap();

    let verify = |repair: bool| {
        let mut command = rootsmith();
        command.args(["cache", "verify"]).arg("--cache").arg(dir.path().join("kept"));
        if repair {
            command.arg("--repair");
        }
        run(&mut command)
    };
    let (code, stdout, stderr) = verify(false);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("kept tree") && stdout.contains("is not what it was"), "{stdout}");

    let (tampered, stderr) = build(dir.path(), "kept", &third, true);
    assert!(stderr.contains("differed from its record"), "{stderr}");
    let (clean, _) = build(dir.path(), "clean", &third, false);
    assert_eq!(
        std::fs::read_to_string(tampered.join("SHA256SUMS")).unwrap(),
        std::fs::read_to_string(clean.join("SHA256SUMS")).unwrap(),
        "a build over a changed kept tree published its content"
    );
    let (code, stdout, stderr) = verify(false);
    assert_eq!(code, 0, "the tree made again is sound:\n{stdout}{stderr}");

    // --repair removes a changed tree; the next build makes it again.
    let tree = std::fs::read_dir(&trees).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    std::fs::write(tree.join("opt/d/y"), "Y\n").unwrap();
    let (code, stdout, _) = verify(true);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("removed 1 broken entries"), "{stdout}");
    assert!(!tree.exists());
}
