//! Kernel configuration: the options fragments ask for, and the check that the
//! final `.config` still has every one of them after `olddefconfig` (which
//! silently drops an option whose dependencies are not met).

use std::collections::BTreeMap;
use std::path::Path;

/// What a fragment asks for: `CONFIG_X=value`, or `None` for `# CONFIG_X is not set`.
pub fn parse_options(text: &str) -> BTreeMap<String, Option<String>> {
    let mut options = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                if name.starts_with("CONFIG_") {
                    options.insert(name.to_string(), None);
                }
            }
        } else if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("CONFIG_") {
                options.insert(name.to_string(), Some(value.to_string()));
            }
        }
    }
    options
}

/// One option a fragment asked for that the final configuration lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub option: String,
    pub wanted: String,
    pub got: String,
    pub fragment: String,
}

fn shown(value: &Option<String>) -> String {
    match value {
        Some(value) => value.clone(),
        None => "not set".to_string(),
    }
}

/// The fragment options the final `.config` does not hold. A request for `n`
/// (`# … is not set`) is met by the option being absent too.
pub fn dropped(fragments: &[(String, String)], final_config: &str) -> Vec<Dropped> {
    let final_options = parse_options(final_config);
    let mut dropped = Vec::new();
    for (fragment, text) in fragments {
        for (option, wanted) in parse_options(text) {
            let got = final_options.get(&option).cloned().flatten();
            let wanted_n = wanted.as_deref().is_none_or(|v| v == "n");
            let holds = if wanted_n { got.as_deref().is_none_or(|v| v == "n") } else { got == wanted };
            if !holds {
                dropped.push(Dropped { option, wanted: shown(&wanted), got: shown(&got), fragment: fragment.clone() });
            }
        }
    }
    dropped
}

/// The `depends on` lines of `CONFIG_NAME` in the kernel's Kconfig files.
pub fn dependencies(source: &Path, option: &str) -> Vec<String> {
    let symbol = option.trim_start_matches("CONFIG_");
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(source).into_iter().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("Kconfig") || !entry.file_type().is_file() {
            continue;
        }
        let Ok(text) = fs_err::read_to_string(entry.path()) else { continue };
        found.extend(dependencies_in(&text, symbol));
    }
    found.sort();
    found.dedup();
    found
}

/// The `depends on` expressions of `config SYMBOL` in one Kconfig text.
pub fn dependencies_in(text: &str, symbol: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("config ").or_else(|| trimmed.strip_prefix("menuconfig ")) {
            inside = name.trim() == symbol;
            continue;
        }
        if !line.starts_with(char::is_whitespace) && !trimmed.is_empty() {
            inside = false;
        }
        if inside && (trimmed == "help" || trimmed == "---help---") {
            // Help text comes last and is prose.
            inside = false;
        }
        if inside {
            if let Some(expression) = trimmed.strip_prefix("depends on ") {
                found.push(expression.trim().to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_and_unset_options() {
        let options = parse_options("CONFIG_A=y\n# CONFIG_B is not set\n# a comment\nCONFIG_C=\"text\"\n");
        assert_eq!(options["CONFIG_A"], Some("y".into()));
        assert_eq!(options["CONFIG_B"], None);
        assert_eq!(options["CONFIG_C"], Some("\"text\"".into()));
    }

    #[test]
    fn finds_options_the_final_config_dropped() {
        let fragments = vec![(
            "net.config".to_string(),
            "CONFIG_E1000=y\nCONFIG_PRINTK=y\n# CONFIG_DEBUG is not set\n".to_string(),
        )];
        let final_config = "CONFIG_PRINTK=y\n# CONFIG_E1000 is not set\n";
        let found = dropped(&fragments, final_config);
        assert_eq!(
            found,
            vec![Dropped {
                option: "CONFIG_E1000".into(),
                wanted: "y".into(),
                got: "not set".into(),
                fragment: "net.config".into()
            }]
        );
    }

    #[test]
    fn reads_depends_on_of_one_symbol() {
        let kconfig = "config E1000\n\ttristate \"Intel\"\n\tdepends on PCI && NET\n\thelp\n\t  depends on nothing here\n\nconfig OTHER\n\tdepends on X86\n";
        assert_eq!(dependencies_in(kconfig, "E1000"), ["PCI && NET"]);
        assert_eq!(dependencies_in(kconfig, "OTHER"), ["X86"]);
    }
}
