//! Debian control-file stanzas (`Field: value` lines, blank-line separated): the
//! dpkg status file, deb822 apt sources, `apt-cache show` output.

/// The stanzas of a control file.
pub fn stanzas(text: &str) -> impl Iterator<Item = &str> {
    text.split("\n\n").filter(|stanza| !stanza.trim().is_empty())
}

/// The value of field `name` in a stanza: field names match without regard to
/// case, comment lines and continuation lines are skipped, the value is trimmed.
pub fn field(stanza: &str, name: &str) -> Option<String> {
    stanza.lines().filter(|line| !line.starts_with('#') && !line.starts_with(char::is_whitespace)).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_by_name_without_comments_or_continuations() {
        let text = "Package: apt\n# Version: 0\nversion: 2.6\nDescription: x\n Version: 9\n\n\nPackage: b\n";
        let all: Vec<&str> = stanzas(text).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(field(all[0], "Version").as_deref(), Some("2.6"));
        assert_eq!(field(all[0], "Vers"), None);
        assert_eq!(field(all[1], "Package").as_deref(), Some("b"));
    }
}
