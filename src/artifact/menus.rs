//! Boot menus of a bundle: iPXE, PXELINUX and GRUB, one entry per kernel in two
//! flavours: the rootfs appended as a second initrd, and the rootfs fetched by
//! the init over HTTP. Paths are relative to the bundle, so the directory can
//! be served as it is; the fetched entries need the bundle's absolute URL,
//! which `rootsmith serve` fills in (and each menu otherwise derives as well as
//! its loader can).

use rootsmith_init::contract::args;

/// What a menu needs to know about a bundle.
#[derive(Debug, Clone)]
pub struct MenuInput {
    pub name: String,
    pub version: String,
    /// (kernel name, vmlinuz file)
    pub kernels: Vec<(String, String)>,
    pub initramfs: String,
    pub rootfs: String,
    pub cmdline: String,
    /// (kernel name, UKI file) of the kernels with a Unified Kernel Image.
    pub ukis: Vec<(String, String)>,
    /// The command line baked into the UKIs (iPXE passes it on: see [`ipxe_uki_entry`]).
    pub uki_cmdline: String,
    /// The bundle's Debian architecture: which loaders boot it ([`loaders`]).
    pub arch: String,
}

impl MenuInput {
    pub fn new(
        name: &str,
        version: &str,
        arch: &str,
        kernels: &[crate::bundle::manifest::ManifestKernel],
        boot: &crate::bundle::manifest::ManifestBoot,
    ) -> MenuInput {
        MenuInput {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
            kernels: kernels.iter().map(|kernel| (kernel.name.clone(), kernel.vmlinuz.clone())).collect(),
            initramfs: boot.initramfs.clone(),
            rootfs: boot.rootfs_image.clone(),
            cmdline: boot.cmdline.clone(),
            ukis: kernels
                .iter()
                .filter_map(|kernel| kernel.uki.clone().map(|file| (kernel.name.clone(), file)))
                .collect(),
            uki_cmdline: boot.uki.as_ref().map(|uki| uki.cmdline.clone()).unwrap_or_default(),
        }
    }

    pub fn from_manifest(manifest: &crate::bundle::manifest::Manifest) -> MenuInput {
        MenuInput::new(&manifest.name, &manifest.version, &manifest.arch, &manifest.kernels, &manifest.boot)
    }
}

/// The loaders that boot an `arch` bundle: iPXE and GRUB everywhere,
/// PXELINUX (BIOS and x86 EFI only) on amd64.
pub fn loaders(arch: &str) -> &'static [Loader] {
    match arch {
        "amd64" => &[Loader::Ipxe, Loader::Pxelinux, Loader::Grub],
        _ => &[Loader::Ipxe, Loader::Grub],
    }
}

/// Write the menus of a bundle's loaders into `dir`; returns them as
/// artifacts. A bundle without a kernel has none.
pub fn write_all(
    dir: &std::path::Path,
    input: &MenuInput,
) -> std::io::Result<Vec<crate::bundle::manifest::ManifestArtifact>> {
    let mut artifacts = Vec::new();
    if input.kernels.is_empty() {
        return Ok(artifacts);
    }
    for loader in loaders(&input.arch) {
        let (file, text) = match loader {
            Loader::Ipxe => ("boot.ipxe", ipxe(input, None, None)),
            Loader::Pxelinux => ("pxelinux.cfg/default", pxelinux(input, None)),
            Loader::Grub => ("grub.cfg", grub(input, None)),
        };
        let target = dir.join(file);
        fs_err::create_dir_all(target.parent().expect("in the bundle"))?;
        fs_err::write(&target, &text)?;
        artifacts.push(crate::bundle::manifest::ManifestArtifact {
            name: file.into(),
            size: text.len() as u64,
            sha256: crate::digest::sha256_hex(text.as_bytes()),
        });
    }
    Ok(artifacts)
}

/// The menu files, which `release promote` writes anew (named where every
/// bundle file name is checked).
pub use crate::bundle::names::MENU_FILES;

pub use crate::bundle::names::entry_id;

fn cmdline(input: &MenuInput, extra: &str) -> String {
    [input.cmdline.as_str(), extra].iter().filter(|part| !part.is_empty()).cloned().collect::<Vec<_>>().join(" ")
}

/// Where the fetched entries find the rootfs when no base URL is known.
const IPXE_BASE_VARIABLE: &str = "${rootsmith-base}";
const PXELINUX_BASE_PLACEHOLDER: &str = "http://SERVER/";
const GRUB_BASE_VARIABLE: &str = "http://${net_default_server}/";

