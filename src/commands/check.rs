//! `rootsmith check RECIPE [--json]`: load and validate, run nothing.

use anyhow::Result;

use crate::cli::RecipeArgs;

pub fn run(args: &RecipeArgs, json: bool) -> Result<()> {
    let loaded = super::load_recipe_checked(args);
    if json {
        // For CI: every error as fields, not one rendered string.
        let value = match &loaded {
            Ok(recipe) => serde_json::json!({
                "ok": true,
                "file": args.recipe,
                "name": recipe.name,
                "version": recipe.version,
                "arch": recipe.arch,
                "stages": recipe.stages.iter().map(|s| &s.name).collect::<Vec<_>>(),
            }),
            Err(diagnostics) => serde_json::json!({
                "ok": false,
                "file": args.recipe,
                "errors": diagnostics.0.iter().map(|d| serde_json::json!({
                    "file": d.file,
                    "line": d.position.line,
                    "column": d.position.column,
                    "message": d.message,
                    "hint": d.hint,
                })).collect::<Vec<_>>(),
            }),
        };
        outln!("{}", serde_json::to_string_pretty(&value)?);
    }
    let recipe = loaded.map_err(super::RecipeError)?;
    if !json {
        outln!(
            "{}: ok ({} {}, {} stages: {})",
            args.recipe.display(),
            recipe.name,
            recipe.version,
            recipe.stages.len(),
            recipe.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}
