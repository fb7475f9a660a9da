//! Unified Kernel Images: systemd's EFI stub (`linuxx64.efi.stub`, Debian's
//! `systemd-boot-efi`) with the os-release, the command line, the thin
//! initramfs and the kernel added as PE sections, one file that UEFI firmware
//! (or iPXE, or a boot manager) starts like any EFI program.
//!
//! The sections are placed after the stub's last one, in [`SECTIONS`] order
//! (the kernel last, as systemd's ukify places it), each at a page-aligned
//! address read from the stub's own headers. objcopy writes the current time
//! into the PE header and its checksum, so both are set afterwards: the time
//! stamp to `SOURCE_DATE_EPOCH`, the checksum computed anew. The same stub,
//! kernel, initramfs, command line and os-release give the same bytes.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use object::read::pe::{ImageNtHeaders, PeFile64};
use object::{Object, ObjectSection};

use crate::bundle::manifest::{ManifestArtifact, ManifestBoot, ManifestKernel, ManifestUki};
use crate::bundle::names::BundleNames;
use crate::host::{Command, Host};

/// The EFI stub of Debian's `systemd-boot-efi`, for x86-64.
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// The sections a UKI adds to its stub, in the order they are laid out.
pub const SECTIONS: [&str; 4] = [".osrel", ".cmdline", ".initrd", ".linux"];

/// The alignment of every added section's address, at least: a page, or the
/// stub's section alignment when that is larger.
pub const MIN_ALIGNMENT: u64 = 4096;

/// A stub larger than this is not systemd's (it is about 80 KiB).
const MAX_STUB_BYTES: u64 = 16 << 20;

/// What the stub's headers say about where sections can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubLayout {
    pub image_base: u64,
    pub section_alignment: u64,
    /// The end of the stub's last section in memory (an RVA).
    pub end: u64,
    /// The stub's own section names.
    pub sections: Vec<String>,
}

/// An added section: its name, its address relative to the image base (RVA)
/// and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub name: &'static str,
    pub rva: u64,
    pub size: u64,
}

fn align_up(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment) * alignment
}

/// Read the layout of a PE32+ stub.
pub fn stub_layout(bytes: &[u8]) -> Result<StubLayout> {
    let file = PeFile64::parse(bytes).context("the EFI stub is not a PE32+ image")?;
    let optional = file.nt_headers().optional_header();
    use object::read::pe::ImageOptionalHeader;
    let mut end = 0u64;
    let mut sections = Vec::new();
    for section in file.section_table().iter() {
        let start = u64::from(section.virtual_address.get(object::LittleEndian));
        let size = u64::from(section.virtual_size.get(object::LittleEndian))
            .max(u64::from(section.size_of_raw_data.get(object::LittleEndian)));
        end = end.max(start + size);
        sections.push(String::from_utf8_lossy(section.raw_name()).into_owned());
    }
    let alignment = u64::from(optional.section_alignment());
    if !alignment.is_power_of_two() {
        bail!("the EFI stub's section alignment {alignment:#x} is not a power of two");
    }
    Ok(StubLayout { image_base: optional.image_base(), section_alignment: alignment, end, sections })
}

/// Where the added sections go: one after the other from the end of the
/// stub, each at an address aligned to [`MIN_ALIGNMENT`] (or the stub's
/// larger section alignment). `sizes` are in [`SECTIONS`] order.
pub fn place(stub: &StubLayout, sizes: [u64; 4]) -> Vec<Placed> {
    let alignment = stub.section_alignment.max(MIN_ALIGNMENT);
    let mut next = align_up(stub.end, alignment);
    let mut placed = Vec::new();
    for (name, size) in SECTIONS.into_iter().zip(sizes) {
        placed.push(Placed { name, rva: next, size });
        next = align_up(next + size, alignment);
    }
    placed
}

/// The os-release of a bundle's UKI: what boot menus show, and the build it
/// belongs to (`BUILD_ID`, the rootfs's cookie).
pub fn os_release(name: &str, version: &str, cookie: &str) -> String {
    // Names, versions and cookies hold no quote, backslash, `$` or backtick.
    format!("NAME=\"{name}\"\nID={name}\nVERSION=\"{version}\"\nVERSION_ID={version}\nPRETTY_NAME=\"{name} {version}\"\nIMAGE_ID={name}\nIMAGE_VERSION={version}\nBUILD_ID={cookie}\n")
}

/// What goes into one UKI.
pub struct Parts<'a> {
    pub os_release: &'a str,
    pub cmdline: &'a str,
    /// The kernel (a bzImage).
    pub linux: &'a Path,
    /// The thin initramfs.
    pub initrd: &'a Path,
}

