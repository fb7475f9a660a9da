//! A build's tree as an OCI image: one layer per stage (the stage's cached
//! layer blob as it is, zstd-compressed tar with OCI whiteouts), a config
//! with the platform, `created` from SOURCE_DATE_EPOCH and a history entry
//! per stage, and the manifest. Images built from the same base share their
//! lower layers byte for byte, in a layout or a registry. The same inputs give
//! the same manifest digest.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;
use sha2::Digest;

use super::{platform_for, Descriptor, MEDIA_CONFIG, MEDIA_MANIFEST};
use crate::cache::{StageRecord, Store};

pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// An image ready to be written: its blobs (on disk, in the cache) and JSON.
pub struct Image {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    /// Each layer's descriptor and its blob in the cache.
    pub layers: Vec<(Descriptor, PathBuf)>,
}

impl Image {
    pub fn config_descriptor(&self) -> Descriptor {
        descriptor(MEDIA_CONFIG, &self.config)
    }

    pub fn manifest_descriptor(&self) -> Descriptor {
        descriptor(MEDIA_MANIFEST, &self.manifest)
    }
}

pub fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes))),
        size: bytes.len() as u64,
        platform: None,
        annotations: Default::default(),
    }
}

/// SHA-256 of a layer's uncompressed tar: its `diff_id`.
fn diff_id(store: &Store, layer: &str) -> Result<String> {
    let (digest, _) = crate::digest::hash_reader(zstd::Decoder::new(store.open_blob(layer)?)?)?;
    Ok(format!("sha256:{digest}"))
}

pub fn assemble(store: &Store, records: &[StageRecord], debian_arch: &str, source_date_epoch: i64) -> Result<Image> {
    let created = crate::time::rfc3339(source_date_epoch);
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for record in records {
        let path = store.layout().blob(&record.layer);
        layers.push((
            Descriptor {
                media_type: MEDIA_LAYER_ZSTD.into(),
                digest: format!("sha256:{}", record.layer),
                size: record.layer_size,
                platform: None,
                annotations: Default::default(),
            },
            path,
        ));
        diff_ids.push(diff_id(store, &record.layer)?);
        history.push(json!({ "created": created, "created_by": format!("rootsmith {} stage `{}`", record.kind, record.stage), "comment": format!("stage key {}", record.key) }));
    }
    let (architecture, variant) = platform_for(debian_arch);
    let mut config = json!({
        "created": created,
        "architecture": architecture,
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history,
    });
    if let Some(variant) = variant {
        config["variant"] = json!(variant);
    }
    let config = serde_json::to_vec(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config),
        "layers": layers.iter().map(|(descriptor, _)| descriptor).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = descriptor(MEDIA_MANIFEST, &manifest).digest;
    Ok(Image { config, manifest, manifest_digest, layers })
}
