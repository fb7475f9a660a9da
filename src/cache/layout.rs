//! Every path under the cache directory, in one place. No other module joins
//! path segments under the cache: it asks the [`Layout`] for the area it
//! needs. `cache ls`, `gc` and `verify` walk the areas listed by
//! [`Layout::areas`], so an area added here is covered by all three.
//!
//! ```text
//! CACHE/v1/blobs/sha256/HEX          stage layers (zstd tar), by the SHA-256 of their bytes
//! CACHE/v1/stages/KEY.json           stage key → layer, tree id, the key's inputs
//! CACHE/v1/outputs/KEY/              assembled outputs of a tree and their record
//! CACHE/v1/history/RECIPE/STAGE.json the inputs of the last build of a stage (`plan --explain`)
//! CACHE/v1/locks/NAME.lock           one build of a key at a time, across processes
//! CACHE/v1/apt/archives/             apt's package cache, shared by every build
//! CACHE/v1/remote/                   the last InRelease digest seen per mirror and suite
//! CACHE/v1/kernels/ID/               products a stage made beside its layer (a kernel's vmlinuz, debs…)
//! CACHE/v1/kernel/src/ID/            unpacked kernel sources, one per source and patch set
//! CACHE/v1/kernel/build/RECIPE-STAGE/ a kernel stage's kept build directory
//! CACHE/v1/kernel/downloads/         kernel source packages and tarballs
//! CACHE/v1/ccache/                   the compiler cache of kernel builds
//! CACHE/v1/oci/blobs/sha256/HEX      blobs of images pulled by `oci` stages
//! CACHE/v1/squashfs/blocks/SETTINGS/HEX compressed squashfs blocks, by the SHA-256 of their bytes
//! CACHE/v1/squashfs/memo/RECIPE.SETTINGS the squashfs writer's memo of a recipe's files (stamps → block digests)
//! CACHE/v1/tarball/frames/SETTINGS/HEX zstd frames (tarball groups, the initramfs's fixed part), by the SHA-256 of their bytes
//! CACHE/v1/tarball/memo/RECIPE.LEVEL the tarball writer's memo of a recipe's entries (stamps → lengths, groups → frames)
//! CACHE/v1/logs/KEY.log             the log of each stage's last run
//! CACHE/v1/trees/ID/                 kept trees (the tree after some stages, by tree id) that work trees overlay
//! CACHE/v1/trees/ID.record           what a kept tree held when it was made (stamps and contents)
//! CACHE/v1/trees/ID.recipe, ID.evicted the recipe a kept tree is for; why one was evicted
//! CACHE/v1/tmp/                      work trees and partial files of running builds
//! CACHE/v1/key                       32 random bytes (0600): the key of the frame cache's entry tags
//! ```

use std::path::{Path, PathBuf};

use super::key::CACHE_FORMAT;

/// The paths of one cache directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

/// How `cache gc` treats an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collect {
    /// Entries live while a stage record refers to them (layers, products).
    Referenced,
    /// Entries are kept by their last use (the oldest go first, by mtime).
    LeastRecentlyUsed,
    /// Records that gc removes with what they describe, or small state it never touches.
    Never,
}

/// One area of the cache, as `cache ls`, `gc` and `verify` see it.
#[derive(Debug, Clone)]
pub struct Area {
    /// Short name, as `cache ls` prints it.
    pub name: &'static str,
    pub path: PathBuf,
    /// What lives there.
    pub holds: &'static str,
    pub collect: Collect,
    /// Whether each entry is named by the SHA-256 of its bytes (checked by `cache verify`).
    pub content_addressed: bool,
}

/// Panics on a name that is not one path component: every name the layout
/// gets has been checked (a digest, a key, a recipe or stage name), so one
/// that is not is a bug, never a path outside the cache.
fn component(name: &str) -> &str {
    assert!(
        !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0'),
        "`{name}` is not a single path component"
    );
    name
}

impl Layout {
    /// The layout of the cache at `dir` (the versioned root is `dir/v1`).
    pub fn new(dir: &Path) -> Layout {
        Layout { root: dir.join(format!("v{CACHE_FORMAT}")) }
    }

