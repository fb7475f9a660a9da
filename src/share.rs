//! The stage cache shared through an OCI registry: each stage is an OCI
//! artifact tagged `stage-KEY` in one repository. Its config is the stage
//! record (media type below) and its first layer the stage's layer blob, the
//! same bytes (and digest) as that layer in an `outputs.oci` image, so the
//! registry stores them once. A kernel stage adds its products (vmlinuz,
//! config, System.map, debs) as a second layer. Pulled blobs are checked
//! against their digests, and the products unpacked as an untrusted archive.
//!
//! A tree's outputs (squashfs rootfs image, initramfs, tarball, package list,
//! SBOM) are shared the same way, tagged `outputs-KEY`: the output record as
//! config and each file as a layer named by its title annotation. A pulled
//! record must be for the key asked, and every layer one of the files it
//! lists, with the digest it lists, so nothing a registry says becomes a path
//! or a file without a check.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cache::{OutputHeader, StageRecord, Store, OUTPUT_RECORD};
use crate::oci::image::{descriptor, MEDIA_LAYER_ZSTD};
use crate::oci::registry::{Blob, Registry};
use crate::oci::{Descriptor, Manifest, MEDIA_MANIFEST};
use crate::stage::kernel::KernelProducts;

pub const MEDIA_STAGE_RECORD: &str = "application/vnd.rootsmith.stage.v1+json";
pub const MEDIA_KERNEL_PRODUCTS: &str = "application/vnd.rootsmith.kernel-products.v1.tar+zstd";
pub const ARTIFACT_TYPE: &str = "application/vnd.rootsmith.stage.v1";
pub const MEDIA_OUTPUT_RECORD: &str = "application/vnd.rootsmith.outputs.v1+json";
pub const MEDIA_OUTPUT_FILE: &str = "application/vnd.rootsmith.output-file.v1";
pub const OUTPUTS_ARTIFACT_TYPE: &str = "application/vnd.rootsmith.outputs.v1";
/// An output record larger than this is not one (they are a few KiB).
const MAX_RECORD_BYTES: u64 = 1 << 20;
/// The annotation that names a layer's file.
const TITLE: &str = "org.opencontainers.image.title";

pub struct RemoteCache {
    registry: Registry,
    pub repository: String,
}

pub fn tag(key: &str) -> String {
    format!("stage-{key}")
}

pub fn outputs_tag(key: &str) -> String {
    format!("outputs-{key}")
}

/// An output file's name as a record or a registry gives it: one plain
/// component, not the record's own name.
fn valid_output_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name != OUTPUT_RECORD
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

/// Which layer of an outputs manifest holds which file: every layer a file
/// the record lists, with its digest, each once, and every file there.
fn output_layers<'a>(
    header: &OutputHeader,
    manifest: &'a Manifest,
) -> std::result::Result<Vec<(&'a str, &'a Descriptor)>, String> {
    let mut found = Vec::new();
    for layer in &manifest.layers {
        let name = layer.annotations.get(TITLE).ok_or_else(|| format!("layer {} has no {TITLE}", layer.digest))?;
        if !valid_output_name(name) {
            return Err(format!("layer {} is named {name:?}, not an output file's name", layer.digest));
        }
        let Some(digest) = header.files.get(name) else {
            return Err(format!("layer {name:?} is not a file of the record"));
        };
        if layer.digest != format!("sha256:{digest}") {
            return Err(format!("layer {name:?} has digest {}, the record says sha256:{digest}", layer.digest));
        }
        if found.iter().any(|(seen, _)| seen == name) {
            return Err(format!("layer {name:?} appears twice"));
        }
        found.push((name.as_str(), layer));
    }
    if let Some(missing) = header.files.keys().find(|name| !found.iter().any(|(seen, _)| seen == name)) {
        return Err(format!("the record lists {missing:?}, which no layer holds"));
    }
    Ok(found)
}

impl RemoteCache {
    /// `repository` is `HOST[:PORT]/REPO` (a tag, if given, is ignored).
    pub fn connect(repository: &str) -> Result<RemoteCache> {
        let registry = Registry::connect(repository)?;
        let repository = format!("{}/{}", registry.reference.registry(), registry.reference.repository());
        Ok(RemoteCache { registry, repository })
    }

