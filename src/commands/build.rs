//! `rootsmith build RECIPE`: plan, build, publish, print where the bundle is.

use anyhow::{bail, Context, Result};

use crate::cli::{BuildArgs, CacheArgs, RecipeArgs};
use rootsmith::build::{build, BuildOptions};
use rootsmith::plan::{plan, PlanOptions};

pub fn run(settings: &BuildArgs) -> Result<()> {
    let json = settings.json;
    let result = build_and_report(&settings.recipe, &settings.cache, settings);
    if json {
        if let Err(error) = &result {
            // Machines get the failure on stdout too: what failed, where its log is.
            outln!("{}", serde_json::to_string_pretty(&error_object(error))?);
        }
    }
    result
}

/// A failed build as JSON: the message, its causes, and the failed stage,
/// command status and log when there are.
fn error_object(error: &anyhow::Error) -> serde_json::Value {
    let stage = error.downcast_ref::<rootsmith::build::StageFailed>();
    let command = error.downcast_ref::<rootsmith::host::CommandError>();
    serde_json::json!({
        "error": error.to_string(),
        "causes": error.chain().skip(1).map(|cause| cause.to_string()).collect::<Vec<_>>(),
        "stage": stage.map(|stage| &stage.stage),
        "kind": stage.map(|stage| &stage.kind),
        "log": stage.map(|stage| stage.log.display().to_string()).or_else(|| command.map(|command| command.log.clone())),
        "command": command.map(|command| &command.command),
        "status": command.map(|command| &command.status),
    })
}

fn build_and_report(recipe_args: &RecipeArgs, cache_args: &CacheArgs, settings: &BuildArgs) -> Result<()> {
    // `--version` becomes a path under --out: a bad one is a usage error (exit 2).
    if let Some(version) = &settings.version {
        rootsmith::names::check_version(version)
            .map_err(|why| super::UsageError(format!("--version `{version}` is not a valid version: {why}")))?;
    }
    let recipe = super::load_recipe(recipe_args)?;
    let rebuild_from = match &settings.rebuild {
        Some(name) => Some(
            recipe
                .stage_index(name, "--rebuild")
                .map_err(|d| super::RecipeError(rootsmith::diagnostic::Diagnostics(vec![d])))?,
        ),
        None => None,
    };
    // A key that cannot sign stops the build before anything runs.
    let signing_key = settings.sign.as_deref().map(rootsmith::bundle::signature::SigningKey::read).transpose()?;
    let mut options = PlanOptions::from_environment()?.remembering_in(&super::cache_dir(cache_args));
    // `release:` bases are looked up where this build publishes.
    options.out_dir = settings.out.clone();
    let lock_path = rootsmith::lock::path_for(&recipe.file);
    let recipe_sha256 = rootsmith::digest::sha256_hex(recipe.source.as_bytes());
    let locked = if settings.locked {
        let lock = rootsmith::lock::read(&lock_path)?;
        if lock.recipe_sha256 != recipe_sha256 {
            bail!(
                "{} was written for another version of the recipe\nhint: rootsmith lock {}",
                lock_path.display(),
                recipe.file.display()
            );
        }
        let digest = lock.digest();
        options.lock_digest = Some(digest.clone());
        Some(rootsmith::build::LockedBuild { pins: lock.apt_pins(), lock, digest })
    } else {
        None
    };
    let host = settings.output.host();
    let plan = plan(&recipe, &options, &host)?;
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    match &locked {
        Some(locked) => check_lock_resolves(&recipe, &plan, &locked.lock)?,
        None if lock_path.is_file() => {
            if let Ok(lock) = rootsmith::lock::read(&lock_path) {
                let reasons = lock.staleness(&recipe_sha256, &plan.remote_inputs());
                if !reasons.is_empty() {
                    eprintln!(
                        "warning: {} is stale ({}); `rootsmith lock` renews it, `build --locked` builds what it pins",
                        lock_path.display(),
                        reasons.join("; ")
                    );
                }
            }
        }
        None => {}
    }
    let options = BuildOptions {
        cache_dir: super::cache_dir(cache_args),
        out_dir: settings.out.clone(),
        version: settings.version.clone().unwrap_or_else(|| recipe.version.clone()),
        rebuild_from,
        fast: settings.fast,
        cache_only: settings.cache_only,
        lock: locked,
        replace: settings.replace,
        cache_remote: match settings.cache_remote.clone() {
            Some(remote) => Some(remote),
            None => rootsmith::config::load()?.cache_remote,
        },
    };
    let progress = rootsmith::progress::for_mode(settings.output.mode(settings.json));
    let summary = build(&recipe, &plan, &options, &host, progress.as_ref())?;
    // Signed once it is published: the signature covers the manifest as it is
    // in place (an identical bundle already there is signed as well).
    let signed_by = match &signing_key {
        Some(key) => {
            key.sign_bundle(&summary.bundle)?;
            Some(key.fingerprint())
        }
        None => None,
    };
    if settings.json {
        let mut value = serde_json::to_value(&summary)?;
        value["signed_by"] = serde_json::json!(signed_by);
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let built = summary.stages.iter().filter(|s| s.state == "built").count();
        let note = if summary.up_to_date { " (already built, identical)" } else { "" };
        outln!(
            "{} {}: {} of {} stages built, outputs {}, {:.1}s{note}",
            summary.name,
            summary.version,
            built,
            summary.stages.len(),
            summary.outputs.state,
            summary.seconds
        );
        outln!("bundle: {}", summary.bundle.display());
        if let Some(fingerprint) = signed_by {
            outln!("signed with {fingerprint}");
        }
    }
    Ok(())
}

/// Every version the lock pins must still be on the mirror, or the build
/// stops before it starts and names each one that is gone.
fn check_lock_resolves(
    recipe: &rootsmith::recipe::Recipe,
    plan: &rootsmith::plan::Plan,
    lock: &rootsmith::lock::Lock,
) -> Result<()> {
    let (Some(mirror), Some(rootsmith::recipe::StageKind::Debootstrap(base))) =
        (&plan.mirror, recipe.stages.first().map(|stage| &stage.kind))
    else {
        return Ok(());
    };
    let available = rootsmith::mirror::available_versions(mirror, &base.suite, &base.components, &plan.arch)
        .context("checking the lock's versions against the mirror")?;
    let missing = lock.missing_from(&available);
    if !missing.is_empty() {
        bail!(
            "the lock pins {} package version{} the mirror no longer has:\n  {}\nhint: `rootsmith lock {}` locks what the mirror has now",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" },
            missing.join("\n  "),
            recipe.file.display()
        );
    }
    Ok(())
}
