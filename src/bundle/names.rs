//! The names of a bundle's files, made in one place: `NAME-VERSION-…` for
//! boot artifacts, plain names for files about the tree.

/// The file names of the bundle `name` `version`.
#[derive(Debug, Clone, Copy)]
pub struct BundleNames<'a> {
    pub name: &'a str,
    pub version: &'a str,
}

/// The SPDX document of the rootfs's packages, in every bundle.
pub const SBOM: &str = "sbom.spdx.json";
/// The package list of the rootfs, in every bundle.
pub const PACKAGES: &str = "packages.txt";
/// The hosts inventory a recipe names, copied into its bundle.
pub const HOSTS_FILE: &str = "hosts.yaml";

/// The manifest of every bundle.
pub const MANIFEST: &str = "manifest.json";
/// The digests of every file of a bundle, `sha256sum -c` format.
pub const SHA256SUMS: &str = "SHA256SUMS";
/// A signed bundle's SSH signature over its manifest (not in SHA256SUMS:
/// it is made after them, and a promoted bundle drops it).
pub const SIGNATURE: &str = "manifest.json.sig";
/// The one directory of a bundle whose files have names of their own
/// (`kernel/KERNEL-config`, `kernel/KERNEL-System.map`, the kernel's debs).
pub const KERNEL_DIR: &str = "kernel";
/// The boot menus, which `release promote` writes anew; `pxelinux.cfg/default`
/// is the one file of a bundle outside `kernel/` not at its top.
pub const MENU_FILES: [&str; 3] = ["boot.ipxe", "pxelinux.cfg/default", "grub.cfg"];

/// A name from a manifest or SHA256SUMS that no bundle file may have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a file a bundle may hold: {why}")]
pub struct BadFileName {
    pub name: String,
    pub why: &'static str,
}

/// Whether `name` may name a file of a bundle, relative to its directory: a
/// plain file name (`NAME-VERSION-rootfs.img`, `packages.txt`), a file in
/// `kernel/`, or `pxelinux.cfg/default`. Each part starts with a letter or
/// digit and holds letters, digits, `.`, `_`, `-`, `+`, `~` and `%` (what
/// names, versions, kernel releases and package file names use), so no name
/// is absolute, empty, `.` or `..`, or carries a space, a newline or a
/// character a boot menu would read as syntax. Everything that joins a name
/// from a bundle to a path checks it first.
pub fn check_file_name(name: &str) -> Result<(), BadFileName> {
    let bad = |why| Err(BadFileName { name: name.to_string(), why });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.starts_with('/') {
        return bad("it is an absolute path");
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.iter().any(|part| part.is_empty()) {
        return bad("it has an empty path component");
    }
    if parts.iter().any(|part| *part == ".." || *part == ".") {
        return bad("it has a `.` or `..` component");
    }
    for part in &parts {
        if part.len() > 255 {
            return bad("a component is longer than 255 bytes");
        }
        let mut chars = part.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '~' | '%')) {
            return bad("each part starts with a letter or digit and holds only letters, digits, `.`, `_`, `-`, `+`, `~` and `%`");
        }
    }
    match parts.as_slice() {
        [_] => Ok(()),
        [dir, _] if *dir == KERNEL_DIR => Ok(()),
        _ if MENU_FILES.contains(&name) => Ok(()),
        _ => bad("only `kernel/FILE` and `pxelinux.cfg/default` are in a subdirectory"),
    }
}

