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
/// developer switches between a few recipes, and each keeps one (its
/// newest), so switching evicts none of them.
const DEFAULT_KEEP: usize = 4;

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
    /// It was not there: made now; with why it was evicted, when an
    /// earlier build evicted it.
    Made(Option<String>),
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
/// `recipe` is the recipe it is for: each recipe keeps one kept tree (its
/// newest), and the bound evicts the least recently used of the others. The
/// third value names the trees this call evicted and why.
pub fn ensure(
    store: &Store,
    tree_id: &str,
    recipe: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<(KeptTree, Came, Vec<String>)> {
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
            let _ = fs_err::write(store.layout().kept_tree_owner(tree_id), recipe);
            let evicted = store.layout().kept_tree_evicted(tree_id);
            let why = small_note(&evicted);
            let _ = fs_err::remove_file(&evicted);
            if came == Came::Reused {
                came = Came::Made(why);
            }
        }
    }
    // Its mtime is its last use, which `cache gc` and the bound go by.
    let now = filetime::FileTime::now();
    filetime::set_file_mtime(&path, now)?;
    let kept = KeptTree { path, _lock: lock };
    let evicted = evict(store, tree_id, recipe, keep());
    Ok((kept, came, evicted))
}

/// A note beside a kept tree (whose it is, why it was evicted): a regular
/// file read no further than a line's worth, control characters dropped (a
/// FIFO or a planted escape sequence in the cache never reaches the build).
fn small_note(path: &Path) -> Option<String> {
    let bytes = crate::fileops::read_regular_no_follow(path, 4096).ok()?;
    Some(String::from_utf8_lossy(&bytes).chars().filter(|c| !c.is_control()).collect::<String>().trim().to_string())
}

