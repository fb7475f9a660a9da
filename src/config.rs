//! The user's settings file: `ROOTSMITH_CONFIG`, else
//! `$XDG_CONFIG_HOME/rootsmith/config.yaml` (default `~/.config/…`). Command-line
//! flags and environment variables win over it.
//!
//! ```yaml
//! cache_remote: HOST:5000/rootsmith/cache   # as build --cache-remote
//! ```

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A registry repository sharing the stage cache (`build --cache-remote`).
    #[serde(default)]
    pub cache_remote: Option<String>,
}

pub fn path() -> Option<PathBuf> {
    if let Some(file) = std::env::var_os("ROOTSMITH_CONFIG") {
        return Some(file.into());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("rootsmith/config.yaml"))
}

/// The settings file, or the defaults when there is none.
pub fn load() -> Result<Config> {
    match path() {
        Some(file) if file.is_file() => parse(&file, &fs_err::read_to_string(&file)?),
        _ => Ok(Config::default()),
    }
}

pub fn parse(file: &Path, source: &str) -> Result<Config> {
    if source.trim().is_empty() {
        return Ok(Config::default());
    }
    serde_yaml::from_str(source).map_err(|error| {
        crate::diagnostic::Diagnostics(vec![crate::diagnostic::yaml_diagnostic(
            file,
            source,
            &error,
            "the settings file knows `cache_remote`; docs/cache.md",
            crate::diagnostic::keys_of::<Config>(),
        )])
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_with_positions() {
        let file = Path::new("config.yaml");
        assert_eq!(
            parse(file, "cache_remote: 127.0.0.1:5000/r/cache\n").unwrap().cache_remote.as_deref(),
            Some("127.0.0.1:5000/r/cache")
        );
        assert_eq!(parse(file, "").unwrap(), Config::default());
        let error = parse(file, "cache_remote: a\ncache_remot: b\n").unwrap_err();
        let diagnostics = error.downcast_ref::<crate::diagnostic::Diagnostics>().unwrap();
        assert_eq!(diagnostics.0[0].line_column(), (2, 1));
    }
}
