//! Boot a bundle in QEMU the three ways a machine would: the rootfs appended
//! as a second initrd, fetched over HTTP by the init, or the whole chain over
//! the network (the NIC's iPXE ROM takes `boot.ipxe` from QEMU's TFTP server,
//! then the kernel and initramfs over HTTP, and the init fetches the rootfs).
//! A fourth way boots the bundle's Unified Kernel Image under UEFI firmware
//! (`lab::efi`): iPXE fetches the UKI, the init the rootfs from the URL the
//! UKI carries, with Secure Boot enforced when the UKI is signed.
//! The HTTP server is rootsmith's own, on 127.0.0.1; the guest sees the host
//! as 10.0.2.2.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::artifact::menus::{self, MenuInput};
use crate::bundle::manifest::{Manifest, ManifestKernel};
use crate::lab::qemu::{self, Accel, Guest, UserNetwork};
use crate::lab::serve::Server;

/// The host as the guest of QEMU's user-mode network sees it.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Appended,
    Http,
    Pxe,
    /// The kernel's UKI, fetched by iPXE under OVMF.
    Uki,
}

/// Whether `--via uki` enforces Secure Boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecureBootChoice {
    /// When the bundle's UKIs are signed.
    #[default]
    Auto,
    On,
    Off,
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
    /// For `--via uki`.
    pub secure_boot: SecureBootChoice,
    /// For `--via uki`: the firmware's variable store and iPXE's signing key.
    pub efi: crate::lab::efi::EfiSettings,
}

/// A guest ready to start, with what keeps its files and server alive.
pub struct Prepared {
    pub guest: Guest,
    /// `--via uki` with Secure Boot enforced.
    pub secure_boot: bool,
    pub manifest: Manifest,
    pub kernel: ManifestKernel,
    pub http_log: Arc<Mutex<Vec<String>>>,
    _scratch: tempfile::TempDir,
}

fn choose_kernel(manifest: &Manifest, name: Option<&str>) -> Result<ManifestKernel> {
    let names = || manifest.kernels.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", ");
    match name {
        None => manifest.kernels.first().cloned().with_context(|| {
            format!("{} {} has no kernel to boot; add a kernel stage to the recipe", manifest.name, manifest.version)
        }),
        Some(name) => manifest
            .kernels
            .iter()
            .find(|k| k.name == name)
            .cloned()
            .with_context(|| format!("the bundle has no kernel `{name}` (it has: {})", names())),
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
        bail!(
            "KVM runs only the host's own architecture ({}); {} {} is {}: leave out --accel kvm",
            crate::arch::host(),
            manifest.name,
            manifest.version,
            manifest.arch
        );
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
    let mut secure_boot = false;
    let base = || -> Result<String> {
        Ok(match &options.server {
            Some(url) => format!("{}/", url.trim_end_matches('/')),
            None => format!("http://{HOST_FROM_GUEST}:{}/", start_server(&options.bundle, http_log.clone())?),
        })
    };
    let mut guest = Guest {
        kernel: Some(vmlinuz),
        initrd: Some(initramfs.clone()),
        cmdline: String::new(),
        memory_mib: options.memory_mib,
        accel: Accel::Tcg,
        network: None,
        disk: None,
        firmware: None,
    };
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
            cmdline.push_str(&format!(
                " {}={}{}",
                rootsmith_init::contract::args::ROOTFS_URL,
                base()?,
                manifest.boot.rootfs_image
            ));
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
                let server =
                    crate::lab::tftp::TftpServer::bind(&tftp, "127.0.0.1:0", 16, access_log(http_log.clone()))?;
                let port = server.spawn().port();
                UserNetwork {
                    tftp: None,
                    bootfile: Some(format!("tftp://{HOST_FROM_GUEST}:{port}/boot.ipxe")),
                    mac: None,
                }
            } else {
                UserNetwork { tftp: Some(tftp), bootfile: Some("boot.ipxe".into()), mac: None }
            });
        }
        Via::Uki => {
            if manifest.arch != "amd64" {
                bail!(
                    "--via uki boots x86-64 UKIs under OVMF; {} {} is an {} bundle",
                    manifest.name,
                    manifest.version,
                    manifest.arch
                );
            }
            let Some(uki) = &kernel.uki else {
                bail!(
                    "{} {} has no UKI for kernel {}; add `uki: true` to the recipe's outputs",
                    manifest.name,
                    manifest.version,
                    kernel.name
                );
            };
            let made = manifest.boot.uki.as_ref().context("the manifest lists a UKI but not what it holds")?;
            open(uki)?;
            let uki_url = match &options.server {
                Some(url) => format!("{}/{uki}", url.trim_end_matches('/')),
                None => {
                    let baked = crate::lab::efi::baked_server(
                        &options.bundle,
                        &manifest.name,
                        &manifest.version,
                        &made.rootfs_url,
                        &manifest.boot.rootfs_image,
                    )?;
                    let server = Server::bind(&baked.root, &format!("127.0.0.1:{}", baked.port), 16, access_log(http_log.clone()))
                        .with_context(|| format!("the UKI fetches its rootfs from port {} of the DHCP server (this machine, to QEMU)\nhint: stop what listens there, or serve the bundle yourself and pass --server URL", baked.port))?;
                    server.spawn();
                    format!("http://{HOST_FROM_GUEST}:{}{}{uki}", baked.port, baked.bundle_path)
                }
            };
            let mut settings = options.efi.clone();
            settings.secure_boot = match options.secure_boot {
                SecureBootChoice::On => true,
                SecureBootChoice::Off => false,
                SecureBootChoice::Auto => made.signed_cert_sha256.is_some(),
            };
            guest.firmware = Some(crate::lab::efi::firmware(&settings, scratch.path(), manifest.source_date_epoch)?);
            secure_boot = settings.secure_boot;
            guest.kernel = None;
            guest.initrd = None;
            // iPXE passes an EFI image its own name as its command line when
            // given none, and without Secure Boot systemd's stub takes any
            // command line it is passed in place of the UKI's: so the script
            // passes the UKI's own (under Secure Boot the stub ignores it).
            let tftp = scratch.path().join("tftp");
            fs_err::create_dir(&tftp)?;
            fs_err::write(tftp.join("uki.ipxe"), uki_script(&uki_url, &made.cmdline)?)?;
            guest.network = Some(UserNetwork { tftp: Some(tftp), bootfile: Some("uki.ipxe".into()), mac: None });
        }
    }
    guest.cmdline = cmdline;
    guest.accel = match options.accel {
        // OVMF guests crash under a nested KVM that still passes the probe:
        // a UKI boots under TCG unless KVM is asked for.
        AccelChoice::Auto if options.via == Via::Uki => Accel::Tcg,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Kvm => Accel::Kvm,
        // Another architecture's guest is emulated (TCG): KVM cannot run it.
        AccelChoice::Auto if foreign => Accel::Tcg,
        AccelChoice::Auto => {
            let probe = Guest { accel: Accel::Kvm, ..guest.clone() };
            qemu::probe_kvm_remembered(&probe.argv_for(&manifest.arch), "rootsmith-init:", Duration::from_secs(20))
        }
    };
    Ok(Prepared { guest, secure_boot, manifest, kernel, http_log, _scratch: scratch })
}

