//! An inventory as `serve --hosts` uses it: re-read at every request for a
//! host file (so edits and `hosts set` need no restart), the generated files,
//! and the agents' reports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::render::{self, Urls, REPORT_PATH};
use super::state::{self, Report, StateStore};
use super::{Entry, Inventory};

/// Report logs larger than this are refused.
pub const MAX_REPORT_BYTES: u64 = 4 << 20;

pub struct ServedInventory {
    file: PathBuf,
    /// The served directory, canonical.
    root: PathBuf,
    /// The bundle's path under the root, as URL path segments ending in `/` (or empty).
    bundle_path: String,
    /// The server's root URL for loaders that do not say which address they used (TFTP).
    public_url: Option<String>,
    pub store: StateStore,
}

impl ServedInventory {
    /// Check the inventory once, and that its bundle is inside `root`.
    pub fn open(file: &Path, root: &Path, public_url: Option<String>) -> Result<ServedInventory> {
        let root = root.canonicalize()?;
        let inventory = super::load(file, Some(&root))?;
        let bundle = inventory.bundle.canonicalize()?;
        let Ok(relative) = bundle.strip_prefix(&root) else {
            bail!("the inventory's bundle {} is not inside the served directory {}", bundle.display(), root.display());
        };
        let bundle_path: String = relative.iter().map(|part| format!("{}/", part.to_string_lossy())).collect();
        let public_url = public_url.map(|url| format!("{}/", url.trim_end_matches('/')));
        Ok(ServedInventory { file: file.to_path_buf(), root, bundle_path, public_url, store: StateStore::for_inventory(file) })
    }

    pub fn summary(&self) -> String {
        format!("hosts from {} for the bundle at /{} (state in {})", self.file.display(), self.bundle_path, self.store.dir.display())
    }

    fn inventory(&self) -> Result<Inventory> {
        super::load(&self.file, Some(&self.root))
    }

    /// The root URL to write into files: the address the client used, else `--public-url`.
    fn urls(&self, client_used: Option<&str>) -> Option<Urls> {
        let server = match (client_used, &self.public_url) {
            (Some(host), _) => format!("http://{host}/"),
            (None, Some(url)) => url.clone(),
            (None, None) => return None,
        };
        Some(Urls { bundle: format!("{server}{}", self.bundle_path), server })
    }

    /// A generated file for `path` (relative to the served root, no leading
    /// `/`); `client_used` is the HTTP Host header, `None` over TFTP.
    pub fn file(&self, path: &str, client_used: Option<&str>) -> Option<Result<String>> {
        let relative = path.strip_prefix(&self.bundle_path)?;
        if !is_host_file(relative) {
            return None;
        }
        let Some(urls) = self.urls(client_used) else {
            return Some(Err(anyhow::anyhow!("per-host files over TFTP need `serve --public-url` (the HTTP URL machines reach this server at)")));
        };
        let loaded = self.inventory().and_then(|inventory| Ok((self.store.load()?, inventory)));
        match loaded {
            Ok((state, inventory)) => render::file(&inventory, &state, relative, &urls).map(Ok),
            Err(error) => Some(Err(error)),
        }
    }

    /// `POST /.rootsmith/report/HOST?status=ok|failed&step=STEP` with the log
    /// as the body. Returns the reply text, or an HTTP status and message.
    pub fn report(&self, path: &str, body: &[u8], peer: SocketAddr) -> std::result::Result<String, (u16, String)> {
        let (target, query) = path.split_once('?').unwrap_or((path, ""));
        let key = target.strip_prefix(REPORT_PATH).filter(|key| !key.is_empty() && !key.contains('/')).ok_or((404, format!("reports go to /{REPORT_PATH}HOST")))?;
        let field = |name: &str| query.split('&').find_map(|pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('='))).map(str::to_string);
        let status = field("status").unwrap_or_default();
        if status != "ok" && status != "failed" {
            return Err((400, "a report has ?status=ok or ?status=failed".into()));
        }
        let inventory = self.inventory().map_err(|error| (500, format!("{error:#}")))?;
        let host = inventory.host(key).ok_or((404, format!("no host `{key}` in {}", self.file.display())))?.clone();
        let outcome = (|| -> Result<Entry> {
            let log = self.store.write_log(&host.name, body)?;
            let report = Report { at: crate::time::rfc3339(crate::time::now_seconds() as i64), status, step: field("step"), entry: String::new(), cleared: false, log, from: peer.ip().to_string() };
            self.store.update(|state| Ok(state::record_report(&inventory, state, &host, report)))
        })();
        match outcome {
            Ok(next) => Ok(format!("recorded; {} boots {} next\n", host.name, next.name())),
            Err(error) => Err((500, format!("{error:#}"))),
        }
    }
}

/// Whether `path` (relative to the bundle) is one of the files an inventory generates.
fn is_host_file(path: &str) -> bool {
    matches!(path, "boot.ipxe" | "grub.cfg") || path.starts_with("hosts/") || path.starts_with("pxelinux.cfg/") || path.starts_with("grub.cfg-")
}
