//! The thin initramfs: newc cpio with rootsmith-init as `/init`, the build
//! id and chunk list of the rootfs it belongs to, the module closure of each
//! kernel, and optionally a busybox shell. Entries are sorted, owned by root,
//! timestamped with SOURCE_DATE_EPOCH, so the same inputs give the same bytes.
//!
//! It is two archives one after the other, each compressed on its own (the
//! kernel unpacks such a sequence in order, as it does early microcode before
//! an initramfs): first the fixed part (the init, the modules, the shell, the
//! directories), then the part that changes with every rootfs (the build id
//! and the chunk list). The fixed part's frame comes from a [`FrameCache`],
//! so a changed rootfs compresses a few kilobytes, not the modules again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rootsmith_init::contract::{self, BuildId, ChunkList};

use super::frames::{self, FrameCache};
use crate::recipe::{Algorithm, Compression};

/// The modules of one kernel release, in load order.
pub struct KernelModules {
    pub release: String,
    /// (path inside the initramfs, file bytes)
    pub files: Vec<(String, Vec<u8>)>,
}

pub struct Contents {
    pub init: Vec<u8>,
    pub build: BuildId,
    pub chunks: ChunkList,
    pub modules: Vec<KernelModules>,
    /// A static busybox, for a shell when the boot fails.
    pub busybox: Option<Vec<u8>>,
}

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDevice(u32, u32),
}

/// Applets linked to busybox when the initramfs carries a shell.
const APPLETS: [&str; 14] =
    ["sh", "cat", "dmesg", "ip", "less", "ls", "mkdir", "mount", "ps", "umount", "wget", "vi", "sha256sum", "poweroff"];

/// The two archives' entries: (the fixed part, the rootfs's build id and chunk list).
fn entries(contents: &Contents) -> (BTreeMap<String, Entry>, BTreeMap<String, Entry>) {
    let mut entries = BTreeMap::new();
    for dir in ["dev", "proc", "sys", "run", "sysroot", "rootsmith", contract::INITRAMFS_MODULES] {
        entries.insert(dir.to_string(), Entry::Dir);
    }
    entries.insert("dev/console".into(), Entry::CharDevice(5, 1));
    entries.insert("init".into(), Entry::File { data: contents.init.clone(), mode: 0o755 });
    entries.insert(
        contract::INITRAMFS_BUILD.into(),
        Entry::File { data: contents.build.to_text().into_bytes(), mode: 0o644 },
    );
    entries.insert(
        contract::INITRAMFS_CHUNKS.into(),
        Entry::File { data: contents.chunks.to_text().into_bytes(), mode: 0o644 },
    );
    for kernel in &contents.modules {
        let list: String = kernel.files.iter().map(|(path, _)| format!("/{path}\n")).collect();
        entries.insert(
            format!("{}/{}", contract::INITRAMFS_MODULES, kernel.release),
            Entry::File { data: list.into_bytes(), mode: 0o644 },
        );
        for (path, data) in &kernel.files {
            entries.insert(path.clone(), Entry::File { data: data.clone(), mode: 0o644 });
        }
    }
    if let Some(busybox) = &contents.busybox {
        entries.insert("bin/busybox".into(), Entry::File { data: busybox.clone(), mode: 0o755 });
        for applet in APPLETS {
            entries.insert(format!("bin/{applet}"), Entry::Symlink("busybox".into()));
        }
    }
    // Every parent directory is an entry of its own.
    let parents: Vec<String> = entries
        .keys()
        .flat_map(|path| path.match_indices('/').map(|(at, _)| path[..at].to_string()).collect::<Vec<_>>())
        .collect();
    for parent in parents {
        entries.entry(parent).or_insert(Entry::Dir);
    }
    // Their directory is in the fixed part, which is unpacked first.
    let contract = [contract::INITRAMFS_BUILD, contract::INITRAMFS_CHUNKS]
        .iter()
        .filter_map(|path| entries.remove_entry(*path))
        .collect();
    (entries, contract)
}

/// The two uncompressed archives: the fixed part, then the rootfs's part.
pub fn cpio_segments(contents: &Contents, epoch: i64) -> Result<[Vec<u8>; 2]> {
    let (fixed, contract) = entries(contents);
    let fixed_bytes = cpio_of(&fixed, 1, epoch)?;
    Ok([fixed_bytes, cpio_of(&contract, fixed.len() as u32 + 1, epoch)?])
}