/// The iPXE script that boots a UKI from `url` with its own command line.
/// The command line comes from a bundle's manifest: a control character
/// (a line break would start another iPXE command) or a `${` (iPXE would
/// expand it) is refused.
pub fn uki_script(url: &str, cmdline: &str) -> Result<String> {
    let unsafe_text = |text: &str| {
        text.chars().any(|c| c.is_control() || c == '"' || c == '\'' || c == '\\')
            || ["${", "||", "&&"].iter().any(|operator| text.contains(operator))
    };
    if unsafe_text(cmdline) || unsafe_text(url) || url.contains(' ') {
        bail!("the manifest's UKI command line {cmdline:?} or URL {url:?} holds what an iPXE script would read as more than words (a control character, a quote, `${{`, `||`, `&&`, or a blank in the URL)");
    }
    Ok(format!("#!ipxe\n{}", menus::ipxe_uki_entry("", url, cmdline)))
}

/// Console lines after which a boot `via` goes no further: iPXE's and the
/// firmware's refusal of an image (under Secure Boot, one whose signature
/// the firmware's db does not accept).
pub fn fatal_lines(via: Via) -> &'static [&'static str] {
    match via {
        Via::Uki => &["Could not boot image", "Access Denied", "No more network devices"],
        _ => &[],
    }
}

impl Prepared {
    /// The QEMU argv of the guest, for the bundle's architecture.
    pub fn argv(&self) -> Vec<String> {
        self.guest.argv_for(&self.manifest.arch)
    }
}

/// The line a boot test waits for: given, else the recipe's marker, else the init's last word.
pub fn expected_line(manifest: &Manifest, expect: Option<&str>) -> String {
    expect
        .map(str::to_string)
        .or_else(|| manifest.boot.marker.clone())
        .unwrap_or_else(|| "rootsmith-init: switching root".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uki_script_passes_the_command_line_and_nothing_else() {
        let script = uki_script(
            "http://10.0.2.2:8080/d/1/d-1-debian.efi",
            "console=ttyS0 rootsmith.rootfs_url=http://dhcp-server:8080/d/1/d-1-rootfs.img",
        )
        .unwrap();
        assert_eq!(script, "#!ipxe\nchain --autofree http://10.0.2.2:8080/d/1/d-1-debian.efi console=ttyS0 rootsmith.rootfs_url=http://dhcp-server:8080/d/1/d-1-rootfs.img\n");
        for hostile in
            ["quiet\nshell", "quiet\r\nshell", "x=${net0/mac}", "quiet || shell", "quiet && shell", "x=\"a b\""]
        {
            assert!(uki_script("http://h/u.efi", hostile).is_err(), "{hostile:?}");
        }
        assert!(uki_script("http://h/u.efi shell", "quiet").is_err());
    }
}
