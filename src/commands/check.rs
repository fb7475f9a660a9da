//! `rootsmith check RECIPE`: load and validate, run nothing.

use anyhow::Result;

use crate::cli::RecipeArgs;

pub fn run(args: &RecipeArgs) -> Result<()> {
    let recipe = super::load_recipe(args)?;
    outln!(
        "{}: ok ({} {}, {} stages: {})",
        args.recipe.display(),
        recipe.name,
        recipe.version,
        recipe.stages.len(),
        recipe.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
