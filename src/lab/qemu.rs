//! QEMU for boot tests: the argv as a pure function, a runner that reads the
//! serial console until an expected line or a deadline, and a short probe that
//! decides whether KVM works here (a nested `/dev/kvm` can hang guests, so it
//! is only used when a probe boot proves it).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// A direct kernel boot: `-kernel`, `-initrd` (several are concatenated into
/// one file first), `-append`, console on the serial port.
#[derive(Debug, Clone)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u32,
    pub accel: Accel,
}

impl DirectBoot {
    /// The QEMU argv (program first). The machine powers off instead of
    /// rebooting, so a kernel panic with `panic=-1` ends the run.
    pub fn argv(&self) -> Vec<String> {
        Guest {
            kernel: Some(self.kernel.clone()),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            memory_mib: self.memory_mib,
            accel: self.accel,
            network: None,
            disk: None,
            firmware: None,
        }
        .argv()
    }
}

/// QEMU's user-mode network (the host is 10.0.2.2 to the guest), optionally
/// with its TFTP server and a DHCP boot file for the NIC's iPXE ROM.
#[derive(Debug, Clone, Default)]
pub struct UserNetwork {
    pub tftp: Option<PathBuf>,
    pub bootfile: Option<String>,
    /// The NIC's MAC address [default: QEMU's 52:54:00:12:34:56]
    pub mac: Option<String>,
}

/// UEFI firmware (OVMF) in place of the BIOS, with an EFI system partition
/// (a directory QEMU shows as a FAT disk).
#[derive(Debug, Clone)]
pub struct Firmware {
    /// The firmware's code (read-only).
    pub code: PathBuf,
    /// A private copy of its variable store (the enrolled keys live here).
    pub vars: PathBuf,
    /// Enforce Secure Boot: the firmware's SMM-protected build, a secure flash.
    pub secure_boot: bool,
    pub esp: PathBuf,
}

/// A guest: booted directly from a kernel, or (no kernel) by its NIC's iPXE
/// ROM from the network, or (firmware) by OVMF from its EFI system partition.
#[derive(Debug, Clone)]
pub struct Guest {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u32,
    pub accel: Accel,
    pub network: Option<UserNetwork>,
    /// A raw disk image, as a virtio disk (the BIOS's first drive).
    pub disk: Option<PathBuf>,
    pub firmware: Option<Firmware>,
}

impl Guest {
    /// The argv of an amd64 guest.
    pub fn argv(&self) -> Vec<String> {
        self.argv_for(crate::arch::DEFAULT)
    }

    /// The argv of a guest of the Debian architecture `arch`: its QEMU
    /// program, machine and CPU ([`crate::arch::Machine`]).
    pub fn argv_for(&self, arch: &str) -> Vec<String> {
        let machine = crate::arch::machine(arch);
        let mut argv = vec![
            machine.program.to_string(),
            "-machine".into(),
            format!(
                "{},{}accel={}",
                machine.machine,
                if self.firmware.as_ref().is_some_and(|firmware| firmware.secure_boot) { "smm=on," } else { "" },
                if self.accel == Accel::Kvm { "kvm" } else { "tcg" }
            ),
            "-m".into(),
            self.memory_mib.to_string(),
            "-nodefaults".into(),
            "-no-reboot".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
        ];
        if let Some(kernel) = &self.kernel {
            argv.extend(["-kernel".into(), kernel.display().to_string()]);
        }
        if let Some(firmware) = &self.firmware {
            if firmware.secure_boot {
                argv.extend(["-global".into(), "driver=cfi.pflash01,property=secure,value=on".into()]);
            }
            argv.extend([
                "-drive".into(),
                format!("if=pflash,format=raw,unit=0,readonly=on,file={}", firmware.code.display()),
            ]);
            argv.extend(["-drive".into(), format!("if=pflash,format=raw,unit=1,file={}", firmware.vars.display())]);
            argv.extend(["-drive".into(), format!("format=raw,file=fat:rw:{}", firmware.esp.display())]);
        }
        if self.accel == Accel::Kvm {
            argv.extend(["-cpu".into(), "host".into()]);
        } else if let Some(cpu) = machine.tcg_cpu {
            argv.extend(["-cpu".into(), cpu.into()]);
        }
        if let Some(network) = &self.network {
            let mut netdev = "user,id=net0".to_string();
            if let Some(tftp) = &network.tftp {
                netdev.push_str(&format!(",tftp={}", tftp.display()));
            }
            if let Some(bootfile) = &network.bootfile {
                netdev.push_str(&format!(",bootfile={bootfile}"));
            }
            let mac = network.mac.as_ref().map(|mac| format!(",mac={mac}")).unwrap_or_default();
            // Under UEFI the firmware's own virtio-net driver serves the NIC:
            // QEMU's iPXE option ROM is not signed for Secure Boot.
            let rom = if self.firmware.is_some() { ",romfile=" } else { "" };
            argv.extend(["-netdev".into(), netdev, "-device".into(), format!("virtio-net-pci,netdev=net0{mac}{rom}")]);
        }
        if let Some(disk) = &self.disk {
            argv.extend(["-drive".into(), format!("file={},format=raw,if=virtio", disk.display())]);
        }
        if self.kernel.is_some() {
            if let Some(initrd) = &self.initrd {
                argv.extend(["-initrd".into(), initrd.display().to_string()]);
            }
            argv.extend(["-append".into(), self.cmdline.clone()]);
        } else if self.firmware.is_none() {
            argv.extend(["-boot".into(), "n".into()]);
        }
        argv
    }
}

