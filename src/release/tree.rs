//! The files of a bundle's rootfs, read from the squashfs inside its
//! `rootfs.img` with backhand: what `release diff` compares between versions
//! and `release verify --rebuild` between a bundle and its rebuild.

use std::collections::BTreeMap;
use std::io::BufReader;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bundle::{files, Bundle};

/// One path of a rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// `file`, `dir`, `symlink`, `char`, `block`, `fifo` or `socket`.
    pub kind: &'static str,
    /// Permission bits, as octal text (`0644`).
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    /// A file's size in bytes (0 for the rest).
    pub size: u64,
    /// A file's SHA-256, a symlink's target, a device's number.
    pub content: String,
}

/// Every path of the rootfs in the bundle's image `name`, read only as the
/// manifest allows (a regular file, no further than its stated size).
pub fn entries(bundle: &Bundle, name: &str) -> Result<BTreeMap<String, Entry>> {
    use backhand::InnerNode;
    let size = bundle.stated_size(name)?;
    let image = files::open_sized(&bundle.dir, name, size)?;
    let (offset, _, _) =
        crate::artifact::cpio::read_rootfs_image_from(BufReader::new(image.within(size)), &image.path)?;
    let filesystem = backhand::FilesystemReader::from_reader_with_offset(BufReader::new(image.within(size)), offset)
        .with_context(|| format!("reading the squashfs in {}", image.path.display()))?;
    let mut entries = BTreeMap::new();
    for node in filesystem.files() {
        let header = &node.header;
        let (kind, size, content) = match &node.inner {
            InnerNode::File(file) => {
                let (digest, size) = crate::digest::hash_reader(filesystem.file(file).reader())?;
                ("file", size, digest)
            }
            InnerNode::Symlink(link) => ("symlink", 0, link.link.display().to_string()),
            InnerNode::Dir(_) => ("dir", 0, String::new()),
            InnerNode::CharacterDevice(device) => ("char", 0, device.device_number.to_string()),
            InnerNode::BlockDevice(device) => ("block", 0, device.device_number.to_string()),
            InnerNode::NamedPipe => ("fifo", 0, String::new()),
            InnerNode::Socket => ("socket", 0, String::new()),
        };
        let entry = Entry {
            kind,
            mode: format!("{:04o}", header.permissions),
            uid: header.uid,
            gid: header.gid,
            mtime: header.mtime,
            size,
            content,
        };
        entries.insert(node.fullpath.display().to_string(), entry);
    }
    Ok(entries)
}
