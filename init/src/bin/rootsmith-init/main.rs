//! rootsmith-init: PID 1 of a rootsmith thin initramfs. It mounts the kernel's
//! file systems, loads the modules the initramfs carries, finds the rootfs
//! (appended as a second initrd, or fetched over HTTP and verified chunk by
//! chunk), mounts it read-only under a tmpfs overlay and switches root.
//! On failure it says what went wrong and never reboots in a loop.

mod fetch;
mod net;
mod sys;

use std::path::Path;
use std::time::Duration;

use rootsmith_init::cmdline::{self, Cmdline, OnFail};
use rootsmith_init::contract::{self, args, BuildId, ChunkList};

/// Every line the init prints starts with `rootsmith-init:`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // A message that cannot be written has nowhere else to go.
        let _ = writeln!(out, "rootsmith-init: {}", format!($($arg)*));
        let _ = out.flush();
    }};
}

const WORK: &str = "/run/rootsmith";
const NEW_ROOT: &str = "/sysroot";
const SHELL: &str = "/bin/sh";

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|error| format!("reading {path}: {error}"))
}

fn early_mounts() -> std::io::Result<()> {
    // The console may be missing if the kernel found no /dev/console.
    sys::mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755")?;
    sys::mount("proc", "/proc", "proc", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, "")?;
    sys::mount("sysfs", "/sys", "sysfs", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, "")?;
    sys::mount("tmpfs", "/run", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=0755")?;
    Ok(())
}

/// Point stdin, stdout and stderr at /dev/console. Best effort: the boot needs
/// no console, so a failure is reported (on whatever stdout is) and the fds
/// keep what the kernel gave them.
fn attach_console() {
    use std::os::fd::AsRawFd;
    let console = match std::fs::OpenOptions::new().read(true).write(true).open("/dev/console") {
        Ok(console) => console,
        Err(error) => {
            log!("opening /dev/console: {error}");
            return;
        }
    };
    for fd in 0..3 {
        // SAFETY: dup2 takes two fds by value and touches no memory. It
        // replaces the standard streams, which no `File` or `OwnedFd` owns;
        // `console` is fd 3 or above (std reopens a closed 0-2 at start-up),
        // so the fd it closes on drop stays its own.
        if unsafe { libc::dup2(console.as_raw_fd(), fd) } < 0 {
            log!("attaching fd {fd} to /dev/console: {}", std::io::Error::last_os_error());
        }
    }
}

fn load_modules() -> Result<(), String> {
    let release = sys::kernel_release().map_err(|error| error.to_string())?;
    let list = format!("/{}/{release}", contract::INITRAMFS_MODULES);
    let Ok(text) = std::fs::read_to_string(&list) else {
        log!("no modules for kernel {release} in this initramfs");
        return Ok(());
    };
    let paths: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    for path in &paths {
        sys::load_module(Path::new(path)).map_err(|error| error.to_string())?;
    }
    log!("loaded {} modules for kernel {release}", paths.len());
    Ok(())
}

fn expected_build() -> Result<BuildId, String> {
    BuildId::parse(&read(&format!("/{}", contract::INITRAMFS_BUILD))?)
        .map_err(|error| format!("{}: {error}", contract::INITRAMFS_BUILD))
}

/// Where the rootfs is: appended, fetched, or a message on how to give it.
fn find_rootfs(cmdline: &Cmdline, expected: &BuildId) -> Result<String, String> {
    let appended = format!("/{}", contract::ROOTFS_SQUASHFS);
    if Path::new(&appended).exists() {
        let found = BuildId::parse(&read(&format!("/{}", contract::ROOTFS_COOKIE))?)?;
        if found.cookie != expected.cookie {
            return Err(format!(
                "the appended rootfs.img is from another build: this initramfs belongs to {expected}, the rootfs.img is {found}. Boot the rootfs.img of the same bundle (manifest.json names its cookie)"
            ));
        }
        log!("rootfs appended as a second initrd: {found}");
        return Ok(appended);
    }
    if let Some(url) = &cmdline.rootfs_url {
        let list = ChunkList::parse(&read(&format!("/{}", contract::INITRAMFS_CHUNKS))?)
            .map_err(|error| format!("{}: {error}", contract::INITRAMFS_CHUNKS))?;
        let iface = net::choose_interface(cmdline.iface.as_deref(), Duration::from_secs(20))
            .map_err(|error| error.to_string())?;
        log!("bringing up {iface} with DHCP");
        let lease = net::lease(&iface).map_err(|error| error.to_string())?;
        net::configure(&iface, &lease).map_err(|error| error.to_string())?;
        // `http://dhcp-server…` (a UKI's baked command line): the server of this lease.
        let resolved = rootsmith_init::http::at_dhcp_server(url, lease.dhcp_server())?;
        if &resolved != url {
            log!(
                "{} names the DHCP server, {}",
                args::ROOTFS_URL,
                lease.dhcp_server().map(|server| server.to_string()).unwrap_or_default()
            );
        }
        let dir = Path::new(WORK).join("fetched");
        fetch::fetch(&resolved, &list, &dir, cmdline.retries)?;
        let found = BuildId::parse(&read(&dir.join(contract::ROOTFS_COOKIE).to_string_lossy())?)?;
        if found.cookie != expected.cookie {
            return Err(format!("the fetched rootfs.img is {found}, but this initramfs belongs to {expected}"));
        }
        return Ok(dir.join(contract::ROOTFS_SQUASHFS).to_string_lossy().into_owned());
    }
    Err(format!(
        "no rootfs: nothing was appended and the kernel command line has no {}=.\n\
         Either load {name}-VERSION-rootfs.img as a second initrd after the initramfs (iPXE: `initrd` it too; PXELINUX: initrd=INITRAMFS,ROOTFS; GRUB: `initrd INITRAMFS ROOTFS`),\n\
         or add {}=http://SERVER/PATH/{name}-VERSION-rootfs.img (and {}=IFACE to pick the interface) to the kernel command line.",
        args::ROOTFS_URL,
        args::ROOTFS_URL,
        args::IFACE,
        name = expected.name
    ))
}

fn mount_root(squashfs: &str, cmdline: &Cmdline) -> Result<(), String> {
    let device = sys::attach_loop(Path::new(squashfs)).map_err(|error| error.to_string())?;
    let lower = format!("{WORK}/lower");
    let rw = format!("{WORK}/rw");
    let io = |error: std::io::Error| error.to_string();
    sys::mount(&device, &lower, "squashfs", libc::MS_RDONLY, "").map_err(io)?;
    sys::mount("tmpfs", &rw, "tmpfs", 0, "mode=0755").map_err(io)?;
    for dir in ["upper", "work"] {
        std::fs::create_dir_all(format!("{rw}/{dir}")).map_err(io)?;
    }
    sys::mount("overlay", NEW_ROOT, "overlay", 0, &format!("lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work"))
        .map_err(io)?;
    log!("mounted {squashfs} read-only on {device}, with a tmpfs overlay: nothing written survives a reboot");
    if !sys::exists_in(NEW_ROOT, &cmdline.init) {
        return Err(format!("the rootfs has no {} (set {}= to another program)", cmdline.init, args::INIT));
    }
    for dir in ["/dev", "/proc", "/sys", "/run"] {
        sys::move_mount(dir, &format!("{NEW_ROOT}{dir}")).map_err(io)?;
    }
    Ok(())
}

fn boot(cmdline: &Cmdline) -> Result<std::convert::Infallible, String> {
    for word in &cmdline.unknown {
        log!("ignoring unknown argument {word}");
    }
    load_modules()?;
    let expected = expected_build()?;
    log!("this initramfs belongs to {expected}");
    let squashfs = find_rootfs(cmdline, &expected)?;
    mount_root(&squashfs, cmdline)?;
    log!("switching root to {} and running {}", NEW_ROOT, cmdline.init);
    Err(sys::switch_root(NEW_ROOT, &cmdline.init).to_string())
}

fn fail(message: &str, on_fail: OnFail) -> ! {
    for line in message.lines() {
        log!("error: {line}");
    }
    let shell = Path::new(SHELL).exists();
    let action = match on_fail {
        OnFail::Default if shell => OnFail::Shell,
        OnFail::Default => OnFail::PowerOff,
        OnFail::Shell if !shell => {
            log!("this initramfs has no shell (outputs.initramfs.shell: true adds one)");
            OnFail::PowerOff
        }
        other => other,
    };
    match action {
        OnFail::Shell => {
            log!("starting {SHELL}; exit it to power off");
            // Powering off is the right thing whether the shell ran or not; say why if it did not.
            if let Err(error) = std::process::Command::new(SHELL).status() {
                log!("starting {SHELL}: {error}");
            }
            sys::power_off()
        }
        OnFail::Halt => {
            log!("halted ({}=halt); power the machine off by hand", args::ON_FAIL);
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => {
            log!(
                "powering off in 30 s (never rebooting into the same failure; {}=shell|halt changes this)",
                args::ON_FAIL
            );
            std::thread::sleep(Duration::from_secs(30));
            sys::power_off()
        }
    }
}

/// Not PID 1: a developer's entry point, to measure and debug the fetch on a
/// running system: `rootsmith-init fetch URL CHUNK_LIST DIR`.
fn tool_main(args: &[String]) -> ! {
    match args {
        [_, command, url, chunks, dir] if command == "fetch" => {
            let result = read(chunks)
                .and_then(|text| ChunkList::parse(&text))
                .and_then(|list| fetch::fetch(url, &list, Path::new(dir), 8));
            match result {
                Ok(()) => std::process::exit(0),
                Err(message) => {
                    log!("error: {message}");
                    std::process::exit(1)
                }
            }
        }
        _ => {
            eprintln!("rootsmith-init runs as PID 1 of a rootsmith initramfs.\nusage (not as PID 1): rootsmith-init fetch URL CHUNK_LIST DIR");
            std::process::exit(2)
        }
    }
}

fn main() {
    if std::process::id() != 1 {
        tool_main(&std::env::args().collect::<Vec<_>>());
    }
    let mounted = early_mounts();
    attach_console();
    std::panic::set_hook(Box::new(|info| fail(&format!("internal error: {info}"), OnFail::Default)));
    log!("rootsmith-init {} (contract {})", env!("CARGO_PKG_VERSION"), contract::CONTRACT_VERSION);
    if let Err(error) = mounted {
        fail(&error.to_string(), OnFail::Default);
    }
    log!("mounted /dev, /proc, /sys, /run");
    // Without /proc/cmdline the boot goes on with the defaults, which may still
    // find an appended rootfs; say why any arguments were not seen.
    let cmdline = cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_else(|error| {
        log!("reading /proc/cmdline: {error}; booting with no arguments");
        String::new()
    }));
    match boot(&cmdline) {
        Ok(never) => match never {},
        Err(message) => fail(&message, cmdline.on_fail),
    }
}
