//! `oci` base stage: an OCI image's layers applied in order (whiteouts and
//! opaque directories included) with the untrusted-layer applier: no entry
//! writes outside the tree, whatever the image says. Every blob is checked
//! against its digest before it is read; a registry's blobs are kept in the
//! cache by digest (`CACHE/v1/oci/blobs/sha256/`) and never downloaded twice.

use std::io::{BufReader, Read};
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::context::StageContext;
use crate::oci::layout::{Layout as ImageLayout, ResolvedImage};
use crate::oci::registry::Registry;
use crate::oci::{layer_compression, verify_blob, Descriptor, LayerCompression};
use crate::recipe::{Oci, OciSource};

/// The manifest the stage's reference names now (at plan time).
pub fn resolve(stage: &Oci, debian_arch: &str) -> Result<ResolvedImage> {
    match &stage.source {
        OciSource::Layout { dir, reference } => {
            let what = format!(
                "the OCI layout {}{}",
                dir.written,
                reference.as_ref().map(|r| format!(" image `{r}`")).unwrap_or_default()
            );
            ImageLayout::open(&dir.resolved)
                .and_then(|layout| layout.resolve(reference.as_deref(), debian_arch))
                .with_context(|| format!("resolving {what}"))
        }
        OciSource::Registry { reference } => Registry::connect(reference)
            .and_then(|registry| registry.resolve(debian_arch))
            .with_context(|| format!("resolving the image {reference}")),
    }
}

/// Where each layer's checked blob is, downloading what the cache lacks.
fn layer_blobs(stage: &Oci, resolved: &ResolvedImage, context: &StageContext<'_>) -> Result<Vec<PathBuf>> {
    let layers = &resolved.manifest.layers;
    match &stage.source {
        OciSource::Layout { dir, .. } => {
            let layout = ImageLayout::open(&dir.resolved)?;
            layers
                .iter()
                .enumerate()
                .map(|(index, descriptor)| {
                    layout
                        .checked_blob(descriptor)
                        .with_context(|| format!("{} of {}", layer_name(index, layers.len(), descriptor), dir.written))
                })
                .collect()
        }
        OciSource::Registry { reference } => {
            fs_err::create_dir_all(context.layout.oci_blobs())?;
            let mut registry = None;
            let mut paths = Vec::new();
            for (index, descriptor) in layers.iter().enumerate() {
                let name = layer_name(index, layers.len(), descriptor);
                let path = context.layout.oci_blob(crate::oci::check_digest(&descriptor.digest)?);
                // A cached blob is checked again: the cache is only trusted as far as digests go.
                if path.is_file() && verify_blob(&path, descriptor).is_ok() {
                    // Its mtime is its last use, which `cache gc` goes by.
                    let _ = filetime::set_file_mtime(&path, filetime::FileTime::now());
                    eprintln!("{} {}: {name}: cached", crate::progress::clock(), context.stage_name);
                } else {
                    let registry = match &mut registry {
                        Some(registry) => registry,
                        None => registry.insert(Registry::connect(reference)?),
                    };
                    let started = std::time::Instant::now();
                    let note =
                        |line: &str| eprintln!("{} {}: {name}: {line}", crate::progress::clock(), context.stage_name);
                    let received = registry
                        .fetch_blob(descriptor, &path, &note)
                        .with_context(|| format!("{name} of {reference}"))?;
                    note(&format!("{:.1} MB in {:.1} s", received as f64 / 1e6, started.elapsed().as_secs_f64()));
                }
                paths.push(path);
            }
            Ok(paths)
        }
    }
}

fn layer_name(index: usize, count: usize, descriptor: &Descriptor) -> String {
    format!("layer {} of {count} ({})", index + 1, descriptor.digest)
}

pub fn run(stage: &Oci, resolved: &ResolvedImage, context: &StageContext<'_>) -> Result<()> {
    let paths = layer_blobs(stage, resolved, context)?;
    let count = paths.len();
    for (index, (descriptor, path)) in resolved.manifest.layers.iter().zip(paths).enumerate() {
        let name = layer_name(index, count, descriptor);
        let file = BufReader::with_capacity(1 << 20, fs_err::File::open(&path)?);
        let reader: Box<dyn Read> = match layer_compression(&descriptor.media_type).with_context(|| name.clone())? {
            LayerCompression::None => Box::new(file),
            LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
            LayerCompression::Zstd => Box::new(zstd::Decoder::with_buffer(file)?),
        };
        crate::layer::apply_layer(reader, context.tree, &name, context.devices)?;
    }
    Ok(())
}
