//! An inventory as `serve --hosts` uses it: re-read at every request for a
//! host file (so edits and `hosts set` need no restart; an edit that does
//! not check leaves the last inventory that did in service), the generated files
//! (each host's with its report token), the agents' reports (taken only with
//! the host's token), and its state directory, which is never served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::render::{self, Urls, REPORT_PATH};
use super::state::{self, Report, StateStore};
use super::Inventory;
use crate::lab::http::percent_decode;

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
    /// The last inventory that checked, served while the file does not, and
    /// the error of the file as it is now (logged once per change).
    last_good: std::sync::Mutex<(Option<Inventory>, Option<String>)>,
    log: Box<dyn Fn(&str) + Send + Sync>,
}

/// Where the inventory `file`'s bundle is under the served directory `root`
/// (both canonical), or `None` when it is outside: a usage error for `serve`.
pub fn bundle_under(file: &Path, root: &Path) -> Result<Option<PathBuf>> {
    let root = root.canonicalize()?;
    let inventory = super::load(file, Some(&root))?;
    let bundle = inventory.bundle.canonicalize()?;
    Ok(bundle.strip_prefix(&root).ok().map(Path::to_path_buf))
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
        Ok(ServedInventory {
            file: file.to_path_buf(),
            root,
            bundle_path,
            public_url,
            store: StateStore::for_inventory(file),
            last_good: std::sync::Mutex::new((Some(inventory), None)),
            log: Box::new(|line| eprintln!("{line}")),
        })
    }

    /// Where the inventory's errors are logged (serve's log).
    pub fn with_log(mut self, log: Box<dyn Fn(&str) + Send + Sync>) -> ServedInventory {
        self.log = log;
        self
    }

    /// The error of the inventory file as it is now, when it does not check
    /// (the last one that did is being served).
    pub fn current_error(&self) -> Option<String> {
        self.last_good.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).1.clone()
    }

    pub fn summary(&self) -> String {
        format!(
            "hosts from {} for the bundle at /{} (state in {})",
            self.file.display(),
            self.bundle_path,
            self.store.dir.display()
        )
    }

    /// The inventory as the file says now; when it does not check (a typo in
    /// a live file), the last one that did, so one mistake does not take the
    /// whole lab down. The error is logged, with its file:line:column, once
    /// each time it changes.
    fn inventory(&self) -> Result<Inventory> {
        let loaded = super::load(&self.file, Some(&self.root));
        let mut last = self.last_good.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match loaded {
            Ok(inventory) => {
                if last.1.take().is_some() {
                    (self.log)(&format!("{}: checks again; serving it", self.file.display()));
                }
                last.0 = Some(inventory.clone());
                Ok(inventory)
            }
            Err(error) => {
                let text = format!("{error:#}");
                if last.1.as_deref() != Some(text.as_str()) {
                    let serving =
                        if last.0.is_some() { "serving the last inventory that checked" } else { "nothing to serve" };
                    (self.log)(&format!("{}: does not check ({serving}):\n{text}", self.file.display()));
                    last.1 = Some(text);
                }
                last.0.clone().ok_or(error)
            }
        }
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
            return Some(Err(anyhow::anyhow!(
                "per-host files over TFTP need `serve --public-url` (the HTTP URL machines reach this server at)"
            )));
        };
        let loaded = self.inventory().and_then(|inventory| Ok((self.store.load_with_tokens(&inventory)?, inventory)));
        match loaded {
            Ok((state, inventory)) => render::file(&inventory, &state, relative, &urls).map(Ok),
            Err(error) => Some(Err(error)),
        }
    }

    /// Whether `path` (canonical) is in the state directory: the report
    /// tokens and logs, never served.
    pub fn is_private(&self, path: &Path) -> bool {
        self.store.dir.canonicalize().is_ok_and(|dir| path.starts_with(dir))
    }

    /// `POST /.rootsmith/report/HOST?status=ok|failed&step=STEP` with the log
    /// as the body and `token` the host's report token (HTTP's bearer token).
    /// Returns the reply text, or an HTTP status and message; a report without
    /// the host's token (403) changes nothing.
    pub fn report(
        &self,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        peer: SocketAddr,
    ) -> std::result::Result<String, (u16, String)> {
        let (target, query) = path.split_once('?').unwrap_or((path, ""));
        let key = target
            .strip_prefix(REPORT_PATH)
            .filter(|key| !key.is_empty() && !key.contains('/'))
            .ok_or((404, format!("reports go to /{REPORT_PATH}HOST")))?;
        let field = |name: &str| {
            let value =
                query.split('&').find_map(|pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))?;
            Some(state::single_line(&percent_decode(value).unwrap_or_else(|| value.to_string())))
        };
        let inventory = self.inventory().map_err(|error| (500, format!("{error:#}")))?;
        let host = inventory
            .host(key)
            .ok_or_else(|| (404, format!("no host `{}` in {}", state::single_line(key), self.file.display())))?
            .clone();
        let refused = || {
            (403, format!("a report for {} needs its token (rootsmith.report_token on its kernel command line) as `Authorization: Bearer TOKEN`", host.name))
        };
        let known = self.store.load().map_err(|error| (500, format!("{error:#}")))?;
        if !state::token_matches(&known, &host.name, token) {
            return Err(refused());
        }
        let status = field("status").unwrap_or_default();
        if status != "ok" && status != "failed" {
            return Err((400, "a report has ?status=ok or ?status=failed".into()));
        }
        let report = Report {
            at: crate::time::rfc3339(crate::time::now_seconds() as i64),
            status,
            step: field("step"),
            entry: String::new(),
            cleared: false,
            log: String::new(),
            from: peer.ip().to_string(),
        };
        // Checked again under the lock: `hosts set` may have renewed the token meanwhile.
        let outcome = self.store.update(|state| {
            if !state::token_matches(state, &host.name, token) {
                return Ok(None);
            }
            let log = self.store.write_log(&host.name, body)?;
            Ok(Some(state::record_report(&inventory, state, &host, Report { log, ..report })))
        });
        match outcome {
            Ok(Some(next)) => Ok(format!("recorded; {} boots {} next\n", host.name, next.name())),
            Ok(None) => Err(refused()),
            Err(error) => Err((500, format!("{error:#}"))),
        }
    }
}

/// Whether `path` (relative to the bundle) is one of the files an inventory generates.
fn is_host_file(path: &str) -> bool {
    matches!(path, "boot.ipxe" | "grub.cfg")
        || path.starts_with("hosts/")
        || path.starts_with("pxelinux.cfg/")
        || path.starts_with("grub.cfg-")
}
