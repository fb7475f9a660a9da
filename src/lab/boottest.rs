//! Boot a bundle in QEMU the three ways a machine would: the rootfs appended
//! as a second initrd, fetched over HTTP by the init, or the whole chain over
//! the network (the NIC's iPXE ROM takes `boot.ipxe` from QEMU's TFTP server,
//! then the kernel and initramfs over HTTP, and the init fetches the rootfs).
//! The HTTP server is rootsmith's own, on 127.0.0.1; the guest sees the host
//! as 10.0.2.2.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bundle::manifest::{Manifest, ManifestKernel};
use crate::lab::qemu::{self, Accel, Guest, UserNetwork};
use crate::artifact::menus::{self, MenuInput};
use crate::lab::serve::Server;

/// The host as the guest of QEMU's user-mode network sees it.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Appended,
    Http,
    Pxe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM when a short probe boot proves it works, else TCG
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct BootOptions {
    pub bundle: PathBuf,
    pub via: Via,
    pub kernel: Option<String>,
    pub memory_mib: u32,
    pub accel: AccelChoice,
    /// Extra kernel arguments.
    pub append: Vec<String>,
    /// Use this server (a base URL as the guest reaches it) instead of starting one.
    pub server: Option<String>,
    /// For `--via pxe`: serve boot.ipxe with rootsmith's own TFTP server
    /// instead of QEMU's built-in one.
    pub own_tftp: bool,
}

/// A guest ready to start, with what keeps its files and server alive.
pub struct Prepared {
    pub guest: Guest,
    pub manifest: Manifest,
    pub kernel: ManifestKernel,
    pub http_log: Arc<Mutex<Vec<String>>>,
    _scratch: tempfile::TempDir,
}

fn choose_kernel(manifest: &Manifest, name: Option<&str>) -> Result<ManifestKernel> {
    let names = || manifest.kernels.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", ");
    match name {
        None => manifest.kernels.first().cloned().with_context(|| format!("{} {} has no kernel to boot; add a kernel stage to the recipe", manifest.name, manifest.version)),
        Some(name) => manifest.kernels.iter().find(|k| k.name == name).cloned().with_context(|| format!("the bundle has no kernel `{name}` (it has: {})", names())),
    }
}

/// The recipe's command line with what a serial-console test needs: the
/// console of the bundle's machine (ttyS0 on a PC, ttyAMA0 on arm64's virt).
fn test_cmdline(manifest: &Manifest, append: &[String]) -> String {
    let mut words: Vec<String> = rootsmith_init::cmdline::words(&manifest.boot.cmdline);
    let console = format!("console={}", crate::arch::machine(&manifest.arch).console);
    if !words.iter().any(|word| *word == console || word.starts_with(&format!("{console},"))) {
        words.push(console);
    }
    // A panic powers the guest off (QEMU runs with -no-reboot) instead of hanging the test.
    words.push("panic=-1".into());
    words.extend(append.iter().cloned());
    words.join(" ")
}

fn access_log(log: Arc<Mutex<Vec<String>>>) -> crate::lab::serve::AccessLog {
    Arc::new(move |line: &str| log.lock().expect("log lock").push(line.to_string()))
}

fn start_server(bundle: &Path, log: Arc<Mutex<Vec<String>>>) -> Result<u16> {
    let server = Server::bind(bundle, "127.0.0.1:0", 16, access_log(log))?;
    Ok(server.spawn().port())
}

