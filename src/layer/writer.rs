//! Tree entries → a deterministic tar: the caller gives paths in sorted order,
//! mtimes are clamped to `SOURCE_DATE_EPOCH`, owners are numeric, names empty,
//! xattrs go in PAX records (`SCHILY.xattr.*`), and a second path to an inode
//! already written becomes a hard link. A placeholder standing for a device
//! (see [`Devices`]) is written as that device: the same bytes a real node gives.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::devices::{Device, DeviceKind, Devices};
use super::whiteout::WHITEOUT_PREFIX;

pub struct TreeTarWriter<'d, W: Write> {
    builder: tar::Builder<W>,
    epoch: i64,
    written_inodes: HashMap<(u64, u64), PathBuf>,
    devices: &'d Devices,
}

impl<'d, W: Write> TreeTarWriter<'d, W> {
    /// `epoch`: the `SOURCE_DATE_EPOCH` every later mtime is clamped to;
    /// `devices`: the placeholders of the tree the entries come from (a tree
    /// that never had any: `&Devices::default()`).
    pub fn new(writer: W, epoch: i64, devices: &'d Devices) -> Self {
        let mut builder = tar::Builder::new(writer);
        builder.follow_symlinks(false);
        TreeTarWriter { builder, epoch, written_inodes: HashMap::new(), devices }
    }

    /// Append `root/relative` as the entry `relative`. Sockets are skipped (tar
    /// cannot hold them; they only exist while a program runs).
    pub fn append(&mut self, root: &Path, relative: &Path) -> std::io::Result<()> {
        self.append_with(root, relative, relative, None, None)
    }

    /// Append `root/relative` under the entry name `name`, with the owner and mode
    /// replaced where given (the `files` stage copies a tree this way).
    pub fn append_with(
        &mut self,
        root: &Path,
        relative: &Path,
        name: &Path,
        owner: Option<(u32, u32)>,
        mode: Option<u32>,
    ) -> std::io::Result<()> {
        let full = root.join(relative);
        let relative = name;
        let metadata = fs_err::symlink_metadata(&full).map_err(|error| with_path(error, &full))?;
        let file_type = metadata.file_type();
        if file_type.is_socket() {
            return Ok(());
        }
        let mut header = Header::new_gnu();
        header.set_mode(mode.unwrap_or(metadata.mode() & 0o7777));
        let (uid, gid) = owner.unwrap_or((metadata.uid(), metadata.gid()));
        header.set_uid(uid as u64);
        header.set_gid(gid as u64);
        header.set_mtime(metadata.mtime().clamp(0, self.epoch) as u64);
        header.set_size(0);
        self.append_xattrs(&full, relative)?;

        if !metadata.is_dir() && metadata.nlink() > 1 {
            let inode = (metadata.dev(), metadata.ino());
            if let Some(first) = self.written_inodes.get(&inode) {
                header.set_entry_type(EntryType::Link);
                let first = first.clone();
                return self.builder.append_link(&mut header, relative, first);
            }
            self.written_inodes.insert(inode, relative.to_path_buf());
        }
        if file_type.is_dir() {
            header.set_entry_type(EntryType::Directory);
            self.builder.append_data(&mut header, relative, std::io::empty())
        } else if file_type.is_symlink() {
            header.set_entry_type(EntryType::Symlink);
            let target = fs_err::read_link(&full).map_err(|error| with_path(error, &full))?;
            self.builder.append_link(&mut header, relative, target)
        } else if let Some(device) = Device::of_node(&metadata).or_else(|| self.devices.lookup(&metadata)) {
            // A device node, or the placeholder that stands for one.
            header.set_entry_type(match device.kind {
                DeviceKind::Char => EntryType::Char,
                DeviceKind::Block => EntryType::Block,
            });
            header.set_device_major(device.major)?;
            header.set_device_minor(device.minor)?;
            self.builder.append_data(&mut header, relative, std::io::empty())
        } else if file_type.is_file() {
            header.set_entry_type(EntryType::Regular);
            header.set_size(metadata.len());
            // A regular file when looked at: if something else stands there
            // now (a FIFO would block the read forever), that is an error.
            let file = crate::fileops::open_regular_no_follow(&full)?;
            self.builder.append_data(&mut header, relative, ExactLength::new(file, metadata.len(), &full))
        } else {
            // A FIFO: its device numbers are those of a real node (zero).
            header.set_entry_type(EntryType::Fifo);
            let rdev = metadata.rdev();
            header.set_device_major(libc::major(rdev))?;
            header.set_device_minor(libc::minor(rdev))?;
            self.builder.append_data(&mut header, relative, std::io::empty())
        }
    }