/// The commands of one iPXE entry (`kernel`, `initrd`, `boot`). `prefix` goes
/// before every bundle path (empty for paths relative to the script).
pub fn ipxe_entry(input: &MenuInput, prefix: &str, rootfs_base: &str, vmlinuz: &str, fetched: bool) -> String {
    let (initramfs, rootfs) = (&input.initramfs, &input.rootfs);
    if fetched {
        let line = cmdline(input, &format!("initrd={initramfs} {}={rootfs_base}{rootfs}", args::ROOTFS_URL));
        format!("kernel {prefix}{vmlinuz} {line}\ninitrd {prefix}{initramfs}\nboot\n")
    } else {
        let line = cmdline(input, &format!("initrd={initramfs} initrd={rootfs}"));
        format!("kernel {prefix}{vmlinuz} {line}\ninitrd {prefix}{initramfs}\ninitrd {prefix}{rootfs}\nboot\n")
    }
}

/// The entry id of a kernel's UKI.
pub fn uki_entry_id(kernel: &str) -> String {
    format!("{kernel}-uki")
}

/// The iPXE lines that boot a UKI (`prefix` + `file`). They pass the UKI's
/// own command line: iPXE gives an EFI image its name as command line when
/// given none, and without Secure Boot systemd's stub takes what it is given
/// in place of the one inside (with Secure Boot it ignores it).
pub fn ipxe_uki_entry(prefix: &str, file: &str, cmdline: &str) -> String {
    format!("chain --autofree {prefix}{file} {cmdline}\n")
}

/// One PXELINUX `LABEL` block.
pub fn pxelinux_label(input: &MenuInput, rootfs_base: &str, kernel: &str, vmlinuz: &str, fetched: bool) -> String {
    let id = entry_id(kernel, fetched);
    if fetched {
        let line = cmdline(input, &format!("{}={rootfs_base}{}", args::ROOTFS_URL, input.rootfs));
        format!("\nLABEL {id}\n  MENU LABEL {kernel}: rootfs fetched over HTTP\n  KERNEL {vmlinuz}\n  APPEND initrd={} {line}\n", input.initramfs)
    } else {
        format!(
            "\nLABEL {id}\n  MENU LABEL {kernel}: rootfs appended\n  KERNEL {vmlinuz}\n  APPEND initrd={},{} {}\n",
            input.initramfs, input.rootfs, input.cmdline
        )
    }
}

/// One GRUB `menuentry`.
pub fn grub_entry(input: &MenuInput, rootfs_base: &str, kernel: &str, vmlinuz: &str, fetched: bool) -> String {
    let id = entry_id(kernel, fetched);
    if fetched {
        let line = cmdline(input, &format!("{}={rootfs_base}{}", args::ROOTFS_URL, input.rootfs));
        format!("\nmenuentry '{kernel}: rootfs fetched over HTTP' --id {id} {{\n  linux {vmlinuz} {line}\n  initrd {}\n}}\n", input.initramfs)
    } else {
        format!(
            "\nmenuentry '{kernel}: rootfs appended' --id {id} {{\n  linux {vmlinuz} {}\n  initrd {} {}\n}}\n",
            input.cmdline, input.initramfs, input.rootfs
        )
    }
}

/// PXELINUX and GRUB files end their lines without trailing blanks.
pub fn trim_lines(text: &str) -> String {
    text.lines().map(|line| format!("{}\n", line.trim_end())).collect()
}

