//! `debootstrap` base stage: mmdebstrap, or debootstrap when mmdebstrap is absent.
//! Both download into the shared apt cache, so a package is fetched once.

use anyhow::{bail, Context, Result};

use super::chroot::PINS_FILE;
use super::context::StageContext;
use crate::host::Command;
use crate::recipe::{BootstrapTool, Debootstrap};

/// The program a stage will run: the recipe's choice, or for `auto`
/// mmdebstrap when installed. The planner puts the answer in the stage's key.
pub fn resolve_tool(tool: BootstrapTool) -> &'static str {
    match tool {
        BootstrapTool::Mmdebstrap => "mmdebstrap",
        BootstrapTool::Debootstrap => "debootstrap",
        BootstrapTool::Auto if crate::tools::find("mmdebstrap").is_some() => "mmdebstrap",
        BootstrapTool::Auto => "debootstrap",
    }
}


pub fn run(stage: &Debootstrap, context: &StageContext<'_>) -> Result<()> {
    let mirror = context.mirror.context("no mirror was resolved for the debootstrap stage")?;
    let tree = context.tree.display().to_string();
    let archives = context.layout.apt_archives().display().to_string();
    let argv: Vec<String> = if resolve_tool(stage.tool) == "mmdebstrap" {
        let mmdebstrap = crate::tools::require("mmdebstrap", "for this debootstrap stage (`tool: mmdebstrap`)")?;
        let mut argv = vec![
            mmdebstrap.display().to_string(),
            "--mode=root".into(),
            format!("--variant={}", stage.variant),
            format!("--architectures={}", context.arch),
            format!("--components={}", stage.components.join(",")),
            // The shared package cache, bound in for downloads and taken out
            // again before mmdebstrap's cleanup would empty it.
            format!("--setup-hook=mkdir -p \"$1/var/cache/apt/archives\" && mount --bind '{archives}' \"$1/var/cache/apt/archives\""),
            "--customize-hook=umount \"$1/var/cache/apt/archives\"".into(),
        ];
        if !stage.include.is_empty() {
            argv.push(format!("--include={}", stage.include.join(",")));
        }
        if let Some(pins) = context.apt_pins {
            // Locked: apt in and for the new tree takes only the locked versions.
            let file = context.scratch.join(PINS_FILE);
            fs_err::write(&file, pins)?;
            argv.push(format!("--setup-hook=mkdir -p \"$1/etc/apt/preferences.d\" && cp '{}' \"$1/etc/apt/preferences.d/{PINS_FILE}\"", file.display()));
            argv.push(format!("--customize-hook=rm -f \"$1/etc/apt/preferences.d/{PINS_FILE}\""));
        }
        argv.extend([stage.suite.clone(), tree, mirror.to_string()]);
        argv
    } else {
        if context.apt_pins.is_some() {
            bail!("build --locked pins package versions with apt preferences, which debootstrap cannot take\nhint: use `tool: mmdebstrap` (the default when it is installed)");
        }
        let debootstrap = crate::tools::require("debootstrap", "for this debootstrap stage")?;
        let mut argv = vec![
            debootstrap.display().to_string(),
            format!("--variant={}", stage.variant),
            format!("--arch={}", context.arch),
            format!("--components={}", stage.components.join(",")),
            format!("--cache-dir={archives}"),
        ];
        if !stage.include.is_empty() {
            argv.push(format!("--include={}", stage.include.join(",")));
        }
        argv.extend([stage.suite.clone(), tree, mirror.to_string()]);
        argv
    };
    let env = [
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("SOURCE_DATE_EPOCH", context.source_date_epoch.to_string()),
        ("LC_ALL", "C.UTF-8".to_string()),
        ("TMPDIR", context.scratch.display().to_string()),
    ];
    let command = Command {
        argv,
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        root: None,
        mounts: Vec::new(),
        log: context.log.clone(),
        stdin: None,
        interactive: false,
        cwd: None,
        private_mounts: true,
        label: None,
    };
    let _apt_lock = super::chroot::apt_lock(context.layout)?;
    context.host.run(&command)
}
