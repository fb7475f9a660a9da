//! Run a command chrooted in the tree: mount points checked, a `policy-rc.d`
//! that keeps daemons from starting, the host's resolver, the shared apt cache.
//! What rootsmith adds to the tree for the run is taken out again afterwards,
//! success or not, so it never shows up in the stage's layer.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::context::StageContext;

/// The apt preferences file of a locked build, in `/etc/apt/preferences.d`.
pub const PINS_FILE: &str = "rootsmith-lock.pref";
use crate::host::{chroot_mounts, clean_environment, Command};

const POLICY_RC_D: &str = "usr/sbin/policy-rc.d";

/// Where a recipe's script file is put in the tree for its run (taken out
/// again afterwards): `/.rootsmith-run/NAME`, so the shell's own messages
/// (`NAME: 3: foo: not found`) name the file and line the recipe wrote.
const SCRIPT_DIR: &str = ".rootsmith-run";

/// A script file the recipe names, to run in the tree by path: its text never
/// goes into an argv, which errors would print.
pub struct ScriptFile<'a> {
    /// The file's name as it will be in the tree (the recipe's file name).
    pub name: &'a str,
    pub text: &'a [u8],
    /// What errors call the run, e.g. script `scripts/configure.sh`.
    pub label: String,
}

/// Files created for the run and the directory mtimes to restore after.
struct Scaffolding {
    created: Vec<PathBuf>,
    created_directories: Vec<PathBuf>,
    directory_times: Vec<(PathBuf, filetime::FileTime)>,
}

impl Scaffolding {
    fn remember_directory(&mut self, directory: &Path) {
        if let Ok(metadata) = fs_err::metadata(directory) {
            self.directory_times
                .push((directory.to_path_buf(), filetime::FileTime::from_last_modification_time(&metadata)));
        }
    }

