//! A bundle's UKI booted the way a UEFI machine boots it from the network:
//! OVMF (Debian's `ovmf`) starts iPXE's EFI build from a small EFI system
//! partition, iPXE fetches the UKI over HTTP and hands it to the firmware's
//! LoadImage, and the init in it fetches the rootfs from the URL baked into
//! the UKI's command line. With Secure Boot, the firmware checks iPXE's
//! signature and then the UKI's against the keys enrolled in its variable
//! store; iPXE is signed here with a test key that store holds (by default
//! the snakeoil key Debian's `ovmf` enrolls in `OVMF_VARS_4M.snakeoil.fd`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::artifact::uki::SecureBootSigner;
use crate::lab::qemu::Firmware;

/// OVMF's code without and with Secure Boot (the latter needs SMM).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_CODE_SECURE_BOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// OVMF's variable stores: no keys (Secure Boot off), and Debian's snakeoil
/// test key enrolled as PK, KEK and db.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const OVMF_VARS_SNAKEOIL: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
/// Debian's snakeoil test key and certificate, and the key's passphrase
/// (published with it: it protects nothing).
pub const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
pub const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";
pub const SNAKEOIL_PASSPHRASE: &str = "snakeoil";
/// iPXE's EFI build (Debian's `ipxe`).
pub const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";

/// How the firmware is set up for a UKI boot.
#[derive(Debug, Clone, Default)]
pub struct EfiSettings {
    pub secure_boot: bool,
    /// The variable store to start from [default: snakeoil's with Secure Boot, else the empty one].
    pub vars: Option<PathBuf>,
    /// The key and certificate that sign iPXE for Secure Boot [default: the snakeoil ones].
    pub loader_key: Option<(PathBuf, PathBuf)>,
}

fn need(path: &Path, package_file: &str, why: &str) -> Result<()> {
    if !path.is_file() {
        bail!("{} is needed {why}\nhint: apt-get install {}", path.display(), crate::tools::package_of(package_file));
    }
    Ok(())
}

/// The firmware, its private variable store and an ESP whose
/// `EFI/BOOT/BOOTX64.EFI` is iPXE (signed when Secure Boot is on), all under
/// `scratch`.
pub fn firmware(settings: &EfiSettings, scratch: &Path, epoch: i64) -> Result<Firmware> {
    let code = Path::new(if settings.secure_boot { OVMF_CODE_SECURE_BOOT } else { OVMF_CODE });
    need(code, "OVMF_CODE_4M.fd", "to boot a UKI under UEFI")?;
    let default_vars = if settings.secure_boot { OVMF_VARS_SNAKEOIL } else { OVMF_VARS };
    let vars_source = settings.vars.clone().unwrap_or_else(|| PathBuf::from(default_vars));
    need(&vars_source, "OVMF_CODE_4M.fd", "to boot a UKI under UEFI")?;
    need(Path::new(IPXE_EFI), "ipxe.efi", "to fetch a UKI over HTTP under UEFI")?;
    let vars = scratch.join("OVMF_VARS.fd");
    fs_err::copy(&vars_source, &vars)?;
    let boot = scratch.join("esp/EFI/BOOT");
    fs_err::create_dir_all(&boot)?;
    let loader = boot.join("BOOTX64.EFI");
    if settings.secure_boot {
        let signer = match &settings.loader_key {
            Some((key, cert)) => SecureBootSigner::open(key, cert)?,
            None => SecureBootSigner::open_with(
                Path::new(SNAKEOIL_KEY),
                Path::new(SNAKEOIL_CERT),
                Some(SNAKEOIL_PASSPHRASE.into()),
            )?,
        };
        signer
            .sign(
                &crate::host::RealHost { echo: false },
                Path::new(IPXE_EFI),
                &loader,
                epoch,
                &scratch.join("sign.log"),
            )
            .context("signing iPXE for the Secure Boot test")?;
    } else {
        fs_err::copy(IPXE_EFI, &loader)?;
    }
    Ok(Firmware { code: code.to_path_buf(), vars, secure_boot: settings.secure_boot, esp: scratch.join("esp") })
}

/// Where the host must serve so that the URL baked into a UKI reaches the
/// bundle's rootfs image: the port, and the directory whose
/// `PATH` is the URL's path (the bundle's directory, or one above it when
/// the URL's path names the directories the bundle is in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BakedServer {
    pub port: u16,
    pub root: PathBuf,
    /// The URL path of the bundle's directory, with a trailing `/`.
    pub bundle_path: String,
}

