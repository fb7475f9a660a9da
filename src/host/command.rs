//! A command as rootsmith asks for it, and the [`Host`] trait that runs it.
//! [`chroot_mounts`] and [`clean_environment`] are pure: what a chrooted
//! command gets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One mount, with its target inside the tree (an absolute path in the chroot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: Option<PathBuf>,
    pub target: PathBuf,
    pub fstype: Option<&'static str>,
    pub kind: MountKind,
    pub data: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// A new filesystem of `fstype`.
    Fresh { read_only: bool },
    /// A recursive bind of a host path.
    Bind,
}

/// The mounts a chrooted command gets, in order (the recursive `/dev` bind
/// brings `/dev/pts` and `/dev/shm` along). `resolv_conf` is the host's
/// resolver file to bind in (skipped when `None`), `apt_archives` the shared apt
/// package cache.
pub fn chroot_mounts(resolv_conf: Option<&Path>, apt_archives: Option<&Path>) -> Vec<Mount> {
    let fresh = |fstype: &'static str, target: &str, read_only: bool, data: Option<&'static str>| Mount {
        source: Some(PathBuf::from(fstype)),
        target: PathBuf::from(target),
        fstype: Some(fstype),
        kind: MountKind::Fresh { read_only },
        data,
    };
    let bind = |source: &Path, target: &str| Mount {
        source: Some(source.to_path_buf()),
        target: PathBuf::from(target),
        fstype: None,
        kind: MountKind::Bind,
        data: None,
    };
    let mut mounts = vec![
        fresh("proc", "/proc", false, None),
        fresh("sysfs", "/sys", true, None),
        bind(Path::new("/dev"), "/dev"),
        fresh("tmpfs", "/run", false, Some("mode=0755")),
    ];
    if let Some(resolv_conf) = resolv_conf {
        mounts.push(bind(resolv_conf, "/etc/resolv.conf"));
    }
    if let Some(archives) = apt_archives {
        mounts.push(bind(archives, "/var/cache/apt/archives"));
    }
    mounts
}

/// The environment of every chrooted command: nothing from the caller's.
pub fn clean_environment(source_date_epoch: i64, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("HOME".to_string(), "/root".to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("LC_ALL".to_string(), "C.UTF-8".to_string()),
        ("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string()),
        ("DEBCONF_NONINTERACTIVE_SEEN".to_string(), "true".to_string()),
        ("SOURCE_DATE_EPOCH".to_string(), source_date_epoch.to_string()),
        // A kernel package installed by any stage (packages, a script's
        // apt-get) builds no initramfs in the tree: Debian's kernel hook
        // (/etc/kernel/postinst.d/initramfs-tools) skips it for INITRD=No.
        // rootsmith ships its own thin initramfs; the distro's would be dead
        // weight in the rootfs (and take most of an hour under emulation).
        (NO_INITRD.0.to_string(), NO_INITRD.1.to_string()),
    ]);
    env.extend(extra.clone());
    env
}

/// The variable that keeps Debian's kernel hooks from making an initramfs.
pub const NO_INITRD: (&str, &str) = ("INITRD", "No");

/// A command to run: chrooted into `root` with `mounts`, or on the host (in a
/// private mount namespace) when `root` is `None`.
#[derive(Debug, Clone)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub root: Option<PathBuf>,
    pub mounts: Vec<Mount>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// Bytes written to the command's stdin.
    pub stdin: Option<Vec<u8>>,
    /// Keep the caller's terminal (stdin, stdout, stderr) instead of the log.
    pub interactive: bool,
    /// The working directory (`/` in a chroot, the caller's on the host when `None`).
    pub cwd: Option<PathBuf>,
    /// Run in a private mount namespace even without a chroot (a tool such as
    /// debootstrap that mounts inside its target): what it mounts dies with it.
    pub private_mounts: bool,
    /// What messages call the command instead of its argv (a recipe's
    /// script file runs by path, and is named by the path the recipe gave).
    pub label: Option<String>,
}

