//! Builds without root: rootsmith runs itself again inside a user namespace
//! where it is uid 0, the way `mmdebstrap --mode=unshare` and rootless podman
//! do. The caller's own uid becomes 0 and its subordinate range (from
//! `/etc/subuid` and `/etc/subgid`, mapped by `newuidmap` and `newgidmap` of
//! Debian's `uidmap`) becomes 1…65536, so every owner a Debian tree uses can
//! be set. Inside, chroot, chown, capabilities and mounts work as for root;
//! device nodes cannot be made (they become placeholders in the tree, see
//! `layer::Devices`), and mounts live in a mount namespace of the build's own,
//! so they never reach the host's mount table and vanish with the build.
//!
//! Everything that can be checked is checked before the namespace is made,
//! with the file or setting that fixes it: the id ranges, the two helpers, the
//! kernel's settings for unprivileged user namespaces.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// How a building command gets the privileges it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Privileges {
    /// Root as it is; anyone else through a user namespace.
    #[default]
    Auto,
    /// Only as root (an ordinary user gets an error).
    Root,
    /// Always in a user namespace of the caller's subordinate ranges.
    Userns,
}

/// How many ids a build needs mapped besides 0: Debian's trees use owners up
/// to 65534 (`nobody`, `nogroup`).
pub const IDS_NEEDED: u32 = 65536;

/// A subordinate id range: `count` ids from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

/// What the calling process is, as far as building goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// uid 0 of the machine's own user namespace.
    Root,
    /// uid 0 of a user namespace (rootsmith's own, or a rootless container).
    NamespaceRoot,
    /// Anyone else.
    User,
}

/// The calling process's standing, from its effective uid and its uid map.
pub fn standing() -> Standing {
    if !nix::unistd::geteuid().is_root() {
        return Standing::User;
    }
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    if is_initial_map(&map) {
        Standing::Root
    } else {
        Standing::NamespaceRoot
    }
}

/// The initial user namespace maps every id to itself.
fn is_initial_map(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// Whether the uid and gid maps of this process give every owner a tree may
/// need (0…65536): only then are owners recorded truly.
pub fn maps_every_owner() -> bool {
    let covers = |file: &str| std::fs::read_to_string(file).is_ok_and(|map| map_covers(&map, IDS_NEEDED));
    covers("/proc/self/uid_map") && covers("/proc/self/gid_map")
}

/// Whether the ranges of an id map (`INSIDE OUTSIDE COUNT` lines) cover 0…=`last`.
fn map_covers(map: &str, last: u32) -> bool {
    let mut ranges: Vec<(u64, u64)> = map
        .lines()
        .filter_map(|line| {
            let fields: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            (fields.len() == 3).then(|| (fields[0], fields[0] + fields[2]))
        })
        .collect();
    ranges.sort();
    let mut next = 0u64;
    for (start, end) in ranges {
        if start > next {
            break;
        }
        next = next.max(end);
    }
    next > u64::from(last)
}

/// Why a build cannot run as this user, before anything runs.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NotPossible {
    pub message: String,
}

fn not_possible(message: String) -> anyhow::Error {
    NotPossible { message }.into()
}

/// The first range of `user` (by name or uid) in a subordinate id file's text
/// with at least [`IDS_NEEDED`] ids.
pub fn find_range(text: &str, user: &str, uid: u32) -> Option<IdRange> {
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let (owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
        if owner != user && owner != uid.to_string() {
            return None;
        }
        let range = IdRange { start: start.parse().ok()?, count: count.parse().ok()? };
        (range.count >= IDS_NEEDED).then_some(range)
    })
}

/// A start for a new range that no line of either file uses yet (at least 100000).
fn free_start(texts: &[&str]) -> u64 {
    let mut end = 100_000u64;
    for text in texts {
        for line in text.lines() {
            let fields: Vec<&str> = line.trim().split(':').collect();
            if let [_, start, count] = fields[..] {
                if let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>()) {
                    end = end.max(start + count);
                }
            }
        }
    }
    end.div_ceil(65536) * 65536
}

