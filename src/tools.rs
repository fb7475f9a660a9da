//! Host tools rootsmith runs, and the Debian package that provides each, so a
//! missing one is named with the command that installs it.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// (program, package)
pub const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("debootstrap", "debootstrap"),
    ("mksquashfs", "squashfs-tools"),
    ("unsquashfs", "squashfs-tools"),
    ("depmod", "kmod"),
    ("dpkg-deb", "dpkg"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-system-aarch64", "qemu-system-arm"),
    ("newuidmap", "uidmap"),
    ("newgidmap", "uidmap"),
    ("objcopy", "binutils"),
    ("objdump", "binutils"),
    // A file, not a program: the EFI stub of a Unified Kernel Image.
    ("linuxx64.efi.stub", "systemd-boot-efi"),
    ("osslsigncode", "osslsigncode"),
    ("sbverify", "sbsigntool"),
    ("openssl", "openssl"),
    // Files: iPXE's EFI build and OVMF's firmware for `boot-test --via uki`.
    ("ipxe.efi", "ipxe"),
    ("OVMF_CODE_4M.fd", "ovmf"),
];

/// The full path of `program` on `PATH`.
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

pub fn package_of(program: &str) -> &'static str {
    TOOLS.iter().find(|(name, _)| *name == program).map(|(_, package)| *package).unwrap_or("(unknown)")
}

/// `program`'s path, or an error that says how to install it.
pub fn require(program: &str, purpose: &str) -> Result<PathBuf> {
    match find(program) {
        Some(path) => Ok(path),
        None => {
            bail!("`{program}` is needed {purpose} but is not installed\nhint: apt-get install {}", package_of(program))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_tool_names_its_package() {
        let error = super::require("mksquashfs-that-does-not-exist", "to write squashfs").unwrap_err().to_string();
        assert!(error.contains("is not installed"), "{error}");
        assert_eq!(super::package_of("mksquashfs"), "squashfs-tools");
        // Every tool a Secure Boot check runs is named with its package.
        for tool in ["osslsigncode", "sbverify", "openssl"] {
            assert_ne!(super::package_of(tool), "(unknown)", "{tool}");
        }
    }
}