    /// The stage `key` from the remote into `store`; `None` when the remote lacks it.
    pub fn pull(&self, store: &Store, key: &str, note: &dyn Fn(&str)) -> Result<Option<StageRecord>> {
        let reference = self.registry.tagged(&tag(key));
        let Some((bytes, _)) = self.registry.find_manifest(&reference)? else { return Ok(None) };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not a stage manifest", reference.whole()))?;
        if manifest.config.media_type != MEDIA_STAGE_RECORD || manifest.layers.is_empty() {
            bail!("{} is not a rootsmith stage (config {})", reference.whole(), manifest.config.media_type);
        }
        let scratch = store.work_dir("pull")?;
        let record_path = scratch.path().join("record.json");
        self.registry.fetch_blob_of(&reference, &manifest.config, &record_path, note)?;
        let record: StageRecord = serde_json::from_slice(&fs_err::read(&record_path)?)
            .with_context(|| format!("the stage record of {}", reference.whole()))?;
        let layer = &manifest.layers[0];
        if let Some(why) = record.inconsistency(key) {
            bail!("{} holds an unusable record of stage {key}: {why}", reference.whole());
        }
        if format!("sha256:{}", record.layer) != layer.digest {
            bail!("{} holds stage {} with layer {}, not stage {key}", reference.whole(), record.key, layer.digest);
        }
        if !store.has_blob(&record.layer) {
            let received = self.registry.fetch_blob_of(&reference, layer, &store.layout().blob(&record.layer), note)?;
            note(&format!("layer {}: {:.1} MB", &record.layer[..12], received as f64 / 1e6));
        }
        if let (Some(kernel), Some(products)) = (&record.products, manifest.layers.get(1)) {
            let dir = store.layout().products_dir(&kernel.dir);
            if !dir.join(crate::cache::PRODUCTS_RECORD).is_file() {
                let archive = scratch.path().join("products.tar.zst");
                self.registry.fetch_blob_of(&reference, products, &archive, note)?;
                let unpacking = dir.with_extension("partial");
                let _ = fs_err::remove_dir_all(&unpacking);
                fs_err::create_dir_all(&unpacking)?;
                // Products are plain files: a device in them would be made (or
                // stood for) in a tree nobody writes out again.
                let devices = crate::layer::Devices::default();
                crate::layer::apply_layer(
                    zstd::Decoder::new(fs_err::File::open(&archive)?)?,
                    &unpacking,
                    &format!("kernel products of {}", reference.whole()),
                    &devices,
                )?;
                fs_err::rename(&unpacking, &dir)?;
            }
        }
        store.put_stage(&record)?;
        Ok(Some(record))
    }

