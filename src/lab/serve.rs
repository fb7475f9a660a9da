//! `rootsmith serve DIR`: what each request gets. Files under DIR (nothing
//! outside it), a bundle's `boot.ipxe` (and its PXELINUX and GRUB menus)
//! generated on the fly with the server's own base URL so the fetched entries
//! work as served, and with `--hosts` per-host boot files and agents'
//! reports (the inventory's state directory, with the hosts' report tokens,
//! is not served). The protocol around it is `http.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;

pub use super::http::AccessLog;
use super::http::{
    content_type, error, etag, file_like, generated, percent_decode, resolve, Body, Handler, Listener, Request,
    Response,
};
use crate::artifact::menus::{self, MenuInput};
use crate::lab::hosts::served::{ServedInventory, MAX_REPORT_BYTES};

pub struct Server {
    listener: Listener,
    routes: Routes,
}

/// What the server answers, apart from the protocol.
struct Routes {
    root: PathBuf,
    hosts: Option<Arc<ServedInventory>>,
}

impl Server {
    pub fn bind(root: &Path, addr: &str, max_connections: usize, log: AccessLog) -> Result<Server> {
        use anyhow::Context as _;
        let root = root.canonicalize().with_context(|| format!("serving {}", root.display()))?;
        if !root.is_dir() {
            anyhow::bail!("{} is not a directory", root.display());
        }
        let listener = Listener::bind(addr, max_connections, MAX_REPORT_BYTES, log)?;
        Ok(Server { listener, routes: Routes { root, hosts: None } })
    }

    /// Generate per-host boot files from an inventory and take agents' reports.
    pub fn with_hosts(mut self, hosts: Arc<ServedInventory>) -> Server {
        self.routes.hosts = Some(hosts);
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serve until the process ends.
    pub fn run(self) {
        self.listener.run(Arc::new(self.routes));
    }

    /// Serve in a background thread (for boot tests); the thread ends with the process.
    pub fn spawn(self) -> SocketAddr {
        let addr = self.local_addr();
        std::thread::spawn(move || self.run());
        addr
    }
}

impl Handler for Routes {
    fn respond(&self, request: &Request, local: SocketAddr, peer: &str) -> Response {
        if let (Some(hosts), "POST" | "PUT") = (&self.hosts, request.method.as_str()) {
            let peer = peer.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            return match hosts.report(request.path.trim_start_matches('/'), request.bearer_token(), &request.body, peer)
            {
                Ok(reply) => Response {
                    status: 200,
                    headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
                    body: Body::Bytes(reply.into_bytes()),
                },
                Err((status, message)) => error(status, &message),
            };
        }
        if request.method != "GET" && request.method != "HEAD" {
            let mut response = error(405, "this server only reads");
            response.headers.push(("Allow", "GET, HEAD".into()));
            return response;
        }
        if !request.path.starts_with('/') {
            return error(400, "the request target must be a path");
        }
        if let Some(hosts) = &self.hosts {
            let relative = percent_decode(request.path.split(['?', '#']).next().unwrap_or("")).unwrap_or_default();
            match hosts.file(relative.trim_start_matches('/'), request.header("host")) {
                Some(Ok(text)) => return generated(request, text),
                Some(Err(problem)) => return error(500, &format!("{problem:#}")),
                None => {}
            }
        }
        let Some(path) = resolve(&self.root, &request.path)
            .filter(|path| !self.hosts.as_ref().is_some_and(|hosts| hosts.is_private(path)))
        else {
            return error(404, "no such file here");
        };
        if let Some(menu) = self.generated_menu(&path, request, local) {
            return generated(request, menu);
        }
        let Ok(metadata) = fs_err::metadata(&path) else { return error(404, "no such file here") };
        if !metadata.is_file() {
            return error(404, "not a file");
        }
        let Ok(file) = std::fs::File::open(&path) else { return error(403, "cannot be read") };
        let len = metadata.len();
        file_like(request, Body::File { file, start: 0, len }, etag(&metadata), content_type(&path))
    }
}

impl Routes {
    /// A bundle's menu with absolute URLs on this server, when `path` is one.
    fn generated_menu(&self, path: &Path, request: &Request, local: SocketAddr) -> Option<String> {
        let name = path.file_name()?.to_str()?;
        let (bundle, kind) = match name {
            "boot.ipxe" | "grub.cfg" => (path.parent()?, name),
            "default" if path.parent()?.file_name()? == "pxelinux.cfg" => (path.parent()?.parent()?, "pxelinux"),
            _ => return None,
        };
        let manifest = crate::bundle::Bundle::open(bundle).ok()?.manifest;
        let host = request.header("host").map(str::to_string).unwrap_or_else(|| local.to_string());
        let relative = bundle.strip_prefix(&self.root).ok()?;
        let mut base = format!("http://{host}/");
        for part in relative.iter() {
            base.push_str(&part.to_string_lossy());
            base.push('/');
        }
        let input = MenuInput::from_manifest(&manifest);
        if kind == "pxelinux" && !menus::loaders(&manifest.arch).contains(&menus::Loader::Pxelinux) {
            return None;
        }
        Some(match kind {
            "boot.ipxe" => menus::ipxe(&input, Some(&base), None),
            "grub.cfg" => menus::grub(&input, Some(&base)),
            _ => menus::pxelinux(&input, Some(&base)),
        })
    }
}