/// The caller's ranges from the two files, or an error naming the file and
/// the `usermod` line that fixes it.
pub fn ranges(subuid: &Path, subgid: &Path, user: &str, uid: u32) -> Result<(IdRange, IdRange)> {
    let uid_text = std::fs::read_to_string(subuid).unwrap_or_default();
    let gid_text = std::fs::read_to_string(subgid).unwrap_or_default();
    let uid_range = find_range(&uid_text, user, uid);
    let gid_range = find_range(&gid_text, user, uid);
    match (uid_range, gid_range) {
        (Some(uids), Some(gids)) => Ok((uids, gids)),
        (uids, _) => {
            let file = if uids.is_none() { subuid } else { subgid };
            let start = free_start(&[&uid_text, &gid_text]);
            let end = start + u64::from(IDS_NEEDED) - 1;
            Err(not_possible(format!(
                "building as {user} (uid {uid}) needs a range of {IDS_NEEDED} subordinate ids for {user} in {}, and there is none\nhint: as root, run: usermod --add-subuids {start}-{end} --add-subgids {start}-{end} {user}\n(or build as root; see \"Running without root\" in docs/commands.md)",
                file.display()
            )))
        }
    }
}

/// The kernel's settings for unprivileged user namespaces, read under `sys`
/// (`/proc/sys`): the first one that forbids them, as an error naming it.
pub fn check_settings(sys: &Path) -> Result<()> {
    let read = |name: &str| std::fs::read_to_string(sys.join(name)).ok().map(|text| text.trim().to_string());
    if read("kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Err(not_possible(
            "unprivileged user namespaces are disabled on this machine (the sysctl kernel.unprivileged_userns_clone is 0), and a build without root needs one\nhint: as root, run: sysctl -w kernel.unprivileged_userns_clone=1 (and set it in /etc/sysctl.d/ to keep it), or build as root".into(),
        ));
    }
    if read("user/max_user_namespaces").as_deref() == Some("0") {
        return Err(not_possible(
            "user namespaces are disabled on this machine (the sysctl user.max_user_namespaces is 0), and a build without root needs one\nhint: as root, run: sysctl -w user.max_user_namespaces=15000 (and set it in /etc/sysctl.d/ to keep it), or build as root".into(),
        ));
    }
    if read("kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return Err(not_possible(
            "AppArmor forbids unprivileged user namespaces on this machine (the sysctl kernel.apparmor_restrict_unprivileged_userns is 1), and a build without root needs one\nhint: as root, give rootsmith an AppArmor profile with `userns,`, or run: sysctl -w kernel.apparmor_restrict_unprivileged_userns=0; or build as root".into(),
        ));
    }
    Ok(())
}

/// What to do for a building command: go on in this process (`None`), or the
/// exit code of the same command run again inside a user namespace.
/// `writable` names the directories the command writes (what, path): in a
/// user namespace a directory of another user's stays unwritable, so that is
/// said before the namespace is made.
pub fn enter(privileges: Privileges, writable: &[(&str, &Path)]) -> Result<Option<i32>> {
    match (privileges, standing()) {
        (Privileges::Root, Standing::User) => bail!(
            "--privileges root, but this is uid {}\nhint: run it as root, or leave out --privileges to build in a user namespace",
            nix::unistd::geteuid()
        ),
        (_, Standing::NamespaceRoot) | (Privileges::Auto | Privileges::Root, Standing::Root) => Ok(None),
        (Privileges::Auto | Privileges::Userns, Standing::User) | (Privileges::Userns, Standing::Root) => {
            for (what, directory) in writable {
                check_writable(what, directory)?;
            }
            run_again_in_namespace().map(Some)
        }
    }
}

/// `directory` (made when missing) can be written by this user.
fn check_writable(what: &str, directory: &Path) -> Result<()> {
    let writable = std::fs::create_dir_all(directory).and_then(|()| tempfile::tempfile_in(directory).map(drop));
    if let Err(error) = writable {
        return Err(not_possible(format!(
            "the {what} {} cannot be written by uid {} ({error})\nhint: pick one this user owns ({}), or give it to this user; a directory root made stays root's",
            directory.display(),
            nix::unistd::getuid(),
            match what {
                "cache directory" => "--cache DIR",
                "out directory" => "--out DIR",
                _ => "TMPDIR",
            }
        )));
    }
    Ok(())
}

/// Every check that can be made before the namespace, in the order a user
/// would fix them; the two ranges on success.
pub fn preflight() -> Result<(IdRange, IdRange)> {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid).ok().flatten().map(|user| user.name).unwrap_or_else(|| uid.to_string());
    for helper in ["newuidmap", "newgidmap"] {
        if crate::tools::find(helper).is_none() {
            return Err(not_possible(format!(
                "building as {user} needs `{helper}` to map its subordinate ids into a user namespace, and it is not installed\nhint: apt-get install uidmap (or build as root)"
            )));
        }
    }
    let found = ranges(Path::new("/etc/subuid"), Path::new("/etc/subgid"), &user, uid.as_raw())?;
    check_settings(Path::new("/proc/sys"))?;
    Ok(found)
}

