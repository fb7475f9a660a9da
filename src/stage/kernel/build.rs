//! Building a kernel on the host: config = base + fragments finished with
//! `olddefconfig` and checked, then `make bindeb-pkg` with `CC="ccache gcc"`,
//! fixed `KBUILD_BUILD_*` and `SOURCE_DATE_EPOCH`, in a build directory kept
//! per stage so a config change recompiles only what it touches. The products (bzImage,
//! debs, System.map, .config) are cached under a key made of the source, the
//! final `.config`, the compiler and the make variables, so an equivalent
//! config change does not compile again.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::config;
use super::products::KernelProducts;
use super::source;
use crate::cache::{Layout, CACHE_FORMAT, PRODUCTS_RECORD};
use crate::digest::sha256_hex;
use crate::host::{Command, Host};
use crate::recipe::{ConfigBase, KernelBuild};

/// Bound on the ccache directory; `ROOTSMITH_CCACHE_SIZE` overrides it.
const CCACHE_DEFAULT_SIZE: &str = "5G";

/// Programs (and headers) the kernel build runs, with their Debian packages.
const TOOLCHAIN: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("ccache", "ccache"),
    ("bc", "bc"),
    ("bison", "bison"),
    ("flex", "flex"),
    ("perl", "perl"),
    ("dpkg-deb", "dpkg"),
    ("dpkg-gencontrol", "dpkg-dev"),
    ("rsync", "rsync"),
    ("depmod", "kmod"),
    ("cpio", "cpio"),
    ("patch", "patch"),
    ("xz", "xz-utils"),
    ("/usr/include/libelf.h", "libelf-dev"),
    ("/usr/include/openssl/opensslv.h", "libssl-dev"),
];

/// Every missing build dependency at once (for a kernel of another
/// architecture, its cross compiler too), with the command that installs them.
pub fn check_toolchain(find: impl Fn(&str) -> bool, arch: &str) -> Result<()> {
    let cross_gcc = crate::arch::cross_compile(arch).map(|(prefix, package)| (format!("{prefix}gcc"), package));
    let needed = TOOLCHAIN.iter().map(|(tool, package)| (tool.to_string(), *package)).chain(cross_gcc);
    let missing: Vec<(String, &str)> = needed.filter(|(tool, _)| !find(tool)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let tools: Vec<&str> = missing.iter().map(|(tool, _)| tool.as_str()).collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    packages.dedup();
    bail!(
        "building a kernel needs {} which {} not installed\nhint: apt-get install {}",
        tools.join(", "),
        if tools.len() == 1 { "is" } else { "are" },
        packages.join(" ")
    )
}

fn host_has(tool: &str) -> bool {
    if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        crate::tools::find(tool).is_some()
    }
}

/// The gcc that compiles `arch`'s kernels here: the host's, or a cross
/// compiler (`aarch64-linux-gnu-gcc` for arm64 on amd64).
fn gcc(arch: &str) -> String {
    format!("{}gcc", crate::arch::cross_compile(arch).map(|(prefix, _)| prefix).unwrap_or(""))
}

/// The version line of the compiler of `arch`'s kernels: part of every kernel key.
pub fn compiler_version(host: &dyn Host, arch: &str) -> String {
    let gcc = gcc(arch);
    host.capture(&Command::on_host(&gcc, ["--version"], Path::new("/dev/null")))
        .ok()
        .and_then(|text| text.lines().next().map(str::to_string))
        .unwrap_or_else(|| format!("{gcc} (not installed)"))
}

fn kernel_arch(arch: &str) -> Result<&'static str> {
    Ok(match arch {
        "amd64" => "x86_64",
        "i386" => "x86",
        "arm64" => "arm64",
        other => bail!("building kernels for `{other}` is not supported yet (amd64, i386, arm64 are)"),
    })
}

/// What a build's products hold; bump when they change (2: device trees).
const PRODUCTS_VERSION: u32 = 2;

fn image_path(arch: &str) -> &'static str {
    if arch == "arm64" {
        "arch/arm64/boot/Image"
    } else {
        "arch/x86/boot/bzImage"
    }
}

