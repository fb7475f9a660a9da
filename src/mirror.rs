//! The Debian mirror: the one the host's apt sources name, unless the recipe
//! sets one, and its `InRelease` digest (a remote input of apt stages' keys).

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The first `deb` source of the host whose suite is a release (not `-security`
/// or `-updates`), from `sources.list`, `sources.list.d/*.list` and `*.sources`.
pub fn host_mirror(apt_dir: &Path) -> Result<String> {
    let mut candidates = Vec::new();
    let mut files = vec![apt_dir.join("sources.list")];
    if let Ok(entries) = std::fs::read_dir(apt_dir.join("sources.list.d")) {
        let mut more: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => candidates.extend(deb822_sources(&text)),
            _ if file.file_name().is_some_and(|n| n == "sources.list") || file.extension().is_some_and(|e| e == "list") => candidates.extend(one_line_sources(&text)),
            _ => {}
        }
    }
    candidates
        .into_iter()
        .find(|(_, suite)| !suite.contains('-') && !suite.contains('/'))
        .map(|(uri, _)| uri.trim_end_matches('/').to_string())
        .with_context(|| format!("the host's apt sources ({}) name no Debian mirror; set `mirror:` in the debootstrap stage", apt_dir.display()))
}

/// (uri, suite) pairs of `deb URI SUITE COMPONENTS…` lines.
fn one_line_sources(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for word in words.by_ref() {
                if word.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            found.push((uri.to_string(), suite.to_string()));
        }
    }
    found
}

/// (uri, suite) pairs of deb822 stanzas with `Types: deb`.
fn deb822_sources(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().filter(|l| !l.trim_start().starts_with('#')).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
            })
        };
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|w| w == "deb")) || field("Enabled").is_some_and(|e| e == "no") {
            continue;
        }
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else { continue };
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                found.push((uri.to_string(), suite.to_string()));
            }
        }
    }
    found
}

/// SHA-256 of `MIRROR/dists/SUITE/InRelease`: it changes whenever the archive
/// publishes new packages for the suite.
pub fn in_release_digest(mirror: &str, suite: &str) -> Result<String> {
    let url = format!("{}/dists/{suite}/InRelease", mirror.trim_end_matches('/'));
    let bytes = if let Some(path) = url.strip_prefix("file://") {
        std::fs::read(path).with_context(|| format!("reading {path}"))?
    } else {
        let response = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(30)).build().get(&url).call();
        let response = match response {
            Ok(response) => response,
            Err(ureq::Error::Status(code, _)) => bail!("{url}: HTTP {code} (is `{suite}` a suite of this mirror?)"),
            Err(error) => bail!("{url}: {error}"),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes).with_context(|| format!("reading {url}"))?;
        bytes
    };
    Ok(crate::cache::sha256_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deb822_and_one_line_sources() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb\n# a comment: here\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb deb-src\nURIs: http://mirror.test/debian/\nSuites: bookworm bookworm-updates\n",
        )
        .unwrap();
        assert_eq!(host_mirror(dir.path()).unwrap(), "http://mirror.test/debian");
        std::fs::write(dir.path().join("sources.list"), "# old style\ndeb [arch=amd64] http://other.test/debian bookworm main\n").unwrap();
        assert_eq!(host_mirror(dir.path()).unwrap(), "http://other.test/debian");
    }

    #[test]
    fn no_sources_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = host_mirror(dir.path()).unwrap_err().to_string();
        assert!(error.contains("set `mirror:`"), "{error}");
    }
}
