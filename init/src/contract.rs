//! Names, formats and derivations shared by the bundle writer and the init.
//!
//! The rootfs image (`NAME-VERSION-rootfs.img`) is an uncompressed newc cpio:
//! first [`ROOTFS_SQUASHFS`] (so the squashfs magic sits at byte
//! [`SQUASHFS_MAGIC_OFFSET`]), then [`ROOTFS_COOKIE`], then the trailer, padded
//! to 4 bytes so it concatenates with an initramfs as a second initrd.

use sha2::{Digest, Sha256};

/// Version of this contract. Bump it when a bundle built by an older rootsmith
/// would be misread by a newer init (or the reverse).
pub const CONTRACT_VERSION: u32 = 2;

/// The squashfs inside the rootfs image, unpacked at `/root.squashfs`.
pub const ROOTFS_SQUASHFS: &str = "root.squashfs";

/// The rootfs's cookie file inside the rootfs image, unpacked at `/root.cookie`.
pub const ROOTFS_COOKIE: &str = "root.cookie";

/// A newc header is 110 bytes, then the name and its NUL, padded to 4 bytes:
/// `root.squashfs\0` ends exactly at 124, where the squashfs data starts.
pub const SQUASHFS_MAGIC_OFFSET: usize = 124;

/// The squashfs magic, little-endian `hsqs`.
pub const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";

/// In the initramfs: the build the init expects ([`BuildId`]).
pub const INITRAMFS_BUILD: &str = "rootsmith/build";
/// In the initramfs: the chunk list of rootfs.img ([`ChunkList`]).
pub const INITRAMFS_CHUNKS: &str = "rootsmith/rootfs.chunks";
/// In the initramfs: one file per kernel release, named by `uname -r`, listing
/// the modules to load in order (paths relative to the initramfs root).
pub const INITRAMFS_MODULES: &str = "rootsmith/modules";

/// Chunk size of the chunk list: small enough to hold one chunk in RAM while it
/// is checked, large enough that the list stays short.
pub const CHUNK_SIZE: u64 = 2 * 1024 * 1024;

/// Kernel command-line arguments the init reads.
pub mod args {
    /// `http://HOST[:PORT]/PATH` of rootfs.img: fetch it instead of expecting it appended.
    pub const ROOTFS_URL: &str = "rootsmith.rootfs_url";
    /// The network interface for the fetch (default: the first with a link).
    pub const IFACE: &str = "rootsmith.iface";
    /// The program to exec in the new root (default `/sbin/init`).
    pub const INIT: &str = "rootsmith.init";
    /// What to do when the boot fails: `shell`, `poweroff`, `halt`.
    pub const ON_FAIL: &str = "rootsmith.on_fail";
    /// How many times a broken download is resumed before giving up.
    pub const RETRIES: &str = "rootsmith.retries";
}

/// The host of a rootfs URL that stands for the DHCP server which gave the
/// init its lease (option 54, else the `siaddr` field): a command line baked
/// into a Unified Kernel Image cannot name the server it will be fetched from,
/// so `http://dhcp-server:8080/PATH` reaches whichever server handed out the
/// lease. The init replaces it once it has a lease.
pub const DHCP_SERVER_HOST: &str = "dhcp-server";

/// Which rootfs build a file belongs to: its cookie and its recipe's name. The
/// initramfs carries the one it expects, rootfs.img the one it is. No version
/// is written in either, so a promoted release keeps the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildId {
    pub cookie: String,
    pub name: String,
}

impl BuildId {
    pub fn to_text(&self) -> String {
        format!("cookie {}\nname {}\n", self.cookie, self.name)
    }

    pub fn parse(text: &str) -> Result<BuildId, String> {
        let mut cookie = None;
        let mut name = None;
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            match line.split_once(' ') {
                Some(("cookie", value)) => cookie = Some(value.trim().to_string()),
                Some(("name", value)) => name = Some(value.trim().to_string()),
                _ => return Err(format!("unexpected line {line:?}")),
            }
        }
        Ok(BuildId { cookie: cookie.ok_or("no cookie line")?, name: name.unwrap_or_else(|| "unnamed".into()) })
    }
}

impl std::fmt::Display for BuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (cookie {})", self.name, self.cookie)
    }
}