/// One newc archive of `entries`, numbered from `first_ino`.
fn cpio_of(entries: &BTreeMap<String, Entry>, first_ino: u32, epoch: i64) -> Result<Vec<u8>> {
    let mtime = epoch.clamp(0, u32::MAX as i64) as u32;
    let mut out = Vec::new();
    for (ino, (path, entry)) in entries.iter().enumerate() {
        let builder = cpio::newc::Builder::new(path).ino(first_ino + ino as u32).uid(0).gid(0).mtime(mtime);
        let (builder, data): (_, &[u8]) = match entry {
            Entry::Dir => (builder.mode(0o040755).nlink(2), &[]),
            Entry::File { data, mode } => (builder.mode(0o100000 | mode).nlink(1), data),
            Entry::Symlink(target) => (builder.mode(0o120777).nlink(1), target.as_bytes()),
            Entry::CharDevice(major, minor) => {
                (builder.mode(0o020600).nlink(1).rdev_major(*major).rdev_minor(*minor), &[])
            }
        };
        let mut writer = builder.write(&mut out, data.len() as u32);
        writer.write_all(data)?;
        writer.finish()?;
    }
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

/// Write the initramfs, compressed, to `output` (with zstd, the fixed
/// part's frame from `frames` when it holds it); returns its size.
pub fn write(
    contents: &Contents,
    compression: Compression,
    epoch: i64,
    output: &Path,
    frames: Option<&FrameCache>,
) -> Result<u64> {
    let [fixed, rootfs] = cpio_segments(contents, epoch)?;
    let mut bytes = Vec::new();
    for (index, cpio) in [fixed, rootfs].into_iter().enumerate() {
        let compressed = match compression.algorithm {
            Algorithm::Zstd => {
                let level = compression.level.unwrap_or(19);
                match frames {
                    Some(cache) if index == 0 => cache.frame(&frames::label(level)?, &cpio, level)?,
                    _ => frames::compress(&cpio, level)?,
                }
            }
            Algorithm::Gzip => {
                // No name and mtime 0 in the gzip header: the bytes depend on the contents only.
                let mut encoder = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::new(), flate2::Compression::new(compression.level.unwrap_or(9) as u32));
                encoder.write_all(&cpio)?;
                encoder.finish()?
            }
            Algorithm::None => cpio,
            other => bail!("an initramfs cannot be compressed with {}", other.name()),
        };
        bytes.extend_from_slice(&compressed);
        // The next archive, and a second initrd appended after this one,
        // start 4-byte aligned; the kernel skips zero padding between archives.
        bytes.resize(bytes.len().div_ceil(4) * 4, 0);
    }
    fs_err::write(output, &bytes)?;
    Ok(bytes.len() as u64)
}

/// The regular files of an initramfs (zstd, gzip or uncompressed), by path.
pub fn read_files(image: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    read_files_from(fs_err::read(image)?, image)
}

/// At most this many archives in one initramfs are read (rootsmith writes
/// two; a hostile file of many tiny ones would only cost time).
const MAX_SEGMENTS: usize = 64;

/// An archive unpacks to at most this many bytes: an initramfs from a bundle
/// is hostile input, and a small compressed file can claim gigabytes.
/// (Unit tests lower it, to refuse without unpacking a gigabyte.)
const MAX_UNPACKED: u64 = if cfg!(test) { 8 << 20 } else { 1 << 30 };

/// What `decoder` gives, refused past [`MAX_UNPACKED`].
fn unpack(decoder: impl std::io::Read, image: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    decoder
        .take(MAX_UNPACKED + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("decompressing {}", image.display()))?;
    if out.len() as u64 > MAX_UNPACKED {
        bail!("{} unpacks to more than {} MiB", image.display(), MAX_UNPACKED >> 20);
    }
    Ok(out)
}

/// [`read_files`] of an initramfs's bytes, read by the caller (`image` names
/// it in errors): every archive in it, each zstd, gzip or uncompressed, as
/// the kernel unpacks them (a later file of the same path wins).
pub fn read_files_from(raw: Vec<u8>, image: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut rest = raw.as_slice();
    for _ in 0..MAX_SEGMENTS {
        // Zero padding between archives is skipped, as the kernel does.
        rest = &rest[rest.iter().position(|&byte| byte != 0).unwrap_or(rest.len())..];
        if rest.is_empty() {
            return Ok(files);
        }
        if rest.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let length = zstd::zstd_safe::find_frame_compressed_size(rest)
                .map_err(|_| anyhow::anyhow!("{}: a zstd frame that does not end", image.display()))?;
            let out = unpack(zstd::stream::read::Decoder::new(&rest[..length])?.single_frame(), image)?;
            read_archive(&out, image, &mut files)?;
            rest = &rest[length..];
        } else if rest.starts_with(&[0x1f, 0x8b]) {
            let mut input = rest;
            let out = unpack(flate2::bufread::GzDecoder::new(&mut input), image)?;
            read_archive(&out, image, &mut files)?;
            rest = input;
        } else {
            let length = read_archive(rest, image, &mut files)?;
            rest = &rest[length..];
        }
    }
    bail!("{} holds more than {MAX_SEGMENTS} archives", image.display())
}

