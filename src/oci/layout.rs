//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`),
//! as `skopeo copy … oci:DIR:TAG` and `umoci` write it. Every blob is checked
//! against its descriptor's size and digest before it is read.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

use super::image::Image;
use super::{
    check_digest, choose_platform, verify_blob, Descriptor, Index, Manifest, DOCKER_LIST, MEDIA_INDEX, REF_NAME,
};

pub struct Layout {
    pub dir: PathBuf,
}

/// An image found by its reference: the manifest and its digest (which names
/// the whole image: config and layers).
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub manifest_digest: String,
    pub manifest: Manifest,
}

impl Layout {
    pub fn open(dir: &Path) -> Result<Layout> {
        let marker = dir.join("oci-layout");
        let text = fs_err::read_to_string(&marker)
            .with_context(|| format!("{} is not an OCI image layout (no oci-layout file)", dir.display()))?;
        let version: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", marker.display()))?;
        if version["imageLayoutVersion"] != "1.0.0" {
            bail!(
                "{}: image layout version {} (rootsmith reads 1.0.0)",
                marker.display(),
                version["imageLayoutVersion"]
            );
        }
        Ok(Layout { dir: dir.to_path_buf() })
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(check_digest(digest)?))
    }

    /// A blob, checked against its descriptor.
    pub fn checked_blob(&self, descriptor: &Descriptor) -> Result<PathBuf> {
        let path = self.blob_path(&descriptor.digest)?;
        verify_blob(&path, descriptor)?;
        Ok(path)
    }

    fn read_json<T: DeserializeOwned>(&self, descriptor: &Descriptor) -> Result<T> {
        let path = self.checked_blob(descriptor)?;
        serde_json::from_slice(&fs_err::read(&path)?).with_context(|| {
            format!("{} ({}) does not follow the image spec", descriptor.digest, descriptor.media_type)
        })
    }

    /// The image tagged `reference` (the index's `org.opencontainers.image.ref.name`;
    /// with no reference, the only image), for `debian_arch` when it is a
    /// multi-platform index.
    pub fn resolve(&self, reference: Option<&str>, debian_arch: &str) -> Result<ResolvedImage> {
        let index: Index = serde_json::from_slice(&fs_err::read(self.dir.join("index.json"))?)
            .with_context(|| format!("{}/index.json does not follow the image spec", self.dir.display()))?;
        let names = || {
            index.manifests.iter().filter_map(|d| d.annotations.get(REF_NAME).cloned()).collect::<Vec<_>>().join(", ")
        };
        let mut descriptor = match reference {
            Some(reference) => index
                .manifests
                .iter()
                .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(reference))
                .cloned()
                .with_context(|| format!("{} has no image `{reference}` (it has: {})", self.dir.display(), names()))?,
            None if index.manifests.len() == 1 => index.manifests[0].clone(),
            None => bail!(
                "{} holds {} images; say which with `ref:` (it has: {})",
                self.dir.display(),
                index.manifests.len(),
                names()
            ),
        };
        if descriptor.media_type == MEDIA_INDEX || descriptor.media_type == DOCKER_LIST {
            let nested: Index = self.read_json(&descriptor)?;
            descriptor = choose_platform(&nested, debian_arch)?.clone();
        }
        let manifest: Manifest = self.read_json(&descriptor)?;
        Ok(ResolvedImage { manifest_digest: descriptor.digest, manifest })
    }
}

/// Add `image` to the layout at `dir` (created when missing) as `tag`,
/// replacing an image of that tag; blobs already there are kept.
pub fn write_image(dir: &Path, tag: &str, image: &Image) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs_err::create_dir_all(&blobs)?;
    if !dir.join("oci-layout").is_file() {
        fs_err::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    let put = |digest: &str, write: &dyn Fn(&Path) -> std::io::Result<()>| -> Result<()> {
        let target = blobs.join(check_digest(digest)?);
        if target.is_file() {
            return Ok(());
        }
        let temp = target.with_extension("partial");
        write(&temp)?;
        fs_err::rename(&temp, &target)?;
        Ok(())
    };
    for (descriptor, path) in &image.layers {
        // A hard link when the layout is on the cache's filesystem, else a copy.
        put(&descriptor.digest, &|temp| {
            fs_err::hard_link(path, temp).or_else(|_| fs_err::copy(path, temp).map(|_| ()))
        })?;
    }
    put(&image.config_descriptor().digest, &|temp| fs_err::write(temp, &image.config))?;
    put(&image.manifest_digest, &|temp| fs_err::write(temp, &image.manifest))?;
    let index_path = dir.join("index.json");
    let mut index: Index = match fs_err::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} does not follow the image spec", index_path.display()))?,
        Err(_) => Index { schema_version: 2, media_type: Some(MEDIA_INDEX.into()), manifests: Vec::new() },
    };
    index.manifests.retain(|descriptor| descriptor.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
    let mut descriptor = image.manifest_descriptor();
    descriptor.annotations.insert(REF_NAME.into(), tag.into());
    index.manifests.push(descriptor);
    index.manifests.sort_by(|a, b| a.annotations.get(REF_NAME).cmp(&b.annotations.get(REF_NAME)));
    let temp = dir.join("index.json.partial");
    fs_err::write(&temp, serde_json::to_vec(&index)?)?;
    fs_err::rename(&temp, &index_path)?;
    Ok(())
}
