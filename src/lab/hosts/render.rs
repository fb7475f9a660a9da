//! The files an inventory gives each boot loader, generated per request by
//! `serve --hosts` (so `hosts set` and reports take effect at the next boot):
//!
//! | loader   | per host                                   | hosts not listed        |
//! |----------|--------------------------------------------|-------------------------|
//! | iPXE     | `hosts/52-54-00-00-00-11.ipxe`, `hosts/10.0.2.15.ipxe`, chained by `boot.ipxe` | `hosts/default.ipxe` |
//! | PXELINUX | `pxelinux.cfg/01-52-54-00-00-00-11`, `pxelinux.cfg/0A00020F` | `pxelinux.cfg/default` |
//! | GRUB     | `grub.cfg-01-52-54-00-00-00-11`, `grub.cfg-0A00020F` | `grub.cfg`     |
//!
//! Paths are relative to the bundle's directory. iPXE's scripts use absolute
//! URLs; PXELINUX's and GRUB's load the kernel relative to their own TFTP or
//! HTTP root, as the bundle's menus do. A host's kernel command line carries
//! its name, where to report and its report token from the state.

use super::state::{current_entry, State};
use super::{Entry, Host, Inventory};
use crate::artifact::menus::{self, MenuInput};

/// Where agents send their reports, under the server's root.
pub const REPORT_PATH: &str = ".rootsmith/report/";

/// The server as the booting machine reaches it.
#[derive(Debug, Clone)]
pub struct Urls {
    /// The server's root, ending in `/`.
    pub server: String,
    /// The bundle's directory, ending in `/`.
    pub bundle: String,
}

/// A host of the inventory, with the report token its files give it (from
/// the state; `None` before it has one, and its reports are then refused).
#[derive(Debug, Clone, Copy)]
pub struct For<'a> {
    pub host: &'a Host,
    pub token: Option<&'a str>,
}

/// Kernel arguments a host adds: its own (`${server}` expanded), then its
/// name, where to report and the token its reports carry.
fn host_args(host: For, urls: &Urls) -> String {
    let own = host.host.args.replace("${server}", &urls.server);
    let mut words = vec![
        own,
        format!("rootsmith.host={}", host.host.name),
        format!("rootsmith.report={}{REPORT_PATH}{}", urls.server, host.host.name),
    ];
    words.extend(host.token.map(|token| format!("rootsmith.report_token={token}")));
    words.iter().filter(|word| !word.is_empty()).cloned().collect::<Vec<_>>().join(" ")
}

fn menu_for(inventory: &Inventory, host: Option<For>, urls: &Urls) -> MenuInput {
    let mut menu = inventory.menu.clone();
    if let Some(host) = host {
        menu.cmdline = [menu.cmdline.as_str(), &host_args(host, urls)]
            .iter()
            .filter(|part| !part.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
    }
    menu
}

fn vmlinuz<'a>(menu: &'a MenuInput, kernel: &str) -> &'a str {
    menu.kernels.iter().find(|(name, _)| name == kernel).map(|(_, file)| file.as_str()).unwrap_or("")
}

fn heading(comment: &str, inventory: &Inventory, host: Option<For>, entry: &Entry) -> String {
    let who =
        host.map(|host| format!("host {}", host.host.name)).unwrap_or_else(|| "hosts not in the inventory".into());
    format!("{comment} rootsmith bundle {} {}, {who}: {}\n", inventory.menu.name, inventory.menu.version, entry.name())
}

/// `boot.ipxe` with an inventory: the host's own script by MAC, then by IP,
/// else the default.
pub fn ipxe_dispatcher(inventory: &Inventory) -> String {
    format!(
        "#!ipxe\n# rootsmith bundle {} {}: each host boots its own entry (inventory {})\nchain --autofree hosts/${{mac:hexhyp}}.ipxe || chain --autofree hosts/${{ip}}.ipxe || chain --autofree hosts/default.ipxe\n",
        inventory.menu.name,
        inventory.menu.version,
        inventory.file.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
    )
}

pub fn ipxe(inventory: &Inventory, host: Option<For>, entry: &Entry, urls: &Urls) -> String {
    let menu = menu_for(inventory, host, urls);
    match entry {
        Entry::Menu => menus::ipxe(&menu, Some(&urls.bundle), None),
        Entry::Local => {
            format!("#!ipxe\n{}sanboot --no-describe --drive 0x80 || exit\n", heading("#", inventory, host, entry))
        }
        Entry::Kernel { kernel, fetched } => format!(
            "#!ipxe\n{}{}",
            heading("#", inventory, host, entry),
            menus::ipxe_entry(&menu, &urls.bundle, &urls.bundle, vmlinuz(&menu, kernel), *fetched)
        ),
    }
}