/// The regular files of the newc archive at the start of `bytes` into
/// `files`; the archive's length, its trailer included.
fn read_archive(bytes: &[u8], image: &Path, files: &mut BTreeMap<String, Vec<u8>>) -> Result<usize> {
    use std::io::Read;
    let mut rest = bytes;
    loop {
        let mut reader =
            cpio::NewcReader::new(rest).with_context(|| format!("{} is not a newc cpio", image.display()))?;
        let trailer = reader.entry().is_trailer();
        let (name, mode) = (reader.entry().name().to_string(), reader.entry().mode());
        let mut data = Vec::new();
        reader.read_to_end(&mut data)?;
        if !trailer && mode & 0o170000 == 0o100000 {
            files.insert(name, data);
        }
        rest = reader.finish()?;
        if trailer {
            return Ok(bytes.len() - rest.len());
        }
    }
}

/// The build id and chunk list an initramfs carries.
pub fn read_contract(image: &Path) -> Result<(BuildId, ChunkList)> {
    read_contract_from(fs_err::read(image)?, image)
}

/// [`read_contract`] of an initramfs's bytes, read by the caller (`image` names it in errors).
pub fn read_contract_from(raw: Vec<u8>, image: &Path) -> Result<(BuildId, ChunkList)> {
    let files = read_files_from(raw, image)?;
    let text = |path: &str| -> Result<String> {
        let bytes = files.get(path).with_context(|| format!("{} has no {path}", image.display()))?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    };
    let build = BuildId::parse(&text(contract::INITRAMFS_BUILD)?)
        .map_err(|error| anyhow::anyhow!("{}: {error}", contract::INITRAMFS_BUILD))?;
    let chunks = ChunkList::parse(&text(contract::INITRAMFS_CHUNKS)?)
        .map_err(|error| anyhow::anyhow!("{}: {error}", contract::INITRAMFS_CHUNKS))?;
    Ok((build, chunks))
}

/// Whether an ELF executable needs no dynamic loader (no PT_INTERP header).
pub fn is_static_elf(bytes: &[u8]) -> bool {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).all(|index| {
        let at = phoff + index * size;
        bytes.get(at..at + 4).is_some_and(|kind| u32::from_le_bytes(kind.try_into().unwrap()) != 3)
    })
}

/// The ELF machine (`e_machine`) of an executable, if it is a 64-bit
/// little-endian ELF file.
pub fn elf_machine(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    Some(u16::from_le_bytes([bytes[18], bytes[19]]))
}

/// The variable that names `arch`'s init: `ROOTSMITH_INIT` for amd64 (as
/// before there was another), `ROOTSMITH_INIT_ARM64` for arm64.
pub fn init_variable(arch: &str) -> String {
    if arch == "amd64" {
        "ROOTSMITH_INIT".into()
    } else {
        format!("ROOTSMITH_INIT_{}", arch.to_uppercase())
    }
}

/// The file name of `arch`'s init under `PREFIX/lib/rootsmith/`, where
/// `make install` puts it: `rootsmith-init` for amd64, `rootsmith-init-arm64`.
pub fn installed_init_name(arch: &str) -> String {
    if arch == "amd64" {
        "rootsmith-init".into()
    } else {
        format!("rootsmith-init-{arch}")
    }
}

/// Where `arch`'s init is looked for, in order: the file `variable` names
/// when it is set (and nowhere else then); otherwise relative to `exe_dir`,
/// the running binary's directory: cargo's layout for the arch's Rust
/// target (`target/TRIPLE/init/` beside `target/debug/` or
/// `target/release/`, and from `deps/` for tests), then
/// `../lib/rootsmith/NAME` ([`installed_init_name`]).
pub fn init_candidates(arch: &str, variable: Option<PathBuf>, exe_dir: Option<&Path>) -> Result<Vec<PathBuf>> {
    let Some(names) = crate::arch::names(arch) else {
        bail!("rootsmith has no init for architecture `{arch}` (it builds for: {})", crate::arch::SUPPORTED.join(", "));
    };
    let mut candidates = Vec::new();
    if let Some(path) = variable {
        candidates.push(path);
    } else if let Some(dir) = exe_dir {
        candidates.push(dir.join(format!("../{}/init/rootsmith-init", names.rust_target)));
        candidates.push(dir.join(format!("../../{}/init/rootsmith-init", names.rust_target)));
        candidates.push(dir.join("../lib/rootsmith").join(installed_init_name(arch)));
    }
    Ok(candidates)
}