    /// Append a whiteout that deletes `relative` when the layer is applied.
    pub fn append_whiteout(&mut self, relative: &Path) -> std::io::Result<()> {
        let name = relative.file_name().expect("a deleted path has a name").to_string_lossy();
        let whiteout = relative.with_file_name(format!("{WHITEOUT_PREFIX}{name}"));
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(0);
        header.set_mtime(self.epoch.max(0) as u64);
        self.builder.append_data(&mut header, whiteout, std::io::empty())
    }

    fn append_xattrs(&mut self, full: &Path, relative: &Path) -> std::io::Result<()> {
        let Ok(names) = xattr::list(full) else { return Ok(()) };
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        for name in names {
            let name_text = name.to_string_lossy().into_owned();
            if let Ok(Some(value)) = xattr::get(full, &name) {
                records.push((format!("SCHILY.xattr.{name_text}"), value));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        records.sort();
        let data = pax_data(&records);
        let mut header = Header::new_ustar();
        let name = format!("PaxHeaders/{}", relative.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let name: String = name.chars().take(99).collect();
        header.set_path(name)?;
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_mtime(self.epoch.max(0) as u64);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data.as_slice())
    }

    /// Write the end-of-archive marker and give back the writer.
    pub fn finish(self) -> std::io::Result<W> {
        self.builder.into_inner()
    }
}

/// PAX records: `LEN KEY=VALUE\n`, where LEN counts the whole record, itself included.
fn pax_data(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut data = Vec::new();
    for (key, value) in records {
        let body_len = 1 + key.len() + 1 + value.len() + 1;
        let mut total = body_len + body_len.to_string().len();
        if total.to_string().len() != body_len.to_string().len() {
            total = body_len + total.to_string().len();
        }
        data.extend_from_slice(format!("{total} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    data
}

fn with_path(error: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// A file's bytes, exactly as many as its header says: tar cannot hold an
/// entry whose size changed while it was read (a file grown mid-write would
/// shift every later entry), so a file shorter than that is an error and
/// one that grew is read no further.
struct ExactLength<'p, R> {
    inner: R,
    remaining: u64,
    path: &'p Path,
}

impl<'p, R: std::io::Read> ExactLength<'p, R> {
    fn new(inner: R, len: u64, path: &'p Path) -> Self {
        ExactLength { inner, remaining: len, path }
    }
}

impl<R: std::io::Read> std::io::Read for ExactLength<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 || buffer.is_empty() {
            return Ok(0);
        }
        let want = buffer.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buffer[..want])?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} became shorter while it was read", self.path.display()),
            ));
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let data = pax_data(&[("SCHILY.xattr.user.a".to_string(), b"v".to_vec())]);
        let text = String::from_utf8(data).unwrap();
        let (length, _) = text.split_once(' ').unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), text.len());
    }

    #[test]
    fn a_file_is_read_to_the_length_its_header_gives_never_further() {
        use std::io::Read;
        let path = Path::new("etc/motd");
        let mut grown = Vec::new();
        ExactLength::new(&b"hello, and more written since"[..], 5, path).read_to_end(&mut grown).unwrap();
        assert_eq!(grown, b"hello");
        let error = ExactLength::new(&b"hel"[..], 5, path).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("etc/motd became shorter"), "{error}");
    }
}
