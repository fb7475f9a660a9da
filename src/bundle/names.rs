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
        assert_eq!(names.rootfs_image(), "demo-1.0-rootfs.img");
        assert_eq!(names.output("rootfs.tar.zst"), "demo-1.0-rootfs.tar.zst");
        assert_eq!(names.output("packages.txt"), "packages.txt");
        assert_eq!(names.strip("demo-1.0-rootfs.img"), Some("rootfs.img"));
        assert!(names.rootfs_tarball_prefix().starts_with("demo-1.0-rootfs.tar"));
    }
}
