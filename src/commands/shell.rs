//! `rootsmith shell RECIPE --stage S`: a shell in a throw-away copy of the tree
//! after stage S (missing stages up to S are built first).

use anyhow::Result;

use crate::cli::{CacheArgs, RecipeArgs};
use rootsmith::build::materialize;
use rootsmith::host::RealHost;
use rootsmith::plan::{plan, PlanOptions};

pub fn run(recipe_args: &RecipeArgs, cache_args: &CacheArgs, stage: Option<&str>, command: &[String]) -> Result<()> {
    let recipe = super::load_recipe(recipe_args)?;
    let index = match stage {
        Some(name) => recipe
            .stage_index(name, "--stage")
            .map_err(|d| super::RecipeError(rootsmith::diagnostic::Diagnostics(vec![d])))?,
        None => recipe.stages.len() - 1,
    };
    let plan = plan(
        &recipe,
        &PlanOptions::from_environment()?.remembering_in(&super::cache_dir(cache_args)),
        &RealHost::default(),
    )?;
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    let progress = rootsmith::progress::for_terminal(false);
    let status = materialize(
        &plan,
        &super::cache_dir(cache_args),
        index + 1,
        &RealHost::default(),
        progress.as_ref(),
        |context| {
            let argv: Vec<&str> = if command.is_empty() {
                vec!["/bin/sh", "-c", "command -v bash >/dev/null && exec bash -l; exec sh -l"]
            } else {
                command.iter().map(String::as_str).collect()
            };
            eprintln!(
                "rootsmith: shell in the tree after stage `{}`; changes are thrown away on exit",
                recipe.stages[index].name
            );
            rootsmith::stage::run_interactive(context, &argv)
        },
    )?;
    if status != 0 {
        // The command's own status is the shell's: `rootsmith shell … -- false`
        // exits 1; one killed by signal N exits 128 + N, as a shell reports it.
        return Err(super::PassOn(if status < 0 { 128 - status } else { status }).into());
    }
    Ok(())
}
