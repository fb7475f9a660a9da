//! `files` stage: copy a directory into the tree at `dest`, owned by root (or
//! `owner`), with `modes` overrides. The copy goes through the layer applier,
//! so paths are resolved inside the tree exactly as for any archive.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::StageContext;
use crate::layer::{apply_layer, TreeTarWriter};
use crate::recipe::Files;

pub fn run(stage: &Files, context: &StageContext<'_>) -> Result<()> {
    let dest = PathBuf::from(stage.dest.trim_start_matches('/'));
    let mut archive = tempfile::tempfile_in(context.scratch)?;
    {
        let mut writer = TreeTarWriter::new(std::io::BufWriter::new(&mut archive), context.source_date_epoch);
        for entry in walkdir::WalkDir::new(&stage.src.resolved).min_depth(1).sort_by_file_name() {
            let entry = entry.with_context(|| format!("reading {}", stage.src.resolved.display()))?;
            let relative = entry.path().strip_prefix(&stage.src.resolved).expect("under src");
            let mode = stage.modes.get(relative.to_string_lossy().as_ref()).copied();
            writer.append_with(&stage.src.resolved, relative, &dest.join(relative), Some((stage.uid, stage.gid)), mode)?;
        }
        writer.finish()?;
    }
    use std::io::Seek;
    archive.rewind()?;
    apply_layer(std::io::BufReader::new(archive), context.tree, &format!("files from {}", stage.src.written))?;
    Ok(())
}
