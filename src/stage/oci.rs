//! `oci` base stage: an OCI image's layers applied in order (whiteouts and
//! opaque directories included) with the untrusted-layer applier: no entry
//! writes outside the tree, whatever the image says. Each blob is checked
//! against its digest before it is read.

use std::io::{BufReader, Read};

use anyhow::{Context, Result};

use super::StageContext;
use crate::oci::layout::{Layout, ResolvedImage};
use crate::oci::{layer_compression, LayerCompression};
use crate::recipe::{Oci, OciSource};

/// The manifest the stage's reference names now (at plan time).
pub fn resolve(stage: &Oci, debian_arch: &str) -> Result<ResolvedImage> {
    match &stage.source {
        OciSource::Layout { dir, reference } => {
            let what = format!("the OCI layout {}{}", dir.written, reference.as_ref().map(|r| format!(" image `{r}`")).unwrap_or_default());
            Layout::open(&dir.resolved).and_then(|layout| layout.resolve(reference.as_deref(), debian_arch)).with_context(|| format!("resolving {what}"))
        }
    }
}

pub fn run(stage: &Oci, context: &StageContext<'_>) -> Result<()> {
    let resolved = stage.resolved.as_ref().expect("the plan resolves the image");
    let OciSource::Layout { dir, .. } = &stage.source;
    let layout = Layout::open(&dir.resolved)?;
    let count = resolved.manifest.layers.len();
    for (index, descriptor) in resolved.manifest.layers.iter().enumerate() {
        let name = format!("layer {} of {count} ({})", index + 1, descriptor.digest);
        let path = layout.checked_blob(descriptor).with_context(|| format!("{name} of {}", dir.written))?;
        let file = BufReader::with_capacity(1 << 20, fs_err::File::open(&path)?);
        let reader: Box<dyn Read> = match layer_compression(&descriptor.media_type).with_context(|| name.clone())? {
            LayerCompression::None => Box::new(file),
            LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
            LayerCompression::Zstd => Box::new(zstd::Decoder::with_buffer(file)?),
        };
        crate::layer::apply_layer(reader, context.tree, &name)?;
    }
    Ok(())
}
