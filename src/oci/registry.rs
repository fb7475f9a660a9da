//! Pulling from an OCI registry with the `oci-client` crate: the manifest a
//! reference names (an index resolved to the recipe's platform), and blobs
//! streamed to a file, resumed with a Range request when a download breaks,
//! and checked against their digest before they are kept. Plain HTTP is used
//! for loopback registries and those listed in ROOTSMITH_INSECURE_REGISTRIES;
//! credentials come from the Docker config file (DOCKER_CONFIG,
//! ~/.docker/config.json) or REGISTRY_AUTH_FILE.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use crate::reference::{parse_reference, Reference};
use sha2::Digest;

use super::image::Image;
use super::layout::ResolvedImage;
use super::{
    check_digest, choose_platform, Descriptor, Index, Manifest, DOCKER_LIST, DOCKER_MANIFEST, MEDIA_INDEX,
    MEDIA_MANIFEST,
};

/// Attempts per blob before a broken download is an error.
const BLOB_TRIES: u32 = 5;

pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    runtime: tokio::runtime::Runtime,
    pub reference: Reference,
}

/// Whether rootsmith talks plain HTTP to `registry` (`host[:port]`).
fn insecure(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map(|(host, _)| host)
        .unwrap_or(registry);
    let loopback = host == "localhost"
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback
        || std::env::var("ROOTSMITH_INSECURE_REGISTRIES")
            .unwrap_or_default()
            .split(',')
            .any(|listed| listed.trim() == registry)
}

/// Credentials for `registry` from the usual files, else anonymous.
fn credentials(registry: &str) -> Result<RegistryAuth> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(file) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(file.into());
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        files.push(PathBuf::from(dir).join("config.json"));
    } else if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".docker/config.json"));
    }
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(runtime).join("containers/auth.json"));
    }
    for file in files.iter().filter(|file| file.is_file()) {
        let config: serde_json::Value =
            serde_json::from_slice(&fs_err::read(file)?).with_context(|| format!("{} is not JSON", file.display()))?;
        let Some(entry) = config["auths"].as_object().and_then(|auths| {
            auths.iter().find(|(key, _)| {
                key.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/') == registry
            })
        }) else {
            continue;
        };
        let Some(encoded) = entry.1["auth"].as_str() else { continue };
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .with_context(|| format!("{}: the auth of {registry} is not base64", file.display()))?;
        let text = String::from_utf8(decoded)
            .with_context(|| format!("{}: the auth of {registry} is not text", file.display()))?;
        let (user, password) = text
            .split_once(':')
            .with_context(|| format!("{}: the auth of {registry} is not USER:PASSWORD", file.display()))?;
        return Ok(RegistryAuth::Basic(user.to_string(), password.to_string()));
    }
    Ok(RegistryAuth::Anonymous)
}

const ACCEPTED_MANIFESTS: [&str; 4] = [MEDIA_INDEX, MEDIA_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// The manifest's bytes, checked against the digest the registry gives (and
/// the reference's own digest, when it has one).
fn checked_manifest(reference: &Reference, bytes: &[u8], digest: String) -> Result<(Vec<u8>, String)> {
    let actual = sha256_digest(bytes);
    let expected = reference.digest().map(str::to_string).unwrap_or(digest);
    if actual != expected {
        bail!("the manifest of {} has digest {actual}, expected {expected}", reference.whole());
    }
    Ok((bytes.to_vec(), actual))
}

/// Whether a registry's answer says it has no such manifest or repository,
/// decided by the answer's kind, status and error codes (never its text).
fn is_not_found(error: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError, OciErrorCode};
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|error| matches!(error.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown)),
        OciDistributionError::RequestError(error) => error.status().is_some_and(|status| status.as_u16() == 404),
        _ => false,
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

impl Registry {
    pub fn connect(reference: &str) -> Result<Registry> {
        let reference = parse_reference(reference)?;
        let registry = reference.resolve_registry().to_string();
        let protocol = if insecure(&registry) {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig { protocol, platform_resolver: None, ..Default::default() };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Registry { client: Client::new(config), auth: credentials(&registry)?, runtime, reference })
    }

    /// The manifest bytes `reference` names, checked against the digest the
    /// registry gives (and the reference's own digest, when it has one).
    pub fn manifest_bytes(&self, reference: &Reference) -> Result<(Vec<u8>, String)> {
        let (bytes, digest) = self
            .runtime
            .block_on(self.client.pull_manifest_raw(reference, &self.auth, &ACCEPTED_MANIFESTS))
            .with_context(|| format!("fetching the manifest of {}", reference.whole()))?;
        checked_manifest(reference, &bytes, digest)
    }

