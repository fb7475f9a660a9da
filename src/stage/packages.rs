//! `packages` stage: apt-get install/remove in the tree. Package lists are
//! fetched for the run and removed after, so they never land in a layer.

use std::collections::BTreeMap;

use anyhow::Result;

use super::chroot::run_chrooted;
use super::context::StageContext;
use crate::recipe::Packages;

pub fn run(stage: &Packages, context: &StageContext<'_>) -> Result<()> {
    let script = script(stage);
    run_chrooted(context, &["/bin/sh", "-e", "-c", &script, "rootsmith-packages"], &BTreeMap::new())
}

/// The shell script the stage runs (words are quoted for the shell).
fn script(stage: &Packages) -> String {
    let quote = |names: &[String]| {
        names.iter().map(|n| format!("'{}'", n.replace('\'', "'\\''"))).collect::<Vec<_>>().join(" ")
    };
    let apt = "apt-get -q -y -o Dpkg::Use-Pty=0 -o APT::Keep-Downloaded-Packages=true";
    let mut lines = vec!["apt-get -q -o Acquire::Languages=none update".to_string()];
    if !stage.install.is_empty() {
        lines.push(format!("{apt} --no-install-recommends install {}", quote(&stage.install)));
    }
    if !stage.remove.is_empty() {
        lines.push(format!("{apt} purge {}", quote(&stage.remove)));
        lines.push(format!("{apt} autoremove --purge"));
    }
    // Keep apt's own `lock` and `partial/`; drop the downloaded lists.
    lines.push("find /var/lib/apt/lists -type f ! -name lock -delete; rm -f /var/cache/apt/*.bin".to_string());
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_installs_removes_and_drops_lists() {
        let text = script(&Packages { install: vec!["curl".into(), "it's".into()], remove: vec!["nano".into()] });
        assert!(text.contains("install 'curl' 'it'\\''s'"), "{text}");
        assert!(text.contains("purge 'nano'"), "{text}");
        assert!(
            text.trim_end()
                .ends_with("find /var/lib/apt/lists -type f ! -name lock -delete; rm -f /var/cache/apt/*.bin"),
            "{text}"
        );
    }
}
