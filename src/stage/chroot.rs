//! Run a command chrooted in the tree: mount points checked, a `policy-rc.d`
//! that keeps daemons from starting, the host's resolver, the shared apt cache.
//! What rootsmith adds to the tree for the run is taken out again afterwards,
//! success or not, so it never shows up in the stage's layer.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::StageContext;
use crate::host::{chroot_mounts, clean_environment, Command};

const POLICY_RC_D: &str = "usr/sbin/policy-rc.d";

/// Files created for the run and the directory mtimes to restore after.
struct Scaffolding {
    created: Vec<PathBuf>,
    directory_times: Vec<(PathBuf, filetime::FileTime)>,
}

impl Scaffolding {
    fn remember_directory(&mut self, directory: &Path) {
        if let Ok(metadata) = std::fs::metadata(directory) {
            self.directory_times.push((directory.to_path_buf(), filetime::FileTime::from_last_modification_time(&metadata)));
        }
    }

    fn create_file(&mut self, path: &Path, content: &[u8], mode: u32) -> Result<()> {
        if let Some(parent) = path.parent() {
            self.remember_directory(parent);
        }
        fs_err::write(path, content)?;
        fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        self.created.push(path.to_path_buf());
        Ok(())
    }

    fn tear_down(self) {
        for path in self.created.iter().rev() {
            let _ = std::fs::remove_file(path);
        }
        for (directory, time) in self.directory_times.iter().rev() {
            let _ = filetime::set_file_mtime(directory, *time);
        }
    }
}

/// A mount point must be a real directory (or file) in the tree: mounting on a
/// symlink would follow it.
fn check_mount_point(tree: &Path, target: &Path, directory: bool, scaffolding: &mut Scaffolding) -> Result<bool> {
    let path = tree.join(target.strip_prefix("/").unwrap_or(target));
    match std::fs::symlink_metadata(&path) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            if directory {
                bail!("{} is a symlink in the tree; refusing to mount on it", target.display());
            }
            Ok(false)
        }
        Ok(metadata) if metadata.is_dir() == directory => Ok(true),
        Ok(_) => bail!("{} in the tree is not a {}", target.display(), if directory { "directory" } else { "file" }),
        Err(_) if directory => {
            fs_err::create_dir_all(&path)?;
            Ok(true)
        }
        Err(_) => {
            if !path.parent().is_some_and(Path::is_dir) {
                return Ok(false);
            }
            scaffolding.create_file(&path, b"", 0o644)?;
            Ok(true)
        }
    }
}

/// Run `argv` inside `context.tree`.
pub fn run_chrooted(context: &StageContext<'_>, argv: &[&str], extra_env: &BTreeMap<String, String>) -> Result<()> {
    chrooted(context, argv, extra_env, false).map(|_| ())
}

/// Run `argv` inside `context.tree` on the caller's terminal; returns its exit code.
pub fn run_interactive(context: &StageContext<'_>, argv: &[&str]) -> Result<i32> {
    let mut env = BTreeMap::new();
    if let Ok(term) = std::env::var("TERM") {
        env.insert("TERM".to_string(), term);
    }
    env.insert("PS1".to_string(), "(rootsmith) \\w# ".to_string());
    chrooted(context, argv, &env, true)
}

fn chrooted(context: &StageContext<'_>, argv: &[&str], extra_env: &BTreeMap<String, String>, interactive: bool) -> Result<i32> {
    let tree = context.tree;
    let mut scaffolding = Scaffolding { created: Vec::new(), directory_times: Vec::new() };
    let result = (|| {
        if !tree.join("bin/sh").exists() && !tree.join("usr/bin/sh").exists() {
            bail!("the tree has no /bin/sh to run commands with; is the base stage a root filesystem?");
        }
        let host_resolv = std::fs::canonicalize("/etc/resolv.conf").ok().filter(|p| p.is_file());
        let archives = tree.join("var/cache/apt/archives").is_dir().then_some(context.apt_archives);
        let mut mounts = Vec::new();
        for mount in chroot_mounts(host_resolv.as_deref(), archives) {
            let directory = mount.target != Path::new("/etc/resolv.conf");
            if check_mount_point(tree, &mount.target, directory, &mut scaffolding)? {
                mounts.push(mount);
            }
        }
        let policy = tree.join(POLICY_RC_D);
        if tree.join("usr/sbin").is_dir() && std::fs::symlink_metadata(&policy).is_err() {
            scaffolding.create_file(&policy, b"#!/bin/sh\n# rootsmith: no daemon starts while a stage runs\nexit 101\n", 0o755)?;
        }
        let command = Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: clean_environment(context.source_date_epoch, extra_env),
            root: Some(tree.to_path_buf()),
            mounts,
            log: context.log.clone(),
            stdin: None,
            interactive,
        };
        if interactive {
            context.host.status(&command)
        } else {
            context.host.run(&command).map(|()| 0)
        }
    })();
    scaffolding.tear_down();
    result
}