    /// The versioned root, `CACHE/v1`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Create every area.
    pub fn create(&self) -> std::io::Result<()> {
        for area in self.areas() {
            fs_err::create_dir_all(&area.path)?;
        }
        fs_err::create_dir_all(self.root.join("apt/archives/partial"))
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn blob(&self, digest: &str) -> PathBuf {
        self.blobs().join(component(digest))
    }

    pub fn stages(&self) -> PathBuf {
        self.root.join("stages")
    }

    pub fn stage_record(&self, key: &str) -> PathBuf {
        self.stages().join(format!("{}.json", component(key)))
    }

    pub fn outputs(&self) -> PathBuf {
        self.root.join("outputs")
    }

    pub fn output(&self, key: &str) -> PathBuf {
        self.outputs().join(component(key))
    }

    pub fn history(&self) -> PathBuf {
        self.root.join("history")
    }

    pub fn history_record(&self, recipe: &str, stage: &str) -> PathBuf {
        self.history().join(component(recipe)).join(format!("{}.json", component(stage)))
    }

    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    pub fn lock(&self, name: &str) -> PathBuf {
        self.locks().join(format!("{}.lock", component(name)))
    }

    /// apt's `Dir::Cache::archives`, mounted into chroots.
    pub fn apt_archives(&self) -> PathBuf {
        self.root.join("apt/archives")
    }

    /// Held by every command that has the apt archive mounted.
    pub fn apt_lock(&self) -> PathBuf {
        self.root.join("apt/apt.lock")
    }

    pub fn remote_memory(&self) -> PathBuf {
        self.root.join("remote")
    }

    /// The last digest seen of the remote input at `url`.
    pub fn remote_record(&self, url: &str) -> PathBuf {
        self.remote_memory().join(format!("{}.json", crate::digest::sha256_hex(url.as_bytes())))
    }

    /// Products stages make beside their layers (for now: kernels).
    pub fn products(&self) -> PathBuf {
        self.root.join("kernels")
    }

    pub fn products_dir(&self, id: &str) -> PathBuf {
        self.products().join(component(id))
    }

    pub fn kernel_sources(&self) -> PathBuf {
        self.root.join("kernel/src")
    }

    pub fn kernel_source(&self, id: &str) -> PathBuf {
        self.kernel_sources().join(component(id))
    }

    pub fn kernel_builds(&self) -> PathBuf {
        self.root.join("kernel/build")
    }

    pub fn kernel_build(&self, recipe: &str, stage: &str) -> PathBuf {
        self.kernel_builds().join(format!("{}-{}", component(recipe), component(stage)))
    }

    /// Held while a build uses [`Self::kernel_build`]'s directory (gc leaves it alone then).
    pub fn kernel_build_lock(&self, recipe: &str, stage: &str) -> PathBuf {
        self.kernel_build(recipe, stage).with_extension("lock")
    }

    pub fn kernel_downloads(&self) -> PathBuf {
        self.root.join("kernel/downloads")
    }

    pub fn ccache(&self) -> PathBuf {
        self.root.join("ccache")
    }

    pub fn oci_blobs(&self) -> PathBuf {
        self.root.join("oci/blobs/sha256")
    }

    pub fn oci_blob(&self, hex: &str) -> PathBuf {
        self.oci_blobs().join(component(hex))
    }

    /// The block cache of rootsmith's squashfs writer: one directory per
    /// compressor setting (`zstd-15-131072`), each a least-recently-used entry.
    pub fn squashfs_blocks(&self) -> PathBuf {
        self.root.join("squashfs/blocks")
    }

    /// The compressed form of a block whose uncompressed bytes have SHA-256 `hex`.
    pub fn squashfs_block(&self, settings: &str, hex: &str) -> PathBuf {
        self.squashfs_blocks().join(component(settings)).join(component(hex))
    }

    /// The squashfs writer's memos: what its last write of each recipe's
    /// tree, per compressor setting, learnt about the files (one file each).
    pub fn squashfs_memos(&self) -> PathBuf {
        self.root.join("squashfs/memo")
    }

    pub fn squashfs_memo(&self, recipe: &str, settings: &str) -> PathBuf {
        self.squashfs_memos().join(component(&format!("{}.{}", component(recipe), component(settings))))
    }

    pub fn tarball_frames(&self) -> PathBuf {
        self.root.join("tarball/frames")
    }

    /// The tarball writer's memos: what its last write of each recipe's tree,
    /// per level, learnt about the entries and groups (one file each).
    pub fn tarball_memos(&self) -> PathBuf {
        self.root.join("tarball/memo")
    }

    pub fn tarball_memo(&self, recipe: &str, settings: &str) -> PathBuf {
        self.tarball_memos().join(component(&format!("{}.{}", component(recipe), component(settings))))
    }

    /// The zstd frame of a tarball group whose tar bytes have SHA-256 `hex`.
    pub fn tarball_frame(&self, settings: &str, hex: &str) -> PathBuf {
        self.tarball_frames().join(component(settings)).join(component(hex))
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The log of the last run of the stage `key`: it outlives the build, so
    /// the path a failure prints can still be read.
    pub fn stage_log(&self, key: &str) -> PathBuf {
        self.logs().join(format!("{}.log", component(key)))
    }

    /// Kept trees: each the whole tree after some stages, read-only, under
    /// its tree id; `ID.lock` is held shared while a build's overlay uses it.
    pub fn kept_trees(&self) -> PathBuf {
        self.root.join("trees")
    }

    pub fn kept_tree(&self, tree_id: &str) -> PathBuf {
        self.kept_trees().join(component(tree_id))
    }

    /// What a kept tree held when it was made ([`super::tree_record`]).
    pub fn kept_tree_record(&self, tree_id: &str) -> PathBuf {
        self.kept_trees().join(format!("{}.record", component(tree_id)))
    }

    /// The recipe a kept tree was made for (its eviction goes by it).
    pub fn kept_tree_owner(&self, tree_id: &str) -> PathBuf {
        self.kept_trees().join(format!("{}.recipe", component(tree_id)))
    }

    /// Why a kept tree was evicted, so the build that needs it again can say.
    pub fn kept_tree_evicted(&self, tree_id: &str) -> PathBuf {
        self.kept_trees().join(format!("{}.evicted", component(tree_id)))
    }

    /// The cache's own secret: the key of the tags its frame cache entries
    /// carry (made once, readable by the cache's owner only).
    pub fn entry_key(&self) -> PathBuf {
        self.root.join("key")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Every area, in the order `cache ls` shows them.
    pub fn areas(&self) -> Vec<Area> {
        use Collect::*;
        let area =
            |name, path, holds, collect, content_addressed| Area { name, path, holds, collect, content_addressed };
        vec![
            area("layers", self.blobs(), "stage layers, by digest", Referenced, true),
            area("stages", self.stages(), "stage records", Never, false),
            area("outputs", self.outputs(), "assembled outputs of trees", Never, false),
            area("history", self.history(), "last inputs of each stage", Never, false),
            area("locks", self.locks(), "build locks", Never, false),
            area("apt", self.apt_archives(), "apt's shared package cache", LeastRecentlyUsed, false),
            area("remote", self.remote_memory(), "last remote digests seen", Never, false),
            area("products", self.products(), "kernel products of stages", Referenced, false),
            area("kernel-src", self.kernel_sources(), "unpacked kernel sources", LeastRecentlyUsed, false),
            area("kernel-build", self.kernel_builds(), "kept kernel build directories", LeastRecentlyUsed, false),
            area("kernel-dl", self.kernel_downloads(), "kernel source downloads", LeastRecentlyUsed, false),
            area("ccache", self.ccache(), "compiler cache (bounded by ccache itself)", Never, false),
            area("oci-blobs", self.oci_blobs(), "blobs of pulled OCI images, by digest", LeastRecentlyUsed, true),
            area(
                "squashfs-blocks",
                self.squashfs_blocks(),
                "compressed squashfs blocks, per compressor setting",
                LeastRecentlyUsed,
                false,
            ),
            area(
                "squashfs-memo",
                self.squashfs_memos(),
                "what the squashfs writer knows of each recipe's files",
                LeastRecentlyUsed,
                false,
            ),
            area(
                "tarball-frames",
                self.tarball_frames(),
                "zstd frames of tarball groups and initramfs parts, per level",
                LeastRecentlyUsed,
                false,
            ),
            area(
                "tarball-memo",
                self.tarball_memos(),
                "what the tarball writer knows of each recipe's entries",
                LeastRecentlyUsed,
                false,
            ),
            area("logs", self.logs(), "stage logs of recent builds", LeastRecentlyUsed, false),
            area("trees", self.kept_trees(), "kept trees that work trees overlay", LeastRecentlyUsed, false),
            area("tmp", self.tmp(), "work dirs of running builds", Never, false),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_under_the_versioned_root() {
        let layout = Layout::new(Path::new("/c"));
        assert_eq!(layout.root(), Path::new("/c/v1"));
        let key = "a".repeat(64);
        for path in [
            layout.blob(&key),
            layout.stage_record(&key),
            layout.output(&key),
            layout.history_record("r", "s"),
            layout.lock(&key),
            layout.products_dir(&key),
            layout.kernel_source(&key),
            layout.kernel_build("r", "s"),
            layout.oci_blob(&key),
            layout.kept_tree(&key),
            layout.squashfs_block("zstd-15-131072", &key),
        ] {
            assert!(path.starts_with("/c/v1"), "{}", path.display());
        }
        for area in layout.areas() {
            assert!(area.path.starts_with("/c/v1"), "{}", area.path.display());
        }
    }

    #[test]
    #[should_panic(expected = "not a single path component")]
    fn a_name_with_a_slash_never_becomes_a_path() {
        Layout::new(Path::new("/c")).blob("../../etc/passwd");
    }
}
