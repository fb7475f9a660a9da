//! A bundle's signature: an SSH signature (`ssh-keygen -Y sign`'s format,
//! PROTOCOL.sshsig) over `manifest.json`, in `manifest.json.sig`. The
//! manifest pins every artifact's SHA-256, so the signature vouches for every
//! byte of the bundle; `ssh-keygen -Y verify -n rootsmith-release` checks it
//! without rootsmith. Keys are ordinary OpenSSH key files (Ed25519, RSA or
//! ECDSA as the crate reads them); an encrypted private key is opened with
//! `ROOTSMITH_SIGNING_PASSPHRASE`. Neither key ever enters a bundle or the cache.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use super::files;
use super::names::{MANIFEST, SIGNATURE};

/// The sshsig namespace of a bundle signature: a signature made for anything
/// else (git commits, files) never passes for a release's.
pub const NAMESPACE: &str = "rootsmith-release";

/// The environment variable an encrypted private key's passphrase comes from.
pub const PASSPHRASE_VARIABLE: &str = "ROOTSMITH_SIGNING_PASSPHRASE";

/// Key files are small: anything larger is not one.
const MAX_KEY_BYTES: u64 = 64 << 10;
/// A signature file is a few hundred bytes.
const MAX_SIGNATURE_BYTES: u64 = 64 << 10;

/// A private key read for signing, checked when it is read (before a build).
pub struct SigningKey {
    key: PrivateKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.fingerprint())
    }
}

impl SigningKey {
    /// Read an OpenSSH private key file; an encrypted one needs its
    /// passphrase in [`PASSPHRASE_VARIABLE`].
    pub fn read(path: &Path) -> Result<SigningKey> {
        let text =
            read_small(path, MAX_KEY_BYTES).with_context(|| format!("reading the signing key {}", path.display()))?;
        if let Some(other) = other_algorithm_of_private_key(&text) {
            bail!("{}", unsupported_key(path, other));
        }
        let key = PrivateKey::from_openssh(&text).map_err(|error| anyhow::anyhow!("{} is not an OpenSSH private key ({error})\nhint: make one with `ssh-keygen -t ed25519 -f release-key`", path.display()))?;
        if key.algorithm() != ssh_key::Algorithm::Ed25519 {
            bail!("{}", unsupported_key(path, key.algorithm().as_str()));
        }
        let key = if key.is_encrypted() {
            let Some(passphrase) = std::env::var_os(PASSPHRASE_VARIABLE) else {
                bail!(
                    "the signing key {} is encrypted\nhint: give its passphrase in {PASSPHRASE_VARIABLE}",
                    path.display()
                );
            };
            key.decrypt(passphrase.as_encoded_bytes()).map_err(|_| {
                anyhow::anyhow!(
                    "the passphrase in {PASSPHRASE_VARIABLE} does not open the signing key {}",
                    path.display()
                )
            })?
        } else {
            key
        };
        Ok(SigningKey { key })
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The signature of `manifest` (a manifest.json's bytes), as the text of
    /// a `manifest.json.sig`. Ed25519 signatures are deterministic: the same
    /// key and manifest give the same bytes.
    pub fn sign(&self, manifest: &[u8]) -> Result<String> {
        let signature = self.key.sign(NAMESPACE, HashAlg::Sha512, manifest).context("signing the manifest")?;
        signature.to_pem(LineEnding::LF).context("encoding the signature")
    }

    /// Sign the bundle in `dir`: its manifest.json as it is on disk, the
    /// signature written aside and renamed into place.
    pub fn sign_bundle(&self, dir: &Path) -> Result<()> {
        let manifest = files::read(dir, MANIFEST, files::MAX_INDEX_BYTES)
            .with_context(|| format!("reading {}", dir.join(MANIFEST).display()))?;
        let text = self.sign(&manifest)?;
        let temp = tempfile::NamedTempFile::new_in(dir)?;
        fs_err::write(temp.path(), text)?;
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o644))?;
        temp.persist(dir.join(SIGNATURE)).map_err(|error| error.error)?;
        Ok(())
    }
}