    /// Like [`Self::manifest_bytes`], but `None` when the registry answers
    /// that it has no such manifest (or repository), as opposed to failing.
    pub fn find_manifest(&self, reference: &Reference) -> Result<Option<(Vec<u8>, String)>> {
        match self.runtime.block_on(self.client.pull_manifest_raw(reference, &self.auth, &ACCEPTED_MANIFESTS)) {
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => {
                Err(anyhow::Error::new(error).context(format!("fetching the manifest of {}", reference.whole())))
            }
            Ok((bytes, digest)) => checked_manifest(reference, &bytes, digest).map(Some),
        }
    }

    /// The image manifest for `debian_arch`, and its digest.
    pub fn resolve(&self, debian_arch: &str) -> Result<ResolvedImage> {
        let (bytes, digest) = self.manifest_bytes(&self.reference)?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)?["mediaType"]
            .as_str()
            .unwrap_or(MEDIA_MANIFEST)
            .to_string();
        let (bytes, digest) = if media_type == MEDIA_INDEX || media_type == DOCKER_LIST {
            let index: Index = serde_json::from_slice(&bytes)
                .with_context(|| format!("the index of {} does not follow the image spec", self.reference.whole()))?;
            let chosen = choose_platform(&index, debian_arch)?;
            self.manifest_bytes(&self.reference.clone_with_digest(chosen.digest.clone()))?
        } else {
            (bytes, digest)
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("the manifest of {} does not follow the image spec", self.reference.whole()))?;
        Ok(ResolvedImage { manifest_digest: digest, manifest })
    }

    /// Download the blob of `descriptor` to `target` (kept only when its size
    /// and digest match). A broken download is resumed from where it stopped
    /// with a Range request. Returns the bytes received.
    pub fn fetch_blob(&self, descriptor: &Descriptor, target: &Path, note: &dyn Fn(&str)) -> Result<u64> {
        self.fetch_blob_of(&self.reference, descriptor, target, note)
    }

    /// The same, for a blob of `reference`'s repository.
    pub fn fetch_blob_of(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        target: &Path,
        note: &dyn Fn(&str),
    ) -> Result<u64> {
        let expected = check_digest(&descriptor.digest)?.to_string();
        let partial = target.with_extension("partial");
        // The digest is computed as the bytes arrive; what an earlier, killed
        // run left in the partial file is hashed first.
        let mut progress = Progress { hasher: sha2::Sha256::new(), have: 0 };
        if let Ok(mut earlier) = std::fs::File::open(&partial) {
            progress.have = std::io::copy(&mut earlier, &mut progress.hasher)?;
        }
        let mut received = 0u64;
        let mut last_error = None;
        for attempt in 1..=BLOB_TRIES {
            if progress.have >= descriptor.size {
                // All the bytes are here: either they are right, or they are
                // wrong and only a fresh download can help.
                if hex::encode(progress.hasher.clone().finalize()) == expected && progress.have == descriptor.size {
                    last_error = None;
                    break;
                }
                progress = Progress { hasher: sha2::Sha256::new(), have: 0 };
                let _ = fs_err::remove_file(&partial);
            }
            if progress.have > 0 {
                note(&format!("resuming {} at byte {} of {}", descriptor.digest, progress.have, descriptor.size));
            }
            let before = progress.have;
            let outcome = self.download(reference, descriptor, &partial, &mut progress);
            received += progress.have.saturating_sub(before);
            match outcome {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(error) => {
                    last_error = Some(error);
                    std::thread::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)));
                }
            }
        }
        if let Some(error) = last_error {
            // A prefix is kept for the next build to resume; a whole wrong blob is not.
            if progress.have >= descriptor.size {
                let _ = fs_err::remove_file(&partial);
            }
            return Err(error.context(format!(
                "downloading {} ({} bytes) after {BLOB_TRIES} tries",
                descriptor.digest, descriptor.size
            )));
        }
        let actual = hex::encode(progress.hasher.finalize());
        if progress.have != descriptor.size || actual != expected {
            let _ = fs_err::remove_file(&partial);
            bail!("{} from {} does not match its descriptor: expected {} bytes with sha256 {expected}, got {} bytes with sha256 {actual}", descriptor.digest, reference.whole(), descriptor.size, progress.have);
        }
        if descriptor.size == 0 && !partial.exists() {
            // An empty blob (an empty package list) needs no download, but a file all the same.
            fs_err::File::create(&partial)?;
        }
        fs_err::rename(&partial, target)?;
        Ok(received)
    }

    /// One request: append to `partial` from `progress.have`, hashing what is
    /// written. On failure, the bytes written so far stay for the next attempt.
    fn download(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
        partial: &Path,
        progress: &mut Progress,
    ) -> Result<()> {
        let digest = descriptor.digest.as_str();
        self.runtime.block_on(async {
            let response = if progress.have == 0 {
                self.client.pull_blob_stream(reference, digest).await.map(BlobResponse::Full)
            } else {
                self.client.pull_blob_stream_partial(reference, digest, progress.have, None).await
            }?;
            let (mut stream, append) = match response {
                BlobResponse::Partial(sized) => (sized.stream, true),
                // The whole blob again (a server without ranges): start over.
                BlobResponse::Full(sized) => (sized.stream, false),
            };
            if !append {
                *progress = Progress { hasher: sha2::Sha256::new(), have: 0 };
            }
            let mut file =
                std::fs::OpenOptions::new().create(true).append(append).write(true).truncate(!append).open(partial)?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if progress.have + chunk.len() as u64 > descriptor.size {
                    bail!("the registry sent more than the {} bytes of {digest}", descriptor.size);
                }
                file.write_all(&chunk)?;
                progress.hasher.update(&chunk);
                progress.have += chunk.len() as u64;
            }
            file.sync_all()?;
            Ok(())
        })
    }
}

