//! Overlay mounts of a work tree over a kept tree, in rootsmith's own mount
//! namespace.
//!
//! A build that starts at stage N (the stages before it cached) needs the
//! tree after N stages. Extracting every layer again costs seconds per
//! hundred megabytes; an overlay of an empty upper directory over a kept,
//! read-only copy of that tree costs a mount. The stage then changes the
//! merged view, and rootsmith's inode/ctime snapshot sees exactly what it
//! changed (a copy-up moves the ctime).
//!
//! Only as the machine's root, where the mount can keep every promise a
//! plain directory makes: `index=on` keeps hard links one file when one of
//! their names is copied up, and `redirect_dir=on` lets a stage rename a
//! directory of the kept tree; both need `trusted.*` xattrs, which a user
//! namespace cannot write. Elsewhere the tree is extracted as before.
//!
//! The mounts live in a private mount namespace that [`private_mounts`]
//! makes for the whole process at its start, so they die with it, however
//! it ends; the host's mount table never sees them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// Set once this process is root in its own private mount namespace.
static PRIVATE: AtomicBool = AtomicBool::new(false);

/// The mount namespace the process started in, kept open so that a command
/// can still change the host's mounts (enabling binfmt_misc).
static ORIGINAL: OnceLock<File> = OnceLock::new();

/// Move this process (still single-threaded) into a private mount namespace
/// of its own, when it is the machine's root. Errors are not fatal: without
/// the namespace, work trees are extracted instead of mounted.
pub fn private_mounts() -> Result<()> {
    if super::userns::standing() != super::userns::Standing::Root {
        return Ok(());
    }
    let original = File::open("/proc/self/ns/mnt").context("opening /proc/self/ns/mnt")?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private")?;
    let _ = ORIGINAL.set(original);
    PRIVATE.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether work trees may be overlay mounts: root, in a private namespace,
/// and not turned off with `ROOTSMITH_OVERLAY=0`.
pub fn available() -> bool {
    PRIVATE.load(Ordering::SeqCst) && std::env::var("ROOTSMITH_OVERLAY").map_or(true, |value| value != "0")
}

/// The argv prefix that runs a program in the mount namespace the process
/// started in (`nsenter --mount=…`), when it has left it; empty otherwise.
pub fn in_original_mounts() -> Vec<String> {
    match ORIGINAL.get() {
        Some(file) => {
            let fd = std::os::fd::AsRawFd::as_raw_fd(file);
            vec!["nsenter".to_string(), format!("--mount=/proc/{}/fd/{fd}", std::process::id())]
        }
        None => Vec::new(),
    }
}

/// An overlay mounted at `merged`; unmounted when dropped.
#[derive(Debug)]
pub struct OverlayMount {
    merged: PathBuf,
}

impl OverlayMount {
    pub fn merged(&self) -> &Path {
        &self.merged
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if nix::mount::umount(&self.merged).is_err() {
            // Something still has it open (a stray process): detach it, so
            // the work dir can go.
            let _ = nix::mount::umount2(&self.merged, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Whether an overlay with rootsmith's options mounts in `dir` (an empty
/// scratch directory on the filesystem of the cache), asked once per
/// process: a cache on a filesystem overlay cannot use as its upper layer
/// (an overlay itself, NFS) gives extracted trees without a word.
pub fn works_in(dir: &Path) -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        let paths = ["lower", "upper", "work", "merged"].map(|name| dir.join(name));
        let mounted = paths.iter().all(|path| fs_err::create_dir_all(path).is_ok())
            && mount(&paths[0], &paths[1], &paths[2], &paths[3]).is_ok();
        for path in &paths {
            let _ = crate::fileops::remove_tree(path);
        }
        mounted
    })
}

/// The options of an overlay of `upper` (with overlay's `work` dir) over the
/// read-only `lower`; `None` when a path holds a character the option
/// syntax cannot carry (`,` `:` `\` or a blank).
pub fn options(lower: &Path, upper: &Path, work: &Path) -> Option<String> {
    let mut paths = Vec::new();
    for path in [lower, upper, work] {
        let text = path.to_str()?;
        if text.chars().any(|c| matches!(c, ',' | ':' | '\\') || c.is_whitespace()) {
            return None;
        }
        paths.push(text);
    }
    Some(format!(
        "lowerdir={},upperdir={},workdir={},index=on,redirect_dir=on,metacopy=off",
        paths[0], paths[1], paths[2]
    ))
}

/// Mount `upper` over `lower` at `merged` (`work`: overlay's own scratch
/// directory, on the same filesystem as `upper`).
pub fn mount(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> Result<OverlayMount> {
    if !available() {
        bail!("overlay work trees need root in rootsmith's own mount namespace");
    }
    let Some(options) = options(lower, upper, work) else {
        bail!("{} or its work dir has a character overlay's options cannot carry", lower.display());
    };
    // `volatile`: no sync of the upper filesystem, at any time and above all
    // at unmount, which would otherwise wait for every dirty page of the
    // cache's filesystem (the outputs and bundle just written: a second or
    // more). What a stage wrote reaches the cache as a layer blob, written
    // and synced on its own; the upper dir is thrown away, and a work dir
    // left by a crash is swept, never mounted again. Kernels before 5.10
    // do not know the option and mount without it.
    let volatile = format!("{options},volatile");
    let flags = nix::mount::MsFlags::empty();
    let mounted = nix::mount::mount(Some("overlay"), merged, Some("overlay"), flags, Some(volatile.as_str()));
    if mounted == Err(nix::errno::Errno::EINVAL) {
        nix::mount::mount(Some("overlay"), merged, Some("overlay"), flags, Some(options.as_str()))
            .with_context(|| format!("mounting an overlay at {} ({options})", merged.display()))?;
    } else {
        mounted.with_context(|| format!("mounting an overlay at {} ({volatile})", merged.display()))?;
    }
    Ok(OverlayMount { merged: merged.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_keep_hard_links_and_refuse_paths_they_cannot_carry() {
        let text =
            options(Path::new("/c/trees/abc"), Path::new("/c/tmp/w/upper"), Path::new("/c/tmp/w/overlay")).unwrap();
        assert_eq!(text, "lowerdir=/c/trees/abc,upperdir=/c/tmp/w/upper,workdir=/c/tmp/w/overlay,index=on,redirect_dir=on,metacopy=off");
        for bad in ["/c/a,b", "/c/a:b", "/c/a\\b", "/c/a b", "/c/a\nb"] {
            assert_eq!(options(Path::new(bad), Path::new("/u"), Path::new("/w")), None, "{bad:?}");
            assert_eq!(options(Path::new("/l"), Path::new(bad), Path::new("/w")), None, "{bad:?}");
        }
    }
}