impl<'a> BundleNames<'a> {
    pub fn new(name: &'a str, version: &'a str) -> BundleNames<'a> {
        BundleNames { name, version }
    }

    /// `NAME-VERSION-`: what every boot artifact's name starts with.
    pub fn prefix(&self) -> String {
        format!("{}-{}-", self.name, self.version)
    }

    pub fn vmlinuz(&self, kernel: &str) -> String {
        format!("{}{kernel}-vmlinuz", self.prefix())
    }

    /// A kernel's device trees, one tar (`kernel/KERNEL-dtbs.tar`).
    pub fn device_trees(&self, kernel: &str) -> String {
        format!("{KERNEL_DIR}/{kernel}-dtbs.tar")
    }

    /// The Unified Kernel Image of a kernel (`outputs.uki`).
    pub fn uki(&self, kernel: &str) -> String {
        format!("{}{kernel}.efi", self.prefix())
    }

    pub fn initramfs(&self) -> String {
        format!("{}initramfs.img", self.prefix())
    }

    pub fn rootfs_image(&self) -> String {
        format!("{}rootfs.img", self.prefix())
    }

    /// What the rootfs tarball's name starts with (its extension follows).
    pub fn rootfs_tarball_prefix(&self) -> String {
        format!("{}rootfs.tar.", self.prefix())
    }

    /// The bundle name of an output file (`rootfs.img`, `initramfs.img`,
    /// `rootfs.tar.zst`, `packages.txt`…): files about the tree keep their
    /// names, boot artifacts get the bundle's prefix.
    pub fn output(&self, file: &str) -> String {
        if file == PACKAGES || file == SBOM {
            file.to_string()
        } else {
            format!("{}{file}", self.prefix())
        }
    }

    /// The inverse of [`Self::output`] for prefixed names: `rootfs.img` from
    /// `NAME-VERSION-rootfs.img`.
    pub fn strip<'n>(&self, artifact: &'n str) -> Option<&'n str> {
        artifact.strip_prefix(&self.prefix())
    }
}

/// The id of a kernel's boot entry: `KERNEL-appended` (the rootfs as a
/// second initrd) or `KERNEL-http` (fetched by the init).
pub fn entry_id(kernel: &str, fetched: bool) -> String {
    format!("{kernel}-{}", if fetched { "http" } else { "appended" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_a_bundle() {
        let names = BundleNames::new("demo", "1.0");
        assert_eq!(names.vmlinuz("debian"), "demo-1.0-debian-vmlinuz");
        assert_eq!(names.initramfs(), "demo-1.0-initramfs.img");
        assert_eq!(names.uki("debian"), "demo-1.0-debian.efi");
        assert_eq!(names.rootfs_image(), "demo-1.0-rootfs.img");
        assert_eq!(names.output("rootfs.tar.zst"), "demo-1.0-rootfs.tar.zst");
        assert_eq!(names.output("packages.txt"), "packages.txt");
        assert_eq!(names.strip("demo-1.0-rootfs.img"), Some("rootfs.img"));
        assert!(names.rootfs_tarball_prefix().starts_with("demo-1.0-rootfs.tar"));
    }

    #[test]
    fn the_files_a_bundle_holds_have_names_it_may_hold() {
        let names = BundleNames::new("demo", "1.2.0-rc1+b~2");
        for name in [
            names.vmlinuz("debian"),
            names.uki("debian"),
            names.initramfs(),
            names.rootfs_image(),
            names.output("rootfs.tar.zst"),
            PACKAGES.into(),
            SBOM.into(),
            HOSTS_FILE.into(),
            MANIFEST.into(),
            SHA256SUMS.into(),
        ] {
            assert_eq!(check_file_name(&name), Ok(()), "{name}");
        }
        for name in MENU_FILES.iter().map(|m| m.to_string()).chain([
            "kernel/debian-config".into(),
            "kernel/linux-image-6.1.0-tiny+_6.1.0-1_amd64.deb".into(),
            "kernel/x%3a1.deb".into(),
        ]) {
            assert_eq!(check_file_name(&name), Ok(()), "{name}");
        }
    }

    #[test]
    fn names_that_leave_the_bundle_or_break_a_menu_are_refused() {
        for name in [
            "",
            "/etc/shadow",
            "../x",
            "../../../x",
            "kernel/../../x",
            "a/../b",
            "./a",
            "kernel//x",
            "kernel/",
            "x/",
            "..",
            ".",
            ".hidden",
            "kernel/.x",
            "other/x",
            "pxelinux.cfg/other",
            "kernel/a/b",
            "a b",
            "a\nb",
            "a\tb",
            "a;b",
            "${x}",
            "a,b",
            "-rf",
            "a\0b",
        ] {
            assert!(check_file_name(name).is_err(), "{name:?} passed");
        }
        assert!(check_file_name(&"a".repeat(256)).is_err());
        let error = check_file_name("../../etc/shadow").unwrap_err();
        assert_eq!(error.why, "it has a `.` or `..` component");
        assert!(error.to_string().contains("\"../../etc/shadow\" is not a file a bundle may hold"), "{error}");
    }
}