pub fn pxelinux(inventory: &Inventory, host: Option<For>, entry: &Entry, urls: &Urls) -> String {
    let menu = menu_for(inventory, host, urls);
    let text = match entry {
        Entry::Menu => return menus::pxelinux(&menu, Some(&urls.bundle)),
        Entry::Local => format!(
            "{}DEFAULT local\n\nLABEL local\n  MENU LABEL local disk\n  LOCALBOOT 0\n",
            heading("#", inventory, host, entry)
        ),
        Entry::Kernel { kernel, fetched } => format!(
            "{}DEFAULT {}\n{}",
            heading("#", inventory, host, entry),
            entry.name(),
            menus::pxelinux_label(&menu, &urls.bundle, kernel, vmlinuz(&menu, kernel), *fetched)
        ),
    };
    menus::trim_lines(&text)
}

pub fn grub(inventory: &Inventory, host: Option<For>, entry: &Entry, urls: &Urls) -> String {
    let menu = menu_for(inventory, host, urls);
    let text = match entry {
        Entry::Menu => return menus::grub(&menu, Some(&urls.bundle)),
        Entry::Local => format!(
            "{}set timeout=0\nset default=local\n\nmenuentry 'local disk' --id local {{\n  exit\n}}\n",
            heading("#", inventory, host, entry)
        ),
        Entry::Kernel { kernel, fetched } => format!(
            "{}set timeout=0\nset default={}\n{}",
            heading("#", inventory, host, entry),
            entry.name(),
            menus::grub_entry(&menu, &urls.bundle, kernel, vmlinuz(&menu, kernel), *fetched)
        ),
    };
    menus::trim_lines(&text)
}

/// Every file an inventory gives, relative to the bundle: the entry points
/// and defaults, then each host's by MAC and by IP.
pub fn paths(inventory: &Inventory) -> Vec<String> {
    let mut paths: Vec<String> = ["boot.ipxe", "hosts/default.ipxe", "pxelinux.cfg/default", "grub.cfg"]
        .iter()
        .map(|path| path.to_string())
        .collect();
    for host in &inventory.hosts {
        if let Some(mac) = host.mac_hyphens() {
            paths.extend([format!("hosts/{mac}.ipxe"), format!("pxelinux.cfg/01-{mac}"), format!("grub.cfg-01-{mac}")]);
        }
        if let (Some(ip), Some(hex)) = (host.ip, host.ip_hex()) {
            paths.extend([format!("hosts/{ip}.ipxe"), format!("pxelinux.cfg/{hex}"), format!("grub.cfg-{hex}")]);
        }
    }
    let pxelinux = menus::loaders(&inventory.menu.arch).contains(&menus::Loader::Pxelinux);
    paths.retain(|path| pxelinux || !path.starts_with("pxelinux.cfg/"));
    paths
}

/// The generated file at `path` (relative to the bundle), or `None` when the
/// inventory has no such file (a host it does not list gets a 404, and its
/// loader moves on to the default).
pub fn file(inventory: &Inventory, state: &State, path: &str, urls: &Urls) -> Option<String> {
    let for_host = |key: &str| {
        inventory
            .host_by_file_key(key)
            .or_else(|| key.parse().ok().and_then(|ip| inventory.hosts.iter().find(|host| host.ip == Some(ip))))
    };
    let (host, loader) = match path {
        "boot.ipxe" => return Some(ipxe_dispatcher(inventory)),
        "hosts/default.ipxe" => (None, menus::Loader::Ipxe),
        "pxelinux.cfg/default" => (None, menus::Loader::Pxelinux),
        "grub.cfg" => (None, menus::Loader::Grub),
        _ => {
            if let Some(key) = path.strip_prefix("hosts/").and_then(|rest| rest.strip_suffix(".ipxe")) {
                (Some(for_host(key)?), menus::Loader::Ipxe)
            } else if let Some(key) = path.strip_prefix("pxelinux.cfg/") {
                (Some(for_host(key.strip_prefix("01-").unwrap_or(key))?), menus::Loader::Pxelinux)
            } else if let Some(key) = path.strip_prefix("grub.cfg-") {
                (Some(for_host(key.strip_prefix("01-").unwrap_or(key))?), menus::Loader::Grub)
            } else {
                return None;
            }
        }
    };
    // A loader that cannot boot the bundle's architecture (PXELINUX for
    // arm64) gets no file, as its bundle has none.
    if !menus::loaders(&inventory.menu.arch).contains(&loader) {
        return None;
    }
    let entry = host.map(|host| current_entry(inventory, state, host)).unwrap_or_else(|| inventory.default.clone());
    let host = host.map(|host| For { host, token: state.tokens.get(&host.name).map(String::as_str) });
    Some(match loader {
        menus::Loader::Ipxe => ipxe(inventory, host, &entry, urls),
        menus::Loader::Pxelinux => pxelinux(inventory, host, &entry, urls),
        menus::Loader::Grub => grub(inventory, host, &entry, urls),
    })
}
