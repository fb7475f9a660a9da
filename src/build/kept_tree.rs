//! Kept trees: the whole tree after some stages, extracted once from their
//! layers into the cache (`CACHE/v1/trees/TREE-ID`) and from then on only
//! read, as the lower layer of a work tree's overlay (see
//! [`crate::host::overlay`]). Changing one file in a late stage then starts
//! from a mount instead of extracting every layer before it again.
//!
//! A tree id names the layers' bytes, so a kept tree never goes stale. While
//! a build uses one it holds `TREE-ID.lock` shared; `cache gc` (and the
//! bound on how many are kept) removes only trees whose lock it can take
//! alone. One is made under a build lock of its own, in a `.partial-`
//! directory renamed into place, so a kept tree that exists is whole.
//!
//! A kept tree is checked before each use against the record written when
//! it was made ([`crate::cache::tree_record`]: each entry's stamp, ctime and
//! inode included): one changed in place or replaced is not used, but
//! discarded and extracted again from its layers.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cache::Store;
use crate::fileops::remove_tree;

/// How many kept trees stay by default (`ROOTSMITH_KEPT_TREES` sets it): a
/// developer iterates on one stage of one or two recipes at a time.
const DEFAULT_KEEP: usize = 2;

/// A kept tree in use: its lock is held shared until this is dropped.
#[derive(Debug)]
pub struct KeptTree {
    path: PathBuf,
    _lock: File,
}

impl KeptTree {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn keep() -> usize {
    std::env::var("ROOTSMITH_KEPT_TREES").ok().and_then(|text| text.parse().ok()).unwrap_or(DEFAULT_KEEP)
}

/// How [`ensure`] came by the kept tree it gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Came {
    /// It was there and matches its record.
    Reused,
    /// It was not there: made now.
    Made,
    /// It was there but differed from its record (said how): discarded
    /// and made again now.
    Remade(String),
}

/// A shared lock on the kept tree at `path` (held while it is used).
fn lock_shared(path: &Path) -> Result<File> {
    let lock = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))?
        .into_parts()
        .0;
    fs4::fs_std::FileExt::lock_shared(&lock)
        .with_context(|| format!("locking {}", path.with_extension("lock").display()))?;
    Ok(lock)
}

/// The kept tree `tree_id`, made with `fill` (which writes the whole tree
/// into the empty directory it is given) when it is not there yet, or when
/// the one there differs from its record. The second value says which.
pub fn ensure(store: &Store, tree_id: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<(KeptTree, Came)> {
    let path = store.layout().kept_tree(tree_id);
    let record = store.layout().kept_tree_record(tree_id);
    let mut lock = lock_shared(&path)?;
    let mut came = Came::Reused;
    if path.is_dir() {
        if let Err(difference) = crate::cache::tree_record::check_stamps(&path, &record) {
            // Discarded only when no other build has it mounted.
            drop(lock);
            if !store.discard_kept_tree(tree_id)? {
                anyhow::bail!(
                    "the kept tree {} differs from its record ({difference}), and another build is using it",
                    &tree_id[..12.min(tree_id.len())]
                );
            }
            lock = lock_shared(&path)?;
            came = Came::Remade(difference.to_string());
        }
    }
    if !path.is_dir() {
        let _making = store.lock(&format!("tree-{tree_id}"))?;
        if !path.is_dir() {
            sweep_partials(store);
            let partial = tempfile::Builder::new()
                .prefix(&format!(".partial-{tree_id}-"))
                .tempdir_in(store.layout().kept_trees())?;
            let tree = partial.path().join("tree");
            fs_err::create_dir(&tree)?;
            fill(&tree)?;
            // The record first: a tree without one is never used.
            let listing = crate::cache::tree_record::make(&tree)
                .with_context(|| format!("recording the kept tree {}", &tree_id[..12.min(tree_id.len())]))?;
            let written = partial.path().join("record");
            fs_err::write(&written, &listing)?;
            fs_err::rename(&written, &record)?;
            fs_err::rename(&tree, &path)?;
            if came == Came::Reused {
                came = Came::Made;
            }
        }
    }
    // Its mtime is its last use, which `cache gc` and the bound go by.
    let now = filetime::FileTime::now();
    filetime::set_file_mtime(&path, now)?;
    let kept = KeptTree { path, _lock: lock };
    evict(store, &kept.path, keep());
    Ok((kept, came))
}

/// Remove the least recently used kept trees beyond `keep` (besides
/// `in_use`), skipping any a build is using.
fn evict(store: &Store, in_use: &Path, keep: usize) {
    let Ok(entries) = fs_err::read_dir(store.layout().kept_trees()) else { return };
    let mut trees: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|entry| {
            !entry.file_name().to_string_lossy().starts_with('.') && entry.path().is_dir() && entry.path() != in_use
        })
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .collect();
    trees.sort();
    let excess = (trees.len() + 1).saturating_sub(keep.max(1));
    for (_, tree) in trees.into_iter().take(excess) {
        if let Ok(Some(_alone)) = crate::fileops::try_lock_file(&tree.with_extension("lock")) {
            let _ = remove_tree(&tree);
            let _ = fs_err::remove_file(tree.with_extension("record"));
        }
    }
}

