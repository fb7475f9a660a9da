//! The Debian mirror: the one the host's apt sources name, unless the recipe
//! sets one, and its `InRelease` digest (a remote input of apt stages' keys).

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The first `deb` source of the host whose suite is a release (not `-security`
/// or `-updates`), from `sources.list`, `sources.list.d/*.list` and `*.sources`.
pub fn host_mirror(apt_dir: &Path) -> Result<String> {
    let mut candidates = Vec::new();
    let mut files = vec![apt_dir.join("sources.list")];
    if let Ok(entries) = fs_err::read_dir(apt_dir.join("sources.list.d")) {
        let mut more: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs_err::read_to_string(&file) else { continue };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => candidates.extend(deb822_sources(&text)),
            _ if file.file_name().is_some_and(|n| n == "sources.list")
                || file.extension().is_some_and(|e| e == "list") =>
            {
                candidates.extend(one_line_sources(&text))
            }
            _ => {}
        }
    }
    candidates
        .into_iter()
        .find(|(_, suite)| !suite.contains('-') && !suite.contains('/'))
        .map(|(uri, _)| uri.trim_end_matches('/').to_string())
        .with_context(|| {
            format!(
                "the host's apt sources ({}) name no Debian mirror; set `mirror:` in the debootstrap stage",
                apt_dir.display()
            )
        })
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
    for stanza in crate::control::stanzas(text) {
        let field = |name: &str| crate::control::field(stanza, name);
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|w| w == "deb"))
            || field("Enabled").is_some_and(|e| e == "no")
        {
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
    Ok(crate::digest::sha256_hex(&fetch(&url, suite)?))
}

/// Every version of every package the mirror has for `suite`, `components`
/// and `arch` (from `Packages.xz`).
pub fn available_versions(
    mirror: &str,
    suite: &str,
    components: &[String],
    arch: &str,
) -> Result<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>> {
    let mut versions: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for component in components {
        let url = format!("{}/dists/{suite}/{component}/binary-{arch}/Packages.xz", mirror.trim_end_matches('/'));
        let compressed = fetch(&url, suite)?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut xz2::read::XzDecoder::new(compressed.as_slice()), &mut text)
            .with_context(|| format!("decompressing {url}"))?;
        for stanza in crate::control::stanzas(&text) {
            if let (Some(name), Some(version)) =
                (crate::control::field(stanza, "Package"), crate::control::field(stanza, "Version"))
            {
                versions.entry(name).or_default().insert(version);
            }
        }
    }
    Ok(versions)
}

fn fetch(url: &str, suite: &str) -> Result<Vec<u8>> {
    let bytes = if let Some(path) = url.strip_prefix("file://") {
        fs_err::read(path).with_context(|| format!("reading {path}"))?
    } else {
        let response = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(30)).build().get(url).call();
        let response = match response {
            Ok(response) => response,
            Err(ureq::Error::Status(code, _)) => bail!("{url}: HTTP {code} (is `{suite}` a suite of this mirror?)"),
            Err(error) => bail!("{url}: {error}"),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes)
            .with_context(|| format!("reading {url}"))?;
        bytes
    };
    Ok(bytes)
}

/// The last `InRelease` digest seen for a mirror and suite, kept in the cache
/// (`v1/remote/`) so that planning still works when the mirror cannot be reached.
#[derive(serde::Serialize, serde::Deserialize)]
struct Remembered {
    url: String,
    sha256: String,
    seen: u64,
}

/// A resolved `InRelease` digest, and a warning when it had to come from
/// memory because the mirror could not be reached.
pub struct Resolved {
    pub sha256: String,
    pub warning: Option<String>,
}

/// The URL of a suite's `InRelease` on `mirror`.
pub fn in_release_url(mirror: &str, suite: &str) -> String {
    format!("{}/dists/{suite}/InRelease", mirror.trim_end_matches('/'))
}