/// What a boot printed, and whether the expected line came.
#[derive(Debug)]
pub struct BootResult {
    pub found: bool,
    /// The console line that ended the boot as a failure (one of `fatal`).
    pub refused: Option<String>,
    pub console: String,
    pub seconds: f64,
}

/// Run QEMU until a console line contains `expect`, the guest stops, or
/// `timeout` passes; QEMU is killed in every case.
pub fn boot_until(argv: &[String], expect: &str, timeout: Duration) -> Result<BootResult> {
    boot_until_any(argv, expect, &[], timeout)
}

/// [`boot_until`], also stopping at a line that contains one of `fatal`
/// (a refusal after which the guest would only wait).
pub fn boot_until_any(argv: &[String], expect: &str, fatal: &[&str], timeout: Duration) -> Result<BootResult> {
    let started = Instant::now();
    let mut child: Child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("starting {}\nhint: apt-get install {}", argv[0], crate::tools::package_of(&argv[0]))
        })?;
    let stdout = child.stdout.take().expect("piped");
    let (lines, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if lines.send(String::from_utf8_lossy(&line).trim_end_matches('\r').to_string()).is_err() {
                break;
            }
        }
    });
    let mut console = String::new();
    let mut found = false;
    let mut refused = None;
    while let Some(left) = timeout.checked_sub(started.elapsed()) {
        match receive.recv_timeout(left) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
                if line.contains(expect) {
                    found = true;
                    break;
                }
                if fatal.iter().any(|word| line.contains(word)) {
                    refused = Some(line);
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let status = child.wait()?;
    if !found && console.is_empty() && !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        if !stderr.is_empty() {
            bail!("QEMU failed: {stderr}");
        }
    }
    Ok(BootResult { found, refused, console, seconds: started.elapsed().as_secs_f64() })
}

/// KVM when `/dev/kvm` opens and a probe boot with it reaches `expect` within
/// `probe_timeout`; TCG otherwise.
pub fn choose_accel(boot: &DirectBoot, expect: &str, probe_timeout: Duration) -> Accel {
    let probe = DirectBoot { accel: Accel::Kvm, ..boot.clone() };
    probe_kvm(&probe.argv(), expect, probe_timeout)
}

fn kvm_opens() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open(Path::new("/dev/kvm")).is_ok()
}