    /// Push one stage (its record, layer and kernel products); `false` when
    /// the remote has it already.
    pub fn push(&self, store: &Store, record: &StageRecord, note: &dyn Fn(&str)) -> Result<bool> {
        let reference = self.registry.tagged(&tag(&record.key));
        if self.registry.find_manifest(&reference)?.is_some() {
            return Ok(false);
        }
        let record_bytes = serde_json::to_vec(record)?;
        let config = descriptor(MEDIA_STAGE_RECORD, &record_bytes);
        let layer_path = store.layout().blob(&record.layer);
        let mut layers = vec![Descriptor {
            media_type: MEDIA_LAYER_ZSTD.into(),
            digest: format!("sha256:{}", record.layer),
            size: record.layer_size,
            platform: None,
            annotations: Default::default(),
        }];
        let mut blobs = vec![
            Blob::File(layers[0].digest.clone(), layer_path.as_path()),
            Blob::Bytes(config.digest.clone(), &record_bytes),
        ];
        let products;
        if let Some(products_record) = &record.products {
            let kernel = KernelProducts::from_products(products_record)?;
            products = products_archive(&kernel.dir(store.layout()), record.inputs.source_date_epoch)?;
            let products_descriptor = descriptor(MEDIA_KERNEL_PRODUCTS, &products);
            blobs.push(Blob::Bytes(products_descriptor.digest.clone(), &products));
            layers.push(products_descriptor);
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": config,
            "layers": layers,
            "annotations": { "org.opencontainers.image.title": format!("{} stage `{}` of {}", record.kind, record.stage, record.recipe) },
        }))?;
        self.registry.push_to(&reference, &blobs, &manifest, MEDIA_MANIFEST, note)?;
        Ok(true)
    }

    /// The outputs `key` from the remote into `store`; `false` when the remote lacks them.
    pub fn pull_outputs(&self, store: &Store, key: &str, note: &dyn Fn(&str)) -> Result<bool> {
        if !crate::digest::is_sha256_hex(key) {
            bail!("`{key}` is not an output key");
        }
        let reference = self.registry.tagged(&outputs_tag(key));
        let Some((bytes, _)) = self.registry.find_manifest(&reference)? else { return Ok(false) };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not an outputs manifest", reference.whole()))?;
        if manifest.config.media_type != MEDIA_OUTPUT_RECORD {
            bail!("{} is not a rootsmith outputs artifact (config {})", reference.whole(), manifest.config.media_type);
        }
        if manifest.config.size > MAX_RECORD_BYTES {
            bail!(
                "{} has an output record of {} bytes, more than an output record's {MAX_RECORD_BYTES}",
                reference.whole(),
                manifest.config.size
            );
        }
        let scratch = store.work_dir("pull-outputs")?;
        let record_path = scratch.path().join("record.json");
        self.registry.fetch_blob_of(&reference, &manifest.config, &record_path, note)?;
        let record: serde_json::Value = serde_json::from_slice(&fs_err::read(&record_path)?)
            .with_context(|| format!("the output record of {}", reference.whole()))?;
        let header: OutputHeader = serde_json::from_value(record.clone())
            .with_context(|| format!("the output record of {}", reference.whole()))?;
        if header.key != key {
            bail!("{} holds the outputs {}, not {key}", reference.whole(), header.key);
        }
        let layers = output_layers(&header, &manifest)
            .map_err(|why| anyhow::anyhow!("{} holds unusable outputs: {why}", reference.whole()))?;
        let staged = scratch.path().join("outputs");
        fs_err::create_dir(&staged)?;
        let mut received = 0;
        for (name, layer) in layers {
            received += self.registry.fetch_blob_of(&reference, layer, &staged.join(name), note)?;
        }
        note(&format!("outputs {}: {:.1} MB", &key[..12.min(key.len())], received as f64 / 1e6));
        store.put_output(key, &staged, &record)?;
        Ok(true)
    }

    /// Push the outputs `key` of `store` (its record and every file it
    /// lists); `false` when the remote has them already.
    pub fn push_outputs(&self, store: &Store, key: &str, note: &dyn Fn(&str)) -> Result<bool> {
        let reference = self.registry.tagged(&outputs_tag(key));
        if self.registry.find_manifest(&reference)?.is_some() {
            return Ok(false);
        }
        let dir = store.layout().output(key);
        let record_bytes = fs_err::read(dir.join(OUTPUT_RECORD))?;
        let header: OutputHeader =
            serde_json::from_slice(&record_bytes).with_context(|| format!("the output record of {key}"))?;
        let config = descriptor(MEDIA_OUTPUT_RECORD, &record_bytes);
        let mut layers = Vec::new();
        let paths: Vec<_> = header.files.keys().map(|name| dir.join(name)).collect();
        for ((name, digest), path) in header.files.iter().zip(&paths) {
            let mut annotations = std::collections::BTreeMap::new();
            annotations.insert(TITLE.to_string(), name.clone());
            layers.push(Descriptor {
                media_type: MEDIA_OUTPUT_FILE.into(),
                digest: format!("sha256:{digest}"),
                size: fs_err::metadata(path)?.len(),
                platform: None,
                annotations,
            });
        }
        let mut blobs: Vec<Blob<'_>> =
            layers.iter().zip(&paths).map(|(layer, path)| Blob::File(layer.digest.clone(), path.as_path())).collect();
        blobs.push(Blob::Bytes(config.digest.clone(), &record_bytes));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "artifactType": OUTPUTS_ARTIFACT_TYPE,
            "config": config,
            "layers": layers,
            "annotations": { TITLE: format!("outputs {key}") },
        }))?;
        self.registry.push_to(&reference, &blobs, &manifest, MEDIA_MANIFEST, note)?;
        Ok(true)
    }

    /// The stage keys the remote holds.
    pub fn keys(&self) -> Result<Vec<String>> {
        Ok(self
            .registry
            .tags()?
            .into_iter()
            .filter_map(|tag| tag.strip_prefix("stage-").map(str::to_string))
            .filter(|key| crate::digest::is_sha256_hex(key))
            .collect())
    }

    /// The output keys the remote holds.
    pub fn output_keys(&self) -> Result<Vec<String>> {
        Ok(self
            .registry
            .tags()?
            .into_iter()
            .filter_map(|tag| tag.strip_prefix("outputs-").map(str::to_string))
            .filter(|key| crate::digest::is_sha256_hex(key))
            .collect())
    }
}

