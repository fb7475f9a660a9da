//! The kernel modules a thin initramfs carries: the names asked for, resolved
//! with the kernel's `modules.dep` into files and their dependencies, in the
//! order they must load. A module built into the kernel (`modules.builtin`)
//! needs no file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// modprobe treats `-` and `_` alike in module names.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/fs/overlayfs/overlay.ko.xz` → `overlay`
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalize(file.split(".ko").next().unwrap_or(file))
}

/// One kernel release's modules directory (`lib/modules/RELEASE`).
pub struct ModuleTree {
    pub dir: PathBuf,
    /// module name → (path relative to `dir`, its dependencies' paths)
    deps: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
}

impl ModuleTree {
    /// Whether the kernel has `name` as a loadable module.
    pub fn has_module(&self, name: &str) -> bool {
        self.deps.contains_key(&normalize(name))
    }

    pub fn open(dir: &Path) -> Result<ModuleTree> {
        let dep_file = dir.join("modules.dep");
        let text = fs_err::read_to_string(&dep_file)
            .with_context(|| format!("{} has no modules.dep; run depmod for it", dir.display()))?;
        let deps = parse_modules_dep(&text);
        let builtin =
            fs_err::read_to_string(dir.join("modules.builtin")).unwrap_or_default().lines().map(module_name).collect();
        Ok(ModuleTree { dir: dir.to_path_buf(), deps, builtin })
    }

    /// The files to load for `names`, dependencies first, each once. Built-in
    /// modules are skipped; an unknown name is an error naming the kernel.
    pub fn closure(&self, names: &[String], release: &str) -> Result<Vec<String>> {
        let by_path: BTreeMap<&str, &Vec<String>> =
            self.deps.values().map(|(path, deps)| (path.as_str(), deps)).collect();
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            let key = normalize(name);
            if let Some((path, _)) = self.deps.get(&key) {
                visit(path, &by_path, &mut seen, &mut order, 0)?;
            } else if !self.builtin.contains(&key) {
                bail!("kernel {release} has no module `{name}` (neither in modules.dep nor built in)\nhint: check the name with `modinfo -k {release} {name}`, or leave it out of outputs.initramfs.modules");
            }
        }
        Ok(order)
    }
}

fn visit(
    path: &str,
    by_path: &BTreeMap<&str, &Vec<String>>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
    depth: usize,
) -> Result<()> {
    if depth > 64 {
        bail!("modules.dep has a dependency loop through {path}");
    }
    if seen.contains(path) {
        return Ok(());
    }
    seen.insert(path.to_string());
    // modules.dep lists a module's dependencies so that the last loads first.
    if let Some(deps) = by_path.get(path) {
        for dep in deps.iter().rev() {
            visit(dep, by_path, seen, order, depth + 1)?;
        }
    }
    order.push(path.to_string());
    Ok(())
}

fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut deps = BTreeMap::new();
    for line in text.lines() {
        let Some((path, rest)) = line.split_once(':') else { continue };
        let path = path.trim().to_string();
        let list = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(&path), (path, list));
    }
    deps
}

/// A module file's bytes, decompressed when the kernel package compressed it
/// (the initramfs is compressed as a whole).
pub fn read_module(file: &Path) -> Result<Vec<u8>> {
    let raw = fs_err::read(file)?;
    let name = file.to_string_lossy();
    let bytes = if name.ends_with(".ko.xz") {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut xz2::read::XzDecoder::new(raw.as_slice()), &mut out)
            .with_context(|| format!("decompressing {name}"))?;
        out
    } else if name.ends_with(".ko.zst") {
        zstd::decode_all(raw.as_slice()).with_context(|| format!("decompressing {name}"))?
    } else if name.ends_with(".ko.gz") {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(raw.as_slice()), &mut out)
            .with_context(|| format!("decompressing {name}"))?;
        out
    } else {
        raw
    };
    Ok(bytes)
}

/// The path a module gets inside the initramfs (always uncompressed).
pub fn initramfs_path(release: &str, relative: &str) -> String {
    let relative = relative
        .strip_suffix(".xz")
        .or_else(|| relative.strip_suffix(".zst"))
        .or_else(|| relative.strip_suffix(".gz"))
        .unwrap_or(relative);
    format!("lib/modules/{release}/{relative}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dep: &str, builtin: &str) -> (tempfile::TempDir, ModuleTree) {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("modules.dep"), dep).unwrap();
        fs_err::write(dir.path().join("modules.builtin"), builtin).unwrap();
        let tree = ModuleTree::open(dir.path()).unwrap();
        (dir, tree)
    }

    #[test]
    fn dependencies_load_first_each_once() {
        let (_dir, tree) = tree(
            "kernel/drivers/net/virtio_net.ko: kernel/net/core/failover.ko kernel/drivers/net/net_failover.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/net/core/failover.ko:\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/fs/squashfs/squashfs.ko.xz: kernel/lib/zstd/zstd_decompress.ko.xz\n\
             kernel/lib/zstd/zstd_decompress.ko.xz:\n",
            "kernel/drivers/block/loop.ko\n",
        );
        let order = tree
            .closure(&["loop".into(), "squashfs".into(), "virtio-net".into(), "failover".into()], "6.1.0-test")
            .unwrap();
        assert_eq!(
            order,
            vec![
                "kernel/lib/zstd/zstd_decompress.ko.xz",
                "kernel/fs/squashfs/squashfs.ko.xz",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
            ]
        );
        let error = tree.closure(&["e1001".into()], "6.1.0-test").unwrap_err().to_string();
        assert!(error.contains("kernel 6.1.0-test has no module `e1001`"), "{error}");
    }

    #[test]
    fn compressed_modules_are_stored_plain() {
        assert_eq!(initramfs_path("6.1", "kernel/fs/a.ko.xz"), "lib/modules/6.1/kernel/fs/a.ko");
        assert_eq!(initramfs_path("6.1", "kernel/fs/a.ko"), "lib/modules/6.1/kernel/fs/a.ko");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.ko.zst");
        fs_err::write(&file, zstd::encode_all(&b"\x7fELF module"[..], 3).unwrap()).unwrap();
        assert_eq!(read_module(&file).unwrap(), b"\x7fELF module");
    }
}
