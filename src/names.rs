//! The names rootsmith accepts from what users write (recipes, inventories,
//! `--version`) and from bundles it reads back: names of recipes, stages and
//! hosts, and versions. Both become parts of paths, so neither may hold `/`
//! or be `..`.

/// A recipe, stage or host name: lower-case letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// Versions name directories and artifacts: semver-like, no `/`.
pub fn check_version(version: &str) -> Result<(), &'static str> {
    if version.is_empty() {
        return Err("it is empty");
    }
    if !version.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("it must start with a digit");
    }
    if !version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '~' | '_')) {
        return Err("only letters, digits, `.`, `-`, `+`, `~` and `_` are allowed");
    }
    Ok(())
}