pub struct BuildContext<'a> {
    pub host: &'a dyn Host,
    pub layout: &'a Layout,
    pub arch: &'a str,
    pub source_date_epoch: i64,
    pub log: &'a Path,
    /// A directory only this stage uses while it builds (held under a lock).
    pub build_dir: &'a Path,
    /// The recipe's and the stage's names, which name the build directory.
    pub recipe: &'a str,
    pub name: &'a str,
    /// The resolved source digest (`VERSION SHA256` of a package, or a tarball's SHA-256).
    pub source_digest: &'a str,
}

pub fn build(build: &KernelBuild, context: &BuildContext<'_>) -> Result<KernelProducts> {
    let started = std::time::Instant::now();
    check_toolchain(host_has, context.arch)?;
    let arch = kernel_arch(context.arch)?;
    let host = context.host;
    let source = source::prepare(host, build, context.source_digest, context.layout, context.log)?;
    // The build directory is kept between builds of this stage, so kbuild
    // recompiles only the objects a config change touches (ccache covers
    // the rest). Another source or architecture starts it afresh.
    let _build_lock = crate::fileops::lock_file(&context.layout.kernel_build_lock(context.recipe, context.name))?;
    let stamp = format!("source {}\narch {arch}\n", source::source_id(build, context.source_digest)?);
    let stamp_path = context.build_dir.join("rootsmith-build.stamp");
    if fs_err::read_to_string(&stamp_path).ok().as_deref() != Some(stamp.as_str()) {
        crate::fileops::remove_tree(context.build_dir)?;
        fs_err::create_dir_all(context.build_dir)?;
        fs_err::write(&stamp_path, &stamp)?;
    }
    for entry in fs_err::read_dir(context.build_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb" || e == "buildinfo" || e == "changes") {
            fs_err::remove_file(&path)?;
        }
    }
    let objects = context.build_dir.join("obj");
    fs_err::create_dir_all(&objects)?;
    let make = |targets: &[&str]| -> Command {
        let mut command = Command::on_host("make", ["-C".as_ref(), source.as_os_str()], context.log)
            .arg(format!("O={}", objects.display()))
            .arg(format!("ARCH={arch}"));
        if let Some((prefix, _)) = crate::arch::cross_compile(context.arch) {
            // Kconfig asks the compiler what it supports, so every step cross-compiles.
            command = command.arg(format!("CROSS_COMPILE={prefix}"));
        }
        command.argv.extend(targets.iter().map(|target| target.to_string()));
        command.env("LC_ALL", "C").env("SOURCE_DATE_EPOCH", context.source_date_epoch.to_string())
    };

    // Configuration: base, then the fragments, finished by olddefconfig.
    match &build.base {
        ConfigBase::Target(target) => host.run(&make(&[target])).with_context(|| format!("make {target}"))?,
        ConfigBase::File(file) => {
            fs_err::copy(&file.resolved, objects.join(".config"))?;
        }
    }
    if !build.fragments.is_empty() {
        let mut merge = Command::on_host(
            source.join("scripts/kconfig/merge_config.sh"),
            ["-m".as_ref(), "-O".as_ref(), objects.as_os_str(), objects.join(".config").as_os_str()],
            context.log,
        )
        .current_dir(&objects);
        merge.argv.extend(build.fragments.iter().map(|f| f.resolved.display().to_string()));
        host.run(&merge).context("merging the config fragments")?;
    }
    host.run(&make(&["olddefconfig"])).context("make olddefconfig")?;
    let final_config = fs_err::read_to_string(objects.join(".config"))?;
    let fragments: Vec<(String, String)> = build
        .fragments
        .iter()
        .map(|f| Ok((f.written.clone(), fs_err::read_to_string(&f.resolved)?)))
        .collect::<Result<_>>()?;
    let dropped = config::dropped(&fragments, &final_config);
    if !dropped.is_empty() {
        let lines: Vec<String> = dropped
            .iter()
            .map(|d| {
                let depends = config::dependencies(&source, &d.option);
                let why = if depends.is_empty() {
                    "no `depends on` found; it may need another option to select it".to_string()
                } else {
                    format!("it depends on {}", depends.join("; "))
                };
                format!("  {}={} (from {}) ended up {}: {why}", d.option, d.wanted, d.fragment, d.got)
            })
            .collect();
        bail!("the kernel configuration dropped options a fragment asked for:\n{}\nhint: add what they depend on to a fragment", lines.join("\n"));
    }
    let config_sha256 = sha256_hex(final_config.as_bytes());
    let release = host
        .capture(&make(&["-s", "kernelrelease", &format!("LOCALVERSION={}", build.localversion)]))
        .context("make kernelrelease")?
        .trim()
        .to_string();

    let variables = make_variables(build, context, &release);
    let key_text = format!(
        "format {CACHE_FORMAT}\nsource {}\nconfig {config_sha256}\ncompiler {}\narch {arch}\nvariables {}\nheaders {}\nproducts {PRODUCTS_VERSION}\n",
        source::source_id(build, context.source_digest)?,
        compiler_version(host, context.arch),
        variables.join(" "),
        build.headers
    );
    let key = sha256_hex(key_text.as_bytes());
    let products_dir = context.layout.products_dir(&key);
    if let Ok(bytes) = fs_err::read(products_dir.join(PRODUCTS_RECORD)) {
        if let Ok(mut record) = serde_json::from_slice::<KernelProducts>(&bytes) {
            record.compiled = false;
            record.ccache_hits = 0;
            record.ccache_misses = 0;
            record.seconds = started.elapsed().as_secs_f64();
            return Ok(record);
        }
    }

    let ccache_dir = context.layout.ccache();
    fs_err::create_dir_all(&ccache_dir)?;
    let before = ccache_stats(host, &ccache_dir, context.log);
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut compile = make(&[&format!("-j{jobs}"), "bindeb-pkg"]);
    compile.argv.extend(variables.iter().cloned());
    let compile = compile
        .arg(format!("CC=ccache {}", gcc(context.arch)))
        .env("CCACHE_DIR", ccache_dir.display().to_string())
        .env("CCACHE_MAXSIZE", std::env::var("ROOTSMITH_CCACHE_SIZE").unwrap_or_else(|_| CCACHE_DEFAULT_SIZE.into()));
    // On a miss, compile the output of the preprocessor run ccache already
    // did instead of preprocessing a second time: on a cold build of small,
    // header-heavy kernel files that second pass costs a third of the time.
    let compile =
        compile.env("CCACHE_NOHASHDIR", "true").env("CCACHE_COMPILERCHECK", "content").env("CCACHE_NOCPP2", "true");
    let compile = with_epoch_date(compile, context.build_dir)?;
    host.run(&compile).context("make bindeb-pkg")?;
    let after = ccache_stats(host, &ccache_dir, context.log);

    // Store the products aside, then rename into place.
    let staging = tempfile::Builder::new().prefix(".products-").tempdir_in(context.build_dir)?;
    let image = objects.join(image_path(context.arch));
    fs_err::copy(&image, staging.path().join("vmlinuz"))?;
    fs_err::copy(objects.join("System.map"), staging.path().join("System.map"))?;
    fs_err::copy(objects.join(".config"), staging.path().join("config"))?;
    // Built beside the image (arch/SRCARCH/boot/dts), as `make dtbs_install` finds them.
    let dts = objects.join(image_path(context.arch)).with_file_name("dts");
    let device_trees = super::device_trees::archive(
        &dts,
        &staging.path().join(super::device_trees::ARCHIVE),
        context.source_date_epoch,
    )?;
    let mut debs = Vec::new();
    for entry in fs_err::read_dir(context.build_dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let wanted = name.starts_with(&format!("linux-image-{release}_"))
            || (build.headers && name.starts_with(&format!("linux-headers-{release}_")));
        if name.ends_with(".deb") && wanted {
            fs_err::copy(context.build_dir.join(&name), staging.path().join(&name))?;
            debs.push(name);
        }
    }
    debs.sort();
    if !debs.iter().any(|d| d.starts_with("linux-image-")) {
        bail!("make bindeb-pkg made no linux-image package for {release}");
    }
    let record = KernelProducts {
        name: context.name.to_string(),
        release,
        config_sha256,
        products: key.clone(),
        debs,
        device_trees,
        compiled: true,
        ccache_hits: after.0.saturating_sub(before.0),
        ccache_misses: after.1.saturating_sub(before.1),
        ccache_size: ccache_size(&ccache_dir),
        seconds: started.elapsed().as_secs_f64(),
    };
    fs_err::write(staging.path().join(PRODUCTS_RECORD), serde_json::to_vec_pretty(&record)?)?;
    fs_err::create_dir_all(context.layout.products())?;
    let staged = staging.keep();
    if fs_err::rename(&staged, &products_dir).is_err() && !products_dir.join(PRODUCTS_RECORD).exists() {
        bail!("could not store the kernel products in {}", products_dir.display());
    }
    let _ = crate::fileops::remove_tree(&staged);
    Ok(record)
}

