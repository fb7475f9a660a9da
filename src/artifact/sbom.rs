//! `sbom.spdx.json`: an SPDX 2.3 document of the rootfs's Debian packages
//! (name, version, architecture, source package, and the license names the
//! package's machine-readable copyright file gives). Deterministic: its
//! timestamp is SOURCE_DATE_EPOCH and its namespace is the rootfs cookie.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};

/// License names from a DEP-5 copyright file (`License:` fields), sorted.
fn licenses(tree: &Path, package: &str) -> Vec<String> {
    let Ok(text) = fs_err::read_to_string(tree.join("usr/share/doc").join(package).join("copyright")) else {
        return Vec::new();
    };
    if !text.starts_with("Format:") {
        return Vec::new();
    }
    let names: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("License:"))
        .flat_map(|value| {
            value
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|word| !word.is_empty() && !matches!(*word, "or" | "and" | "with" | "OR" | "AND" | "WITH"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    names.into_iter().collect()
}

/// SPDX ids allow letters, digits, `.` and `-`.
fn spdx_id(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect()
}

pub fn spdx(tree: &Path, name: &str, cookie: &str, created: &str) -> String {
    let status = fs_err::read_to_string(tree.join("var/lib/dpkg/status")).unwrap_or_default();
    let mut packages: Vec<Value> = Vec::new();
    let mut relationships = Vec::new();
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    for stanza in crate::control::stanzas(&status) {
        let field = |key: &str| crate::control::field(stanza, key);
        if !field("Status").is_some_and(|s| s.ends_with(" installed")) {
            continue;
        }
        let (Some(package), Some(version), Some(arch)) = (field("Package"), field("Version"), field("Architecture"))
        else {
            continue;
        };
        // `Source: glibc (2.36-9)` names the source package and, when it differs, its version.
        let source = field("Source")
            .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_else(|| package.clone());
        rows.push((package, version, arch, source));
    }
    rows.sort();
    for (package, version, arch, source) in rows {
        let id = format!("SPDXRef-Package-deb-{}", spdx_id(&format!("{package}-{arch}")));
        let license_names = licenses(tree, &package);
        let mut entry = json!({
            "name": package,
            "SPDXID": id,
            "versionInfo": version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "sourceInfo": format!("built from the Debian source package {source}"),
            "externalRefs": [{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": format!("pkg:deb/debian/{package}@{version}?arch={arch}") }],
        });
        if !license_names.is_empty() {
            entry["licenseComments"] = json!(format!("Debian copyright file: {}", license_names.join(", ")));
        }
        relationships.push(
            json!({ "spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": id }),
        );
        packages.push(entry);
    }
    let document = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{name} rootfs"),
        "documentNamespace": format!("urn:rootsmith:{name}:{cookie}"),
        "creationInfo": { "created": created, "creators": [format!("Tool: rootsmith-{}", env!("CARGO_PKG_VERSION"))] },
        "packages": packages,
        "relationships": relationships,
    });
    serde_json::to_string_pretty(&document).expect("JSON values serialize") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_installed_packages_with_source_and_licenses() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        fs_err::create_dir_all(tree.join("var/lib/dpkg")).unwrap();
        fs_err::write(
            tree.join("var/lib/dpkg/status"),
            "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9)\nVersion: 2.36-9+deb12u4\n\nPackage: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\nPackage: curl\nStatus: install ok installed\nArchitecture: amd64\nVersion: 7.88.1-10\n",
        )
        .unwrap();
        fs_err::create_dir_all(tree.join("usr/share/doc/curl")).unwrap();
        fs_err::write(tree.join("usr/share/doc/curl/copyright"), "Format: https://example.invalid/dep5\n\nFiles: *\nLicense: curl\n\nFiles: lib/x\nLicense: BSD-3-clause or ISC\n").unwrap();
        let text = spdx(tree, "demo", "abc", "2023-11-14T22:13:20Z");
        assert_eq!(text, spdx(tree, "demo", "abc", "2023-11-14T22:13:20Z"));
        let document: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(document["spdxVersion"], "SPDX-2.3");
        assert_eq!(document["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        let packages = document["packages"].as_array().unwrap();
        assert_eq!(packages.len(), 2);
        assert_eq!(packages[0]["name"], "curl");
        assert_eq!(packages[0]["licenseComments"], "Debian copyright file: BSD-3-clause, ISC, curl");
        assert_eq!(packages[1]["sourceInfo"], "built from the Debian source package glibc");
        assert_eq!(
            packages[1]["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libc6@2.36-9+deb12u4?arch=amd64"
        );
        assert_eq!(document["relationships"].as_array().unwrap().len(), 2);
    }
}