/// A zstd tar of a kernel's products directory, sorted and clamped.
fn products_archive(dir: &Path, epoch: i64) -> Result<Vec<u8>> {
    let encoder = zstd::Encoder::new(Vec::new(), 3)?;
    // A products directory comes from the cache, where nothing stands for a device.
    let devices = crate::layer::Devices::default();
    let mut writer = crate::layer::TreeTarWriter::new(encoder, epoch, &devices);
    let mut names: Vec<_> =
        fs_err::read_dir(dir)?.map(|entry| entry.map(|e| e.file_name())).collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        writer.append(dir, Path::new(&name))?;
    }
    Ok(writer.finish()?.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: Option<&str>, digest: &str) -> Descriptor {
        let annotations =
            name.map(|name| [(TITLE.to_string(), name.to_string())].into_iter().collect()).unwrap_or_default();
        Descriptor {
            media_type: MEDIA_OUTPUT_FILE.into(),
            digest: format!("sha256:{digest}"),
            size: 1,
            platform: None,
            annotations,
        }
    }

    fn manifest(layers: Vec<Descriptor>) -> Manifest {
        serde_json::from_value(json!({ "schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": descriptor(MEDIA_OUTPUT_RECORD, b"{}"), "layers": layers })).unwrap()
    }

    /// A registry's outputs manifest names files only as the record lists
    /// them: no path, no other digest, nothing missing or twice.
    #[test]
    fn pulled_output_layers_are_the_record_files() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let header: OutputHeader = serde_json::from_value(
            json!({ "key": "k", "files": { "rootfs.img": a, "packages.txt": b }, "created": 0 }),
        )
        .unwrap();
        let good = manifest(vec![layer(Some("packages.txt"), &b), layer(Some("rootfs.img"), &a)]);
        let names: Vec<&str> = output_layers(&header, &good).unwrap().into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["packages.txt", "rootfs.img"]);
        for (layers, why) in [
            (vec![layer(Some("../rootfs.img"), &a), layer(Some("packages.txt"), &b)], "not an output file's name"),
            (vec![layer(Some("/etc/passwd"), &a), layer(Some("packages.txt"), &b)], "not an output file's name"),
            (vec![layer(Some("record.json"), &a), layer(Some("packages.txt"), &b)], "not an output file's name"),
            (vec![layer(None, &a), layer(Some("packages.txt"), &b)], "has no"),
            (vec![layer(Some("rootfs.img"), &b), layer(Some("packages.txt"), &b)], "the record says"),
            (vec![layer(Some("rootfs.img"), &a)], "which no layer holds"),
            (
                vec![layer(Some("rootfs.img"), &a), layer(Some("rootfs.img"), &a), layer(Some("packages.txt"), &b)],
                "appears twice",
            ),
            (
                vec![layer(Some("sbom.json"), &a), layer(Some("rootfs.img"), &a), layer(Some("packages.txt"), &b)],
                "is not a file of the record",
            ),
        ] {
            let error = output_layers(&header, &manifest(layers)).unwrap_err();
            assert!(error.contains(why), "{why}: {error}");
        }
    }
}
