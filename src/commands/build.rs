//! `rootsmith build RECIPE`: plan, build, publish, print where the bundle is.

use std::path::PathBuf;

use anyhow::Result;

use crate::build::{build, BuildOptions};
use crate::cli::{CacheArgs, RecipeArgs};
use crate::host::RealHost;
use crate::plan::{plan, PlanOptions};

pub struct Settings {
    pub out: PathBuf,
    pub version: Option<String>,
    pub rebuild: Option<String>,
    pub fast: bool,
    pub cache_only: bool,
    pub json: bool,
}

pub fn run(recipe_args: &RecipeArgs, cache_args: &CacheArgs, settings: Settings) -> Result<()> {
    let recipe = super::load_recipe(recipe_args)?;
    let rebuild_from = match &settings.rebuild {
        Some(name) => Some(recipe.stage_index(name, "--rebuild").map_err(|d| super::RecipeError(crate::recipe::Diagnostics(vec![d])))?),
        None => None,
    };
    let mut options = PlanOptions::from_environment()?.remembering_in(&super::cache_dir(cache_args));
    // `release:` bases are looked up where this build publishes.
    options.out_dir = settings.out.clone();
    let plan = plan(&recipe, &options)?;
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    let options = BuildOptions {
        cache_dir: super::cache_dir(cache_args),
        out_dir: settings.out,
        version: settings.version.unwrap_or_else(|| recipe.version.clone()),
        rebuild_from,
        fast: settings.fast,
        cache_only: settings.cache_only,
    };
    let progress = crate::progress::for_terminal(settings.json);
    let summary = build(&recipe, &plan, &options, &RealHost, progress.as_ref())?;
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let built = summary.stages.iter().filter(|s| s.state == "built").count();
        let note = if summary.up_to_date { " (already built, identical)" } else { "" };
        println!("{} {}: {} of {} stages built, outputs {}, {:.1}s{note}", summary.name, summary.version, built, summary.stages.len(), summary.outputs.state, summary.seconds);
        println!("bundle: {}", summary.bundle.display());
    }
    Ok(())
}