/// Write the UKI of `parts` on `stub` to `output`; `scratch` holds the small
/// section files; objcopy's output goes to `log`. Returns the added
/// sections, checked in the file written.
pub fn write(
    host: &dyn Host,
    stub: &Path,
    parts: &Parts,
    output: &Path,
    epoch: i64,
    scratch: &Path,
    log: &Path,
) -> Result<Vec<Placed>> {
    let stub_bytes = read_stub(stub)?;
    let layout = stub_layout(&stub_bytes).with_context(|| format!("reading {}", stub.display()))?;
    if let Some(taken) = layout.sections.iter().find(|name| SECTIONS.contains(&name.as_str())) {
        bail!("{} already has a {taken} section: it is a UKI, not a bare EFI stub", stub.display());
    }
    let objcopy = crate::tools::require("objcopy", "to make a Unified Kernel Image")?;
    fs_err::create_dir_all(scratch)?;
    let osrel = scratch.join("osrel");
    let cmdline = scratch.join("cmdline");
    fs_err::write(&osrel, parts.os_release)?;
    fs_err::write(&cmdline, parts.cmdline)?;
    let files = [osrel.as_path(), cmdline.as_path(), parts.initrd, parts.linux];
    let mut sizes = [0u64; 4];
    for (size, file) in sizes.iter_mut().zip(files) {
        *size = fs_err::metadata(file)?.len();
    }
    let placed = place(&layout, sizes);
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for (section, file) in placed.iter().zip(files) {
        let mut add = std::ffi::OsString::from(format!("{}=", section.name));
        add.push(file);
        args.extend(["--add-section".into(), add]);
        args.extend([
            "--change-section-vma".into(),
            format!("{}={:#x}", section.name, layout.image_base + section.rva).into(),
        ]);
    }
    args.push(stub.into());
    args.push(output.into());
    host.run(&Command::on_host(objcopy, args, log)).with_context(|| format!("making the UKI {}", output.display()))?;
    let mut bytes = fs_err::read(output)?;
    set_time_stamp(&mut bytes, epoch)?;
    fs_err::write(output, &bytes)?;
    check(&bytes, &placed, files).with_context(|| format!("checking the UKI {}", output.display()))?;
    Ok(placed)
}

/// A certificate or key file larger than this is not one.
const MAX_PEM_BYTES: u64 = 256 << 10;

/// The environment variable that holds the passphrase of an encrypted
/// Secure Boot signing key.
pub const KEY_PASSPHRASE_ENV: &str = "ROOTSMITH_UKI_KEY_PASSPHRASE";

/// What signs UKIs for Secure Boot: a PEM private key and its X.509
/// certificate. osslsigncode signs (it takes the signing time as an
/// argument, `SOURCE_DATE_EPOCH`, where sbsign writes the clock's: with an
/// RSA key, whose PKCS#1 v1.5 signatures are deterministic, the same inputs
/// give the same signed bytes).
#[derive(Clone)]
pub struct SecureBootSigner {
    pub key: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    /// The SHA-256 of the certificate (DER), as `openssl x509 -fingerprint -sha256` shows it without colons.
    pub cert_sha256: String,
    /// The key is encrypted: its passphrase comes from [`KEY_PASSPHRASE_ENV`].
    passphrase: Option<String>,
}

/// The passphrase is never shown.
impl std::fmt::Debug for SecureBootSigner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SecureBootSigner")
            .field("key", &self.key)
            .field("cert", &self.cert)
            .field("cert_sha256", &self.cert_sha256)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "(given)"))
            .finish()
    }
}

