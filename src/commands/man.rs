//! `rootsmith man [--dir DIR]`: the man page on stdout, or every page in DIR.

use std::path::Path;

use anyhow::{Context, Result};

pub fn run(dir: Option<&Path>) -> Result<()> {
    let Some(dir) = dir else {
        out!("{}", crate::cli::man_page());
        return Ok(());
    };
    super::must_exist(dir, "the directory")?;
    crate::cli::write_man_pages(dir).with_context(|| format!("writing the man pages into {}", dir.display()))
}
