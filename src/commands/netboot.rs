//! `serve`, `boot-test` and `qemu`: a bundle on the network and in a VM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use rootsmith::lab::boottest::{self, BootOptions};
use rootsmith::lab::hosts::served::ServedInventory;
use rootsmith::lab::qemu;
use rootsmith::lab::serve::Server;

pub fn serve(
    dir: &Path,
    addr: &str,
    max_connections: usize,
    tftp: Option<&str>,
    hosts: Option<&Path>,
    public_url: Option<String>,
) -> Result<()> {
    super::must_exist(dir, "the directory to serve")?;
    if let Some(hosts) = hosts {
        super::must_exist(hosts, "the inventory")?;
        // What the command line names must fit together: a usage error (exit 2).
        if rootsmith::lab::hosts::served::bundle_under(hosts, dir)?.is_none() {
            return Err(super::UsageError(format!(
                "the bundle of the inventory {} is not inside the directory served, {}: serve the directory that holds it",
                hosts.display(),
                dir.display()
            ))
            .into());
        }
    }
    // A closed stderr must not take the server down with it.
    let log: rootsmith::lab::serve::AccessLog = Arc::new(|line: &str| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{} {line}", rootsmith::progress::clock());
    });
    let mut server = Server::bind(dir, addr, max_connections, log.clone())?;
    let local = server.local_addr();
    let public_url = public_url.or_else(|| (!local.ip().is_unspecified()).then(|| format!("http://{local}/")));
    let hosts = hosts
        .map(|file| {
            let log = log.clone();
            ServedInventory::open(file, dir, public_url)
                .map(|served| served.with_log(Box::new(move |line: &str| log(line))))
                .map(Arc::new)
        })
        .transpose()?;
    let mut tftp =
        tftp.map(|tftp| rootsmith::lab::tftp::TftpServer::bind(dir, tftp, max_connections, log)).transpose()?;
    if let Some(hosts) = &hosts {
        server = server.with_hosts(hosts.clone());
        tftp = tftp.map(|tftp| tftp.with_hosts(hosts.clone()));
    }
    eprintln!("serving {} on http://{local}/ (read-only; boot.ipxe, grub.cfg and pxelinux.cfg/default of a bundle are generated with this server's URL)", dir.display());

    if let Some(tftp) = tftp {
        eprintln!("serving {} over TFTP on {} (read-only)", dir.display(), tftp.spawn());
    }
    if let Some(hosts) = &hosts {
        eprintln!("{}", hosts.summary());
    }
    server.run();
    Ok(())
}

pub struct BootTestArgs {
    pub options: BootOptions,
    pub expect: Option<String>,
    pub timeout: Duration,
    pub log: Option<std::path::PathBuf>,
    pub json: bool,
}

pub fn boot_test(args: &BootTestArgs) -> Result<()> {
    super::must_be_bundle(&args.options.bundle)?;
    let prepared = boottest::prepare(&args.options)?;
    rootsmith::tools::require(
        rootsmith::arch::machine(&prepared.manifest.arch).program,
        &format!("to boot an {} bundle", prepared.manifest.arch),
    )?;
    let expect = boottest::expected_line(&prepared.manifest, args.expect.as_deref());
    let via = format!("{:?}", args.options.via).to_lowercase();
    let shown_via = if prepared.secure_boot { format!("{via} (Secure Boot enforced)") } else { via.clone() };
    // The default log: a new file of an unpredictable name in a directory of
    // the user's own, made with O_EXCL, so no one else's symlink is followed.
    let log_path = match &args.log {
        Some(path) => path.clone(),
        None => {
            let prefix = format!("boot-test-{}-{}-{via}-", prepared.manifest.name, prepared.manifest.version);
            let (_, path) = tempfile::Builder::new()
                .prefix(&prefix)
                .suffix(".log")
                .tempfile_in(rootsmith::fileops::private_temp_dir()?)?
                .keep()
                .map_err(|error| error.error)?;
            path
        }
    };
    if !args.json {
        eprintln!(
            "booting {} {} (kernel {}) via {shown_via} with {}, waiting up to {} s for {expect:?}; console log: {}",
            prepared.manifest.name,
            prepared.manifest.version,
            prepared.kernel.name,
            format!("{:?}", prepared.guest.accel).to_uppercase(),
            args.timeout.as_secs(),
            log_path.display()
        );
    }
    let result =
        qemu::boot_until_any(&prepared.argv(), &expect, boottest::fatal_lines(args.options.via), args.timeout)?;
    let mut log = result.console.clone();
    let http = prepared.http_log.lock().expect("log lock").clone();
    if !http.is_empty() {
        log.push_str("\n--- HTTP access log ---\n");
        log.push_str(&http.join("\n"));
        log.push('\n');
    }
    fs_err::write(&log_path, &log)?;
    if args.json {
        outln!(
            "{}",
            serde_json::json!({ "passed": result.found, "via": via, "secure_boot": prepared.secure_boot, "refused": result.refused, "expect": expect, "seconds": result.seconds, "accel": format!("{:?}", prepared.guest.accel).to_lowercase(), "log": log_path })
        );
    }
    if result.found {
        if !args.json {
            eprintln!("passed: {expect:?} after {:.1} s", result.seconds);
        }
        return Ok(());
    }
    // The guest's console as text: its escape sequences would drive this terminal.
    let console = rootsmith::lab::hosts::state::log_text(result.console.as_bytes());
    let tail: Vec<&str> = console.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect();
    if let Some(line) = &result.refused {
        bail!("the boot was refused after {:.0} s: {}\n(the image's signature is not one the firmware's db accepts, or it is not a bootable image); the console's last lines:\n{}\n(whole log: {})", result.seconds, line.trim(), tail.join("\n"), log_path.display());
    }
    bail!(
        "{expect:?} did not appear within {:.0} s; the console's last lines:\n{}\n(whole log: {})",
        result.seconds,
        tail.join("\n"),
        log_path.display()
    )
}

/// Boot interactively: the serial console is this terminal (Ctrl-A X quits).
pub fn interactive(options: &BootOptions) -> Result<()> {
    super::must_be_bundle(&options.bundle)?;
    let prepared = boottest::prepare(options)?;
    rootsmith::tools::require(
        rootsmith::arch::machine(&prepared.manifest.arch).program,
        &format!("to boot an {} bundle", prepared.manifest.arch),
    )?;
    let argv: Vec<String> =
        prepared.argv().into_iter().map(|arg| if arg == "stdio" { "mon:stdio".into() } else { arg }).collect();
    eprintln!(
        "starting {} {} (kernel {}); quit with Ctrl-A X",
        prepared.manifest.name, prepared.manifest.version, prepared.kernel.name
    );
    let status = std::process::Command::new(&argv[0]).args(&argv[1..]).status()?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}