/// Run this very command again (`/proc/self/exe`, same arguments and
/// environment) as uid 0 of a new user namespace with a mount namespace of
/// its own; wait for it and return its exit code.
///
/// Called while rootsmith is still one thread (before anything else runs), so
/// the child may fork safely; it only makes system calls until it execs.
fn run_again_in_namespace() -> Result<i32> {
    let (uids, gids) = preflight()?;
    let exe = CString::new("/proc/self/exe").expect("no NUL");
    let args: Vec<CString> = std::env::args_os()
        .map(|arg| CString::new(arg.as_bytes()).context("an argument has a NUL byte"))
        .collect::<Result<_>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|arg| arg.as_ptr()).collect();
    argv.push(std::ptr::null());
    let slash = CString::new("/").expect("no NUL");
    let (ready_read, ready_write) = nix::unistd::pipe()?;
    let (go_read, go_write) = nix::unistd::pipe()?;
    use std::os::fd::AsRawFd;
    let (ready_read_fd, ready_write_fd, go_read_fd, go_write_fd) =
        (ready_read.as_raw_fd(), ready_write.as_raw_fd(), go_read.as_raw_fd(), go_write.as_raw_fd());
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the process has one thread; the child only makes
    // async-signal-safe system calls on data prepared above, then execs or exits.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot fork");
    }
    if child == 0 {
        // SAFETY: see above; every call is a plain system call.
        unsafe {
            libc::close(ready_read_fd);
            libc::close(go_write_fd);
            // The build dies with the rootsmith that started it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(125);
            }
            let unshared = libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS);
            let errno = if unshared == 0 { 0 } else { *libc::__errno_location() };
            let report = errno.to_ne_bytes();
            libc::write(ready_write_fd, report.as_ptr() as *const libc::c_void, report.len());
            if unshared != 0 {
                libc::_exit(125);
            }
            let mut go = [0u8; 1];
            if libc::read(go_read_fd, go.as_mut_ptr() as *mut libc::c_void, 1) != 1 || go[0] != 1 {
                libc::_exit(125);
            }
            libc::close(ready_write_fd);
            libc::close(go_read_fd);
            // Supplementary groups are not mapped; drop them (allowed or not).
            libc::setgroups(0, std::ptr::null());
            if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                libc::_exit(126);
            }
            // Nothing mounted in here may reach the host.
            libc::mount(
                std::ptr::null(),
                slash.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            );
            libc::execv(exe.as_ptr(), argv.as_ptr());
            libc::_exit(127);
        }
    }
    drop(ready_write);
    drop(go_read);
    let mut report = [0u8; 4];
    let read = nix::unistd::read(ready_read.as_raw_fd(), &mut report).unwrap_or(0);
    let errno = i32::from_ne_bytes(report);
    if read != 4 || errno != 0 {
        let _ = wait_for(child);
        let why =
            if read == 4 { std::io::Error::from_raw_os_error(errno).to_string() } else { "it ended first".into() };
        return Err(not_possible(format!(
            "cannot make a user namespace ({why}), which a build without root needs\nhint: unprivileged user namespaces may be forbidden here (a container's seccomp policy, or sysctls such as user.max_user_namespaces); build as root, or allow them"
        )));
    }
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let mapped = map_ids("newuidmap", child, uid, uids).and_then(|()| map_ids("newgidmap", child, gid, gids));
    if let Err(error) = mapped {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child, libc::SIGKILL) };
        let _ = wait_for(child);
        return Err(error);
    }
    nix::unistd::write(&go_write, &[1])?;
    drop(go_write);
    forward_signals(child);
    wait_for(child)
}

/// `newuidmap PID 0 OWN 1 1 START COUNT` (or newgidmap): 0 is the caller, 1…
/// its subordinate range.
fn map_ids(helper: &str, pid: libc::pid_t, own: u32, range: IdRange) -> Result<()> {
    let program =
        crate::tools::find(helper).with_context(|| format!("`{helper}` went missing (apt-get install uidmap)"))?;
    let output = std::process::Command::new(&program)
        .args([
            pid.to_string(),
            "0".into(),
            own.to_string(),
            "1".into(),
            "1".into(),
            range.start.to_string(),
            range.count.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !output.status.success() {
        return Err(not_possible(format!(
            "{helper} refused to map ids {}-{} for this user: {}\nhint: check the line for this user in /etc/sub{}id, and that {} is installed setuid root (the uidmap package does that)",
            range.start,
            u64::from(range.start) + u64::from(range.count) - 1,
            String::from_utf8_lossy(&output.stderr).trim(),
            if helper == "newuidmap" { "u" } else { "g" },
            program.display()
        )));
    }
    Ok(())
}

static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn pass_on(signal: libc::c_int) {
    let child = CHILD.load(std::sync::atomic::Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, signal) };
    }
}