/// The static init program for a bundle of `arch`: the first of
/// [`init_candidates`] that exists (`ROOTSMITH_INIT` or
/// `ROOTSMITH_INIT_ARM64` from the environment, the binary's own path with
/// links resolved). It must be a static executable for `arch`.
pub fn find_init(arch: &str) -> Result<PathBuf> {
    let variable = init_variable(arch);
    let exe_dir = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf));
    let candidates = init_candidates(arch, std::env::var_os(&variable).map(PathBuf::from), exe_dir.as_deref())?;
    first_init(arch, &variable, &candidates)
}

/// The first of `candidates` that exists, checked to be a static executable
/// for `arch`.
fn first_init(arch: &str, variable: &str, candidates: &[PathBuf]) -> Result<PathBuf> {
    let machine = crate::arch::names(arch).map(|names| names.elf_machine);
    for candidate in candidates {
        if candidate.is_file() {
            let bytes = fs_err::read(candidate)?;
            if !is_static_elf(&bytes) {
                bail!("{} is not a static executable; build it with `make init`", candidate.display());
            }
            if elf_machine(&bytes) != machine {
                bail!("{} is not an {arch} executable, so it cannot be the init of an {arch} bundle\nhint: build the inits with `make init`, or point {variable} at the {arch} one", candidate.display());
            }
            return Ok(candidate.clone());
        }
    }
    bail!(
        "the initramfs's init program for {arch} is not built (looked in: {})\nhint: run `make init` (a static `cargo build -p rootsmith-init --profile init` for each architecture) and `make install`, or point {variable} at it",
        candidates.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// A static busybox for `outputs.initramfs.shell: true`: the rootfs's own
/// (a recipe that installs busybox-static), else the host's.
pub fn find_busybox(tree: &Path) -> Result<Vec<u8>> {
    let in_tree = ["bin/busybox", "usr/bin/busybox"].map(|path| tree.join(path));
    for candidate in
        in_tree.iter().map(PathBuf::as_path).chain([Path::new("/bin/busybox"), Path::new("/usr/bin/busybox")])
    {
        // Follow no symlink out of the tree: read the file itself.
        if candidate.symlink_metadata().is_ok_and(|m| m.is_file()) {
            if let Ok(bytes) = fs_err::read(candidate) {
                if is_static_elf(&bytes) {
                    return Ok(bytes);
                }
            }
        }
    }
    Err(anyhow::anyhow!("outputs.initramfs.shell needs a static busybox, in the rootfs or on the host\nhint: install busybox-static in a packages stage, or apt-get install busybox-static on the host"))
        .context("adding a shell to the initramfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents() -> Contents {
        Contents {
            init: b"\x7fELF init".to_vec(),
            build: BuildId { cookie: "c0ffee".into(), name: "demo".into() },
            chunks: ChunkList::from_reader(&b"rootfs image"[..], 4).unwrap(),
            modules: vec![KernelModules {
                release: "6.1.0-test".into(),
                files: vec![
                    ("lib/modules/6.1.0-test/kernel/b.ko".into(), b"b".to_vec()),
                    ("lib/modules/6.1.0-test/kernel/a.ko".into(), b"a".to_vec()),
                ],
            }],
            busybox: None,
        }
    }

    fn read_entries(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut rest = bytes;
        loop {
            let mut reader = cpio::NewcReader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let (name, mode) = (reader.entry().name().to_string(), reader.entry().mode());
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut data).unwrap();
            entries.push((name, mode, data));
            rest = reader.finish().unwrap();
        }
        entries
    }

    #[test]
    fn sorted_entries_with_the_contract_files_and_module_order() {
        let [fixed, rootfs] = cpio_segments(&contents(), 1000).unwrap();
        let (fixed, rootfs) = (read_entries(&fixed), read_entries(&rootfs));
        for part in [&fixed, &rootfs] {
            let names: Vec<&str> = part.iter().map(|(name, _, _)| name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted);
        }
        // What changes with the rootfs is the second archive, nothing else.
        let rootfs_names: Vec<&str> = rootfs.iter().map(|(name, _, _)| name.as_str()).collect();
        assert_eq!(rootfs_names, ["rootsmith/build", "rootsmith/rootfs.chunks"]);
        let entries: Vec<_> = fixed.into_iter().chain(rootfs).collect();
        let names: Vec<&str> = entries.iter().map(|(name, _, _)| name.as_str()).collect();
        for needed in [
            "dev/console",
            "init",
            "lib/modules/6.1.0-test/kernel",
            "rootsmith",
            "rootsmith/build",
            "rootsmith/rootfs.chunks",
            "sysroot",
        ] {
            assert!(names.contains(&needed), "{needed} in {names:?}");
        }
        let find = |name: &str| entries.iter().find(|(n, _, _)| n == name).unwrap();
        assert_eq!(find("init").1, 0o100755);
        assert_eq!(find("dev/console").1, 0o020600);
        // The module list keeps the load order, not the sorted order.
        assert_eq!(
            find("rootsmith/modules/6.1.0-test").2,
            b"/lib/modules/6.1.0-test/kernel/b.ko\n/lib/modules/6.1.0-test/kernel/a.ko\n"
        );
        assert_eq!(BuildId::parse(std::str::from_utf8(&find("rootsmith/build").2).unwrap()).unwrap().cookie, "c0ffee");
        assert_eq!(
            ChunkList::parse(std::str::from_utf8(&find("rootsmith/rootfs.chunks").2).unwrap()).unwrap().size,
            12
        );
    }

    #[test]
    fn same_inputs_same_bytes_in_every_compression() {
        let dir = tempfile::tempdir().unwrap();
        for algorithm in [Algorithm::Zstd, Algorithm::Gzip, Algorithm::None] {
            let compression =
                Compression { algorithm, level: if algorithm == Algorithm::None { None } else { Some(3) } };
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            let size = write(&contents(), compression, 1000, &a, None).unwrap();
            write(&contents(), compression, 1000, &b, None).unwrap();
            assert_eq!(fs_err::read(&a).unwrap(), fs_err::read(&b).unwrap());
            assert_eq!(size % 4, 0);
        }
        let mut with_shell = contents();
        with_shell.busybox = Some(b"busybox".to_vec());
        let names: Vec<String> =
            read_entries(&cpio_segments(&with_shell, 0).unwrap()[0]).into_iter().map(|(name, _, _)| name).collect();
        assert!(names.contains(&"bin/sh".to_string()) && names.contains(&"bin/busybox".to_string()));
    }

    #[test]
    fn contract_files_read_back_from_every_compression() {
        let dir = tempfile::tempdir().unwrap();
        for algorithm in [Algorithm::Zstd, Algorithm::Gzip, Algorithm::None] {
            let compression =
                Compression { algorithm, level: if algorithm == Algorithm::None { None } else { Some(3) } };
            let image = dir.path().join("i");
            write(&contents(), compression, 0, &image, None).unwrap();
            let (build, chunks) = read_contract(&image).unwrap();
            assert_eq!(build, contents().build);
            assert_eq!(chunks, contents().chunks);
            assert_eq!(read_files(&image).unwrap()["init"], contents().init, "{}", algorithm.name());
        }
    }

    #[test]
    fn the_fixed_part_comes_from_the_frame_cache_and_a_new_rootfs_changes_only_the_second_archive() {
        let dir = tempfile::tempdir().unwrap();
        let frames_dir = dir.path().join("frames");
        let cache = FrameCache::new(Box::new(move |label, hex| frames_dir.join(label).join(hex)), [1; 32]);
        let zstd = Compression { algorithm: Algorithm::Zstd, level: Some(19) };
        let (clean, first, second) = (dir.path().join("clean"), dir.path().join("first"), dir.path().join("second"));
        write(&contents(), zstd, 0, &clean, None).unwrap();
        write(&contents(), zstd, 0, &first, Some(&cache)).unwrap();
        let mut other = contents();
        other.build.cookie = "beef".into();
        write(&other, zstd, 0, &second, Some(&cache)).unwrap();
        assert_eq!(cache.hits.load(std::sync::atomic::Ordering::Relaxed), 1, "the second write copied the fixed part");
        // From the cache or not, the same bytes.
        assert_eq!(fs_err::read(&clean).unwrap(), fs_err::read(&first).unwrap());
        let (first, second) = (fs_err::read(&first).unwrap(), fs_err::read(&second).unwrap());
        let fixed = zstd::zstd_safe::find_frame_compressed_size(&first).unwrap();
        assert_eq!(first[..fixed], second[..fixed]);
        assert_ne!(first, second);
        assert_eq!(read_contract(&dir.path().join("second")).unwrap().0.cookie, "beef");
    }

    #[test]
    fn hostile_initramfs_files_are_refused_not_unpacked_without_end() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("i");
        // A frame claiming more than the limit: zeros compress to nothing.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(MAX_UNPACKED >> 20) + 1 {
            std::io::Write::write_all(&mut encoder, &zeros).unwrap();
        }
        fs_err::write(&image, encoder.finish().unwrap()).unwrap();
        assert!(read_files(&image).unwrap_err().to_string().contains("unpacks to more than"));
        // A truncated frame, and many empty archives.
        let mut bytes = Vec::new();
        write(&contents(), Compression { algorithm: Algorithm::Zstd, level: Some(3) }, 0, &image, None).unwrap();
        bytes.extend_from_slice(&fs_err::read(&image).unwrap()[..20]);
        fs_err::write(&image, &bytes).unwrap();
        assert!(read_files(&image).is_err());
        let mut many = Vec::new();
        for _ in 0..=MAX_SEGMENTS {
            cpio::newc::trailer(&mut many).unwrap();
        }
        fs_err::write(&image, &many).unwrap();
        assert!(read_files(&image).unwrap_err().to_string().contains("more than"));
    }

    /// Each architecture's init has its own variable, cargo directory and
    /// installed name; a variable that is set is the only place looked in.
    #[test]
    fn the_init_is_looked_for_per_architecture() {
        let exe = Path::new("/opt/rootsmith/bin");
        let shown = |arch: &str, variable: Option<PathBuf>| -> Vec<String> {
            init_candidates(arch, variable, Some(exe)).unwrap().iter().map(|path| path.display().to_string()).collect()
        };
        assert_eq!(
            shown("amd64", None),
            [
                "/opt/rootsmith/bin/../x86_64-unknown-linux-gnu/init/rootsmith-init",
                "/opt/rootsmith/bin/../../x86_64-unknown-linux-gnu/init/rootsmith-init",
                "/opt/rootsmith/bin/../lib/rootsmith/rootsmith-init",
            ]
        );
        assert_eq!(
            shown("arm64", None),
            [
                "/opt/rootsmith/bin/../aarch64-unknown-linux-gnu/init/rootsmith-init",
                "/opt/rootsmith/bin/../../aarch64-unknown-linux-gnu/init/rootsmith-init",
                "/opt/rootsmith/bin/../lib/rootsmith/rootsmith-init-arm64",
            ]
        );
        assert_eq!(shown("arm64", Some("/x/init-arm64".into())), ["/x/init-arm64"]);
        assert_eq!(init_variable("amd64"), "ROOTSMITH_INIT");
        assert_eq!(init_variable("arm64"), "ROOTSMITH_INIT_ARM64");
        let error = init_candidates("armhf", None, Some(exe)).unwrap_err().to_string();
        assert!(error.contains("no init for architecture `armhf`"), "{error}");
    }

    /// An init of the wrong machine is refused by name, not put into the
    /// initramfs: an amd64 init cannot start an arm64 kernel's userspace.
    #[test]
    fn an_init_of_another_architecture_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A static ELF header for aarch64 (machine 183) with no program headers.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert!(is_static_elf(&elf));
        assert_eq!(elf_machine(&elf), Some(183));
        let init = dir.path().join("init");
        fs_err::write(&init, &elf).unwrap();
        let candidates = [dir.path().join("missing"), init.clone()];
        assert_eq!(first_init("arm64", "ROOTSMITH_INIT_ARM64", &candidates).unwrap(), init, "the first that exists");
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        fs_err::write(&init, &elf).unwrap();
        assert_eq!(first_init("amd64", "ROOTSMITH_INIT", &candidates).unwrap(), init);
        let error = first_init("arm64", "ROOTSMITH_INIT_ARM64", &candidates).unwrap_err().to_string();
        assert!(error.contains("is not an arm64 executable") && error.contains("ROOTSMITH_INIT_ARM64"), "{error}");
    }

    #[test]
    fn tells_static_from_dynamic_executables() {
        let init = std::env::current_exe().unwrap();
        // The test binary itself is dynamically linked.
        assert!(!is_static_elf(&fs_err::read(init).unwrap()));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }
}
