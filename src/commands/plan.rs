//! `rootsmith plan RECIPE [--explain]`: each stage's key and cache state.

use anyhow::Result;
use rootsmith::host::RealHost;
use serde::Serialize;

use super::short;
use crate::cli::{CacheArgs, RecipeArgs};
use rootsmith::cache::Store;
use rootsmith::plan::{plan, PlanOptions, StageStatus};

#[derive(Serialize)]
struct Row {
    name: String,
    kind: String,
    key: Option<String>,
    state: &'static str,
    changed: Vec<String>,
}

pub fn run(recipe_args: &RecipeArgs, cache_args: &CacheArgs, explain: bool, fast: bool, json: bool) -> Result<()> {
    let recipe = super::load_recipe(recipe_args)?;
    let plan = plan(
        &recipe,
        &PlanOptions::from_environment()?.remembering_in(&super::cache_dir(cache_args)),
        &RealHost::default(),
    )?;
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    let store = Store::open(&super::cache_dir(cache_args))?;
    let mut rows = Vec::new();
    let statuses = plan.statuses(&store, None);
    let final_tree = match statuses.last() {
        Some(StageStatus::Hit(record)) => Some(record.tree.clone()),
        _ => None,
    };
    let hit_records: Vec<rootsmith::cache::StageRecord> = statuses
        .iter()
        .filter_map(|status| if let StageStatus::Hit(record) = status { Some((**record).clone()) } else { None })
        .collect();
    for (stage, status) in plan.stages.iter().zip(statuses) {
        let (key, state, changed) = match status {
            StageStatus::Hit(record) => (Some(record.key), "hit", Vec::new()),
            StageStatus::Miss { key, inputs } => {
                let changed = match store.last_inputs(&plan.recipe, &stage.name) {
                    None => vec!["never built".to_string()],
                    Some(previous) => {
                        let lines: Vec<String> = inputs
                            .differences(&previous)
                            .into_iter()
                            .map(|line| {
                                if line.starts_with("parent:") {
                                    "parent: an earlier stage's output changed".to_string()
                                } else {
                                    line
                                }
                            })
                            .collect();
                        if lines.is_empty() {
                            vec!["same inputs as its last build, whose layer is no longer cached".to_string()]
                        } else {
                            lines
                        }
                    }
                };
                (Some(key), "miss", changed)
            }
            StageStatus::Pending => (None, "pending", vec!["waits for an earlier stage to be built".to_string()]),
        };
        rows.push(Row { name: stage.name.clone(), kind: stage.kind.kind_name().into(), key, state, changed });
    }
    let (key, state, changed) = match final_tree {
        Some(tree) => {
            let key = rootsmith::build::output_key(
                &plan,
                fast,
                &tree,
                &rootsmith::stage::kernel::kernels_of(&hit_records)?,
                &RealHost::default(),
            );
            let cached = store
                .output::<rootsmith::build::OutputRecord>(&key)
                .is_some_and(|record| store.output::<rootsmith::build::RootfsRecord>(&record.rootfs.key).is_some());
            let state = if cached { "hit" } else { "miss" };
            (Some(key), state, vec!["the last stage's tree has no outputs with these settings yet".to_string()])
        }
        None => (None, "pending", vec!["waits for the stages to be built".to_string()]),
    };
    rows.push(Row { name: "outputs".into(), kind: "outputs".into(), key, state, changed });
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    outln!("{} {} ({}, SOURCE_DATE_EPOCH={})", plan.recipe, plan.version, plan.arch, plan.source_date_epoch);
    for row in &rows {
        let key = row.key.as_deref().map(short).unwrap_or("-");
        outln!("  {:<20} {:<12} {:<12} {}", row.name, row.kind, key, row.state);
        if explain && row.state != "hit" {
            for line in &row.changed {
                outln!("      {line}");
            }
        }
    }
    Ok(())
}