/// A terminal's Ctrl-C reaches the build directly (same process group); a
/// SIGTERM or SIGHUP sent to this waiting process is passed on, so the build
/// ends as it would have without the namespace.
fn forward_signals(child: libc::pid_t) {
    CHILD.store(child, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: installing handlers that only call kill.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, pass_on as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, pass_on as *const () as libc::sighandler_t);
    }
}

/// Wait for the child and give its exit code (128 + N for signal N).
fn wait_for(child: libc::pid_t) -> Result<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        if waited < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error).context("waiting for the build in its user namespace");
        }
        return Ok(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_found_by_name_or_uid_and_must_be_large_enough() {
        let text = "alice:100000:65536\nbob:165536:1000\n1002:300000:70000\n";
        assert_eq!(find_range(text, "alice", 1000), Some(IdRange { start: 100000, count: 65536 }));
        assert_eq!(find_range(text, "bob", 1001), None, "1000 ids cannot hold nobody (65534)");
        assert_eq!(find_range(text, "carol", 1002), Some(IdRange { start: 300000, count: 70000 }));
        assert_eq!(find_range(text, "dave", 1003), None);
    }

    #[test]
    fn a_missing_range_names_the_file_and_the_usermod_line() {
        let dir = tempfile::tempdir().unwrap();
        let subuid = dir.path().join("subuid");
        let subgid = dir.path().join("subgid");
        std::fs::write(&subuid, "alice:100000:65536\n").unwrap();
        std::fs::write(&subgid, "alice:100000:65536\n").unwrap();
        let error = ranges(&subuid, &subgid, "bob", 1001).unwrap_err().to_string();
        assert!(error.contains(&format!("for bob in {}", subuid.display())), "{error}");
        assert!(error.contains("usermod --add-subuids 196608-262143 --add-subgids 196608-262143 bob"), "{error}");
        std::fs::write(&subuid, "alice:100000:65536\nbob:200000:65536\n").unwrap();
        let error = ranges(&subuid, &subgid, "bob", 1001).unwrap_err().to_string();
        assert!(error.contains(&format!("for bob in {}", subgid.display())), "{error}");
        std::fs::write(&subgid, "bob:200000:65536\n").unwrap();
        assert_eq!(ranges(&subuid, &subgid, "bob", 1001).unwrap().0, IdRange { start: 200000, count: 65536 });
    }

    #[test]
    fn each_setting_that_forbids_user_namespaces_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        std::fs::create_dir_all(sys.join("kernel")).unwrap();
        std::fs::create_dir_all(sys.join("user")).unwrap();
        check_settings(sys).unwrap();
        for (file, setting) in [
            ("kernel/unprivileged_userns_clone", "kernel.unprivileged_userns_clone is 0"),
            ("user/max_user_namespaces", "user.max_user_namespaces is 0"),
        ] {
            std::fs::write(sys.join(file), "0\n").unwrap();
            let error = check_settings(sys).unwrap_err().to_string();
            assert!(error.contains(setting), "{error}");
            std::fs::write(sys.join(file), "1\n").unwrap();
        }
        std::fs::write(sys.join("kernel/apparmor_restrict_unprivileged_userns"), "1\n").unwrap();
        let error = check_settings(sys).unwrap_err().to_string();
        assert!(error.contains("kernel.apparmor_restrict_unprivileged_userns is 1"), "{error}");
    }

    #[test]
    fn id_maps_must_cover_every_owner() {
        assert!(is_initial_map("         0          0 4294967295\n"));
        assert!(!is_initial_map("0 1000 1\n1 100000 65536\n"));
        assert!(map_covers("0 1000 1\n1 100000 65536\n", IDS_NEEDED));
        assert!(map_covers("0 0 4294967295\n", IDS_NEEDED));
        assert!(!map_covers("0 1000 1\n", IDS_NEEDED), "`unshare -r` maps only root");
        assert!(!map_covers("0 1000 1\n2 100000 65536\n", IDS_NEEDED), "a gap at 1");
    }
}