impl Command {
    /// A host program (not chrooted, no mounts) with rootsmith's own
    /// environment, its output appended to `log`.
    pub fn on_host<S: AsRef<std::ffi::OsStr>>(
        program: impl AsRef<std::ffi::OsStr>,
        args: impl IntoIterator<Item = S>,
        log: &Path,
    ) -> Command {
        let mut argv = vec![program.as_ref().to_string_lossy().into_owned()];
        argv.extend(args.into_iter().map(|arg| arg.as_ref().to_string_lossy().into_owned()));
        Command {
            argv,
            env: std::env::vars().collect(),
            root: None,
            mounts: Vec::new(),
            log: log.to_path_buf(),
            stdin: None,
            interactive: false,
            cwd: None,
            private_mounts: false,
            label: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Command {
        self.argv.push(arg.as_ref().to_string_lossy().into_owned());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Command {
        self.env.insert(key.to_string(), value.into());
        self
    }

    pub fn env_remove(mut self, key: &str) -> Command {
        self.env.remove(key);
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Command {
        self.cwd = Some(dir.into());
        self
    }

    pub fn stdin_bytes(mut self, bytes: Vec<u8>) -> Command {
        self.stdin = Some(bytes);
        self
    }

    /// The command as messages show it: its label, or its argv in backticks
    /// with every long or multi-line argument cut to the start of its first line.
    pub fn shown(&self) -> String {
        match &self.label {
            Some(label) => label.clone(),
            None => format!("`{}`", self.argv.iter().map(|arg| short_argument(arg)).collect::<Vec<_>>().join(" ")),
        }
    }

    /// The program's file name, for messages and the recording host.
    pub fn program(&self) -> &str {
        self.argv.first().map(|program| program.rsplit('/').next().unwrap_or(program)).unwrap_or("")
    }
}

/// How long an argument may be before messages cut it.
const SHOWN_ARGUMENT: usize = 60;

/// An argument as messages show it: whole when short and on one line,
/// otherwise the start of its first line and `…` (an inline script).
fn short_argument(arg: &str) -> String {
    let first = arg.lines().next().unwrap_or("");
    if first.len() == arg.len() && arg.chars().count() <= SHOWN_ARGUMENT {
        return arg.to_string();
    }
    let cut: String = first.chars().take(SHOWN_ARGUMENT).collect();
    format!("{cut}…")
}

/// A command that ran and failed: the command as [`Command::shown`] gives it,
/// its exit status and the tail of its output.
#[derive(Debug, thiserror::Error)]
#[error("{command} failed with {status}\n--- last lines of its output ({log}) ---\n{tail}")]
pub struct CommandError {
    pub command: String,
    pub status: String,
    pub tail: String,
    pub log: String,
}

/// Every process rootsmith starts goes through a `Host`: the real one, or a
/// recording one in tests (which can also make a chosen call fail).
pub trait Host {
    /// Run the command to completion and return its exit status, or −N when
    /// signal N killed it (an exit status of 200 is not a signal). Its output
    /// is appended to its log.
    fn status(&self, command: &Command) -> anyhow::Result<i32>;

    /// Run the command and return its exit code and standard output (its
    /// standard error is appended to its log).
    fn output(&self, command: &Command) -> anyhow::Result<(i32, Vec<u8>)>;

    /// Whether trees this host makes keep their files' true owners (chown,
    /// device nodes, capabilities): only then may a build record a layer.
    fn records_true_owners(&self) -> bool {
        true
    }

    /// Run the command; an unsuccessful exit is a [`CommandError`].
    fn run(&self, command: &Command) -> anyhow::Result<()> {
        let code = self.status(command)?;
        check_exit(command, code)
    }

    /// Run the command and return its standard output as text; an
    /// unsuccessful exit is a [`CommandError`].
    fn capture(&self, command: &Command) -> anyhow::Result<String> {
        let (code, stdout) = self.output(command)?;
        check_exit(command, code)?;
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }
}

fn check_exit(command: &Command, code: i32) -> anyhow::Result<()> {
    if code == 0 {
        return Ok(());
    }
    let status = if code < 0 { format!("signal {}", -code) } else { format!("exit status {code}") };
    Err(CommandError {
        command: command.shown(),
        status,
        tail: log_tail(&command.log, 25),
        log: command.log.display().to_string(),
    }
    .into())
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs_err::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chroot_gets_the_pseudo_filesystems_then_resolver_and_apt_cache() {
        let mounts = chroot_mounts(Some(Path::new("/etc/resolv.conf")), Some(Path::new("/cache/apt")));
        let targets: Vec<&str> = mounts.iter().map(|m| m.target.to_str().unwrap()).collect();
        assert_eq!(targets, ["/proc", "/sys", "/dev", "/run", "/etc/resolv.conf", "/var/cache/apt/archives"]);
        assert_eq!(mounts[1].kind, MountKind::Fresh { read_only: true });
        assert_eq!(mounts[5].source.as_deref(), Some(Path::new("/cache/apt")));
        assert_eq!(chroot_mounts(None, None).len(), 4);
    }

    #[test]
    fn environment_is_clean_and_noninteractive() {
        let env = clean_environment(42, &BTreeMap::from([("X".to_string(), "1".to_string())]));
        assert_eq!(env["DEBIAN_FRONTEND"], "noninteractive");
        assert_eq!(env["SOURCE_DATE_EPOCH"], "42");
        assert_eq!(env["INITRD"], "No", "a kernel package would build an initramfs in the tree");
        assert_eq!(env["X"], "1");
        assert!(!env.contains_key("USER"));
    }

    #[test]
    fn a_failed_command_is_shown_short() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        fs_err::write(&log, "line 1\nfailed here\n").unwrap();
        let script = format!("apt-get update\necho {}\n", "x".repeat(10_000));
        let mut command = Command::on_host("/bin/sh", ["-e", "-c", script.as_str(), "rootsmith-run"], &log);
        let error = check_exit(&command, 1).unwrap_err().to_string();
        assert!(
            error.starts_with("`/bin/sh -e -c apt-get update… rootsmith-run` failed with exit status 1\n"),
            "{error}"
        );
        assert!(error.ends_with("line 1\nfailed here"), "{error}");
        assert!(error.len() < 300, "{} bytes", error.len());
        command.label = Some("script `configure.sh`".to_string());
        let error = check_exit(&command, 2).unwrap_err().to_string();
        assert!(error.starts_with("script `configure.sh` failed with exit status 2"), "{error}");
    }
}