/// A blob download so far: the bytes in its partial file and their hash.
struct Progress {
    hasher: sha2::Sha256,
    have: u64,
}

impl Registry {
    /// Push `image` to this reference: the blobs the registry lacks, then the manifest.
    pub fn push(&self, image: &Image, note: &dyn Fn(&str)) -> Result<()> {
        let mut blobs: Vec<Blob<'_>> = image
            .layers
            .iter()
            .map(|(descriptor, path)| Blob::File(descriptor.digest.clone(), path.as_path()))
            .collect();
        blobs.push(Blob::Bytes(image.config_descriptor().digest, &image.config));
        self.push_to(&self.reference, &blobs, &image.manifest, MEDIA_MANIFEST, note)
    }

    /// Push blobs (those the registry lacks) and then a manifest to `reference`.
    pub fn push_to(
        &self,
        reference: &Reference,
        blobs: &[Blob<'_>],
        manifest: &[u8],
        media_type: &'static str,
        note: &dyn Fn(&str),
    ) -> Result<()> {
        self.runtime.block_on(async {
            self.client.store_auth_if_needed(reference.resolve_registry(), &self.auth).await;
            for blob in blobs {
                let digest = blob.digest();
                if self.client.blob_exists(reference, digest).await.unwrap_or(false) {
                    note(&format!("{digest}: already there"));
                    continue;
                }
                let data = blob.bytes()?;
                let size = data.len();
                self.client
                    .push_blob(reference, data, digest)
                    .await
                    .with_context(|| format!("pushing {digest} to {}", reference.whole()))?;
                note(&format!("{digest}: pushed {:.1} MB", size as f64 / 1e6));
            }
            self.client
                .push_manifest_raw(reference, manifest.to_vec(), http::HeaderValue::from_static(media_type))
                .await
                .with_context(|| format!("pushing the manifest to {}", reference.whole()))?;
            Ok(())
        })
    }

    /// The tags of this reference's repository.
    pub fn tags(&self) -> Result<Vec<String>> {
        let response = self
            .runtime
            .block_on(self.client.list_tags(&self.reference, &self.auth, None, None))
            .with_context(|| format!("listing the tags of {}", self.reference.repository()))?;
        Ok(response.tags)
    }

    /// This repository with another tag.
    pub fn tagged(&self, tag: &str) -> Reference {
        Reference::with_tag(
            self.reference.registry().to_string(),
            self.reference.repository().to_string(),
            tag.to_string(),
        )
    }
}

/// A blob to push: in a file (a layer in the cache) or in memory (JSON).
pub enum Blob<'a> {
    File(String, &'a Path),
    Bytes(String, &'a [u8]),
}

impl Blob<'_> {
    fn digest(&self) -> &str {
        match self {
            Blob::File(digest, _) | Blob::Bytes(digest, _) => digest,
        }
    }

    fn bytes(&self) -> Result<Vec<u8>> {
        Ok(match self {
            Blob::File(_, path) => fs_err::read(path)?,
            Blob::Bytes(_, bytes) => bytes.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_speak_plain_http() {
        assert!(insecure("127.0.0.1:5000"));
        assert!(insecure("localhost:5000"));
        assert!(insecure("[::1]:5000"));
        assert!(!insecure("build-host:5000"));
        assert!(!insecure("10.1.2.3:5000"));
    }
}
