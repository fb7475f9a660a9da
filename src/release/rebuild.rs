//! `release verify DIR --rebuild RECIPE`: build the bundle's recipe again on
//! an empty cache and compare every artifact. Where one differs, the two
//! squashfs images are read with backhand and the paths that differ inside
//! them are named, so a stage that is not reproducible can be found.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::Bundle;
use crate::build::{build, BuildOptions};
use crate::host::RealHost;
use crate::plan::{plan, PlanOptions};
use crate::recipe::Recipe;

/// The paths whose type, content, mode, owner or mtime differ, or that only
/// one has, between the rootfs image `name` of two bundles.
pub fn differing_paths(a: &Bundle, b: &Bundle, name: &str) -> Result<Vec<String>> {
    let (left, right) = (super::tree::entries(a, name)?, super::tree::entries(b, name)?);
    let mut paths = Vec::new();
    for (path, what) in &left {
        match right.get(path) {
            None => paths.push(format!("{path} (only in the bundle)")),
            Some(other) if other != what => paths.push(path.clone()),
            Some(_) => {}
        }
    }
    for path in right.keys().filter(|path| !left.contains_key(*path)) {
        paths.push(format!("{path} (only in the rebuild)"));
    }
    Ok(paths)
}

/// What a rebuild on an empty cache found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebuilt {
    /// Every artifact is the same (how many).
    Same(String),
    /// What differs, artifact by artifact.
    Differs(String),
}

/// Rebuild `recipe` as `bundle` was built (its version, SOURCE_DATE_EPOCH and
/// --fast) on an empty cache and compare every artifact.
pub fn rebuild_and_compare(bundle: &Bundle, recipe: &Recipe) -> Result<Rebuilt> {
    let manifest = &bundle.manifest;
    if crate::digest::sha256_hex(recipe.source.as_bytes()) != manifest.recipe_sha256 {
        bail!(
            "{} is not the recipe {} {} was built from (its SHA-256 differs from the manifest's recipe_sha256)",
            recipe.file.display(),
            manifest.name,
            manifest.version
        );
    }
    let scratch = tempfile::Builder::new().prefix("rootsmith-rebuild-").tempdir_in(std::env::temp_dir())?;
    let mut options = PlanOptions::from_environment()?;
    options.epoch_from_env = Some(manifest.source_date_epoch);
    options.out_dir = bundle.dir.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    let plan = plan(recipe, &options, &RealHost::default())?;
    let build_options = BuildOptions {
        cache_dir: scratch.path().join("cache"),
        out_dir: scratch.path().join("out"),
        version: manifest.version.clone(),
        rebuild_from: None,
        fast: manifest.fast,
        cache_only: false,
        lock: None,
        cache_remote: None,
        replace: false,
    };
    let progress = crate::progress::for_terminal(true);
    let summary = build(recipe, &plan, &build_options, &RealHost::default(), progress.as_ref())
        .context("rebuilding the recipe")?;
    let rebuilt = Bundle::open(&summary.bundle)?;
    let digests = |b: &Bundle| -> BTreeMap<String, String> {
        b.manifest.artifacts.iter().map(|a| (a.name.clone(), a.sha256.clone())).collect()
    };
    let (original, again) = (digests(bundle), digests(&rebuilt));
    let mut problems = Vec::new();
    for (name, digest) in &original {
        match again.get(name) {
            None => problems.push(format!("{name} is not made by the rebuild")),
            Some(other) if other != digest => {
                let mut line = format!("{name} differs");
                if name == &manifest.boot.rootfs_image {
                    let paths = differing_paths(bundle, &rebuilt, name)?;
                    let shown: Vec<&String> = paths.iter().take(50).collect();
                    line.push_str(&format!(
                        " in {} path{}: {}",
                        paths.len(),
                        if paths.len() == 1 { "" } else { "s" },
                        shown.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                    if paths.len() > shown.len() {
                        line.push_str(", …");
                    }
                }
                problems.push(line);
            }
            Some(_) => {}
        }
    }
    for name in again.keys().filter(|name| !original.contains_key(*name)) {
        problems.push(format!("the rebuild also makes {name}"));
    }
    Ok(if problems.is_empty() {
        Rebuilt::Same(format!("a rebuild on an empty cache gives the same {} artifacts", original.len()))
    } else {
        Rebuilt::Differs(problems.join("; "))
    })
}
