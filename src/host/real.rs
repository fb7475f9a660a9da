//! The real host: fork, unshare a private mount namespace, mount, chroot, exec.
//!
//! Everything the child does between fork and exec is prepared beforehand
//! (C strings, flags) so the child only makes system calls. The child also asks
//! to be killed when rootsmith dies, and (as root) runs the command as the
//! first process of a PID namespace of its own, so an interrupted build leaves
//! no process of the command running, however deep, and, with the mount
//! namespace gone, no mount anywhere.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;

use anyhow::{Context, Result};

use super::command::{Command, Host, MountKind};

/// Runs commands for real. With `echo`, every command's output also goes to
/// rootsmith's standard error as it comes (`build -v`), besides its log.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost {
    pub echo: bool,
}

struct PreparedMount {
    source: CString,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
    /// Bind mounts made read-only need a second, remounting call.
    remount_read_only: bool,
    /// In a user namespace that does not own the network namespace, a fresh
    /// sysfs is refused: the host's `/sys` is bound instead (read-only as
    /// far as the build can tell: its files belong to the real root).
    bind_instead: Option<CString>,
}

fn c_string(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("paths have no NUL bytes")
}

impl Host for RealHost {
    fn status(&self, command: &Command) -> Result<i32> {
        self.spawn(command, false).map(|(code, _)| code)
    }

    fn output(&self, command: &Command) -> Result<(i32, Vec<u8>)> {
        self.spawn(command, true)
    }

    fn records_true_owners(&self) -> bool {
        super::userns::standing() != super::userns::Standing::User && super::userns::maps_every_owner()
    }
}