/// A `date` that tells `SOURCE_DATE_EPOCH` (unless asked about another date)
/// first on the packaging's PATH: the kernel's Debian packaging (6.1's
/// `mkdebian`) writes `$(date -R)` into the changelog the .deb carries, which
/// would make every build's .deb different bytes.
const EPOCH_DATE: &str = "#!/bin/sh\n# rootsmith: `date` answers SOURCE_DATE_EPOCH, so packages are the same bytes every build\ncase \" $* \" in\n  *\" -d\"*|*\" --date\"*|*\" -r\"*|*\" --reference\"*|*\" -s\"*|*\" --set\"*|*\" -f\"*|*\" --file\"*) exec /usr/bin/date \"$@\" ;;\nesac\nTZ=UTC0 exec /usr/bin/date -d \"@${SOURCE_DATE_EPOCH}\" \"$@\"\n";

fn with_epoch_date(command: Command, build_dir: &std::path::Path) -> Result<Command> {
    use std::os::unix::fs::PermissionsExt;
    let bin = build_dir.join("rootsmith-bin");
    fs_err::create_dir_all(&bin)?;
    let date = bin.join("date");
    fs_err::write(&date, EPOCH_DATE)?;
    fs_err::set_permissions(&date, std::fs::Permissions::from_mode(0o755))?;
    let path = command.env.get("PATH").cloned().unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    Ok(command.env("PATH", format!("{}:{path}", bin.display())))
}

