//! A build: run the plan's stages (`stages`), make the outputs of the final
//! tree (`outputs`), publish the bundle whole or not at all (`publish`).

mod emulation;
mod kept_tree;
mod options;
mod outputs;
mod publish;
mod stages;

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

pub use options::{BuildOptions, BuildSummary, LockedBuild, StageFailed, StageOutcome, TOOL};
pub use outputs::{output_key, OutputRecord, RootfsRecord};
use stages::StageRunner;

use crate::cache::{Corrupt, Store};
use crate::host::Host;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::recipe::Recipe;
use crate::stage::StageContext;

/// How many corrupt cache entries one build discards and makes again before
/// it gives up (each attempt removes the entry it tripped on).
const CORRUPT_RETRIES: usize = 8;

pub fn build(
    recipe: &Recipe,
    plan: &Plan,
    options: &BuildOptions,
    host: &dyn Host,
    progress: &dyn Progress,
) -> Result<BuildSummary> {
    let started = Instant::now();
    crate::names::check_version(&options.version)
        .map_err(|why| anyhow::anyhow!("invalid version `{}`: {why}", options.version))?;
    publish::preflight(recipe, plan, options, host)?;
    let keeping = crate::progress::KeepingWarnings::new(progress);
    let mut summary =
        healing(&options.cache_dir, &keeping, || build_once(recipe, plan, options, host, &keeping, started))?;
    summary.warnings = plan.warnings.iter().cloned().chain(keeping.taken()).collect();
    Ok(summary)
}

/// Run `work`; when it meets a corrupt cache entry, discard that entry (with
/// a warning) and run it again, so a broken cache heals instead of failing
/// every build.
fn healing<T>(cache_dir: &Path, progress: &dyn Progress, mut work: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 0;
    loop {
        match work() {
            Err(error) if attempt < CORRUPT_RETRIES && error.downcast_ref::<Corrupt>().is_some() => {
                let corrupt = error.downcast_ref::<Corrupt>().expect("checked above");
                progress.warn(&format!("{}: {}; discarding it and building it again", corrupt.what, corrupt.why));
                Store::open(cache_dir)?.discard(&corrupt.entry)?;
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn build_once(
    recipe: &Recipe,
    plan: &Plan,
    options: &BuildOptions,
    host: &dyn Host,
    progress: &dyn Progress,
    started: Instant,
) -> Result<BuildSummary> {
    let mut runner = StageRunner::open(plan, options, host, progress)?;
    let mut stages = Vec::new();
    for index in 0..plan.stages.len() {
        stages.push(runner.stage(index)?);
    }
    let (outputs, record, made_here) = outputs::outputs(&mut runner, options.fast, options.cache_only)
        .inspect_err(|error| progress.fail("outputs", &format!("{error:#}")))?;
    let (bundle, up_to_date) = publish::publish(&runner, options, recipe, &record, &made_here)?;
    let artifacts = crate::bundle::Bundle::open(&bundle).map(|published| published.manifest.artifacts)?;
    Ok(BuildSummary {
        name: plan.recipe.clone(),
        version: options.version.clone(),
        bundle,
        stages,
        outputs,
        up_to_date,
        seconds: started.elapsed().as_secs_f64(),
        warnings: Vec::new(),
        artifacts,
    })
}

/// Bring the tree after the first `stages` stages into a work dir (building
/// what is missing) and call `use_tree` with a context for it; the tree is
/// thrown away afterwards.
pub fn materialize<T>(
    plan: &Plan,
    cache_dir: &Path,
    stages: usize,
    host: &dyn Host,
    progress: &dyn Progress,
    use_tree: impl FnOnce(&StageContext<'_>) -> Result<T>,
) -> Result<T> {
    emulation::ready(&plan.arch, host, progress)?;
    let options = BuildOptions::stages_only(cache_dir.to_path_buf(), plan.version.clone());
    let runner = healing(cache_dir, progress, || {
        let mut runner = StageRunner::open(plan, &options, host, progress)?;
        for index in 0..stages {
            runner.stage(index)?;
        }
        runner.prepare_tree(stages)?;
        Ok(runner)
    })?;
    let work = runner.work();
    let tree = work.tree();
    let scratch = work.dir.path().join("scratch");
    fs_err::create_dir_all(&scratch)?;
    let no_remote = std::collections::BTreeMap::new();
    let context = StageContext {
        host,
        tree: &tree,
        devices: work.devices(),
        log: work.dir.path().join("shell.log"),
        arch: &plan.arch,
        source_date_epoch: plan.source_date_epoch,
        mirror: plan.mirror.as_deref(),
        scratch: &scratch,
        layout: runner.store.layout(),
        recipe: &plan.recipe,
        stage_name: "shell",
        stage_key: "shell",
        remote: &no_remote,
        planned_files: &[],
        apt_pins: None,
    };
    use_tree(&context)
}

#[cfg(test)]
mod tests;
