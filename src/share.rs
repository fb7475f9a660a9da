//! The stage cache shared through an OCI registry: each stage is an OCI
//! artifact tagged `stage-KEY` in one repository. Its config is the stage
//! record (media type below) and its first layer the stage's layer blob, the
//! same bytes (and digest) as that layer in an `outputs.oci` image, so the
//! registry stores them once. A kernel stage adds its products (vmlinuz,
//! config, System.map, debs) as a second layer. Pulled blobs are checked
//! against their digests, and the products unpacked as an untrusted archive.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cache::{StageRecord, Store};
use crate::oci::image::{descriptor, MEDIA_LAYER_ZSTD};
use crate::stage::kernel::KernelProducts;
use crate::oci::registry::{Blob, Registry};
use crate::oci::{Descriptor, Manifest, MEDIA_MANIFEST};

pub const MEDIA_STAGE_RECORD: &str = "application/vnd.rootsmith.stage.v1+json";
pub const MEDIA_KERNEL_PRODUCTS: &str = "application/vnd.rootsmith.kernel-products.v1.tar+zstd";
pub const ARTIFACT_TYPE: &str = "application/vnd.rootsmith.stage.v1";

pub struct RemoteCache {
    registry: Registry,
    pub repository: String,
}

pub fn tag(key: &str) -> String {
    format!("stage-{key}")
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
        let manifest: Manifest = serde_json::from_slice(&bytes).with_context(|| format!("{} is not a stage manifest", reference.whole()))?;
        if manifest.config.media_type != MEDIA_STAGE_RECORD || manifest.layers.is_empty() {
            bail!("{} is not a rootsmith stage (config {})", reference.whole(), manifest.config.media_type);
        }
        let scratch = store.work_dir("pull")?;
        let record_path = scratch.path().join("record.json");
        self.registry.fetch_blob_of(&reference, &manifest.config, &record_path, note)?;
        let record: StageRecord = serde_json::from_slice(&fs_err::read(&record_path)?).with_context(|| format!("the stage record of {}", reference.whole()))?;
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
                crate::layer::apply_layer(zstd::Decoder::new(fs_err::File::open(&archive)?)?, &unpacking, &format!("kernel products of {}", reference.whole()), &devices)?;
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
        let mut layers = vec![Descriptor { media_type: MEDIA_LAYER_ZSTD.into(), digest: format!("sha256:{}", record.layer), size: record.layer_size, platform: None, annotations: Default::default() }];
        let mut blobs = vec![Blob::File(layers[0].digest.clone(), layer_path.as_path()), Blob::Bytes(config.digest.clone(), &record_bytes)];
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

    /// The stage keys the remote holds.
    pub fn keys(&self) -> Result<Vec<String>> {
        Ok(self.registry.tags()?.into_iter().filter_map(|tag| tag.strip_prefix("stage-").map(str::to_string)).collect())
    }
}

/// A zstd tar of a kernel's products directory, sorted and clamped.
fn products_archive(dir: &Path, epoch: i64) -> Result<Vec<u8>> {
    let encoder = zstd::Encoder::new(Vec::new(), 3)?;
    // A products directory comes from the cache, where nothing stands for a device.
    let devices = crate::layer::Devices::default();
    let mut writer = crate::layer::TreeTarWriter::new(encoder, epoch, &devices);
    let mut names: Vec<_> = fs_err::read_dir(dir)?.map(|entry| entry.map(|e| e.file_name())).collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        writer.append(dir, Path::new(&name))?;
    }
    Ok(writer.finish()?.finish()?)
}
