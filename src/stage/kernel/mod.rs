//! `kernel` stage: build a kernel from source on the host (`build.rs`), or
//! install a packaged one in the tree and take its vmlinuz (`package` mode).
//! Either way the products (vmlinuz, debs, System.map, config, device trees) are stored in
//! the cache and published in the bundle; the tree changes only when a kernel
//! is installed into it.

pub mod build;
pub mod config;
pub mod device_trees;
pub mod products;
pub mod source;

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

pub use products::{kernels_of, KernelProducts};

use crate::cache::PRODUCTS_RECORD;
use crate::recipe::Kernel;
use crate::stage::chroot::run_chrooted;
use crate::stage::context::StageContext;

/// The key under which the plan records a kernel's resolved source.
pub const SOURCE_REMOTE: &str = "kernel-source";

/// Keeps a kernel package's postinst hooks from building an initramfs in the
/// tree: update-initramfs is diverted to `true` while the package installs.
fn install_script(install: &str) -> String {
    format!(
        "dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs\n\
         ln -sf /bin/true /usr/sbin/update-initramfs\n\
         {install}\n\
         rm -f /usr/sbin/update-initramfs\n\
         dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs\n"
    )
}

pub fn run(kernel: &Kernel, context: &StageContext<'_>) -> Result<Option<KernelProducts>> {
    let env = BTreeMap::from([("INITRD".to_string(), "No".to_string())]);
    match kernel {
        Kernel::Package { package } => {
            let install = format!(
                "apt-get -q -o Acquire::Languages=none update\napt-get -q -y -o Dpkg::Use-Pty=0 --no-install-recommends install '{package}'\nfind /var/lib/apt/lists -type f ! -name lock -delete; rm -f /var/cache/apt/*.bin"
            );
            run_chrooted(context, &["/bin/sh", "-e", "-c", &install_script(&install), "rootsmith-kernel"], &env)?;
            take_packaged_kernel(context).map(Some)
        }
        Kernel::Build(build) => {
            let digest = context.remote.get(SOURCE_REMOTE).context("the plan resolved no kernel source")?;
            let build_dir = context.layout.kernel_build(context.recipe, context.stage_name);
            fs_err::create_dir_all(context.layout.kernel_builds())?;
            let build_context = build::BuildContext {
                host: context.host,
                layout: context.layout,
                arch: context.arch,
                source_date_epoch: context.source_date_epoch,
                log: &context.log,
                build_dir: &build_dir,
                recipe: context.recipe,
                name: context.stage_name,
                source_digest: digest,
            };
            let products = build::build(build, &build_context)?;
            if build.install {
                let image = products
                    .debs
                    .iter()
                    .find(|d| d.starts_with("linux-image-"))
                    .expect("products hold a linux-image deb");
                let inside = context.tree.join("tmp").join(image);
                fs_err::create_dir_all(context.tree.join("tmp"))?;
                fs_err::copy(products.dir(context.layout).join(image), &inside)?;
                let result = run_chrooted(
                    context,
                    &["/bin/sh", "-e", "-c", &install_script(&format!("dpkg -i '/tmp/{image}'")), "rootsmith-kernel"],
                    &env,
                );
                let _ = fs_err::remove_file(&inside);
                result.context("installing the kernel package into the tree")?;
            }
            Ok(Some(products))
        }
    }
}

/// After installing a kernel package: its vmlinuz, config and System.map from
/// /boot become the stage's products.
fn take_packaged_kernel(context: &StageContext<'_>) -> Result<KernelProducts> {
    // Read from outside the tree: a link (an absolute one would point into
    // the host) is never followed.
    let in_tree = |relative: &str| crate::fileops::in_tree(context.tree, std::path::Path::new(relative));
    let Some(boot) = in_tree("boot")? else {
        bail!("the package installed no /boot/vmlinuz-*; is it a kernel image package?")
    };
    let mut releases: Vec<String> = fs_err::read_dir(&boot)?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    releases.sort();
    let Some(release) = releases.pop() else {
        bail!("the package installed no /boot/vmlinuz-*; is it a kernel image package?");
    };
    let products_dir = context.layout.products_dir(context.stage_key);
    let staging = context.scratch.join("kernel-products");
    let _ = crate::fileops::remove_tree(&staging);
    fs_err::create_dir_all(&staging)?;
    let read = |name: String| crate::fileops::read_regular_no_follow(&boot.join(name), u64::MAX);
    fs_err::write(
        staging.join("vmlinuz"),
        read(format!("vmlinuz-{release}")).context("the packaged kernel's vmlinuz")?,
    )?;
    let config = read(format!("config-{release}")).unwrap_or_default();
    fs_err::write(staging.join("config"), &config)?;
    if let Ok(map) = read(format!("System.map-{release}")) {
        fs_err::write(staging.join("System.map"), map)?;
    }
    // Debian's kernel packages install their device trees here.
    let device_trees = match in_tree(&format!("usr/lib/linux-image-{release}"))? {
        Some(trees) => device_trees::archive(&trees, &staging.join(device_trees::ARCHIVE), context.source_date_epoch)?,
        None => 0,
    };
    let record = KernelProducts {
        name: context.stage_name.to_string(),
        release,
        config_sha256: crate::digest::sha256_hex(&config),
        products: context.stage_key.to_string(),
        debs: Vec::new(),
        device_trees,
        compiled: false,
        ccache_hits: 0,
        ccache_misses: 0,
        ccache_size: 0,
        seconds: 0.0,
    };
    fs_err::write(staging.join(PRODUCTS_RECORD), serde_json::to_vec_pretty(&record)?)?;
    fs_err::create_dir_all(context.layout.products())?;
    let _ = crate::fileops::remove_tree(&products_dir);
    fs_err::rename(&staging, &products_dir)?;
    Ok(record)
}
