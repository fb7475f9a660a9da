//! One module per command: resolve settings, call the library, print.

pub mod build;
pub mod cache;
pub mod check;
pub mod hosts;
pub mod init;
pub mod lock;
pub mod man;
pub mod netboot;
pub mod plan;
pub mod release;
pub mod shell;

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::{CacheArgs, RecipeArgs};
use rootsmith::recipe::{Diagnostics, LoadOptions, Recipe};

/// Exit codes (documented in docs/commands.md).
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_RECIPE: i32 = 2;

/// A command's own exit status to pass on (`shell`): printed as nothing.
#[derive(Debug, thiserror::Error)]
#[error("the command exited with status {0}")]
pub struct PassOn(pub i32);

/// A usage error (a file the command line names is not there or not what it
/// should be): printed as it is, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A recipe error: printed as diagnostics, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecipeError(pub Diagnostics);

pub fn load_recipe(args: &RecipeArgs) -> Result<Recipe> {
    load_recipe_checked(args).map_err(|diagnostics| RecipeError(diagnostics).into())
}

/// The recipe the arguments name, or every problem found in it.
pub fn load_recipe_checked(args: &RecipeArgs) -> std::result::Result<Recipe, Diagnostics> {
    let mut sets = args.sets.clone();
    sets.extend(args.arch.iter().map(|arch| ("arch".to_string(), arch.clone())));
    rootsmith::recipe::load(&args.recipe, &LoadOptions { sets })
}

pub fn cache_dir(args: &CacheArgs) -> PathBuf {
    if let Some(dir) = &args.cache {
        // Absolute: commands run in other directories (a kernel's build
        // tree) and must still find what the cache holds.
        return std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("rootsmith")
}

/// A path the command line names must be there: else a usage error (exit 2).
pub fn must_exist(path: &std::path::Path, what: &str) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Err(UsageError(format!("{what} {} does not exist", path.display())).into());
    }
    Ok(())
}

/// A bundle directory the command line names: there, with a manifest, and
/// not a symlink (with or without a trailing `/`): a version is opened
/// where it is, so `out/NAME/stable -> 2.0.0-rc1` is refused, not followed.
pub fn must_be_bundle(dir: &std::path::Path) -> Result<()> {
    must_exist(dir, "the bundle")?;
    let text = dir.as_os_str().to_string_lossy();
    let bare = std::path::Path::new(text.trim_end_matches('/'));
    if !bare.as_os_str().is_empty() && std::fs::symlink_metadata(bare).is_ok_and(|m| m.file_type().is_symlink()) {
        let target = std::fs::read_link(bare).map(|t| t.display().to_string()).unwrap_or_default();
        return Err(UsageError(format!(
            "{} is a symlink (to {target}); rootsmith opens a version where it is: give {target} itself",
            bare.display()
        ))
        .into());
    }
    if !dir.join("manifest.json").is_file() {
        return Err(UsageError(format!("{} is not a bundle (it has no manifest.json)", dir.display())).into());
    }
    Ok(())
}

pub fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}