/// The algorithms OpenSSH keys and signatures name, other than Ed25519.
const OTHER_ALGORITHMS: [&str; 9] = [
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
    "ssh-dss",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Why a key of `algorithm` is refused, for the key file `path`.
fn unsupported_key(path: &Path, algorithm: &str) -> String {
    let kind = match algorithm {
        a if a.starts_with("ecdsa") => "an ECDSA",
        a if a.contains("rsa") => "an RSA",
        "ssh-dss" => "a DSA",
        _ => "a security-key (FIDO)",
    };
    format!(
        "{} is {kind} key ({algorithm}); rootsmith signs and checks releases with Ed25519 keys only, whose signatures are the same bytes for the same manifest (ECDSA's are random, RSA's need another library)\nhint: make one with `ssh-keygen -t ed25519 -f release-key`",
        path.display()
    )
}

/// The algorithm an OpenSSH private key names, when it is not Ed25519 (the
/// key's public part names it in the clear, inside the base64).
fn other_algorithm_of_private_key(text: &str) -> Option<&'static str> {
    use base64::Engine;
    let body = text.split_once("-----BEGIN OPENSSH PRIVATE KEY-----")?.1.split_once("-----END")?.0;
    let joined: String = body.split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(joined).ok()?;
    // The first algorithm name in the key: the public key's.
    OTHER_ALGORITHMS
        .iter()
        .filter_map(|name| bytes.windows(name.len()).position(|window| window == name.as_bytes()).map(|at| (at, *name)))
        .min()
        .map(|(_, name)| name)
        .filter(|_| {
            let ed25519 = b"ssh-ed25519";
            !bytes.windows(ed25519.len()).any(|window| window == ed25519)
        })
}

/// Read a public key file: `KEY.pub` as ssh-keygen writes it.
pub fn read_public_key(path: &Path) -> Result<PublicKey> {
    let text = read_small(path, MAX_KEY_BYTES).with_context(|| format!("reading the public key {}", path.display()))?;
    if let Some(other) = OTHER_ALGORITHMS.iter().find(|name| text.trim_start().starts_with(&format!("{name} "))) {
        bail!("{}", unsupported_key(path, other));
    }
    PublicKey::from_openssh(text.trim()).map_err(|error| anyhow::anyhow!("{} is not an OpenSSH public key ({error})\nhint: give the `.pub` file ssh-keygen wrote beside the private key", path.display()))
}

/// Why a bundle's signature does not hold, each named for the person reading it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    #[error("the bundle is not signed ({SIGNATURE} is missing)\nhint: rootsmith release sign NAME VERSION --key KEY")]
    Missing,
    #[error("{SIGNATURE} is not an SSH signature ({0})")]
    Unreadable(String),
    #[error("{SIGNATURE} was made by another key ({signer}), not the one given ({expected})")]
    OtherKey { signer: String, expected: String },
    #[error("{SIGNATURE} signs for `{0}`, not for a rootsmith release (`{NAMESPACE}`)")]
    Namespace(String),
    #[error("manifest.json does not match its signature: it changed after it was signed")]
    Mismatch,
    #[error("{SIGNATURE} was made with {0}, and rootsmith checks Ed25519 signatures only (sign with an Ed25519 key: ssh-keygen -t ed25519)")]
    Algorithm(String),
}

/// Check the signature of `manifest` (manifest.json's bytes) against the
/// text of its signature file (`None` when there is none) and `key`.
pub fn check(manifest: &[u8], signature: Option<&[u8]>, key: &PublicKey) -> Result<(), SignatureProblem> {
    let Some(signature) = signature else { return Err(SignatureProblem::Missing) };
    // A signature of another algorithm is named as such, never as a manifest changed.
    if let Ok(text) = std::str::from_utf8(signature) {
        if let Some(other) = signature_algorithm(text).filter(|algorithm| *algorithm != "ssh-ed25519") {
            return Err(SignatureProblem::Algorithm(other.to_string()));
        }
    }
    let signature = SshSig::from_pem(signature).map_err(|error| SignatureProblem::Unreadable(error.to_string()))?;
    if signature.public_key() != key.key_data() {
        return Err(SignatureProblem::OtherKey {
            signer: signature.public_key().fingerprint(HashAlg::Sha256).to_string(),
            expected: key.fingerprint(HashAlg::Sha256).to_string(),
        });
    }
    if signature.namespace() != NAMESPACE {
        return Err(SignatureProblem::Namespace(signature.namespace().to_string()));
    }
    key.verify(NAMESPACE, manifest, &signature).map_err(|_| SignatureProblem::Mismatch)
}

/// The algorithm an SSH signature's PEM text names (its key's, or the
/// signature's own when that is an RSA hash variant).
fn signature_algorithm(text: &str) -> Option<&'static str> {
    use base64::Engine;
    let body = text.split_once("-----BEGIN SSH SIGNATURE-----")?.1.split_once("-----END")?.0;
    let joined: String = body.split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(joined).ok()?;
    let names = OTHER_ALGORITHMS.iter().copied().chain(["ssh-ed25519"]);
    names
        .filter_map(|name| bytes.windows(name.len()).position(|window| window == name.as_bytes()).map(|at| (at, name)))
        .min()
        .map(|(_, name)| name)
}