/// The SHA-256 of every [`CHUNK_SIZE`] piece of rootfs.img (the last may be
/// shorter) and its total size. Text, one field per line:
///
/// ```text
/// rootsmith-chunks 1
/// algorithm sha256
/// chunk_size 2097152
/// size 123456789
/// <hex digest of chunk 0>
/// ...
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkList {
    pub chunk_size: u64,
    pub size: u64,
    pub digests: Vec<[u8; 32]>,
}

impl ChunkList {
    /// Hash a whole reader.
    pub fn from_reader(mut reader: impl std::io::Read, chunk_size: u64) -> std::io::Result<ChunkList> {
        let mut digests = Vec::new();
        let mut size = 0u64;
        let mut buffer = vec![0u8; chunk_size as usize];
        loop {
            let mut filled = 0;
            while filled < buffer.len() {
                let read = reader.read(&mut buffer[filled..])?;
                if read == 0 {
                    break;
                }
                filled += read;
            }
            if filled == 0 {
                break;
            }
            size += filled as u64;
            digests.push(Sha256::digest(&buffer[..filled]).into());
            if filled < buffer.len() {
                break;
            }
        }
        Ok(ChunkList { chunk_size, size, digests })
    }

    pub fn to_text(&self) -> String {
        let mut text =
            format!("rootsmith-chunks 1\nalgorithm sha256\nchunk_size {}\nsize {}\n", self.chunk_size, self.size);
        for digest in &self.digests {
            text.push_str(&hex::encode(digest));
            text.push('\n');
        }
        text
    }

    pub fn parse(text: &str) -> Result<ChunkList, String> {
        let mut lines = text.lines();
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().ok_or_else(|| format!("missing {name} line"))?;
            match line.split_once(' ') {
                Some((key, value)) if key == name => Ok(value.to_string()),
                _ => Err(format!("expected `{name} ...`, found {line:?}")),
            }
        };
        if field("rootsmith-chunks")? != "1" {
            return Err("unknown chunk list version".into());
        }
        let algorithm = field("algorithm")?;
        if algorithm != "sha256" {
            return Err(format!("unknown hash algorithm {algorithm}"));
        }
        let chunk_size: u64 = field("chunk_size")?.parse().map_err(|_| "bad chunk_size")?;
        let size: u64 = field("size")?.parse().map_err(|_| "bad size")?;
        if chunk_size == 0 {
            return Err("chunk_size is 0".into());
        }
        let mut digests = Vec::new();
        for line in lines {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(line.trim(), &mut digest).map_err(|_| format!("bad digest line {line:?}"))?;
            digests.push(digest);
        }
        if digests.len() as u64 != size.div_ceil(chunk_size) {
            return Err(format!("{} digests for {size} bytes in chunks of {chunk_size}", digests.len()));
        }
        Ok(ChunkList { chunk_size, size, digests })
    }

    /// The length of chunk `index`.
    pub fn chunk_len(&self, index: usize) -> u64 {
        let start = index as u64 * self.chunk_size;
        self.chunk_size.min(self.size.saturating_sub(start))
    }
}

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

    #[test]
    fn chunk_list_round_trips_and_checks_its_count() {
        let data = vec![7u8; 10];
        let list = ChunkList::from_reader(data.as_slice(), 4).unwrap();
        assert_eq!(list.size, 10);
        assert_eq!(list.digests.len(), 3);
        assert_eq!(list.chunk_len(2), 2);
        let text = list.to_text();
        assert_eq!(ChunkList::parse(&text).unwrap(), list);
        let short: String = text.lines().take(6).map(|line| format!("{line}\n")).collect();
        assert!(ChunkList::parse(&short).unwrap_err().contains("2 digests for 10 bytes"));
        assert!(ChunkList::parse("rootsmith-chunks 1\nalgorithm md5\n").unwrap_err().contains("md5"));
        assert_eq!(ChunkList::from_reader(&[][..], 4).unwrap().digests.len(), 0);
    }

    #[test]
    fn build_id_round_trips() {
        let id = BuildId { cookie: "c0ffee".into(), name: "demo".into() };
        assert_eq!(BuildId::parse(&id.to_text()).unwrap(), id);
        assert_eq!(id.to_string(), "demo (cookie c0ffee)");
        assert!(BuildId::parse("name x\n").is_err());
    }
}
