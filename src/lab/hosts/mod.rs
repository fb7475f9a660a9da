//! A hosts inventory served in a lab: the inventory (`crate::inventory`)
//! checked against the bundle it names. From it come PXELINUX's per-host
//! files (`pxelinux.cfg/01-aa-bb-…`, hex IP), GRUB's (`grub.cfg-01-aa-bb-…`)
//! and iPXE scripts chained by `${mac}` (`render`), served by `rootsmith
//! serve --hosts`. One-shot changes made by `rootsmith hosts set` and the
//! agents' reports live beside it (`state`).

pub mod render;
pub mod served;
pub mod state;

use std::path::{Path, PathBuf};

use crate::artifact::menus::MenuInput;
use crate::diagnostic::spans::Position;
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::inventory;
pub use crate::inventory::{entry_choices, parse_mac, BundleKernels, Entry, Host};

/// The kernels an inventory's entries may name.
pub fn bundle_kernels(menu: &MenuInput) -> BundleKernels {
    BundleKernels {
        name: menu.name.clone(),
        version: menu.version.clone(),
        kernels: menu.kernels.iter().map(|(name, _)| name.clone()).collect(),
    }
}

#[derive(Debug, Clone)]
pub struct Inventory {
    pub file: PathBuf,
    /// The bundle the entries name.
    pub bundle: PathBuf,
    pub menu: MenuInput,
    /// For hosts not listed.
    pub default: Entry,
    pub hosts: Vec<Host>,
}

impl Inventory {
    pub fn host(&self, key: &str) -> Option<&Host> {
        self.hosts.iter().find(|host| host.is(key))
    }

    /// The host whose per-host files are named by `mac` (`52-54-…`) or hex IP.
    pub fn host_by_file_key(&self, key: &str) -> Option<&Host> {
        let matches = |name: Option<String>| name.is_some_and(|name| name.eq_ignore_ascii_case(key));
        self.hosts.iter().find(|host| matches(host.mac_hyphens()) || matches(host.ip_hex()))
    }

    /// Check an entry name against the bundle.
    pub fn entry(&self, text: &str) -> anyhow::Result<Entry> {
        let kernels = bundle_kernels(&self.menu);
        let entry = Entry::parse(text).ok_or_else(|| {
            anyhow::anyhow!("`{text}` is not an entry; the bundle's entries are: {}", entry_choices(&kernels))
        })?;
        entry.check(&kernels)?;
        Ok(entry)
    }
}

/// Read and check an inventory. The bundle is its `bundle:` (relative to the
/// file), else the bundle the file sits in (a recipe's inventory, copied into
/// its bundle), else `default_bundle` (the directory `serve` serves). Every
/// problem is reported with its line and column.
pub fn load(file: &Path, default_bundle: Option<&Path>) -> anyhow::Result<Inventory> {
    let source = fs_err::read_to_string(file)?;
    load_str(file, &source, default_bundle).map_err(anyhow::Error::new)
}

pub fn load_str(file: &Path, source: &str, default_bundle: Option<&Path>) -> Result<Inventory, Diagnostics> {
    let parsed = inventory::parse(file, source)?;
    let (raw, spans) = (&parsed.raw, &parsed.spans);
    let problem = |position: Position, message: String, hint: &str| {
        Diagnostics(vec![Diagnostic::new(file, source, position, message).with_hint(hint)])
    };
    let dir = file.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let bundle = match (&raw.bundle, default_bundle) {
        (Some(bundle), _) => dir.join(bundle),
        (None, _) if dir.join("manifest.json").is_file() => dir.to_path_buf(),
        (None, Some(bundle)) => bundle.to_path_buf(),
        (None, None) => {
            return Err(problem(
                Position { line: 1, column: 1 },
                "the inventory names no bundle".into(),
                "add `bundle: DIR` (relative to this file), or give --bundle",
            ))
        }
    };
    let menu = match crate::bundle::Bundle::open(&bundle) {
        Ok(opened) => MenuInput::from_manifest(&opened.manifest),
        Err(error) => {
            return Err(problem(
                spans.value("bundle"),
                format!("{error:#}"),
                "`bundle:` is the directory of a built bundle (OUT/NAME/VERSION)",
            ))
        }
    };
    let (default, hosts) = inventory::check(file, source, &parsed, &bundle_kernels(&menu))?;
    Ok(Inventory { file: file.to_path_buf(), bundle, menu, default, hosts })
}

#[cfg(test)]
mod tests;