/// Check the bundle in `dir` against `key`: its manifest.json and signature
/// read as regular files, bounded. Returns the key's fingerprint.
pub fn check_bundle(dir: &Path, key: &PublicKey) -> Result<String, String> {
    let manifest =
        files::read(dir, MANIFEST, files::MAX_INDEX_BYTES).map_err(|error| format!("{MANIFEST}: {error}"))?;
    let signature = match files::read(dir, SIGNATURE, MAX_SIGNATURE_BYTES) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(format!("{SIGNATURE}: {error}")),
    };
    check(&manifest, signature.as_deref(), key).map_err(|problem| problem.to_string())?;
    Ok(format!("manifest.json signed by {}", key.fingerprint(HashAlg::Sha256)))
}

/// Who signed the bundle in `dir`, as its signature file says: `None` when it
/// has none, else the fingerprint of the key the signature carries when it
/// holds for manifest.json under that key, or why not. (That key is only the
/// signature's own claim: `release verify --key` says whether it is the one
/// expected.)
pub fn signer(dir: &Path) -> Option<Result<String, String>> {
    let signature = match files::read(dir, SIGNATURE, MAX_SIGNATURE_BYTES) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => return Some(Err(format!("{SIGNATURE}: {error}"))),
    };
    Some((|| {
        let manifest =
            files::read(dir, MANIFEST, files::MAX_INDEX_BYTES).map_err(|error| format!("{MANIFEST}: {error}"))?;
        let parsed = SshSig::from_pem(&signature)
            .map_err(|error| SignatureProblem::Unreadable(error.to_string()).to_string())?;
        let key = PublicKey::from(parsed.public_key().clone());
        check(&manifest, Some(&signature), &key).map_err(|problem| problem.to_string())?;
        Ok(key.fingerprint(HashAlg::Sha256).to_string())
    })())
}