/// Only the two layouts `serve` has are served: the bundle's directory
/// itself, or the directory above `NAME/VERSION` (never further up: a URL
/// from a manifest must not make the whole disk served).
pub fn baked_server(
    bundle: &Path,
    name: &str,
    version: &str,
    rootfs_url: &str,
    rootfs_image: &str,
) -> Result<BakedServer> {
    let url =
        rootsmith_init::http::Url::parse(rootfs_url).map_err(|why| anyhow::anyhow!("the UKI's rootfs URL: {why}"))?;
    if !url.names_dhcp_server() {
        bail!("the UKI's rootfs URL {rootfs_url} names the host {}, not `{}` (the DHCP server, which in QEMU is this machine)\nhint: serve the bundle there and pass --server URL", url.host, rootsmith_init::contract::DHCP_SERVER_HOST);
    }
    let Some(directories) = url.path.strip_suffix(rootfs_image).and_then(|rest| rest.strip_suffix('/')) else {
        bail!("the UKI's rootfs URL {rootfs_url} does not end in the bundle's rootfs image, {rootfs_image}\nhint: serve it yourself and pass --server URL");
    };
    if !directories.is_empty() && directories != format!("/{name}/{version}") {
        bail!("the UKI's rootfs URL {rootfs_url} puts the rootfs under {directories}/, not at the root or under /{name}/{version}/ where `rootsmith serve` has it\nhint: serve it yourself and pass --server URL");
    }
    let mut root = bundle.canonicalize().with_context(|| format!("the bundle {}", bundle.display()))?;
    for directory in directories.split('/').filter(|part| !part.is_empty()).rev() {
        if root.file_name() != Some(std::ffi::OsStr::new(directory)) {
            bail!("the UKI's rootfs URL {rootfs_url} puts the bundle under {directories}/, which is not where {} is\nhint: serve it yourself and pass --server URL", bundle.display());
        }
        root.pop();
    }
    Ok(BakedServer { port: url.port, root, bundle_path: format!("{directories}/") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baked_url_says_where_to_serve_from() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("out/demo/1.0");
        fs_err::create_dir_all(&bundle).unwrap();
        let out = dir.path().join("out").canonicalize().unwrap();
        let served = baked_server(
            &bundle,
            "demo",
            "1.0",
            "http://dhcp-server:8080/demo/1.0/demo-1.0-rootfs.img",
            "demo-1.0-rootfs.img",
        )
        .unwrap();
        assert_eq!(served, BakedServer { port: 8080, root: out.clone(), bundle_path: "/demo/1.0/".into() });
        let at_root =
            baked_server(&bundle, "demo", "1.0", "http://dhcp-server/demo-1.0-rootfs.img", "demo-1.0-rootfs.img")
                .unwrap();
        assert_eq!(at_root, BakedServer { port: 80, root: bundle.canonicalize().unwrap(), bundle_path: "/".into() });
        for (url, why) in [
            ("http://192.0.2.1:8080/demo/1.0/demo-1.0-rootfs.img", "not `dhcp-server`"),
            ("http://dhcp-server:8080/demo/1.0/other-rootfs.img", "does not end in the bundle's rootfs image"),
            ("http://dhcp-server:8080/other/1.0/demo-1.0-rootfs.img", "where `rootsmith serve` has it"),
            // A URL naming the bundle's real place further up is not served from there.
            (
                &format!("http://dhcp-server:8080{}/demo-1.0-rootfs.img", bundle.canonicalize().unwrap().display()),
                "where `rootsmith serve` has it",
            ),
            ("https://dhcp-server/demo-1.0-rootfs.img", "only http://"),
        ] {
            let error = format!("{:#}", baked_server(&bundle, "demo", "1.0", url, "demo-1.0-rootfs.img").unwrap_err());
            assert!(error.contains(why), "{url}: {error}");
        }
    }

    #[test]
    fn missing_firmware_parts_are_named_with_their_package() {
        let dir = tempfile::tempdir().unwrap();
        let settings =
            EfiSettings { secure_boot: false, vars: Some(dir.path().join("no-such-vars.fd")), loader_key: None };
        let error = format!("{:#}", firmware(&settings, dir.path(), 0).unwrap_err());
        assert!(error.contains("no-such-vars.fd") && error.contains("apt-get install ovmf"), "{error}");
    }
}
