//! `rootsmith lock RECIPE`: build the stages (from the cache where it can),
//! then write RECIPE.lock with the plan's remote inputs and the version of
//! every package in the final tree.

use anyhow::Result;

use crate::cli::{CacheArgs, RecipeArgs};
use rootsmith::build::materialize;
use rootsmith::host::RealHost;
use rootsmith::lock::{self, Lock, LOCK_VERSION};
use rootsmith::plan::{plan, PlanOptions};

pub fn run(recipe_args: &RecipeArgs, cache_args: &CacheArgs, output: &crate::cli::OutputArgs) -> Result<()> {
    let host = output.host();
    let recipe = super::load_recipe(recipe_args)?;
    let plan = plan(
        &recipe,
        &PlanOptions::from_environment()?.remembering_in(&super::cache_dir(cache_args)),
        &RealHost::default(),
    )?;
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    let progress = rootsmith::progress::for_mode(output.mode(false));
    let list =
        materialize(&plan, &super::cache_dir(cache_args), plan.stages.len(), &host, progress.as_ref(), |context| {
            Ok(rootsmith::artifact::packages::installed(context.tree))
        })?;
    let lock = Lock {
        lock: LOCK_VERSION,
        recipe: recipe.name.clone(),
        recipe_sha256: rootsmith::digest::sha256_hex(recipe.source.as_bytes()),
        remote: plan.remote_inputs(),
        packages: rootsmith::artifact::packages::parse(&list, Some(&plan.arch)),
    };
    let path = lock::path_for(&recipe.file);
    lock::write(&path, &lock)?;
    outln!("wrote {}: {} packages, {} remote inputs", path.display(), lock.packages.len(), lock.remote.len());
    Ok(())
}
