//! The real host: fork, unshare a private mount namespace, mount, chroot, exec.
//!
//! Everything the child does between fork and exec is prepared beforehand
//! (C strings, flags) so the child only makes system calls. The child also asks
//! to be killed when rootsmith dies, so an interrupted build leaves no command
//! running and, with the namespace gone, no mount anywhere.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;

use anyhow::{Context, Result};

use super::command::{Command, Host, MountKind};

pub struct RealHost;

struct PreparedMount {
    source: CString,
    target: CString,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
    /// Bind mounts made read-only need a second, remounting call.
    remount_read_only: bool,
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
                MountKind::Fresh { read_only } => (libc::MS_NOSUID | libc::MS_NODEV | if read_only { libc::MS_RDONLY } else { 0 }, false),
            };
            prepared.push(PreparedMount {
                source: c_string(mount.source.as_ref().map(|s| s.as_os_str().as_bytes()).unwrap_or(b"none")),
                target: c_string(target.as_os_str().as_bytes()),
                fstype: mount.fstype.map(|f| c_string(f.as_bytes())),
                flags,
                data: mount.data.map(|d| c_string(d.as_bytes())),
                remount_read_only,
            });
        }
        let mut process = std::process::Command::new(&command.argv[0]);
        process.args(&command.argv[1..]).env_clear().envs(&command.env);
        if let Some(dir) = &command.cwd {
            process.current_dir(dir);
        }
        if !command.interactive {
            // A stage's commands share its log: each one appends.
            let log = fs_err::OpenOptions::new().create(true).append(true).open(&command.log)?.into_parts().0;
            if capture {
                process.stdout(Stdio::piped());
            } else {
                process.stdout(log.try_clone()?);
            }
            process.stderr(log);
            process.stdin(if command.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        }
        // Only a chroot, mounts or a tool that mounts need a mount namespace of
        // their own: host programs (make, mksquashfs…) run in rootsmith's.
        let isolate = command.private_mounts || command.root.is_some() || !command.mounts.is_empty();
        let slash = c_string(b"/");
        // SAFETY: the closure only makes system calls on data prepared above.
        unsafe {
            process.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if !isolate {
                    return Ok(());
                }
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::mount(std::ptr::null(), slash.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for mount in &prepared {
                    let fstype = mount.fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr());
                    let data = mount.data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr() as *const libc::c_void);
                    if libc::mount(mount.source.as_ptr(), mount.target.as_ptr(), fstype, mount.flags, data) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if mount.remount_read_only
                        && libc::mount(std::ptr::null(), mount.target.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY, std::ptr::null()) != 0
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
            std::io::Read::read_to_end(&mut pipe, &mut stdout).with_context(|| format!("reading the output of {argv}"))?;
        }
        let status = child.wait().with_context(|| format!("waiting for {argv}"))?;
        if let Some(feeder) = feeder {
            // A command that exits without reading its input is judged by its exit status.
            let _ = feeder.join();
        }
        Ok((status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)), stdout))
    }
}
