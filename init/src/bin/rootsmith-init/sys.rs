//! System calls the init makes as PID 1: mounts, modules, loop devices,
//! switching root, powering off.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::log;

fn cstring(text: &str) -> CString {
    CString::new(text).expect("no NUL in paths the init uses")
}

fn check(result: libc::c_int, what: impl FnOnce() -> String) -> io::Result<()> {
    if result < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(error.kind(), format!("{}: {error}", what())));
    }
    Ok(())
}

pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let (source_c, target_c, fstype_c, data_c) = (cstring(source), cstring(target), cstring(fstype), cstring(data));
    // SAFETY: every pointer is null (allowed for the type and the data) or
    // that of a NUL-terminated CString that lives until the end of the
    // function; the kernel copies the strings and keeps no pointer.
    let result = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            if fstype.is_empty() { std::ptr::null() } else { fstype_c.as_ptr() },
            flags,
            if data.is_empty() { std::ptr::null() } else { data_c.as_ptr().cast() },
        )
    };
    check(result, || format!("mounting {fstype} {source} on {target}"))
}

/// Move a mount (and what is mounted below it) to `target`.
pub fn move_mount(source: &str, target: &str) -> io::Result<()> {
    mount(source, target, "", libc::MS_MOVE, "")
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> io::Result<String> {
    // SAFETY: `utsname` is arrays of `c_char` only, for which all zeros is valid.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a live, exclusive `utsname` for uname to fill.
    check(unsafe { libc::uname(&mut name) }, || "uname".into())?;
    // The kernel NUL-terminates the release; `take_while` stays inside the array anyway.
    let release: Vec<u8> = name.release.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    Ok(String::from_utf8_lossy(&release).into_owned())
}

/// Load one module file; one that is already loaded is fine.
pub fn load_module(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    let params = cstring("");
    // SAFETY: finit_module(int fd, const char *params, int flags): the fd is
    // open while `file` lives, `params` is a NUL-terminated CString that
    // outlives the call, and flags are 0; the kernel keeps no pointer.
    let result = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if result < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        return Err(io::Error::new(error.kind(), format!("loading {}: {error}", path.display())));
    }
    Ok(())
}

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

/// Attach `backing` read-only to a free loop device; returns its path.
pub fn attach_loop(backing: &Path) -> io::Result<String> {
    let control = std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control").map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("opening /dev/loop-control: {error} (is the loop module in the initramfs?)"),
        )
    })?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and touches no memory of
    // ours; the fd is open while `control` lives.
    let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
    check(number, || "finding a free loop device".into())?;
    let device = format!("/dev/loop{number}");
    let loop_file = std::fs::OpenOptions::new().read(true).open(&device)?;
    // A read-only backing fd makes a read-only loop device.
    let backing_file = File::open(backing)?;
    // SAFETY: LOOP_SET_FD takes the backing fd by value, not a pointer; both
    // fds are open while their `File`s live, past the call (the loop device
    // takes its own reference to the backing file).
    let result = unsafe { libc::ioctl(loop_file.as_raw_fd(), LOOP_SET_FD, backing_file.as_raw_fd()) };
    check(result, || format!("attaching {} to {device}", backing.display()))?;
    Ok(device)
}

/// Make `new_root` the root and exec `init` there; returns only on failure.
pub fn switch_root(new_root: &str, init: &str) -> io::Error {
    let step = || -> io::Result<()> {
        std::env::set_current_dir(new_root)?;
        move_mount(".", "/")?;
        let dot = cstring(".");
        // SAFETY: `dot` is a NUL-terminated CString that outlives the call.
        check(unsafe { libc::chroot(dot.as_ptr()) }, || "chroot".into())?;
        std::env::set_current_dir("/")?;
        Ok(())
    };
    if let Err(error) = step() {
        return error;
    }
    let program = cstring(init);
    let argv = [program.as_ptr(), std::ptr::null()];
    // SAFETY: `program` is a NUL-terminated CString and `argv` a
    // null-terminated array of pointers to it, both alive across the call.
    // execv returns only on failure (always -1), so errno is the result.
    unsafe { libc::execv(program.as_ptr(), argv.as_ptr()) };
    let error = io::Error::last_os_error();
    io::Error::new(error.kind(), format!("executing {init} in the new root: {error}"))
}

pub fn power_off() -> ! {
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot() takes a command constant only and touches no memory of ours.
    if unsafe { libc::reboot(libc::RB_POWER_OFF) } < 0 {
        log!("powering off: {}; halted, power the machine off by hand", io::Error::last_os_error());
    }
    // reboot() only returns on error; PID 1 must never exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Whether `path` exists under `root` (a symlink counts: `/sbin/init` usually is one).
pub fn exists_in(root: &str, path: &str) -> bool {
    std::fs::symlink_metadata(Path::new(root).join(path.trim_start_matches('/'))).is_ok()
}
