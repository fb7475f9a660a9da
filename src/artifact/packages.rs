//! `packages.txt`: name, version and architecture of every installed package,
//! from the tree's dpkg status file.

use std::path::Path;

/// `name<TAB>version<TAB>arch` lines, sorted; empty when the tree has no dpkg.
pub fn installed(tree: &Path) -> String {
    let Ok(status) = std::fs::read_to_string(tree.join("var/lib/dpkg/status")) else { return String::new() };
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

#[cfg(test)]
mod tests {
    #[test]
    fn lists_installed_packages_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("var/lib/dpkg")).unwrap();
        std::fs::write(
            dir.path().join("var/lib/dpkg/status"),
            "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2\n\nPackage: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\nPackage: apt\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.6\n",
        )
        .unwrap();
        assert_eq!(super::installed(dir.path()), "apt\t2.6\tamd64\nzlib1g\t1:1.2\tamd64\n");
    }
}
