//! `rootsmith hosts ls|set|clear`: what each host of an inventory boots.

use anyhow::{Context, Result};

use crate::cli::{HostsAction, InventoryArgs};
use rootsmith::lab::hosts::render::{self, Urls};
use rootsmith::lab::hosts::state::{self, current_entry, Override, StateStore};
use rootsmith::lab::hosts::{self, Inventory};

pub fn run(args: &InventoryArgs, action: &HostsAction) -> Result<()> {
    super::must_exist(&args.file, "the inventory")?;
    let inventory = hosts::load(&args.file, args.bundle.as_deref())
        .with_context(|| format!("reading the inventory {}", args.file.display()))?;
    let store = StateStore::for_inventory(&args.file);
    match action {
        HostsAction::Ls { json } => ls(&inventory, &store, *json),
        HostsAction::Set { host, entry, once } => {
            let host = find(&inventory, host)?;
            let entry = inventory.entry(entry)?;
            let set = Override {
                entry: entry.name(),
                once: *once,
                at: rootsmith::time::rfc3339(rootsmith::time::now_seconds() as i64),
            };
            // A new report token: a report from an earlier boot cannot end this entry.
            let token = state::new_token()?;
            store.update(|state| {
                state.set.insert(host.name.clone(), set);
                state.tokens.insert(host.name.clone(), token);
                Ok(())
            })?;
            let after = if *once {
                format!(", then {} after its next successful report", host.entry.name())
            } else {
                String::new()
            };
            eprintln!("{} boots {}{after}", host.name, entry.name());
            Ok(())
        }
        HostsAction::Write { dir, url, server_url } => write(&inventory, &store, dir, url, server_url.as_deref()),
        HostsAction::Clear { host } => {
            let host = find(&inventory, host)?;
            store.update(|state| {
                state.set.remove(&host.name);
                Ok(())
            })?;
            eprintln!("{} boots {} (the inventory's entry)", host.name, host.entry.name());
            Ok(())
        }
    }
}

fn write(
    inventory: &Inventory,
    store: &StateStore,
    dir: &std::path::Path,
    url: &str,
    server_url: Option<&str>,
) -> Result<()> {
    let with_slash = |url: &str| format!("{}/", url.trim_end_matches('/'));
    let bundle = with_slash(url);
    let server = match server_url {
        Some(server) => with_slash(server),
        None => {
            let (scheme, rest) = bundle
                .split_once("://")
                .with_context(|| format!("`{url}` is not a URL like http://192.168.1.2/NAME/VERSION/"))?;
            format!("{scheme}://{}/", rest.split('/').next().unwrap_or(rest))
        }
    };
    let urls = Urls { server, bundle };
    let state = store.load_with_tokens(inventory)?;
    let paths = render::paths(inventory);
    for path in &paths {
        let text = render::file(inventory, &state, path, &urls).with_context(|| format!("no file for {path}"))?;
        let target = dir.join(path);
        fs_err::create_dir_all(target.parent().expect("under DIR"))?;
        fs_err::write(&target, text)?;
    }
    eprintln!("wrote {} files for {} hosts into {}", paths.len(), inventory.hosts.len(), dir.display());
    Ok(())
}

/// The host the command line names: a name, MAC or IP of the inventory, or
/// a usage error (exit 2).
fn find<'a>(inventory: &'a Inventory, key: &str) -> Result<&'a hosts::Host> {
    inventory.host(key).ok_or_else(|| {
        let names: Vec<&str> = inventory.hosts.iter().map(|host| host.name.as_str()).collect();
        super::UsageError(format!("no host `{key}` in {} (it has: {})", inventory.file.display(), names.join(", ")))
            .into()
    })
}

fn ls(inventory: &Inventory, store: &StateStore, json: bool) -> Result<()> {
    let state = store.load()?;
    let rows: Vec<serde_json::Value> = inventory
        .hosts
        .iter()
        .map(|host| {
            let set = state.set.get(&host.name);
            serde_json::json!({
                "name": host.name,
                "mac": host.mac_hyphens().map(|mac| mac.replace('-', ":")),
                "ip": host.ip.map(|ip| ip.to_string()),
                "entry": current_entry(inventory, &state, host).name(),
                "inventory_entry": host.entry.name(),
                "once": set.map(|set| set.once).unwrap_or(false),
                "report": state.reports.get(&host.name).map(|report| serde_json::json!({
                    "at": report.at, "status": report.status, "step": report.step, "entry": report.entry, "cleared": report.cleared,
                    "log": store.dir.join(&report.log),
                })),
            })
        })
        .collect();
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "bundle": inventory.bundle, "default": inventory.default.name(), "hosts": rows })
            )?
        );
        return Ok(());
    }
    outln!("{} {} (hosts not listed boot {})", inventory.menu.name, inventory.menu.version, inventory.default.name());
    outln!("{:<16} {:<17} {:<15} {:<24} LAST REPORT", "HOST", "MAC", "IP", "BOOTS");
    // Reports are stored without control characters; a state written by an
    // older rootsmith may still hold some, so they are removed here too.
    let text = |value: &serde_json::Value| state::single_line(value.as_str().unwrap_or("-"));
    for row in rows {
        let entry = format!("{}{}", text(&row["entry"]), if row["once"] == true { " (once)" } else { "" });
        let report = match &row["report"] {
            serde_json::Value::Null => "-".to_string(),
            report => format!(
                "{} {}{} via {}",
                text(&report["at"]),
                text(&report["status"]),
                report["step"].as_str().map(|step| format!(" at {}", state::single_line(step))).unwrap_or_default(),
                text(&report["entry"])
            ),
        };
        outln!("{:<16} {:<17} {:<15} {:<24} {report}", text(&row["name"]), text(&row["mac"]), text(&row["ip"]), entry);
    }
    Ok(())
}