/// The make variables that go into the kernel and its packages.
fn make_variables(build: &KernelBuild, context: &BuildContext<'_>, release: &str) -> Vec<String> {
    vec![
        format!("LOCALVERSION={}", build.localversion),
        format!("KBUILD_BUILD_TIMESTAMP={}", crate::time::utc_string(context.source_date_epoch)),
        "KBUILD_BUILD_USER=rootsmith".to_string(),
        "KBUILD_BUILD_HOST=rootsmith".to_string(),
        format!("KDEB_PKGVERSION={release}-1"),
        // The `#N` of `uname -v`, which would otherwise count builds.
        "KBUILD_BUILD_VERSION=1".to_string(),
    ]
}

/// (hits, misses) so far in the ccache at `dir`.
pub fn ccache_stats(host: &dyn Host, dir: &Path, log: &Path) -> (u64, u64) {
    let text = host
        .capture(&Command::on_host("ccache", ["--print-stats"], log).env("CCACHE_DIR", dir.display().to_string()))
        .unwrap_or_default();
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<u64>().ok())).unwrap_or(0)
    };
    (value("direct_cache_hit\t") + value("preprocessed_cache_hit\t"), value("cache_miss\t"))
}

fn ccache_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_toolchain_names_every_package_in_one_command() {
        let error =
            check_toolchain(|tool| !matches!(tool, "bc" | "flex" | "/usr/include/libelf.h"), crate::arch::host())
                .unwrap_err()
                .to_string();
        assert!(error.contains("needs bc, flex, /usr/include/libelf.h which are not installed"), "{error}");
        assert!(error.ends_with("hint: apt-get install bc flex libelf-dev"), "{error}");
        assert!(check_toolchain(|_| true, crate::arch::host()).is_ok());
        // Another architecture's kernel needs its cross compiler.
        let foreign = if crate::arch::host() == "amd64" { "arm64" } else { "amd64" };
        let (prefix, package) = crate::arch::cross_compile(foreign).unwrap();
        let error = check_toolchain(|tool| !tool.ends_with("-linux-gnu-gcc"), foreign).unwrap_err().to_string();
        assert!(
            error.contains(&format!("needs {prefix}gcc which is not installed"))
                && error.ends_with(&format!("hint: apt-get install {package}")),
            "{error}"
        );
    }
}