    /// Create a file that is not there (never through a symlink standing at `path`).
    fn create_file(&mut self, path: &Path, content: &[u8], mode: u32) -> Result<()> {
        if let Some(parent) = path.parent() {
            self.remember_directory(parent);
        }
        let mut file = fs_err::OpenOptions::new().write(true).create_new(true).open(path)?;
        self.created.push(path.to_path_buf());
        std::io::Write::write_all(&mut file, content)?;
        fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Create a directory that is not there.
    fn create_directory(&mut self, path: &Path, mode: u32) -> Result<()> {
        if let Some(parent) = path.parent() {
            self.remember_directory(parent);
        }
        fs_err::create_dir(path)?;
        self.created_directories.push(path.to_path_buf());
        fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    fn tear_down(self) {
        for path in self.created.iter().rev() {
            let _ = fs_err::remove_file(path);
        }
        for path in self.created_directories.iter().rev() {
            let _ = fs_err::remove_dir(path);
        }
        for (directory, time) in self.directory_times.iter().rev() {
            let _ = filetime::set_file_mtime(directory, *time);
        }
    }
}

/// apt does not wait for the lock of its archive directory, so builds that
/// share the cache's apt directory take turns while one of them has it mounted.
pub fn apt_lock(layout: &crate::cache::Layout) -> Result<std::fs::File> {
    Ok(crate::fileops::lock_file(&layout.apt_lock())?)
}

/// A mount point must be a real directory (or file) in the tree: mounting on a
/// symlink would follow it.
fn check_mount_point(tree: &Path, target: &Path, directory: bool, scaffolding: &mut Scaffolding) -> Result<bool> {
    let path = tree.join(target.strip_prefix("/").unwrap_or(target));
    match fs_err::symlink_metadata(&path) {
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
    chrooted(context, argv, None, extra_env, false).map(|_| ())
}

/// Run `script` with `/bin/sh -e` inside `context.tree`, from a file put there
/// for the run: neither the command's argv nor its errors carry the text.
pub fn run_script_chrooted(
    context: &StageContext<'_>,
    script: &ScriptFile<'_>,
    extra_env: &BTreeMap<String, String>,
) -> Result<()> {
    chrooted(context, &[], Some(script), extra_env, false).map(|_| ())
}

/// Run `argv` inside `context.tree` on the caller's terminal; returns its exit code.
pub fn run_interactive(context: &StageContext<'_>, argv: &[&str]) -> Result<i32> {
    let mut env = BTreeMap::new();
    if let Ok(term) = std::env::var("TERM") {
        env.insert("TERM".to_string(), term);
    }
    env.insert("PS1".to_string(), "(rootsmith) \\w# ".to_string());
    chrooted(context, argv, None, &env, true)
}

fn chrooted(
    context: &StageContext<'_>,
    argv: &[&str],
    script: Option<&ScriptFile<'_>>,
    extra_env: &BTreeMap<String, String>,
    interactive: bool,
) -> Result<i32> {
    let tree = context.tree;
    let mut scaffolding =
        Scaffolding { created: Vec::new(), created_directories: Vec::new(), directory_times: Vec::new() };
    let result = (|| {
        if !tree.join("bin/sh").exists() && !tree.join("usr/bin/sh").exists() {
            bail!("the tree has no /bin/sh to run commands with; is the base stage a root filesystem?");
        }
        let host_resolv = fs_err::canonicalize("/etc/resolv.conf").ok().filter(|p| p.is_file());
        // The interactive shell keeps its downloads to itself, so an open
        // shell never holds the shared apt lock.
        let archives =
            (!interactive && tree.join("var/cache/apt/archives").is_dir()).then(|| context.layout.apt_archives());
        let _apt_lock = match archives {
            Some(_) => Some(apt_lock(context.layout)?),
            None => None,
        };
        let mut mounts = Vec::new();
        for mount in chroot_mounts(host_resolv.as_deref(), archives.as_deref()) {
            let directory = mount.target != Path::new("/etc/resolv.conf");
            if check_mount_point(tree, &mount.target, directory, &mut scaffolding)? {
                mounts.push(mount);
            }
        }
        if let Some(pins) = context.apt_pins {
            let directory = tree.join("etc/apt/preferences.d");
            let pin_file = directory.join(PINS_FILE);
            if fs_err::symlink_metadata(&directory).is_ok_and(|m| m.is_dir())
                && fs_err::symlink_metadata(&pin_file).is_err()
            {
                scaffolding.create_file(&pin_file, pins.as_bytes(), 0o644)?;
            }
        }
        let policy = tree.join(POLICY_RC_D);
        if tree.join("usr/sbin").is_dir() && fs_err::symlink_metadata(&policy).is_err() {
            scaffolding.create_file(
                &policy,
                b"#!/bin/sh\n# rootsmith: no daemon starts while a stage runs\nexit 101\n",
                0o755,
            )?;
        }
        let mut argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut label = None;
        if let Some(script) = script {
            let directory = tree.join(SCRIPT_DIR);
            if fs_err::symlink_metadata(&directory).is_ok() {
                bail!("the tree already has /{SCRIPT_DIR}, where rootsmith puts the script it runs; remove it in an earlier stage");
            }
            scaffolding.create_directory(&directory, 0o700)?;
            scaffolding.create_file(&directory.join(script.name), script.text, 0o700)?;
            argv = vec!["/bin/sh".into(), "-e".into(), format!("/{SCRIPT_DIR}/{}", script.name)];
            label = Some(script.label.clone());
        }
        let command = Command {
            argv,
            env: clean_environment(context.source_date_epoch, extra_env),
            root: Some(tree.to_path_buf()),
            mounts,
            log: context.log.clone(),
            stdin: None,
            interactive,
            cwd: None,
            private_mounts: true,
            label,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::host::RecordingHost;

    fn context<'a>(
        host: &'a RecordingHost,
        tree: &'a Path,
        scratch: &'a Path,
        layout: &'a crate::cache::Layout,
    ) -> StageContext<'a> {
        layout.create().unwrap();
        StageContext::for_test(host, tree, scratch, layout, 7)
    }

    #[test]
    fn chrooted_command_gets_mounts_policy_and_a_clean_environment() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        for sub in ["bin", "usr/sbin", "etc", "var/cache/apt/archives", "proc"] {
            fs_err::create_dir_all(tree.join(sub)).unwrap();
        }
        fs_err::write(tree.join("bin/sh"), "").unwrap();
        let before = crate::layer::Snapshot::take(&tree).unwrap();
        let host = RecordingHost::default();
        let env = BTreeMap::from([("X".to_string(), "1".to_string())]);
        let layout = crate::cache::Layout::new(&dir.path().join("cache"));
        run_chrooted(&context(&host, &tree, dir.path(), &layout), &["/bin/sh", "-c", "true"], &env).unwrap();

        let commands = host.commands.lock().unwrap();
        let command = &commands[0];
        assert_eq!(command.root.as_deref(), Some(tree.as_path()));
        assert_eq!(command.argv, ["/bin/sh", "-c", "true"]);
        assert_eq!(command.env["X"], "1");
        assert_eq!(command.env["SOURCE_DATE_EPOCH"], "7");
        let targets: Vec<&str> = command.mounts.iter().map(|m| m.target.to_str().unwrap()).collect();
        assert!(targets.contains(&"/var/cache/apt/archives"), "{targets:?}");
        assert!(layout.apt_lock().exists());
        // Mount points that were missing were made as directories.
        assert!(tree.join("sys").is_dir() && tree.join("run").is_dir() && tree.join("dev").is_dir());
        // What rootsmith added for the run is gone again: policy-rc.d, the
        // resolv.conf placeholder, and their directories' mtimes are restored.
        assert!(!tree.join(POLICY_RC_D).exists());
        assert!(!tree.join("etc/resolv.conf").exists());
        let after = crate::layer::Snapshot::take(&tree).unwrap();
        let changes: Vec<_> = before.changes(&after).into_iter().filter(|c| !matches!(c, crate::layer::Change::Write(p) if ["sys", "run", "dev"].contains(&p.to_str().unwrap()))).collect();
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn mounting_on_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("bin")).unwrap();
        fs_err::write(tree.join("bin/sh"), "").unwrap();
        std::os::unix::fs::symlink("/", tree.join("proc")).unwrap();
        let host = RecordingHost::default();
        let layout = crate::cache::Layout::new(&dir.path().join("cache"));
        let error =
            run_chrooted(&context(&host, &tree, dir.path(), &layout), &["/bin/true"], &BTreeMap::new()).unwrap_err();
        assert!(error.to_string().contains("/proc is a symlink"), "{error}");
        assert!(host.commands.lock().unwrap().is_empty());
    }

    #[test]
    fn a_tree_without_a_shell_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let host = RecordingHost::default();
        let layout = crate::cache::Layout::new(&dir.path().join("cache"));
        let error = run_chrooted(&context(&host, dir.path(), dir.path(), &layout), &["/bin/true"], &BTreeMap::new())
            .unwrap_err();
        assert!(error.to_string().contains("no /bin/sh"), "{error}");
    }
}