/// [`in_release_digest`], remembered in `memory` (the file for this URL);
/// when the mirror cannot be reached, the digest seen last is used with a
/// warning, so a fully cached build still works offline. Without one, the
/// error stands.
pub fn resolve_in_release(mirror: &str, suite: &str, memory: Option<&Path>) -> Result<Resolved> {
    let url = in_release_url(mirror, suite);
    let file = memory.map(Path::to_path_buf);
    match in_release_digest(mirror, suite) {
        Ok(sha256) => {
            if let Some(file) = &file {
                let record = Remembered { url, sha256: sha256.clone(), seen: crate::time::now_seconds() };
                // Best effort: a read-only cache only loses the offline fallback.
                let _ = fs_err::create_dir_all(file.parent().expect("in a dir"));
                let _ = fs_err::write(file, serde_json::to_vec_pretty(&record).unwrap_or_default());
            }
            Ok(Resolved { sha256, warning: None })
        }
        Err(error) => {
            let remembered = file
                .and_then(|f| fs_err::read(f).ok())
                .and_then(|bytes| serde_json::from_slice::<Remembered>(&bytes).ok());
            match remembered {
                Some(record) => {
                    let age = crate::time::now_seconds().saturating_sub(record.seen);
                    Ok(Resolved {
                        sha256: record.sha256,
                        warning: Some(format!(
                            "cannot reach the mirror ({error:#}); using the release digest seen {} ago, so stages built against it count as current",
                            crate::mirror::human_age(age)
                        )),
                    })
                }
                None => Err(error),
            }
        }
    }
}

/// `3 h`, `2 d`: how long ago, roughly.
pub fn human_age(seconds: u64) -> String {
    match seconds {
        0..=119 => format!("{seconds} s"),
        120..=7_199 => format!("{} min", seconds / 60),
        7_200..=172_799 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deb822_and_one_line_sources() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir(dir.path().join("sources.list.d")).unwrap();
        fs_err::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb\n# a comment: here\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb deb-src\nURIs: http://mirror.test/debian/\nSuites: bookworm bookworm-updates\n",
        )
        .unwrap();
        assert_eq!(host_mirror(dir.path()).unwrap(), "http://mirror.test/debian");
        fs_err::write(
            dir.path().join("sources.list"),
            "# old style\ndeb [arch=amd64] http://other.test/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(host_mirror(dir.path()).unwrap(), "http://other.test/debian");
    }

    #[test]
    fn no_sources_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = host_mirror(dir.path()).unwrap_err().to_string();
        assert!(error.contains("set `mirror:`"), "{error}");
    }

    #[test]
    fn an_unreachable_mirror_falls_back_to_the_digest_seen_last() {
        let dir = tempfile::tempdir().unwrap();
        let mirror_dir = dir.path().join("mirror");
        fs_err::create_dir_all(mirror_dir.join("dists/bookworm")).unwrap();
        fs_err::write(mirror_dir.join("dists/bookworm/InRelease"), "release v1").unwrap();
        let mirror = format!("file://{}", mirror_dir.display());
        let memory = dir.path().join("remote/bookworm.json");

        let first = resolve_in_release(&mirror, "bookworm", Some(&memory)).unwrap();
        assert!(first.warning.is_none());
        assert_eq!(first.sha256, crate::digest::sha256_hex(b"release v1"));

        fs_err::remove_file(mirror_dir.join("dists/bookworm/InRelease")).unwrap();
        let offline = resolve_in_release(&mirror, "bookworm", Some(&memory)).unwrap();
        assert_eq!(offline.sha256, first.sha256);
        let warning = offline.warning.unwrap();
        assert!(warning.starts_with("cannot reach the mirror") && warning.contains("seen 0 s ago"), "{warning}");

        // Another suite was never seen: the error stands.
        let error = resolve_in_release(&mirror, "trixie", Some(&dir.path().join("remote/trixie.json"))).err().unwrap();
        assert!(format!("{error:#}").contains("trixie"), "{error:#}");
        assert_eq!(human_age(90_000), "25 h");
    }
}
