//! `run` stage: a shell script (inline or from a file) run with `sh -e` in the
//! tree; recipe `env:` is added to the clean environment.

use anyhow::Result;

use super::chroot::run_chrooted;
use super::context::StageContext;
use crate::recipe::{Run, Script};

pub fn run(stage: &Run, context: &StageContext<'_>) -> Result<()> {
    let text = match &stage.script {
        Script::Inline(text) => text.clone(),
        Script::File(path) => fs_err::read_to_string(&path.resolved)?,
    };
    run_chrooted(context, &["/bin/sh", "-e", "-c", &text, "rootsmith-run"], &stage.env)
}