fn read_pem(path: &Path, what: &str) -> Result<String> {
    let file =
        crate::fileops::open_regular(path).with_context(|| format!("the Secure Boot {what} {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("the Secure Boot {what} {} is not a PEM text file", path.display()))?;
    if text.len() as u64 > MAX_PEM_BYTES {
        bail!("the Secure Boot {what} {} is larger than {} KiB: not a PEM file", path.display(), MAX_PEM_BYTES >> 10);
    }
    Ok(text)
}

/// Whether the PE image `file` carries an Authenticode signature made with
/// the certificate whose DER has SHA-256 `cert_sha256` (what a bundle's
/// manifest records), and valid for the image's bytes: the signature is
/// extracted (osslsigncode), the certificate with that digest taken from it
/// (openssl), and the image verified against that certificate (sbverify).
/// `scratch` is an empty directory of the caller's.
pub fn check_signed_by(host: &dyn Host, file: &Path, cert_sha256: &str, scratch: &Path) -> Result<()> {
    use std::ffi::OsStr;
    let shown = file.display();
    let log = scratch.join("log");
    let tool = |name: &str, why: &str| crate::tools::require(name, why);
    let signature = scratch.join("signature.p7");
    let extract = Command::on_host(
        tool("osslsigncode", "to check a UKI's Secure Boot signature")?,
        [
            OsStr::new("extract-signature"),
            OsStr::new("-in"),
            file.as_os_str(),
            OsStr::new("-out"),
            signature.as_os_str(),
        ],
        &log,
    );
    if host.status(&extract)? != 0 {
        bail!("{shown} has no Authenticode signature, but the manifest says it is signed (certificate sha256 {cert_sha256})");
    }
    let certificates = scratch.join("certificates.pem");
    let print = Command::on_host(
        tool("openssl", "to read a UKI's Secure Boot signature")?,
        [
            OsStr::new("pkcs7"),
            OsStr::new("-inform"),
            OsStr::new("DER"),
            OsStr::new("-print_certs"),
            OsStr::new("-in"),
            signature.as_os_str(),
            OsStr::new("-out"),
            certificates.as_os_str(),
        ],
        &log,
    );
    host.run(&print).with_context(|| format!("reading the signature of {shown}"))?;
    let text = fs_err::read_to_string(&certificates)?;
    let signer = text
        .split_inclusive("-----END CERTIFICATE-----")
        .find(|block| pem_block(block, "CERTIFICATE").is_some_and(|der| crate::digest::sha256_hex(&der) == cert_sha256))
        .with_context(|| {
            format!("{shown} is not signed with the certificate the manifest records (sha256 {cert_sha256})")
        })?;
    let signer_file = scratch.join("signer.pem");
    fs_err::write(&signer_file, signer.trim_start())?;
    let verify = Command::on_host(
        tool("sbverify", "to check a UKI's Secure Boot signature")?,
        [OsStr::new("--cert"), signer_file.as_os_str(), file.as_os_str()],
        &log,
    );
    if host.status(&verify)? != 0 {
        bail!("{shown}: its Authenticode signature does not hold for its bytes (sbverify with the recorded certificate fails)");
    }
    Ok(())
}

/// The DER bytes of the first `label` block of a PEM text.
pub fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text.split_once(&begin)?.1.split_once(&end)?.0;
    let joined: String = body.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(joined).ok()
}

impl SecureBootSigner {
    /// Check the key and certificate before anything is built: both PEM
    /// files, the key's passphrase given when it is encrypted, and the
    /// signing tool installed.
    pub fn open(key: &Path, cert: &Path) -> Result<SecureBootSigner> {
        Self::open_with(key, cert, std::env::var(KEY_PASSPHRASE_ENV).ok())
    }

    /// [`SecureBootSigner::open`] with the passphrase given.
    pub fn open_with(key: &Path, cert: &Path, passphrase: Option<String>) -> Result<SecureBootSigner> {
        crate::tools::require("osslsigncode", "to sign a UKI for Secure Boot")?;
        let cert_text = read_pem(cert, "certificate")?;
        let der = pem_block(&cert_text, "CERTIFICATE")
            .with_context(|| format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", cert.display()))?;
        // One certificate: the manifest records the one that signs (with a
        // CA bundle the first would be recorded while the leaf signs).
        let certificates = cert_text.matches("-----BEGIN CERTIFICATE-----").count();
        if certificates > 1 {
            bail!(
                "{} holds {certificates} certificates; give the signing certificate alone (the one made for the key)",
                cert.display()
            );
        }
        let key_text = read_pem(key, "key")?;
        if !key_text.contains("-----BEGIN") || !key_text.contains("PRIVATE KEY-----") {
            bail!("{} holds no PEM private key", key.display());
        }
        let encrypted =
            key_text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || key_text.contains("Proc-Type: 4,ENCRYPTED");
        let passphrase = match (encrypted, passphrase) {
            (false, _) => None,
            (true, Some(passphrase)) => Some(passphrase),
            (true, None) => {
                bail!("the Secure Boot key {} is encrypted: put its passphrase in {KEY_PASSPHRASE_ENV}", key.display())
            }
        };
        Ok(SecureBootSigner {
            key: key.to_path_buf(),
            cert: cert.to_path_buf(),
            cert_sha256: crate::digest::sha256_hex(&der),
            passphrase,
        })
    }

    /// Whether the key opens (its passphrase is right) and is the
    /// certificate's: the public key of each, through openssl, before any
    /// stage runs (signing would otherwise fail only at publish). A failure
    /// quotes openssl's words, never a passphrase, and names no log.
    pub fn check_pair(&self, host: &dyn Host) -> Result<()> {
        let openssl = crate::tools::require("openssl", "to check the Secure Boot key against its certificate")?;
        let scratch = tempfile::tempdir()?;
        let log = scratch.path().join("log");
        let public = |args: Vec<std::ffi::OsString>, what: &str| -> Result<Vec<u8>> {
            let (code, stdout) = host.output(&Command::on_host(&openssl, args, &log))?;
            if code != 0 {
                let said = fs_err::read_to_string(&log).unwrap_or_default();
                let said = said.lines().find(|line| !line.trim().is_empty()).unwrap_or("").trim().to_string();
                bail!("{what} ({said})");
            }
            Ok(stdout)
        };
        let mut key_args: Vec<std::ffi::OsString> =
            vec!["pkey".into(), "-pubout".into(), "-in".into(), self.key.clone().into()];
        // The passphrase through a file only this process can read, not the argv.
        if let Some(passphrase) = &self.passphrase {
            let secret = scratch.path().join("secret");
            fs_err::write(&secret, passphrase)?;
            key_args.extend(["-passin".into(), format!("file:{}", secret.display()).into()]);
        } else {
            // An encrypted key is refused before this; never wait for a prompt.
            key_args.extend(["-passin".into(), "pass:".into()]);
        }
        let from_key = public(
            key_args,
            &format!(
                "the Secure Boot key {} cannot be opened (a wrong passphrase in {KEY_PASSPHRASE_ENV}?)",
                self.key.display()
            ),
        )?;
        let cert_args = vec!["x509".into(), "-noout".into(), "-pubkey".into(), "-in".into(), self.cert.clone().into()];
        let from_cert =
            public(cert_args, &format!("the Secure Boot certificate {} cannot be read", self.cert.display()))?;
        if from_key != from_cert {
            bail!(
                "the Secure Boot key {} is not the key of the certificate {}\nhint: give the certificate made for this key (openssl x509 -noout -pubkey -in CERT and openssl pkey -pubout -in KEY print the same)",
                self.key.display(),
                self.cert.display()
            );
        }
        Ok(())
    }

    /// Sign the PE image `input` into `output` (Authenticode, SHA-256),
    /// dated `epoch`.
    pub fn sign(&self, host: &dyn Host, input: &Path, output: &Path, epoch: i64, log: &Path) -> Result<()> {
        let osslsigncode = crate::tools::require("osslsigncode", "to sign a UKI for Secure Boot")?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "sign".into(),
            "-h".into(),
            "sha256".into(),
            "-time".into(),
            epoch.max(0).to_string().into(),
            "-certs".into(),
            self.cert.clone().into(),
            "-key".into(),
            self.key.clone().into(),
        ];
        // The passphrase goes through a file only this process can read, not the argv others see.
        let secret = tempfile::NamedTempFile::new()?;
        if let Some(passphrase) = &self.passphrase {
            fs_err::write(secret.path(), passphrase)?;
            args.extend(["-readpass".into(), secret.path().into()]);
        }
        let _ = fs_err::remove_file(output);
        args.extend(["-in".into(), input.into(), "-out".into(), output.into()]);
        host.run(&Command::on_host(osslsigncode, args, log))
            .with_context(|| format!("signing {} for Secure Boot with {}", input.display(), self.key.display()))
    }
}

/// The UKIs of a bundle: which kernels get one and the rootfs URL they carry.
pub struct BundleUkis<'a> {
    /// Whether the kernel stage of this name gets one.
    pub covers: &'a dyn Fn(&str) -> bool,
    /// `None`: the default, [`crate::recipe::Uki::default_rootfs_url`].
    pub rootfs_url: Option<&'a str>,
    pub cookie: &'a str,
    pub epoch: i64,
    /// Sign them for Secure Boot.
    pub signer: Option<&'a SecureBootSigner>,
}