/// A key file, read only if it is a regular file and no larger than `limit`.
fn read_small(path: &Path, limit: u64) -> std::io::Result<String> {
    let file = crate::fileops::open_regular(path)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, limit + 1), &mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is larger than {limit} bytes: not a key", path.display()),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh Ed25519 key pair from ssh-keygen (the tool users make keys with).
    fn key_pair(dir: &Path, name: &str) -> (SigningKey, PublicKey) {
        let path = dir.join(name);
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen (openssh-client) runs");
        assert!(status.success());
        (SigningKey::read(&path).unwrap(), read_public_key(&path.with_extension("pub")).unwrap())
    }

    #[test]
    fn a_signature_holds_for_its_manifest_and_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, public) = key_pair(dir.path(), "release");
        let (_, other) = key_pair(dir.path(), "other");
        let manifest = br#"{"name":"r","version":"1.0.0"}"#;
        let signature = signer.sign(manifest).unwrap();
        assert_eq!(signature, signer.sign(manifest).unwrap(), "Ed25519 signatures are deterministic");
        assert!(signature.starts_with("-----BEGIN SSH SIGNATURE-----\n"), "{signature}");
        assert_eq!(check(manifest, Some(signature.as_bytes()), &public), Ok(()));
        let mut flipped = manifest.to_vec();
        flipped[3] ^= 1;
        assert_eq!(check(&flipped, Some(signature.as_bytes()), &public), Err(SignatureProblem::Mismatch));
        assert!(matches!(check(manifest, Some(signature.as_bytes()), &other), Err(SignatureProblem::OtherKey { .. })));
        assert_eq!(check(manifest, None, &public), Err(SignatureProblem::Missing));
        assert!(matches!(check(manifest, Some(b"not a signature"), &public), Err(SignatureProblem::Unreadable(_))));
        // A signature for another namespace (ssh-keygen's `file`) is not a release's.
        let git = signer.key.sign("file", HashAlg::Sha512, manifest).unwrap().to_pem(LineEnding::LF).unwrap();
        assert_eq!(check(manifest, Some(git.as_bytes()), &public), Err(SignatureProblem::Namespace("file".into())));
    }

    #[test]
    fn a_hostile_signature_file_is_refused_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, public) = key_pair(dir.path(), "release");
        let bundle = dir.path().join("bundle");
        fs_err::create_dir_all(&bundle).unwrap();
        fs_err::write(bundle.join(MANIFEST), b"{}").unwrap();
        signer.sign_bundle(&bundle).unwrap();
        assert!(check_bundle(&bundle, &public).is_ok());
        // Larger than any signature: refused without reading it all.
        fs_err::write(bundle.join(SIGNATURE), vec![b'A'; (MAX_SIGNATURE_BYTES + 1) as usize]).unwrap();
        let error = check_bundle(&bundle, &public).unwrap_err();
        assert!(error.starts_with(SIGNATURE), "{error}");
        // A FIFO (a read would wait forever) or a symlink out of the bundle is never read.
        fs_err::remove_file(bundle.join(SIGNATURE)).unwrap();
        nix::unistd::mkfifo(&bundle.join(SIGNATURE), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let (dir_path, key) = (bundle.clone(), public.clone());
        std::thread::spawn(move || sender.send(check_bundle(&dir_path, &key)));
        let result =
            receiver.recv_timeout(std::time::Duration::from_secs(20)).expect("a FIFO signature hung the check");
        assert!(result.unwrap_err().starts_with(SIGNATURE));
        fs_err::remove_file(bundle.join(SIGNATURE)).unwrap();
        let secret = dir.path().join("secret");
        fs_err::write(&secret, signer.sign(b"{}").unwrap()).unwrap();
        std::os::unix::fs::symlink(&secret, bundle.join(SIGNATURE)).unwrap();
        assert!(
            check_bundle(&bundle, &public).unwrap_err().starts_with(SIGNATURE),
            "a symlinked signature is not the bundle's file"
        );
    }

    #[test]
    fn a_key_file_too_large_to_be_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        fs_err::write(&big, vec![b'A'; (MAX_KEY_BYTES + 1) as usize]).unwrap();
        let error = format!("{:#}", SigningKey::read(&big).unwrap_err());
        assert!(error.contains("not a key"), "{error}");
        let error = format!("{:#}", read_public_key(&big).unwrap_err());
        assert!(error.contains("not a key"), "{error}");
    }

    #[test]
    fn encrypted_keys_need_their_passphrase_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked");
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "secret words", "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        // The test process's environment has no passphrase variable.
        if std::env::var_os(PASSPHRASE_VARIABLE).is_none() {
            let error = SigningKey::read(&path).unwrap_err().to_string();
            assert!(error.contains("is encrypted") && error.contains(PASSPHRASE_VARIABLE), "{error}");
        }
        let error = SigningKey::read(&path.with_extension("pub")).unwrap_err().to_string();
        assert!(error.contains("is not an OpenSSH private key"), "{error}");
        let error = read_public_key(&path).unwrap_err().to_string();
        assert!(error.contains("is not an OpenSSH public key"), "{error}");
        assert!(SigningKey::read(Path::new("/dev/zero")).is_err(), "a device is never read as a key");
    }

    #[test]
    fn keys_and_signatures_of_other_algorithms_are_named_never_taken_for_a_changed_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let (_, public) = key_pair(dir.path(), "release");
        for (kind, algorithm, named) in
            [("ecdsa", "ecdsa-sha2-nistp256", "an ECDSA key"), ("rsa", "rsa-sha2-512", "an RSA key")]
        {
            let path = dir.path().join(kind);
            let status = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-f"])
                .arg(&path)
                .status()
                .unwrap();
            assert!(status.success());
            let error = SigningKey::read(&path).unwrap_err().to_string();
            assert!(error.contains(named) && error.contains("Ed25519 keys only"), "{error}");
            let error = read_public_key(&path.with_extension("pub")).unwrap_err().to_string();
            assert!(error.contains(named), "{error}");
            // A valid signature of that key, by ssh-keygen -Y sign.
            let manifest = dir.path().join(format!("{kind}.json"));
            fs_err::write(&manifest, br#"{"name":"r"}"#).unwrap();
            let signed = std::process::Command::new("ssh-keygen")
                .args(["-Y", "sign", "-n", NAMESPACE, "-f"])
                .arg(&path)
                .arg(&manifest)
                .output()
                .unwrap();
            assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
            let signature = fs_err::read(manifest.with_extension("json.sig")).unwrap();
            let problem = check(&fs_err::read(&manifest).unwrap(), Some(&signature), &public).unwrap_err();
            assert!(
                matches!(&problem, SignatureProblem::Algorithm(a) if a.contains(algorithm.split('-').next().unwrap())),
                "{problem:?}"
            );
            assert!(!problem.to_string().contains("changed after it was signed"), "{problem}");
        }
    }
}