/// `boot.ipxe`. With `base` (e.g. `http://10.0.2.2:8080/b/`), every path is
/// absolute; without it, paths are relative to the script and the fetched
/// entries use `${rootsmith-base}`, by default the DHCP next-server.
pub fn ipxe(input: &MenuInput, base: Option<&str>, default: Option<&str>) -> String {
    let prefix = base.unwrap_or("");
    let rootfs_base = base.unwrap_or(IPXE_BASE_VARIABLE);
    let mut text = format!("#!ipxe\n# rootsmith bundle {} {}\n", input.name, input.version);
    if base.is_none() {
        text.push_str(IPXE_BASE_DEFAULT);
    }
    let first = default
        .map(str::to_string)
        .unwrap_or_else(|| entry_id(&input.kernels.first().map(|k| k.0.clone()).unwrap_or_default(), false));
    text.push_str(&format!("menu {} {}\n", input.name, input.version));
    for (kernel, _) in &input.kernels {
        text.push_str(&format!("item {} {kernel}: rootfs appended as a second initrd\n", entry_id(kernel, false)));
        text.push_str(&format!("item {} {kernel}: rootfs fetched over HTTP by the init\n", entry_id(kernel, true)));
    }
    for (kernel, _) in &input.ukis {
        text.push_str(&format!(
            "item {} {kernel}: Unified Kernel Image (UEFI, Secure Boot), rootfs fetched by the init\n",
            uki_entry_id(kernel)
        ));
    }
    text.push_str(&format!("choose --default {first} --timeout 3000 target && goto ${{target}}\nexit\n"));
    for (kernel, vmlinuz) in &input.kernels {
        for fetched in [false, true] {
            text.push_str(&format!(
                "\n:{}\n{}",
                entry_id(kernel, fetched),
                ipxe_entry(input, prefix, rootfs_base, vmlinuz, fetched)
            ));
        }
    }
    for (kernel, file) in &input.ukis {
        text.push_str(&format!("\n:{}\n{}", uki_entry_id(kernel), ipxe_uki_entry(prefix, file, &input.uki_cmdline)));
    }
    text
}

/// What a relative iPXE script says so its http entries find the bundle.
pub const IPXE_BASE_DEFAULT: &str = "# Paths are relative to this script. The http entries need the bundle's URL:\n# `rootsmith serve` fills it in; else set rootsmith-base before chaining this script.\nisset ${rootsmith-base} || set rootsmith-base http://${next-server}/\n";

/// `pxelinux.cfg/default`: paths relative to the TFTP directory of pxelinux.0.
/// PXELINUX has no variables, so the fetched entries carry `base` (or
/// `http://SERVER/` for the user to replace when there is none).
pub fn pxelinux(input: &MenuInput, base: Option<&str>) -> String {
    let rootfs_base = base.unwrap_or(PXELINUX_BASE_PLACEHOLDER);
    let first = input.kernels.first().map(|k| entry_id(&k.0, false)).unwrap_or_default();
    let mut text =
        format!("# rootsmith bundle {} {}\nDEFAULT {first}\nPROMPT 1\nTIMEOUT 30\n", input.name, input.version);
    for (kernel, vmlinuz) in &input.kernels {
        for fetched in [false, true] {
            text.push_str(&pxelinux_label(input, rootfs_base, kernel, vmlinuz, fetched));
        }
    }
    trim_lines(&text)
}

/// `grub.cfg` for GRUB's network boot: paths relative to GRUB's root, the
/// fetched entries at `http://$net_default_server/` unless `base` is given.
pub fn grub(input: &MenuInput, base: Option<&str>) -> String {
    let rootfs_base = base.unwrap_or(GRUB_BASE_VARIABLE);
    let mut text = format!("# rootsmith bundle {} {}\n", input.name, input.version);
    if input.arch == "arm64" {
        text.push_str("# For GRUB arm64-efi (grubnetaa64.efi): `linux` loads the kernel's EFI stub.\n");
    }
    text.push_str("set timeout=3\nset default=0\n");
    for (kernel, vmlinuz) in &input.kernels {
        for fetched in [false, true] {
            text.push_str(&grub_entry(input, rootfs_base, kernel, vmlinuz, fetched));
        }
    }
    trim_lines(&text)
}

