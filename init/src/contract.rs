//! Names, formats and derivations shared by the bundle writer and the init.
//!
//! The rootfs image (`NAME-VERSION-rootfs.img`) is an uncompressed newc cpio:
//! first [`ROOTFS_SQUASHFS`] (so the squashfs magic sits at byte
//! [`SQUASHFS_MAGIC_OFFSET`]), then [`ROOTFS_COOKIE`], then the trailer, padded
//! to 4 bytes so it concatenates with an initramfs as a second initrd.

use sha2::{Digest, Sha256};

/// Version of this contract. Bump it when a bundle built by an older rootsmith
/// would be misread by a newer init (or the reverse).
pub const CONTRACT_VERSION: u32 = 1;

/// The squashfs inside the rootfs image, unpacked at `/root.squashfs`.
pub const ROOTFS_SQUASHFS: &str = "root.squashfs";

/// The rootfs's cookie file inside the rootfs image, unpacked at `/root.cookie`.
pub const ROOTFS_COOKIE: &str = "root.cookie";

/// A newc header is 110 bytes, then the name and its NUL, padded to 4 bytes:
/// `root.squashfs\0` ends exactly at 124, where the squashfs data starts.
pub const SQUASHFS_MAGIC_OFFSET: usize = 124;

/// The squashfs magic, little-endian `hsqs`.
pub const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";

/// The cookie of a rootfs: derived from the squashfs's SHA-256 (not drawn at
/// random), so two builds of the same inputs stay byte-identical while two
/// different rootfs builds never share a cookie.
pub fn cookie_for(squashfs_sha256_hex: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"rootsmith-cookie-v1\n");
    hasher.update(squashfs_sha256_hex.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_stable_and_depends_on_the_squashfs() {
        let a = cookie_for("aa");
        assert_eq!(a, cookie_for("aa"));
        assert_ne!(a, cookie_for("ab"));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn magic_offset_follows_from_the_newc_header() {
        let header = 110;
        let name = ROOTFS_SQUASHFS.len() + 1;
        assert_eq!((header + name).div_ceil(4) * 4, SQUASHFS_MAGIC_OFFSET);
    }
}