/// Write the UKIs of the bundle in `dir` (which holds its kernels' vmlinuz
/// and its initramfs, named as `kernels` and `boot` say), set each kernel's
/// `uki`, and return what the manifest says of them with the files written.
pub fn write_for_bundle(
    host: &dyn Host,
    dir: &Path,
    names: &BundleNames,
    kernels: &mut [ManifestKernel],
    boot: &ManifestBoot,
    ukis: &BundleUkis,
) -> Result<(ManifestUki, Vec<ManifestArtifact>)> {
    let default_url = crate::recipe::Uki::default_rootfs_url(names.name, names.version, &boot.rootfs_image);
    let rootfs_url = ukis.rootfs_url.unwrap_or(&default_url).to_string();
    let cmdline = [boot.cmdline.as_str(), &format!("{}={rootfs_url}", rootsmith_init::contract::args::ROOTFS_URL)]
        .iter()
        .filter(|part| !part.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let os_release = os_release(names.name, names.version, ukis.cookie);
    let scratch = tempfile::tempdir()?;
    let log = scratch.path().join("objcopy.log");
    let mut artifacts = Vec::new();
    for kernel in kernels.iter_mut().filter(|kernel| (ukis.covers)(&kernel.name)) {
        let file = names.uki(&kernel.name);
        let parts = Parts {
            os_release: &os_release,
            cmdline: &cmdline,
            linux: &dir.join(&kernel.vmlinuz),
            initrd: &dir.join(&boot.initramfs),
        };
        match ukis.signer {
            None => {
                write(
                    host,
                    Path::new(STUB),
                    &parts,
                    &dir.join(&file),
                    ukis.epoch,
                    &scratch.path().join(&kernel.name),
                    &log,
                )
                .with_context(|| format!("the UKI of kernel {}", kernel.name))?;
            }
            Some(signer) => {
                let unsigned = scratch.path().join(format!("{}.efi", kernel.name));
                write(host, Path::new(STUB), &parts, &unsigned, ukis.epoch, &scratch.path().join(&kernel.name), &log)
                    .with_context(|| format!("the UKI of kernel {}", kernel.name))?;
                signer
                    .sign(host, &unsigned, &dir.join(&file), ukis.epoch, &log)
                    .with_context(|| format!("the UKI of kernel {}", kernel.name))?;
            }
        }
        let (sha256, size) = crate::digest::hash_reader(fs_err::File::open(dir.join(&file))?)?;
        artifacts.push(ManifestArtifact { name: file.clone(), size, sha256 });
        kernel.uki = Some(file);
    }
    let stub_sha256 = crate::digest::hash_file(Path::new(STUB))?;
    let signed_cert_sha256 = ukis.signer.map(|signer| signer.cert_sha256.clone());
    Ok((
        ManifestUki {
            rootfs_url_default: rootfs_url == default_url,
            cmdline,
            rootfs_url,
            stub_sha256,
            signed_cert_sha256,
        },
        artifacts,
    ))
}

fn read_stub(stub: &Path) -> Result<Vec<u8>> {
    let file = crate::fileops::open_regular(stub).with_context(|| {
        format!(
            "the EFI stub {} is needed to make a Unified Kernel Image\nhint: apt-get install {}",
            stub.display(),
            crate::tools::package_of("linuxx64.efi.stub")
        )
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_STUB_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STUB_BYTES {
        bail!("{} is larger than {} MiB: not an EFI stub", stub.display(), MAX_STUB_BYTES >> 20);
    }
    Ok(bytes)
}

/// The offsets of the COFF time stamp and of the optional header's checksum.
fn header_offsets(bytes: &[u8]) -> Result<(usize, usize)> {
    let pe = u32::from_le_bytes(bytes.get(0x3c..0x40).context("no DOS header")?.try_into().expect("4 bytes")) as usize;
    if bytes.get(pe..pe + 4) != Some(b"PE\0\0".as_slice()) {
        bail!("no PE signature at {pe:#x}");
    }
    // Signature (4), machine (2), number of sections (2), then the time stamp;
    // the optional header follows the 20-byte COFF header, its checksum at 64.
    let (stamp, checksum) = (pe + 8, pe + 24 + 64);
    if bytes.len() < checksum + 4 {
        bail!("the PE headers are cut short");
    }
    Ok((stamp, checksum))
}

/// Set the PE time stamp to `epoch` (clamped to what 32 bits hold) and
/// compute the checksum anew.
pub fn set_time_stamp(bytes: &mut [u8], epoch: i64) -> Result<()> {
    let (stamp, checksum) = header_offsets(bytes)?;
    bytes[stamp..stamp + 4].copy_from_slice(&(epoch.clamp(0, i64::from(u32::MAX)) as u32).to_le_bytes());
    let sum = pe_checksum(bytes, checksum);
    bytes[checksum..checksum + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The PE image checksum: 16-bit words summed with end-around carry (the
/// checksum field counted as zero), plus the file's length.
pub fn pe_checksum(bytes: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (index, pair) in bytes.chunks(2).enumerate() {
        let offset = index * 2;
        if offset == checksum_offset || offset == checksum_offset + 2 {
            continue;
        }
        let word = u64::from(pair[0]) | (u64::from(*pair.get(1).unwrap_or(&0)) << 8);
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(bytes.len() as u32)
}

/// The added sections of a UKI: name, RVA and contents (without the file
/// alignment's padding).
pub fn sections(bytes: &[u8]) -> Result<Vec<(String, u64, Vec<u8>)>> {
    let file = PeFile64::parse(bytes).context("not a PE32+ image")?;
    let base = file.relative_address_base();
    let mut found = Vec::new();
    for section in file.sections() {
        let name = section.name().unwrap_or("").to_string();
        if SECTIONS.contains(&name.as_str()) {
            let mut data = section.data()?.to_vec();
            data.truncate(section.size() as usize);
            found.push((name, section.address() - base, data));
        }
    }
    Ok(found)
}

/// The UKI has each added section where it was placed, with the bytes of its file.
fn check(bytes: &[u8], placed: &[Placed], files: [&Path; 4]) -> Result<()> {
    let found = sections(bytes)?;
    for (section, file) in placed.iter().zip(files) {
        let Some((_, rva, data)) = found.iter().find(|(name, _, _)| name == section.name) else {
            bail!("objcopy left out {}", section.name)
        };
        if *rva != section.rva || data.len() as u64 != section.size {
            bail!(
                "{} is at {rva:#x} with {} bytes, not at {:#x} with {}",
                section.name,
                data.len(),
                section.rva,
                section.size
            );
        }
        if crate::digest::sha256_hex(data) != crate::digest::hash_file(file)? {
            bail!("{} does not hold the bytes of {}", section.name, file.display());
        }
    }
    let (_, checksum) = header_offsets(bytes)?;
    let stored = u32::from_le_bytes(bytes[checksum..checksum + 4].try_into().expect("4 bytes"));
    if stored != pe_checksum(bytes, checksum) {
        bail!("the PE checksum is wrong");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(end: u64, section_alignment: u64) -> StubLayout {
        StubLayout { image_base: 0, section_alignment, end, sections: vec![".text".into()] }
    }

    #[test]
    fn sections_follow_the_stub_page_aligned_kernel_last() {
        let placed = place(&layout(0x19134, 0x200), [7, 14, 0x1_0001, 5000]);
        let names: Vec<&str> = placed.iter().map(|p| p.name).collect();
        assert_eq!(names, [".osrel", ".cmdline", ".initrd", ".linux"]);
        let rvas: Vec<u64> = placed.iter().map(|p| p.rva).collect();
        assert_eq!(rvas, [0x1a000, 0x1b000, 0x1c000, 0x2d000]);
        for pair in placed.windows(2) {
            assert!(pair[0].rva + pair[0].size <= pair[1].rva, "{pair:?} overlap");
        }
        // A stub with a larger alignment gets it.
        let placed = place(&layout(0x1000, 0x10000), [1, 1, 1, 1]);
        assert!(placed.iter().all(|p| p.rva % 0x10000 == 0), "{placed:?}");
        assert_eq!(placed[0].rva, 0x10000);
        // A stub ending on a boundary: the first section starts right there.
        assert_eq!(place(&layout(0x3000, 0x1000), [1, 1, 1, 1])[0].rva, 0x3000);
    }

    #[test]
    fn the_checksum_is_the_pe_one() {
        // A header-sized buffer: the sum skips the checksum field and adds the length.
        let mut bytes = vec![0u8; 0x200];
        bytes[0] = 0xff;
        bytes[1] = 0xff;
        bytes[2] = 0x02;
        bytes[0x100..0x104].copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        // 0xffff + 0x0002 = 0x10001 → folded to 0x0002; plus 0x200 bytes.
        assert_eq!(pe_checksum(&bytes, 0x100), 0x0002 + 0x200);
        bytes.push(0x05);
        assert_eq!(pe_checksum(&bytes, 0x100), 0x0007 + 0x201);
    }

    #[test]
    fn os_release_names_the_bundle_and_its_build() {
        let text = os_release("demo", "1.2.0-rc1", "abc123");
        assert!(text.contains("\nVERSION=\"1.2.0-rc1\"\n") && text.starts_with("NAME=\"demo\"\n"), "{text}");
        assert!(text.contains("IMAGE_ID=demo\n") && text.ends_with("BUILD_ID=abc123\n"), "{text}");
    }

    fn stub() -> Vec<u8> {
        fs_err::read(STUB).expect("the EFI stub (apt-get install systemd-boot-efi; `make deps` does)")
    }

    #[test]
    fn debians_stub_is_read_from_its_headers() {
        let layout = stub_layout(&stub()).unwrap();
        assert!(layout.sections.iter().any(|name| name == ".sdmagic"), "{layout:?}");
        assert!(layout.end > 0x1000 && layout.end < MAX_STUB_BYTES, "{layout:?}");
        assert!(stub_layout(b"MZ not a PE").is_err());
    }

    /// objcopy's own checksum is what [`pe_checksum`] computes, and two UKIs
    /// made a second apart are the same bytes once their time stamp is set.
    #[test]
    fn a_uki_is_laid_out_as_placed_and_the_same_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let linux = dir.path().join("linux");
        let initrd = dir.path().join("initrd");
        fs_err::write(&linux, (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).unwrap();
        fs_err::write(&initrd, b"07070100000000".repeat(1000)).unwrap();
        let parts = Parts {
            os_release: &os_release("demo", "1.0", "c0ffee"),
            cmdline: "console=ttyS0 rootsmith.rootfs_url=http://dhcp-server:8080/demo/1.0/demo-1.0-rootfs.img",
            linux: &linux,
            initrd: &initrd,
        };
        let host = crate::host::RealHost { echo: false };
        let log = dir.path().join("log");
        let first = dir.path().join("a.efi");
        let placed =
            write(&host, Path::new(STUB), &parts, &first, 1_700_000_000, &dir.path().join("s1"), &log).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = dir.path().join("b.efi");
        write(&host, Path::new(STUB), &parts, &second, 1_700_000_000, &dir.path().join("s2"), &log).unwrap();
        let bytes = fs_err::read(&first).unwrap();
        assert!(bytes == fs_err::read(&second).unwrap(), "two UKIs of the same parts differ");
        let (stamp, checksum) = header_offsets(&bytes).unwrap();
        assert_eq!(u32::from_le_bytes(bytes[stamp..stamp + 4].try_into().unwrap()), 1_700_000_000);
        assert_eq!(
            u32::from_le_bytes(bytes[checksum..checksum + 4].try_into().unwrap()),
            pe_checksum(&bytes, checksum)
        );
        let stub_end = stub_layout(&stub()).unwrap().end;
        assert!(placed[0].rva >= stub_end && placed.iter().all(|p| p.rva % MIN_ALIGNMENT == 0), "{placed:?}");
        let found = sections(&bytes).unwrap();
        assert_eq!(
            found.iter().map(|(name, rva, _)| (name.as_str(), *rva)).collect::<Vec<_>>(),
            placed.iter().map(|p| (p.name, p.rva)).collect::<Vec<_>>()
        );
        assert_eq!(found[1].2, parts.cmdline.as_bytes());
        assert_eq!(found[3].2, fs_err::read(&linux).unwrap());
        // objdump agrees on the addresses.
        let objdump = std::process::Command::new("objdump").arg("-h").arg(&first).output().unwrap();
        let listing = String::from_utf8_lossy(&objdump.stdout);
        for section in &placed {
            let line = listing
                .lines()
                .find(|line| line.split_whitespace().nth(1) == Some(section.name))
                .unwrap_or_else(|| panic!("{} not in {listing}", section.name));
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(u64::from_str_radix(fields[2], 16).unwrap(), section.size, "{line}");
            assert_eq!(u64::from_str_radix(fields[3], 16).unwrap(), section.rva, "{line}");
        }
        // Without the fix, objcopy's own time stamp and checksum are there; its checksum is the PE one.
        let raw = dir.path().join("raw.efi");
        let status = std::process::Command::new("objcopy")
            .args(["--add-section", &format!(".osrel={}", initrd.display()), STUB])
            .arg(&raw)
            .status()
            .unwrap();
        assert!(status.success());
        let raw = fs_err::read(&raw).unwrap();
        let (_, checksum) = header_offsets(&raw).unwrap();
        assert_eq!(u32::from_le_bytes(raw[checksum..checksum + 4].try_into().unwrap()), pe_checksum(&raw, checksum));
    }

    const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
    const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

    /// The certificate's digest is its DER's, as openssl's fingerprint; a
    /// signature is the same bytes every time; an encrypted key needs its
    /// passphrase, and what is not a PEM certificate or key is refused.
    #[test]
    fn secure_boot_signing_is_deterministic_and_checks_its_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let error = format!(
            "{:#}",
            SecureBootSigner::open_with(Path::new(SNAKEOIL_KEY), Path::new(SNAKEOIL_CERT), None).unwrap_err()
        );
        assert!(error.contains("is encrypted") && error.contains(KEY_PASSPHRASE_ENV), "{error}");
        let signer =
            SecureBootSigner::open_with(Path::new(SNAKEOIL_KEY), Path::new(SNAKEOIL_CERT), Some("snakeoil".into()))
                .unwrap();
        let openssl = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", SNAKEOIL_CERT])
            .output()
            .unwrap();
        let fingerprint =
            String::from_utf8_lossy(&openssl.stdout).trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
        assert_eq!(signer.cert_sha256, fingerprint);
        let host = crate::host::RealHost { echo: false };
        signer.check_pair(&host).unwrap();
        // A certificate file of two certificates (a CA bundle) is refused.
        let two = dir.path().join("two.pem");
        let cert_text = fs_err::read_to_string(SNAKEOIL_CERT).unwrap();
        fs_err::write(&two, format!("{cert_text}{cert_text}")).unwrap();
        let error = format!(
            "{:#}",
            SecureBootSigner::open_with(Path::new(SNAKEOIL_KEY), &two, Some("snakeoil".into())).unwrap_err()
        );
        assert!(error.contains("holds 2 certificates"), "{error}");
        // A wrong passphrase, and a key that is not the certificate's, are
        // found before anything is built.
        let wrong =
            SecureBootSigner::open_with(Path::new(SNAKEOIL_KEY), Path::new(SNAKEOIL_CERT), Some("not it".into()))
                .unwrap();
        let error = format!("{:#}", wrong.check_pair(&host).unwrap_err());
        assert!(error.contains("cannot be opened") && !error.contains("not it"), "{error}");
        let other_key = dir.path().join("other.key");
        let made = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&other_key)
            .output()
            .unwrap();
        assert!(made.status.success());
        let mismatched = SecureBootSigner::open_with(&other_key, Path::new(SNAKEOIL_CERT), None).unwrap();
        let error = format!("{:#}", mismatched.check_pair(&host).unwrap_err());
        assert!(error.contains("is not the key of the certificate"), "{error}");
        let log = dir.path().join("log");
        let (first, second) = (dir.path().join("a.efi"), dir.path().join("b.efi"));
        signer.sign(&host, Path::new(STUB), &first, 1_700_000_000, &log).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        signer.sign(&host, Path::new(STUB), &second, 1_700_000_000, &log).unwrap();
        assert!(
            fs_err::read(&first).unwrap() == fs_err::read(&second).unwrap(),
            "two signatures of the same image differ"
        );
        let verified =
            std::process::Command::new("sbverify").args(["--cert", SNAKEOIL_CERT]).arg(&first).output().unwrap();
        assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
        // Signed with the recorded certificate; not once its signature is
        // removed, nor for another certificate's digest.
        let scratch = |name: &str| {
            let path = dir.path().join(name);
            fs_err::create_dir(&path).unwrap();
            path
        };
        check_signed_by(&host, &first, &signer.cert_sha256, &scratch("check-a")).unwrap();
        let error = format!("{:#}", check_signed_by(&host, &first, &"0".repeat(64), &scratch("check-b")).unwrap_err());
        assert!(error.contains("not signed with the certificate the manifest records"), "{error}");
        let stripped = dir.path().join("stripped.efi");
        let removed = std::process::Command::new("osslsigncode")
            .arg("remove-signature")
            .arg("-in")
            .arg(&first)
            .arg("-out")
            .arg(&stripped)
            .output()
            .unwrap();
        assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
        let error =
            format!("{:#}", check_signed_by(&host, &stripped, &signer.cert_sha256, &scratch("check-c")).unwrap_err());
        assert!(error.contains("has no Authenticode signature"), "{error}");
        // Another date, another signature (the time is the one given).
        signer.sign(&host, Path::new(STUB), &second, 1_700_000_001, &log).unwrap();
        assert!(fs_err::read(&first).unwrap() != fs_err::read(&second).unwrap());
        // Not a certificate, not a key, a FIFO, a huge file.
        let text = dir.path().join("text.pem");
        fs_err::write(&text, "hello\n").unwrap();
        let fifo = dir.path().join("fifo.pem");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let huge = dir.path().join("huge.pem");
        fs_err::write(&huge, vec![b'A'; (MAX_PEM_BYTES + 1) as usize]).unwrap();
        for (key, cert, why) in [
            (SNAKEOIL_KEY, text.to_str().unwrap(), "holds no PEM certificate"),
            (text.to_str().unwrap(), SNAKEOIL_CERT, "holds no PEM private key"),
            (SNAKEOIL_KEY, fifo.to_str().unwrap(), "certificate"),
            (SNAKEOIL_KEY, huge.to_str().unwrap(), "not a PEM file"),
        ] {
            let error = format!(
                "{:#}",
                SecureBootSigner::open_with(Path::new(key), Path::new(cert), Some("snakeoil".into())).unwrap_err()
            );
            assert!(error.contains(why), "{key} {cert}: {error}");
        }
    }

    #[test]
    fn a_missing_stub_is_named_with_its_package() {
        let dir = tempfile::tempdir().unwrap();
        let nowhere = dir.path().join("linuxx64.efi.stub");
        let parts = Parts { os_release: "", cmdline: "", linux: &nowhere, initrd: &nowhere };
        let error = format!(
            "{:#}",
            write(
                &crate::host::RealHost { echo: false },
                &nowhere,
                &parts,
                &dir.path().join("x.efi"),
                0,
                dir.path(),
                &dir.path().join("log")
            )
            .unwrap_err()
        );
        assert!(error.contains("apt-get install systemd-boot-efi"), "{error}");
    }
}