/// Run `kvm_argv` (a boot with accel=kvm) until `expect` or `probe_timeout`:
/// KVM if it got there, TCG otherwise.
pub fn probe_kvm(kvm_argv: &[String], expect: &str, probe_timeout: Duration) -> Accel {
    if !kvm_opens() {
        return Accel::Tcg;
    }
    match boot_until(kvm_argv, expect, probe_timeout) {
        Ok(result) if result.found => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

/// [`probe_kvm`], with the verdict remembered until the host reboots (a
/// nested KVM that hangs guests costs the probe's timeout only once).
pub fn probe_kvm_remembered(kvm_argv: &[String], expect: &str, probe_timeout: Duration) -> Accel {
    if !kvm_opens() {
        return Accel::Tcg;
    }
    let boot_id = fs_err::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    // Kept in a directory of the user's own: a verdict nobody else can plant.
    let Ok(dir) = crate::fileops::private_temp_dir() else { return probe_kvm(kvm_argv, expect, probe_timeout) };
    let memo = dir.join(format!("kvm-verdict-{}", boot_id.trim()));
    match crate::fileops::read_regular_no_follow(&memo, 16).as_deref() {
        Ok(b"kvm") => return Accel::Kvm,
        Ok(b"tcg") => return Accel::Tcg,
        _ => {}
    }
    let accel = probe_kvm(kvm_argv, expect, probe_timeout);
    let _ = fs_err::write(&memo, if accel == Accel::Kvm { "kvm" } else { "tcg" });
    accel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_boots_directly_on_the_serial_console() {
        let boot = DirectBoot {
            kernel: "/b/vmlinuz".into(),
            initrd: Some("/b/initrd".into()),
            cmdline: "console=ttyS0 panic=-1".into(),
            memory_mib: 256,
            accel: Accel::Tcg,
        };
        let argv = boot.argv().join(" ");
        assert_eq!(
            argv,
            "qemu-system-x86_64 -machine q35,accel=tcg -m 256 -nodefaults -no-reboot -display none -serial stdio -kernel /b/vmlinuz -initrd /b/initrd -append console=ttyS0 panic=-1"
        );
        let kvm = DirectBoot { accel: Accel::Kvm, initrd: None, ..boot }.argv().join(" ");
        assert!(kvm.contains("accel=kvm") && kvm.contains("-cpu host") && !kvm.contains("-initrd"));
    }

    #[test]
    fn an_arm64_guest_is_a_virt_machine_with_an_emulated_cpu() {
        let guest = Guest {
            kernel: Some("/b/vmlinuz".into()),
            initrd: Some("/b/initrd".into()),
            cmdline: "console=ttyAMA0".into(),
            memory_mib: 1024,
            accel: Accel::Tcg,
            network: Some(UserNetwork::default()),
            disk: None,
            firmware: None,
        };
        assert_eq!(
            guest.argv_for("arm64").join(" "),
            "qemu-system-aarch64 -machine virt,accel=tcg -m 1024 -nodefaults -no-reboot -display none -serial stdio -kernel /b/vmlinuz -cpu max -netdev user,id=net0 -device virtio-net-pci,netdev=net0 -initrd /b/initrd -append console=ttyAMA0"
        );
        assert_eq!(guest.argv_for("amd64"), guest.argv());
    }

    #[test]
    fn a_network_boot_has_no_kernel_and_boots_from_the_nic() {
        let guest = Guest {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            memory_mib: 512,
            accel: Accel::Tcg,
            network: Some(UserNetwork { tftp: Some("/t".into()), bootfile: Some("boot.ipxe".into()), mac: None }),
            disk: None,
            firmware: None,
        };
        let argv = guest.argv().join(" ");
        assert!(
            argv.ends_with(
                "-netdev user,id=net0,tftp=/t,bootfile=boot.ipxe -device virtio-net-pci,netdev=net0 -boot n"
            ),
            "{argv}"
        );
        assert!(!argv.contains("-kernel") && !argv.contains("-append"));
    }

    #[test]
    fn secure_boot_firmware_has_smm_a_secure_flash_and_no_option_rom() {
        let firmware =
            Firmware { code: "/f/CODE.fd".into(), vars: "/s/VARS.fd".into(), secure_boot: true, esp: "/s/esp".into() };
        let guest = Guest {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            memory_mib: 1024,
            accel: Accel::Tcg,
            network: Some(UserNetwork { tftp: None, bootfile: Some("http://10.0.2.2:8080/u.efi".into()), mac: None }),
            disk: None,
            firmware: Some(firmware.clone()),
        };
        let argv = guest.argv().join(" ");
        assert!(argv.contains("-machine q35,smm=on,accel=tcg"), "{argv}");
        assert!(argv.contains("-global driver=cfi.pflash01,property=secure,value=on"), "{argv}");
        assert!(argv.contains("-drive if=pflash,format=raw,unit=0,readonly=on,file=/f/CODE.fd -drive if=pflash,format=raw,unit=1,file=/s/VARS.fd -drive format=raw,file=fat:rw:/s/esp"), "{argv}");
        assert!(argv.ends_with("-device virtio-net-pci,netdev=net0,romfile="), "{argv}");
        assert!(!argv.contains("-boot n"), "{argv}");
        let plain = Guest { firmware: Some(Firmware { secure_boot: false, ..firmware }), ..guest }.argv().join(" ");
        assert!(plain.contains("-machine q35,accel=tcg") && !plain.contains("secure,value=on"), "{plain}");
    }
}