impl RealHost {
    /// Run `command`; with `capture`, its standard output is returned instead
    /// of going to the log.
    fn spawn(&self, command: &Command, capture: bool) -> Result<(i32, Vec<u8>)> {
        let mut prepared = Vec::new();
        let root = command.root.as_ref().map(|root| c_string(root.as_os_str().as_bytes()));
        for mount in &command.mounts {
            let root_path = command.root.as_ref().expect("mounts need a root");
            let target = root_path.join(mount.target.strip_prefix("/").unwrap_or(&mount.target));
            let (flags, remount_read_only) = match mount.kind {
                MountKind::Bind => (libc::MS_BIND | libc::MS_REC, false),
                MountKind::Fresh { read_only } => {
                    (libc::MS_NOSUID | libc::MS_NODEV | if read_only { libc::MS_RDONLY } else { 0 }, false)
                }
            };
            prepared.push(PreparedMount {
                source: c_string(mount.source.as_ref().map(|s| s.as_os_str().as_bytes()).unwrap_or(b"none")),
                target: c_string(target.as_os_str().as_bytes()),
                fstype: mount.fstype.map(|f| c_string(f.as_bytes())),
                flags,
                data: mount.data.map(|d| c_string(d.as_bytes())),
                remount_read_only,
                bind_instead: (mount.fstype == Some("sysfs")).then(|| c_string(b"/sys")),
            });
        }
        let mut process = std::process::Command::new(&command.argv[0]);
        process.args(&command.argv[1..]).env_clear().envs(&command.env);
        if let Some(dir) = &command.cwd {
            process.current_dir(dir);
        }
        let mut echo = None;
        if !command.interactive {
            // A stage's commands share its log: each one appends.
            let log = fs_err::OpenOptions::new().create(true).append(true).open(&command.log)?.into_parts().0;
            // With echo, the output goes through a pipe to both the log and stderr.
            let (sink, tee) = if self.echo {
                let (reader, writer) = std::io::pipe()?;
                (Stdio::from(writer.try_clone()?), Some((reader, writer, log.try_clone()?)))
            } else {
                (Stdio::from(log.try_clone()?), None)
            };
            if capture {
                process.stdout(Stdio::piped());
            } else {
                process.stdout(match &tee {
                    Some((_, writer, _)) => Stdio::from(writer.try_clone()?),
                    None => Stdio::from(log.try_clone()?),
                });
            }
            process.stderr(sink);
            process.stdin(if command.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
            echo = tee;
        }
        // Only a chroot, mounts or a tool that mounts need a mount namespace of
        // their own: host programs (make, mksquashfs…) run in rootsmith's.
        let isolate = command.private_mounts || command.root.is_some() || !command.mounts.is_empty();
        let slash = c_string(b"/");
        // Root gives every command a PID namespace of its own: when the
        // command's first process dies (with rootsmith, by PDEATHSIG), the
        // kernel kills every process left in it, so nothing a stage started
        // outlives the build. (Ordinary users only run host probes here.)
        let pid_namespace = nix::unistd::geteuid().is_root();
        // SAFETY: the closure only makes async-signal-safe system calls
        // (umask, prctl, unshare, fork, waitpid, close_range, setrlimit,
        // signal, kill, mount, chroot, chdir, _exit) on data prepared above;
        // no allocation, no locks.
        unsafe {
            process.pre_exec(move || {
                // Every command makes files with the same modes, whatever
                // the umask rootsmith was started with: the same inputs give
                // the same layer on every machine.
                libc::umask(0o022);
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut flags = 0;
                if isolate {
                    flags |= libc::CLONE_NEWNS;
                }
                if pid_namespace {
                    flags |= libc::CLONE_NEWPID;
                }
                if flags != 0 && libc::unshare(flags) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if pid_namespace {
                    // The namespace's first process is this one's child: this
                    // one waits for it and passes on how it ended.
                    match libc::fork() {
                        -1 => return Err(std::io::Error::last_os_error()),
                        0 => {
                            // PID 1 of the namespace dies with its parent, and
                            // everything in the namespace with it.
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                        }
                        child => {
                            // Hold no descriptor: the spawner's error pipe must
                            // close when the command starts, and its output
                            // pipes when the command ends.
                            libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                            let mut status = 0;
                            while libc::waitpid(child, &mut status, 0) < 0 {
                                if *libc::__errno_location() != libc::EINTR {
                                    libc::_exit(125);
                                }
                            }
                            if libc::WIFSIGNALED(status) {
                                // Ended the same way, so the spawner tells a
                                // signal from an exit status above 128.
                                let signal = libc::WTERMSIG(status);
                                let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                                libc::signal(signal, libc::SIG_DFL);
                                libc::kill(libc::getpid(), signal);
                                libc::_exit(128 + signal);
                            }
                            libc::_exit(libc::WEXITSTATUS(status));
                        }
                    }
                }
                if !isolate {
                    return Ok(());
                }
                if libc::mount(
                    std::ptr::null(),
                    slash.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for mount in &prepared {
                    let fstype = mount.fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr());
                    let data = mount.data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr() as *const libc::c_void);
                    if libc::mount(mount.source.as_ptr(), mount.target.as_ptr(), fstype, mount.flags, data) != 0 {
                        let error = std::io::Error::last_os_error();
                        let bound = match &mount.bind_instead {
                            Some(source) if error.raw_os_error() == Some(libc::EPERM) => {
                                libc::mount(
                                    source.as_ptr(),
                                    mount.target.as_ptr(),
                                    std::ptr::null(),
                                    libc::MS_BIND | libc::MS_REC,
                                    std::ptr::null(),
                                ) == 0
                            }
                            _ => false,
                        };
                        if !bound {
                            return Err(error);
                        }
                    }
                    if mount.remount_read_only
                        && libc::mount(
                            std::ptr::null(),
                            mount.target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(root) = &root {
                    if libc::chroot(root.as_ptr()) != 0 || libc::chdir(slash.as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let argv = command.shown();
        let mut child = process.spawn().with_context(|| format!("cannot start {argv}"))?;
        // Drop the parent's copies of the pipe's write end (the child has its
        // own), so the copier sees the end when the command's processes end.
        drop(process);
        let copier = echo.map(|(mut reader, writer, mut log)| {
            drop(writer);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 8192];
                loop {
                    match std::io::Read::read(&mut reader, &mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => {
                            let _ = log.write_all(&buffer[..read]);
                            let _ = std::io::stderr().write_all(&buffer[..read]);
                        }
                    }
                }
            })
        });
        // The input is written from a thread so a command that prints much
        // before it reads all of it cannot block on a full pipe.
        let feeder = match (&command.stdin, child.stdin.take()) {
            (Some(input), Some(mut stdin)) => {
                let input = input.clone();
                Some(std::thread::spawn(move || stdin.write_all(&input)))
            }
            _ => None,
        };
        let mut stdout = Vec::new();
        if let Some(mut pipe) = child.stdout.take() {
            std::io::Read::read_to_end(&mut pipe, &mut stdout)
                .with_context(|| format!("reading the output of {argv}"))?;
        }
        let status = child.wait().with_context(|| format!("waiting for {argv}"))?;
        if let Some(copier) = copier {
            let _ = copier.join();
        }
        if let Some(feeder) = feeder {
            // A command that exits without reading its input is judged by its exit status.
            let _ = feeder.join();
        }
        Ok((status.code().unwrap_or_else(|| -status.signal().unwrap_or(0)), stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_status_above_128_is_not_a_signal_and_a_signal_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let host = RealHost { echo: false };
        let status = |script: &str| host.status(&Command::on_host("/bin/sh", ["-c", script], &log)).unwrap();
        assert_eq!(status("exit 200"), 200);
        assert_eq!(status("exit 255"), 255);
        // A crash (as root the command is its PID namespace's first process,
        // which only a fault's signal ends).
        let crash = "exec python3 -c 'import ctypes; ctypes.string_at(0)'";
        assert_eq!(status(crash), -libc::SIGSEGV);
        let error = host.run(&Command::on_host("/bin/sh", ["-c", "exit 200"], &log)).unwrap_err().to_string();
        assert!(error.contains("failed with exit status 200"), "{error}");
        let error = host.run(&Command::on_host("/bin/sh", ["-c", crash], &log)).unwrap_err().to_string();
        assert!(error.contains("failed with signal 11"), "{error}");
    }

    #[test]
    fn every_command_starts_with_umask_022() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let (code, stdout) =
            RealHost { echo: false }.output(&Command::on_host("/bin/sh", ["-c", "umask"], &log)).unwrap();
        assert_eq!((code, String::from_utf8_lossy(&stdout).trim()), (0, "0022"));
    }
}