/// The three boot loaders rootsmith writes configuration for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    Ipxe,
    Pxelinux,
    Grub,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> MenuInput {
        MenuInput {
            name: "demo".into(),
            version: "1.0".into(),
            kernels: vec![
                ("debian".into(), "demo-1.0-debian-vmlinuz".into()),
                ("small".into(), "demo-1.0-small-vmlinuz".into()),
            ],
            initramfs: "demo-1.0-initramfs.img".into(),
            rootfs: "demo-1.0-rootfs.img".into(),
            cmdline: "console=ttyS0".into(),
            ukis: Vec::new(),
            uki_cmdline: String::new(),
            arch: "amd64".into(),
        }
    }

    #[test]
    fn ipxe_offers_each_uki_with_its_own_command_line() {
        let mut with_uki = input();
        with_uki.ukis = vec![("debian".into(), "demo-1.0-debian.efi".into())];
        with_uki.uki_cmdline =
            "console=ttyS0 rootsmith.rootfs_url=http://dhcp-server:8080/demo/1.0/demo-1.0-rootfs.img".into();
        let text = ipxe(&with_uki, None, None);
        assert!(text.contains("item debian-uki debian: Unified Kernel Image"), "{text}");
        assert!(text.ends_with("\n:debian-uki\nchain --autofree demo-1.0-debian.efi console=ttyS0 rootsmith.rootfs_url=http://dhcp-server:8080/demo/1.0/demo-1.0-rootfs.img\n"), "{text}");
        let served = ipxe(&with_uki, Some("http://10.0.2.2:80/b/"), None);
        assert!(served.contains("chain --autofree http://10.0.2.2:80/b/demo-1.0-debian.efi console=ttyS0"), "{served}");
        assert!(!ipxe(&input(), None, None).contains("uki"));
    }

    #[test]
    fn an_arm64_bundle_has_ipxe_and_grub_arm64_efi_menus_and_no_pxelinux() {
        let dir = tempfile::tempdir().unwrap();
        let arm64 = MenuInput { arch: "arm64".into(), cmdline: "console=ttyAMA0".into(), ..input() };
        let written: Vec<String> =
            write_all(dir.path(), &arm64).unwrap().into_iter().map(|artifact| artifact.name).collect();
        assert_eq!(written, ["boot.ipxe", "grub.cfg"]);
        assert!(!dir.path().join("pxelinux.cfg").exists());
        let grub = fs_err::read_to_string(dir.path().join("grub.cfg")).unwrap();
        assert!(
            grub.contains("GRUB arm64-efi") && grub.contains("  linux demo-1.0-debian-vmlinuz console=ttyAMA0\n"),
            "{grub}"
        );
        assert!(!super::grub(&input(), None).contains("arm64"));
    }

    #[test]
    fn ipxe_has_two_entries_per_kernel_with_relative_paths() {
        let text = ipxe(&input(), None, None);
        assert!(text.starts_with("#!ipxe\n"));
        assert!(text.contains("choose --default debian-appended"));
        assert!(text.contains("\n:small-http\nkernel demo-1.0-small-vmlinuz console=ttyS0 initrd=demo-1.0-initramfs.img rootsmith.rootfs_url=${rootsmith-base}demo-1.0-rootfs.img\ninitrd demo-1.0-initramfs.img\nboot\n"), "{text}");
        assert!(text.contains("\n:debian-appended\nkernel demo-1.0-debian-vmlinuz console=ttyS0 initrd=demo-1.0-initramfs.img initrd=demo-1.0-rootfs.img\ninitrd demo-1.0-initramfs.img\ninitrd demo-1.0-rootfs.img\n"));
        let served = ipxe(&input(), Some("http://10.0.2.2:80/b/"), Some("small-http"));
        assert!(served.contains("kernel http://10.0.2.2:80/b/demo-1.0-small-vmlinuz"));
        assert!(served.contains("rootsmith.rootfs_url=http://10.0.2.2:80/b/demo-1.0-rootfs.img"));
        assert!(served.contains("choose --default small-http"));
        assert!(!served.contains("rootsmith-base"));
    }

    #[test]
    fn the_menus_written_are_the_menu_files_a_bundle_may_hold() {
        let dir = tempfile::tempdir().unwrap();
        let written: Vec<String> =
            write_all(dir.path(), &input()).unwrap().into_iter().map(|artifact| artifact.name).collect();
        assert_eq!(written, MENU_FILES);
        assert!(written.iter().all(|name| crate::bundle::names::check_file_name(name).is_ok()));
    }

    #[test]
    fn pxelinux_and_grub_list_both_flavours() {
        let text = pxelinux(&input(), None);
        assert!(text.contains("DEFAULT debian-appended"));
        assert!(text.contains("APPEND initrd=demo-1.0-initramfs.img,demo-1.0-rootfs.img console=ttyS0\n"));
        assert!(text.contains("APPEND initrd=demo-1.0-initramfs.img console=ttyS0 rootsmith.rootfs_url=http://SERVER/demo-1.0-rootfs.img\n"));
        let text = grub(&input(), None);
        assert_eq!(text.matches("menuentry").count(), 4);
        assert!(text.contains("  initrd demo-1.0-initramfs.img demo-1.0-rootfs.img\n"));
        assert!(text.contains("rootsmith.rootfs_url=http://${net_default_server}/demo-1.0-rootfs.img"));
    }
}
