//! `rootsmith cache dir | ls | gc | verify | push | pull`.

use anyhow::{bail, Result};

use super::short;
use crate::cli::{CacheAction, CacheArgs};
use rootsmith::cache::{GcOptions, Store};

pub fn run(args: &CacheArgs, action: &CacheAction) -> Result<()> {
    if let CacheAction::Dir = action {
        // Only where it is: neither made nor opened.
        outln!("{}", super::cache_dir(args).display());
        return Ok(());
    }
    let store = Store::open(&super::cache_dir(args))?;
    match action {
        CacheAction::Dir => {} // printed above, without opening the cache
        CacheAction::Ls { json } => {
            let entries = store.list();
            if *json {
                outln!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                outln!("{:<12} {:<12} {:<20} {:<20} {:>10}", "KEY", "KIND", "RECIPE", "STAGE", "SIZE");
                for entry in &entries {
                    outln!(
                        "{:<12} {:<12} {:<20} {:<20} {:>10}",
                        short(&entry.key),
                        entry.kind,
                        entry.recipe,
                        entry.stage,
                        human_size(entry.size)
                    );
                }
                outln!("{} entries, {}", entries.len(), human_size(entries.iter().map(|e| e.size).sum()));
            }
        }
        CacheAction::Gc { keep_size, older_than } => {
            let report = store.gc(&GcOptions::new(*keep_size, *older_than))?;
            let others: String = report.removed_other.iter().map(|(area, count)| format!(", {count} {area}")).collect();
            outln!(
                "removed {} stages, {} outputs, {} layers, {} kernels{others}; freed {}, {} kept",
                report.removed_stages,
                report.removed_outputs,
                report.removed_blobs,
                report.removed_kernels,
                human_size(report.freed_bytes),
                human_size(report.kept_bytes)
            );
        }
        CacheAction::Push { repository } => {
            let remote = rootsmith::share::RemoteCache::connect(repository)?;
            let (mut pushed, mut present) = (0, 0);
            for record in store.stage_records() {
                if !store.has_blob(&record.layer) {
                    continue;
                }
                if remote.push(&store, &record, &|_| {})? {
                    pushed += 1;
                    outln!("pushed {} ({} `{}` of {})", short(&record.key), record.kind, record.stage, record.recipe);
                } else {
                    present += 1;
                }
            }
            let (mut outputs_pushed, mut outputs_present) = (0, 0);
            for (header, _) in store.output_headers() {
                if remote.push_outputs(&store, &header.key, &|_| {})? {
                    outputs_pushed += 1;
                    outln!("pushed {} (outputs)", short(&header.key));
                } else {
                    outputs_present += 1;
                }
            }
            outln!("{pushed} stages pushed to {}, {present} already there; {outputs_pushed} outputs pushed, {outputs_present} already there", remote.repository);
        }
        CacheAction::Pull { repository } => {
            let remote = rootsmith::share::RemoteCache::connect(repository)?;
            let (mut pulled, mut present) = (0, 0);
            for key in remote.keys()? {
                if store.stage(&key).is_some() {
                    present += 1;
                    continue;
                }
                if let Some(record) = remote.pull(&store, &key, &|_| {})? {
                    pulled += 1;
                    outln!("pulled {} ({} `{}` of {})", short(&key), record.kind, record.stage, record.recipe);
                }
            }
            let (mut outputs_pulled, mut outputs_present) = (0, 0);
            for key in remote.output_keys()? {
                if store.output::<serde_json::Value>(&key).is_some() {
                    outputs_present += 1;
                } else if remote.pull_outputs(&store, &key, &|_| {})? {
                    outputs_pulled += 1;
                    outln!("pulled {} (outputs)", short(&key));
                }
            }
            outln!("{pulled} stages pulled from {}, {present} already here; {outputs_pulled} outputs pulled, {outputs_present} already here", remote.repository);
        }
        CacheAction::Verify { repair } => {
            let report = store.verify()?;
            outln!(
                "checked {} layers, {} stage records, {} outputs, {} kept trees",
                report.checked_blobs,
                report.checked_stages,
                report.checked_outputs,
                report.checked_trees
            );
            for problem in &report.problems {
                outln!("problem: {problem}");
            }
            if *repair && !report.problems.is_empty() {
                let removed = store.repair(&report)?;
                outln!("removed {removed} broken entries; the next build makes them again");
                return Ok(());
            }
            if !report.problems.is_empty() {
                bail!("the cache has {} problems; `rootsmith cache verify --repair` removes what is broken, and the next build makes it again", report.problems.len());
            }
            outln!("cache is consistent");
        }
    }
    Ok(())
}

pub use rootsmith::progress::human_size;
