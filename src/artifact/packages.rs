//! `packages.txt`: name, version and architecture of every installed package,
//! from the tree's dpkg status file.

use std::path::Path;

/// `name<TAB>version<TAB>arch` lines, sorted; empty when the tree has no dpkg.
pub fn installed(tree: &Path) -> String {
    let Ok(status) = fs_err::read_to_string(tree.join("var/lib/dpkg/status")) else { return String::new() };
    let mut lines = Vec::new();
    for stanza in crate::control::stanzas(&status) {
        let field = |name: &str| crate::control::field(stanza, name);
        if !field("Status").is_some_and(|s| s.ends_with(" installed")) {
            continue;
        }
        if let (Some(name), Some(version), Some(arch)) = (field("Package"), field("Version"), field("Architecture")) {
            lines.push(format!("{name}\t{version}\t{arch}"));
        }
    }
    lines.sort();
    lines.into_iter().map(|line| line + "\n").collect()
}

/// `packages.txt` read back: name → version. A package of `native_arch`,
/// or of `all`, is keyed by its bare name; any other as `name:arch`.
pub fn parse(text: &str, native_arch: Option<&str>) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (name, version, arch) = (fields.next()?, fields.next()?, fields.next().unwrap_or(""));
            let bare = arch.is_empty() || arch == "all" || Some(arch) == native_arch;
            Some((if bare { name.to_string() } else { format!("{name}:{arch}") }, version.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_installed_packages_only() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(dir.path().join("var/lib/dpkg")).unwrap();
        fs_err::write(
            dir.path().join("var/lib/dpkg/status"),
            "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2\n\nPackage: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\nPackage: apt\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.6\n",
        )
        .unwrap();
        assert_eq!(super::installed(dir.path()), "apt\t2.6\tamd64\nzlib1g\t1:1.2\tamd64\n");
    }

    #[test]
    fn parse_keys_foreign_architectures_by_name_and_arch() {
        let text = "curl\t7.88\tamd64\nlibc6\t2.36\ti386\ntzdata\t2024a\tall\n";
        let native = super::parse(text, Some("amd64"));
        assert_eq!(native.keys().collect::<Vec<_>>(), ["curl", "libc6:i386", "tzdata"]);
        let qualified = super::parse(text, None);
        assert_eq!(qualified.keys().collect::<Vec<_>>(), ["curl:amd64", "libc6:i386", "tzdata"]);
    }
}