pub fn prepare(options: &BootOptions) -> Result<Prepared> {
    let manifest = crate::bundle::Bundle::open(&options.bundle)?.manifest;
    let kernel = choose_kernel(&manifest, options.kernel.as_deref())?;
    let machine = crate::arch::machine(&manifest.arch);
    if options.via == Via::Pxe && !machine.network_boot {
        bail!("{} {} is an {} bundle: boot-test boots it --via appended or --via http (QEMU's {} machine has no network boot without UEFI firmware, which boot-test does not set up)", manifest.name, manifest.version, manifest.arch, machine.machine);
    }
    let foreign = manifest.arch != crate::arch::host();
    if foreign && options.accel == AccelChoice::Kvm {
        bail!("KVM runs only the host's own architecture ({}); {} {} is {}: leave out --accel kvm", crate::arch::host(), manifest.name, manifest.version, manifest.arch);
    }
    let scratch = tempfile::Builder::new().prefix("rootsmith-boot-").tempdir()?;
    // A bundle's file, checked as every name from a manifest is: a regular
    // file in the bundle, reached without a symbolic link.
    let open = |name: &str| -> Result<crate::bundle::files::BundleFile> {
        match crate::bundle::files::open(&options.bundle, name) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!("the bundle lacks {name}"),
            other => Ok(other?),
        }
    };
    let file = |name: &str| -> Result<PathBuf> { Ok(open(name)?.path) };
    let vmlinuz = file(&kernel.vmlinuz)?;
    let initramfs = file(&manifest.boot.initramfs)?;
    let http_log = Arc::new(Mutex::new(Vec::new()));
    let mut cmdline = test_cmdline(&manifest, &options.append);
    let base = || -> Result<String> {
        Ok(match &options.server {
            Some(url) => format!("{}/", url.trim_end_matches('/')),
            None => format!("http://{HOST_FROM_GUEST}:{}/", start_server(&options.bundle, http_log.clone())?),
        })
    };
    let mut guest = Guest { kernel: Some(vmlinuz), initrd: Some(initramfs.clone()), cmdline: String::new(), memory_mib: options.memory_mib, accel: Accel::Tcg, network: None, disk: None };
    match options.via {
        Via::Appended => {
            // QEMU takes one initrd file: the two, concatenated (each is 4-byte aligned).
            let both = scratch.path().join("initrd.img");
            let mut out = fs_err::File::create(&both)?;
            for name in [&manifest.boot.initramfs, &manifest.boot.rootfs_image] {
                let part = open(name)?;
                part.copy_exactly(part.len, &mut out)?;
            }
            guest.initrd = Some(both);
        }
        Via::Http => {
            cmdline.push_str(&format!(" {}={}{}", rootsmith_init::contract::args::ROOTFS_URL, base()?, manifest.boot.rootfs_image));
            guest.network = Some(UserNetwork::default());
        }
        Via::Pxe => {
            let base = base()?;
            let mut input = MenuInput::from_manifest(&manifest);
            input.cmdline = cmdline.clone();
            let script = menus::ipxe(&input, Some(&base), Some(&menus::entry_id(&kernel.name, true)));
            let tftp = scratch.path().join("tftp");
            fs_err::create_dir(&tftp)?;
            fs_err::write(tftp.join("boot.ipxe"), script)?;
            guest.kernel = None;
            guest.initrd = None;
            guest.network = Some(if options.own_tftp {
                // The NIC's iPXE takes a tftp:// URL as its DHCP boot file.
                let server = crate::lab::tftp::TftpServer::bind(&tftp, "127.0.0.1:0", 16, access_log(http_log.clone()))?;
                let port = server.spawn().port();
                UserNetwork { tftp: None, bootfile: Some(format!("tftp://{HOST_FROM_GUEST}:{port}/boot.ipxe")), mac: None }
            } else {
                UserNetwork { tftp: Some(tftp), bootfile: Some("boot.ipxe".into()), mac: None }
            });
        }
    }
    guest.cmdline = cmdline;
    guest.accel = match options.accel {
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Kvm => Accel::Kvm,
        // Another architecture's guest is emulated (TCG): KVM cannot run it.
        AccelChoice::Auto if foreign => Accel::Tcg,
        AccelChoice::Auto => {
            let probe = Guest { accel: Accel::Kvm, ..guest.clone() };
            qemu::probe_kvm_remembered(&probe.argv_for(&manifest.arch), "rootsmith-init:", Duration::from_secs(20))
        }
    };
    Ok(Prepared { guest, manifest, kernel, http_log, _scratch: scratch })
}

impl Prepared {
    /// The QEMU argv of the guest, for the bundle's architecture.
    pub fn argv(&self) -> Vec<String> {
        self.guest.argv_for(&self.manifest.arch)
    }
}

/// The line a boot test waits for: given, else the recipe's marker, else the init's last word.
pub fn expected_line(manifest: &Manifest, expect: Option<&str>) -> String {
    expect.map(str::to_string).or_else(|| manifest.boot.marker.clone()).unwrap_or_else(|| "rootsmith-init: switching root".into())
}
