//! The rootsmith command line.

/// `println!` for a command's output: when the reader has gone (`… --json |
/// head`), stop quietly as a program killed by SIGPIPE would, instead of
/// panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(error);
        }
    }};
}

/// `print!` for a command's output (see [`outln!`]).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(error);
        }
    }};
}

mod cli;
mod commands;

/// Standard output can no longer be written: a closed pipe ends the program
/// as SIGPIPE would (status 141); anything else is an error.
fn stdout_failed(error: std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(128 + libc::SIGPIPE);
    }
    eprintln!("error: writing the output: {error}");
    std::process::exit(EXIT_FAILURE);
}

/// `ROOTSMITH_SHARED_DIRS=1`: a cache or out directory other users can
/// write is used all the same.
const SHARED_DIRS_ENV: &str = "ROOTSMITH_SHARED_DIRS";

use clap::Parser;
use cli::{Cli, Command, ReleaseAction};
use commands::{RecipeError, EXIT_FAILURE, EXIT_RECIPE};

/// The commands that make trees (and so need root's powers): how, and the
/// directories they write.
fn privileges_needed(command: &Command) -> Option<(&cli::PrivilegeArgs, Vec<(&'static str, std::path::PathBuf)>)> {
    let cache = |args: &cli::CacheArgs| ("cache directory", commands::cache_dir(args));
    match command {
        Command::Build(args) => Some((&args.privileges, vec![cache(&args.cache), ("out directory", args.out.clone())])),
        Command::Shell { privileges, cache: args, .. } | Command::Lock { privileges, cache: args, .. } => {
            Some((privileges, vec![cache(args)]))
        }
        // The rebuild has a cache of its own under the temporary directory.
        Command::Release { action: ReleaseAction::Verify { rebuild: Some(_), privileges, .. } } => {
            Some((privileges, vec![("temporary directory", std::env::temp_dir())]))
        }
        // Collecting and repairing remove work trees whose files belong to a build's ids.
        Command::Cache {
            privileges,
            cache: args,
            action: cli::CacheAction::Gc { .. } | cli::CacheAction::Verify { repair: true },
        } => Some((privileges, vec![cache(args)])),
        _ => None,
    }
}

fn main() {
    let cli = Cli::parse();
    // A command that builds, run by an ordinary user, runs again inside a
    // user namespace (before anything else happens in this process).
    if let Some((privileges, writable)) = privileges_needed(&cli.command) {
        let writable: Vec<(&str, &std::path::Path)> =
            writable.iter().map(|(what, path)| (*what, path.as_path())).collect();
        // Before anything else (and before a user namespace, where the host's
        // owners show as unmapped ids): a cache or out directory another user
        // can change is refused, as OpenSSH refuses such a key's directory.
        // (Inside the namespace it was checked already, by the process outside.)
        let inside = rootsmith::host::userns::standing() == rootsmith::host::userns::Standing::NamespaceRoot;
        if !inside && std::env::var_os(SHARED_DIRS_ENV).is_none_or(|value| value != "1") {
            for (what, path) in
                writable.iter().filter(|(what, _)| what.ends_with(" directory") && *what != "temporary directory")
            {
                if let Some(why) = rootsmith::fileops::shared_directory(path) {
                    eprintln!("error: the {what} {} is not safe: {why}, so another user could change what rootsmith builds or publishes there\nhint: use a directory only you (and root) can write, or set {SHARED_DIRS_ENV}=1 if sharing it is intended", path.display());
                    eprintln!("nothing was built");
                    std::process::exit(EXIT_FAILURE);
                }
            }
        }

        match rootsmith::host::userns::enter(privileges.mode(), &writable) {
            Ok(None) => {
                // As root: a mount namespace of its own, where work trees may
                // be overlay mounts that die with the process.
                if let Err(error) = rootsmith::host::overlay::private_mounts() {
                    eprintln!("warning: no private mount namespace ({error:#}); work trees are extracted");
                }
            }
            Ok(Some(code)) => std::process::exit(code),
            Err(error) => {
                eprintln!("error: {error}");
                for cause in error.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
                eprintln!("nothing was built");
                std::process::exit(EXIT_FAILURE);
            }
        }
    }
    let result = match &cli.command {
        Command::Build(args) => commands::build::run(args),
        Command::Check { recipe, json } => commands::check::run(recipe, *json),
        Command::Plan { recipe, cache, explain, fast, json } => {
            commands::plan::run(recipe, cache, *explain, *fast, *json)
        }
        Command::Shell { recipe, cache, stage, command, privileges: _ } => {
            commands::shell::run(recipe, cache, stage.as_deref(), command)
        }
        Command::Cache { cache, action, privileges: _ } => commands::cache::run(cache, action),
        Command::Lock { recipe, cache, output, privileges: _ } => commands::lock::run(recipe, cache, output),
        Command::Serve { dir, addr, max_connections, tftp, hosts, public_url } => {
            commands::netboot::serve(dir, addr, *max_connections, tftp.as_deref(), hosts.as_deref(), public_url.clone())
        }
        Command::Hosts { inventory, action } => commands::hosts::run(inventory, action),
        Command::BootTest { boot, expect, timeout, log, json } => {
            commands::netboot::boot_test(&commands::netboot::BootTestArgs {
                options: boot.options(),
                expect: expect.clone(),
                timeout: std::time::Duration::from_secs(*timeout),
                log: log.clone(),
                json: *json,
            })
        }
        Command::Qemu { boot } => commands::netboot::interactive(&boot.options()),
        Command::Release { action } => match action {
            ReleaseAction::Ls { out, json } => commands::release::ls(&out.out, *json),
            ReleaseAction::Show { name, version, out, json } => commands::release::show(&out.out, name, version, *json),
            ReleaseAction::Promote { name, from, to, out, sign, uki_key, uki_cert } => commands::release::promote(
                &out.out,
                name,
                from,
                to,
                sign.as_deref(),
                uki_key.as_deref().zip(uki_cert.as_deref()),
            ),
            ReleaseAction::Sign { name, version, key, out } => commands::release::sign(&out.out, name, version, key),
            ReleaseAction::Verify { dir, rebuild, key, json, privileges: _ } => {
                commands::release::verify(dir, rebuild.as_deref(), key.as_deref(), *json)
            }
            ReleaseAction::Diff { name, a, b, out, json, full, section } => {
                let view = rootsmith::release::diff::View { full: *full, section: section.clone() };
                commands::release::diff(&out.out, name, a, b, *json, &view)
            }
        },
        Command::Init { name } => commands::init::run(name),
        Command::Completions { shell } => {
            out!("{}", cli::completions(*shell));
            Ok(())
        }
        Command::Man { dir } => commands::man::run(dir.as_deref()),
    };
    if let Err(error) = result {
        if let Some(commands::PassOn(status)) = error.downcast_ref::<commands::PassOn>() {
            std::process::exit(*status);
        }
        if let Some(usage) = error.downcast_ref::<commands::UsageError>() {
            eprintln!("error: {usage}");
            std::process::exit(EXIT_RECIPE);
        }
        let diagnostics = error
            .downcast_ref::<RecipeError>()
            .map(|RecipeError(diagnostics)| diagnostics)
            .or_else(|| error.downcast_ref::<rootsmith::diagnostic::Diagnostics>());
        if let Some(diagnostics) = diagnostics {
            for diagnostic in &diagnostics.0 {
                eprintln!("error: {diagnostic}\n");
            }
            std::process::exit(EXIT_RECIPE);
        }
        eprintln!("error: {error}");
        for cause in error.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(EXIT_FAILURE);
    }
}
