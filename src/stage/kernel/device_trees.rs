//! A kernel's device trees (`*.dtb`, overlays `*.dtbo`) as one deterministic
//! tar in its products: `dtbs.tar`, published as `kernel/KERNEL-dtbs.tar`.
//! Boards that do not make their own device tree (most ARM boards; QEMU's
//! `virt` does) need the one for their model beside the kernel: a lab
//! unpacks the tar where its loader looks (GRUB's `devicetree`, U-Boot's
//! `fdtdir`). Entries keep the kernel's layout (`VENDOR/BOARD.dtb`), sorted,
//! owned by 0:0, mode 0644, mtimes clamped to `SOURCE_DATE_EPOCH`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::layer::{Devices, TreeTarWriter};

/// The file in a kernel's products directory.
pub const ARCHIVE: &str = "dtbs.tar";

/// The device trees under `dir` (regular files only; symbolic links are not
/// followed), as paths relative to it in byte order.
pub fn find(dir: &Path) -> Result<Vec<PathBuf>> {
    // Not through a link: the directory is read from outside its tree.
    if !fs_err::symlink_metadata(dir).is_ok_and(|metadata| metadata.is_dir()) {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false).follow_root_links(false).sort_by_file_name() {
        let entry = entry.with_context(|| format!("reading the device trees under {}", dir.display()))?;
        let is_tree = entry.path().extension().is_some_and(|e| e == "dtb" || e == "dtbo");
        if entry.file_type().is_file() && is_tree {
            found.push(entry.path().strip_prefix(dir).expect("under dir").to_path_buf());
        }
    }
    Ok(found)
}

/// Write the device trees under `dir` to `archive`; how many there were (none:
/// no archive is written).
pub fn archive(dir: &Path, archive: &Path, epoch: i64) -> Result<usize> {
    let trees = find(dir)?;
    if trees.is_empty() {
        return Ok(0);
    }
    let file = std::io::BufWriter::new(fs_err::File::create(archive)?);
    let devices = Devices::default();
    let mut writer = TreeTarWriter::new(file, epoch, &devices);
    for tree in &trees {
        writer.append_with(dir, tree, tree, Some((0, 0)), Some(0o644))?;
    }
    use std::io::Write;
    writer.finish()?.flush()?;
    Ok(trees.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &Path) -> Vec<(String, u64, u32, u64)> {
        let mut reader = tar::Archive::new(fs_err::File::open(archive).unwrap());
        reader
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (e.path().unwrap().display().to_string(), h.uid().unwrap(), h.mode().unwrap(), h.mtime().unwrap())
            })
            .collect()
    }

    #[test]
    fn device_trees_are_one_sorted_archive_of_dtb_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let dts = dir.path().join("dts");
        for (path, body) in [
            ("vendor-b/board.dtb", "b"),
            ("vendor-a/z.dtb", "z"),
            ("vendor-a/a.dtb", "a"),
            ("vendor-a/a.dts", "source"),
            ("vendor-a/overlays/x.dtbo", "o"),
            ("Makefile", "m"),
        ] {
            let full = dts.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, body).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", dts.join("vendor-a/link.dtb")).unwrap();
        let out = dir.path().join("dtbs.tar");
        assert_eq!(archive(&dts, &out, 100).unwrap(), 4);
        let names: Vec<String> = entries(&out).iter().map(|e| e.0.clone()).collect();
        assert_eq!(names, ["vendor-a/a.dtb", "vendor-a/overlays/x.dtbo", "vendor-a/z.dtb", "vendor-b/board.dtb"]);
        assert!(entries(&out).iter().all(|e| e.1 == 0 && e.2 == 0o644 && e.3 <= 100), "{:?}", entries(&out));
        let first = std::fs::read(&out).unwrap();
        // Same trees, other times and modes: the same bytes.
        filetime::set_file_mtime(dts.join("vendor-a/a.dtb"), filetime::FileTime::from_unix_time(5000, 0)).unwrap();
        std::fs::set_permissions(dts.join("vendor-b/board.dtb"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        assert_eq!(archive(&dts, &out, 100).unwrap(), 4);
        assert_eq!(std::fs::read(&out).unwrap(), first);
    }

    #[test]
    fn a_kernel_without_device_trees_writes_no_archive() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("dtbs.tar");
        assert_eq!(archive(&dir.path().join("missing"), &out, 1).unwrap(), 0);
        std::fs::create_dir(dir.path().join("dts")).unwrap();
        std::fs::write(dir.path().join("dts/Makefile"), "").unwrap();
        assert_eq!(archive(&dir.path().join("dts"), &out, 1).unwrap(), 0);
        // A directory that is a link (into the host, seen from outside the tree) holds none.
        std::fs::create_dir(dir.path().join("host")).unwrap();
        std::fs::write(dir.path().join("host/board.dtb"), "host file").unwrap();
        std::os::unix::fs::symlink(dir.path().join("host"), dir.path().join("linked")).unwrap();
        assert_eq!(archive(&dir.path().join("linked"), &out, 1).unwrap(), 0);
        assert!(!out.exists());
    }
}