/// Make room: first the other kept trees of `recipe` (an earlier state of
/// the same recipe, not the one it builds on now), then the least recently
/// used beyond `keep` (besides `in_use`); never one a build is using. Each
/// evicted tree leaves a note of why, for the build that needs it again.
/// Returns what it evicted, as lines for the build's output.
fn evict(store: &Store, in_use: &str, recipe: &str, keep: usize) -> Vec<String> {
    let Ok(entries) = fs_err::read_dir(store.layout().kept_trees()) else { return Vec::new() };
    let layout = store.layout();
    let mut trees: Vec<(std::time::SystemTime, String, String)> = entries
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .filter_map(|entry| {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !crate::digest::is_sha256_hex(&id) || id == in_use {
                return None;
            }
            let owner = small_note(&layout.kept_tree_owner(&id)).unwrap_or_default();
            Some((entry.metadata().ok()?.modified().ok()?, id, owner))
        })
        .collect();
    trees.sort();
    let (same, others): (Vec<_>, Vec<_>) = trees.into_iter().partition(|(_, _, owner)| owner == recipe);
    let excess = (others.len() + 1).saturating_sub(keep.max(1));
    let now = crate::time::utc_string(crate::time::now_seconds() as i64);
    let mut evicted = Vec::new();
    let mut discard = |id: &str, owner: &str, why: String| -> bool {
        if !matches!(store.discard_kept_tree(id), Ok(true)) {
            return false; // a build is using it
        }
        let _ = fs_err::write(layout.kept_tree_evicted(id), &why);
        let of = if owner.is_empty() { String::new() } else { format!(" of {owner}") };
        evicted.push(format!("the kept tree {}{of} was {why}", &id[..12]));
        true
    };
    for (_, id, owner) in &same {
        discard(id, owner, format!("replaced by a newer kept tree of {recipe} at {now}"));
    }
    // The least recently used first, past any a build is using.
    let mut excess = excess;
    for (_, id, owner) in &others {
        if excess == 0 {
            break;
        }
        let why = format!("evicted at {now} by a build of {recipe}: at most {keep} kept trees stay (ROOTSMITH_KEPT_TREES), the least recently used go");
        if discard(id, owner, why) {
            excess -= 1;
        }
    }
    evicted
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
        let (kept, came, _) =
            ensure(&store, &id(1), "r", |tree| Ok(fs_err::write(tree.join("etc-hostname"), "kept\n")?)).unwrap();
        assert_eq!(came, Came::Made(None));
        assert_eq!(std::fs::read_to_string(kept.path().join("etc-hostname")).unwrap(), "kept\n");
        drop(kept);
        let (kept, came, _) = ensure(&store, &id(1), "r", |_| panic!("made twice")).unwrap();
        assert!(came == Came::Reused && kept.path().join("etc-hostname").is_file());
    }

    #[test]
    fn a_failed_fill_leaves_no_kept_tree() {
        let (_dir, store) = store();
        let error = ensure(&store, &id(2), "r", |tree| {
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
        ensure(&store, &id(9), "r", |_| Ok(())).unwrap();
        assert!(!dead.exists() && live.exists());
    }

    #[test]
    fn each_recipe_keeps_its_newest_and_the_least_recently_used_go_beyond_the_bound() {
        let (_dir, store) = store();
        let in_use = ensure(&store, &id(1), "a", |_| Ok(())).unwrap().0;
        // Older than anything made after it.
        filetime::set_file_mtime(in_use.path(), filetime::FileTime::from_unix_time(1000, 0)).unwrap();
        let make = |n: u8, recipe: &str| {
            let (kept, came, evicted) = ensure(&store, &id(n), recipe, |_| Ok(())).unwrap();
            filetime::set_file_mtime(kept.path(), filetime::FileTime::from_unix_time(2000 + n as i64, 0)).unwrap();
            (came, evicted)
        };
        let left = |count: u8| (1..=count).map(|n| store.layout().kept_tree(&id(n)).is_dir()).collect::<Vec<_>>();
        // Switching between recipes within the bound (4) evicts none of them.
        for n in 2..=4 {
            assert!(make(n, &format!("r{n}")).1.is_empty());
        }
        assert_eq!(left(4), [true; 4]);
        // One more: the least recently used that no build uses (2; 1 is in use) goes.
        let (_, evicted) = make(5, "r5");
        assert_eq!(left(5), [true, false, true, true, true]);
        assert!(evicted[0].contains(&id(2)[..12]) && evicted[0].contains("of r2 was evicted"), "{evicted:?}");
        drop(in_use);
        // A recipe's newer tree replaces its older one first.
        let (_, evicted) = make(6, "r5");
        assert!(!store.layout().kept_tree(&id(5)).exists(), "r5's older tree stays");
        assert!(evicted.iter().any(|line| line.contains("replaced by a newer kept tree of r5")), "{evicted:?}");
        // The build that needs an evicted tree again is told why it is made.
        let (came, _) = make(2, "r2");
        assert!(matches!(&came, Came::Made(Some(why)) if why.contains("evicted at")), "{came:?}");
    }

    #[test]
    fn a_kept_tree_changed_in_place_is_discarded_and_made_again() {
        let (_dir, store) = store();
        let fill = |tree: &Path| -> Result<()> {
            fs_err::create_dir(tree.join("etc"))?;
            Ok(fs_err::write(tree.join("etc/motd"), "clean\n")?)
        };
        drop(ensure(&store, &id(3), "r", fill).unwrap());
        // Changed in place, its mtime set back: only the ctime tells.
        let motd = store.layout().kept_tree(&id(3)).join("etc/motd");
        let mtime = filetime::FileTime::from_last_modification_time(&fs_err::metadata(&motd).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs_err::write(&motd, "dirty\n").unwrap();
        filetime::set_file_mtime(&motd, mtime).unwrap();
        let (kept, came, _) = ensure(&store, &id(3), "r", fill).unwrap();
        assert!(matches!(&came, Came::Remade(why) if why.contains("/etc/motd")), "{came:?}");
        assert_eq!(fs_err::read_to_string(kept.path().join("etc/motd")).unwrap(), "clean\n");
        drop(kept);
        assert_eq!(ensure(&store, &id(3), "r", |_| panic!("made again")).unwrap().1, Came::Reused);

        // Replaced by a symlink while another build uses it: not used, not removed.
        let held = ensure(&store, &id(3), "r", |_| panic!("made again")).unwrap().0;
        fs_err::remove_file(&motd).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", &motd).unwrap();
        let error = ensure(&store, &id(3), "r", |_| panic!("made under a user")).unwrap_err();
        assert!(error.to_string().contains("differs from its record"), "{error}");
        drop(held);
        let (kept, came, _) = ensure(&store, &id(3), "r", fill).unwrap();
        assert!(matches!(came, Came::Remade(_)));
        assert!(fs_err::symlink_metadata(kept.path().join("etc/motd")).unwrap().is_file());
    }

    #[test]
    fn a_kept_tree_without_its_record_is_not_used() {
        let (_dir, store) = store();
        drop(ensure(&store, &id(4), "r", |tree| Ok(fs_err::write(tree.join("a"), "a")?)).unwrap());
        fs_err::remove_file(store.layout().kept_tree_record(&id(4))).unwrap();
        let (_kept, came, _) = ensure(&store, &id(4), "r", |tree| Ok(fs_err::write(tree.join("a"), "a")?)).unwrap();
        assert!(matches!(came, Came::Remade(_)), "{came:?}");
        assert!(store.layout().kept_tree_record(&id(4)).is_file());
    }

    #[test]
    fn a_note_beside_a_kept_tree_is_read_as_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(small_note(&fifo), None, "a FIFO is never opened for reading");
        let note = dir.path().join("note");
        fs_err::write(&note, "lab\x1b]0;pwned\x07\n").unwrap();
        assert_eq!(small_note(&note).as_deref(), Some("lab]0;pwned"));
    }
}
