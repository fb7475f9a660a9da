//! Assemble a bundle's thin initramfs: the init program, the build id and chunk
//! list of its rootfs.img, and for each kernel the modules the recipe asks for
//! with their dependencies, taken from the kernel's modules directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rootsmith_init::contract::{BuildId, ChunkList};

use crate::artifact::initramfs::{self, Contents, KernelModules};
use crate::artifact::modules::{self, ModuleTree};
use crate::host::{Command, Host};
use crate::recipe::Initramfs;

/// What went into an initramfs, for the manifest.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Built {
    pub size: u64,
    /// kernel release → module files carried, in load order
    pub modules: std::collections::BTreeMap<String, Vec<String>>,
}

/// A kernel whose modules the initramfs may carry.
pub struct KernelFiles<'a> {
    /// The kernel's name in the recipe (its stage's name).
    pub name: &'a str,
    /// `uname -r`.
    pub release: &'a str,
    /// Its packages, in `products`.
    pub debs: &'a [String],
    /// The directory holding its vmlinuz and packages.
    pub products: PathBuf,
}

/// The modules directory of `kernel`: in the rootfs when the kernel is
/// installed there, else unpacked from its linux-image package into `scratch`.
/// `None` for a kernel without loadable modules.
fn module_dir(
    host: &dyn Host,
    tree: &Path,
    kernel: &KernelFiles<'_>,
    scratch: &Path,
    log: &Path,
) -> Result<Option<PathBuf>> {
    if let Some(dir) = modules_under(tree, kernel.release) {
        return Ok(Some(dir));
    }
    let image = kernel.debs.iter().find(|deb| deb.starts_with("linux-image-") && !deb.contains("-dbg"));
    let Some(image) = image else { return Ok(None) };
    let root = scratch.join(format!("kernel-{}", kernel.name));
    fs_err::create_dir_all(&root)?;
    let dpkg_deb = crate::tools::require("dpkg-deb", "to unpack a kernel's modules")?;
    host.run(&Command::on_host(
        dpkg_deb,
        ["-x".as_ref(), kernel.products.join(image).as_os_str(), root.as_os_str()],
        log,
    ))
    .with_context(|| format!("unpacking the modules of {image}"))?;
    Ok(modules_under(&root, kernel.release))
}

/// `lib/modules/RELEASE` (or under `usr/`) of a root, when it holds modules.
fn modules_under(root: &Path, release: &str) -> Option<PathBuf> {
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|base| root.join(base).join(release))
        .find(|dir| dir.join("kernel").is_dir())
}

/// Make sure `dir` has a modules.dep (a kernel package leaves it to its
/// postinst, which only runs when the package is installed).
fn ensure_depmod(host: &dyn Host, dir: &Path, release: &str, log: &Path) -> Result<()> {
    if dir.join("modules.dep").is_file() {
        return Ok(());
    }
    // dir is BASE/lib/modules/RELEASE or BASE/usr/lib/modules/RELEASE.
    let mut base =
        dir.parent().and_then(Path::parent).and_then(Path::parent).context("modules dir too shallow")?.to_path_buf();
    if base.ends_with("usr") {
        base.pop();
    }
    let depmod = crate::tools::require("depmod", "to index a kernel's modules")?;
    host.run(&Command::on_host(depmod, ["-b".as_ref(), base.as_os_str(), release.as_ref()], log))
        .with_context(|| format!("indexing the modules of {release}"))
}

pub struct Request<'a> {
    /// Runs dpkg-deb and depmod; their output goes to `log`.
    pub host: &'a dyn Host,
    pub log: &'a Path,
    pub settings: &'a Initramfs,
    pub tree: &'a Path,
    pub kernels: Vec<KernelFiles<'a>>,
    pub scratch: &'a Path,
    /// The chunk list of the rootfs image the init fetches and checks.
    pub chunks: ChunkList,
    pub build: BuildId,
    pub epoch: i64,
    /// The bundle's architecture: whose init goes in.
    pub arch: &'a str,
    /// zstd frames made before: the fixed part (init, modules) is copied from here.
    pub frames: Option<&'a crate::artifact::frames::FrameCache>,
}

/// Write the initramfs to `output`.
pub fn write(request: &Request, output: &Path) -> Result<Built> {
    let init = fs_err::read(initramfs::find_init(request.arch)?)?;
    let names = request.settings.module_names();
    let mut built = Built::default();
    let mut kernel_modules = Vec::new();
    for kernel in &request.kernels {
        let Some(dir) = module_dir(request.host, request.tree, kernel, request.scratch, request.log)? else {
            // Everything the rootfs needs must then be built in; the init says so if not.
            built.modules.insert(kernel.release.to_string(), Vec::new());
            continue;
        };
        ensure_depmod(request.host, &dir, kernel.release, request.log)?;
        let tree = ModuleTree::open(&dir)?;
        let mut names = names.clone();
        if request.settings.default_modules {
            names.extend(
                Initramfs::DEFAULT_MODULES.iter().filter(|name| tree.has_module(name)).map(|name| name.to_string()),
            );
        }
        let order = tree
            .closure(&names, kernel.release)
            .with_context(|| format!("resolving the initramfs modules of kernel {}", kernel.name))?;
        let mut files = Vec::new();
        for relative in &order {
            files.push((modules::initramfs_path(kernel.release, relative), modules::read_module(&dir.join(relative))?));
        }
        built.modules.insert(kernel.release.to_string(), files.iter().map(|(path, _)| path.clone()).collect());
        kernel_modules.push(KernelModules { release: kernel.release.to_string(), files });
    }
    let busybox = if request.settings.shell { Some(initramfs::find_busybox(request.tree)?) } else { None };
    let contents = Contents {
        init,
        build: request.build.clone(),
        chunks: request.chunks.clone(),
        modules: kernel_modules,
        busybox,
    };
    built.size = initramfs::write(&contents, request.settings.compression, request.epoch, output, request.frames)?;
    Ok(built)
}

/// The digest of `arch`'s init program, for output keys: a new init makes
/// new initramfs bytes. `None` when it is not built.
pub fn init_digest(arch: &str) -> Option<String> {
    let path = initramfs::find_init(arch).ok()?;
    crate::digest::hash_file(&path).ok()
}