/// Remove the leftovers of kept trees whose making died: `.partial-ID-*`
/// directories whose build lock nobody holds.
fn sweep_partials(store: &Store) {
    let Ok(entries) = fs_err::read_dir(store.layout().kept_trees()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(tree_id) = name.strip_prefix(".partial-").and_then(|rest| rest.split('-').next()) else { continue };
        if !crate::digest::is_sha256_hex(tree_id) {
            continue;
        }
        if let Ok(Some(_nobody_making_it)) =
            crate::fileops::try_lock_file(&store.layout().lock(&format!("tree-{tree_id}")))
        {
            let _ = remove_tree(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[test]
    fn a_kept_tree_is_made_once_and_then_reused() {
        let (_dir, store) = store();
        let (kept, came) =
            ensure(&store, &id(1), |tree| Ok(fs_err::write(tree.join("etc-hostname"), "kept\n")?)).unwrap();
        assert_eq!(came, Came::Made);
        assert_eq!(std::fs::read_to_string(kept.path().join("etc-hostname")).unwrap(), "kept\n");
        drop(kept);
        let (kept, came) = ensure(&store, &id(1), |_| panic!("made twice")).unwrap();
        assert!(came == Came::Reused && kept.path().join("etc-hostname").is_file());
    }

    #[test]
    fn a_failed_fill_leaves_no_kept_tree() {
        let (_dir, store) = store();
        let error = ensure(&store, &id(2), |tree| {
            fs_err::write(tree.join("half"), "")?;
            anyhow::bail!("layer 3 is corrupt")
        })
        .unwrap_err();
        assert!(error.to_string().contains("layer 3 is corrupt"));
        assert!(!store.layout().kept_tree(&id(2)).exists());
        let leftovers: Vec<_> =
            std::fs::read_dir(store.layout().kept_trees()).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_dead_makers_partial_tree_is_swept_and_a_live_ones_is_not() {
        let (_dir, store) = store();
        let dead = store.layout().kept_trees().join(format!(".partial-{}-x1", id(7)));
        let live = store.layout().kept_trees().join(format!(".partial-{}-x2", id(8)));
        for dir in [&dead, &live] {
            std::fs::create_dir_all(dir.join("tree/etc")).unwrap();
        }
        let _making = store.lock(&format!("tree-{}", id(8))).unwrap();
        ensure(&store, &id(9), |_| Ok(())).unwrap();
        assert!(!dead.exists() && live.exists());
    }

    #[test]
    fn the_least_recently_used_go_beyond_the_bound_but_not_one_in_use() {
        let (_dir, store) = store();
        let in_use = ensure(&store, &id(1), |_| Ok(())).unwrap().0;
        // Older than anything made after it.
        filetime::set_file_mtime(in_use.path(), filetime::FileTime::from_unix_time(1000, 0)).unwrap();
        for n in 2..=4 {
            let (kept, _) = ensure(&store, &id(n), |_| Ok(())).unwrap();
            filetime::set_file_mtime(kept.path(), filetime::FileTime::from_unix_time(2000 + n as i64, 0)).unwrap();
        }
        let left: Vec<bool> = (1..=4).map(|n| store.layout().kept_tree(&id(n)).is_dir()).collect();
        // Bound 2: tree 4 (just used) and tree 3 stay; 2 goes; 1 is in use and stays.
        assert_eq!(left, [true, false, true, true]);
        drop(in_use);
        let _ = ensure(&store, &id(5), |_| Ok(())).unwrap();
        assert!(!store.layout().kept_tree(&id(1)).exists(), "no longer in use, the oldest goes");
    }

    #[test]
    fn a_kept_tree_changed_in_place_is_discarded_and_made_again() {
        let (_dir, store) = store();
        let fill = |tree: &Path| -> Result<()> {
            fs_err::create_dir(tree.join("etc"))?;
            Ok(fs_err::write(tree.join("etc/motd"), "clean\n")?)
        };
        drop(ensure(&store, &id(3), fill).unwrap());
        // Changed in place, its mtime set back: only the ctime tells.
        let motd = store.layout().kept_tree(&id(3)).join("etc/motd");
        let mtime = filetime::FileTime::from_last_modification_time(&fs_err::metadata(&motd).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs_err::write(&motd, "dirty\n").unwrap();
        filetime::set_file_mtime(&motd, mtime).unwrap();
        let (kept, came) = ensure(&store, &id(3), fill).unwrap();
        assert!(matches!(&came, Came::Remade(why) if why.contains("/etc/motd")), "{came:?}");
        assert_eq!(fs_err::read_to_string(kept.path().join("etc/motd")).unwrap(), "clean\n");
        drop(kept);
        assert_eq!(ensure(&store, &id(3), |_| panic!("made again")).unwrap().1, Came::Reused);

        // Replaced by a symlink while another build uses it: not used, not removed.
        let held = ensure(&store, &id(3), |_| panic!("made again")).unwrap().0;
        fs_err::remove_file(&motd).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", &motd).unwrap();
        let error = ensure(&store, &id(3), |_| panic!("made under a user")).unwrap_err();
        assert!(error.to_string().contains("differs from its record"), "{error}");
        drop(held);
        let (kept, came) = ensure(&store, &id(3), fill).unwrap();
        assert!(matches!(came, Came::Remade(_)));
        assert!(fs_err::symlink_metadata(kept.path().join("etc/motd")).unwrap().is_file());
    }

    #[test]
    fn a_kept_tree_without_its_record_is_not_used() {
        let (_dir, store) = store();
        drop(ensure(&store, &id(4), |tree| Ok(fs_err::write(tree.join("a"), "a")?)).unwrap());
        fs_err::remove_file(store.layout().kept_tree_record(&id(4))).unwrap();
        let (_kept, came) = ensure(&store, &id(4), |tree| Ok(fs_err::write(tree.join("a"), "a")?)).unwrap();
        assert!(matches!(came, Came::Remade(_)), "{came:?}");
        assert!(store.layout().kept_tree_record(&id(4)).is_file());
    }
}
