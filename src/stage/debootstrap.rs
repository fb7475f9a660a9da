//! `debootstrap` base stage: mmdebstrap, or debootstrap when mmdebstrap is absent.
//! Both download into the shared apt cache, so a package is fetched once.
//!
//! mmdebstrap as real root fills `/dev`; in a user namespace it cannot mknod
//! and leaves `/dev` empty. So after it ran, whatever of its `/dev` is missing
//! is made here (a device as a placeholder where mknod is refused): the tree,
//! and so the bundle, is the same whoever built it.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::chroot::PINS_FILE;
use super::context::StageContext;
use crate::host::Command;
use crate::layer::{DeviceKind, Devices};
use crate::recipe::{BootstrapTool, Debootstrap};

/// An entry of `/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DevEntry {
    Directory { mode: u32 },
    Symlink { target: &'static str },
    Char { mode: u32, major: u32, minor: u32 },
}

/// The `/dev` mmdebstrap makes as real root: its `@devfiles` (in
/// /usr/bin/mmdebstrap), in its order, every entry owned by 0:0. `""` is `/dev`
/// itself.
const MMDEBSTRAP_DEV: &[(&str, DevEntry)] = &[
    ("", DevEntry::Directory { mode: 0o755 }),
    ("console", DevEntry::Char { mode: 0o666, major: 5, minor: 1 }),
    ("fd", DevEntry::Symlink { target: "/proc/self/fd" }),
    ("full", DevEntry::Char { mode: 0o666, major: 1, minor: 7 }),
    ("null", DevEntry::Char { mode: 0o666, major: 1, minor: 3 }),
    ("ptmx", DevEntry::Char { mode: 0o666, major: 5, minor: 2 }),
    ("pts", DevEntry::Directory { mode: 0o755 }),
    ("random", DevEntry::Char { mode: 0o666, major: 1, minor: 8 }),
    ("shm", DevEntry::Directory { mode: 0o755 }),
    ("stderr", DevEntry::Symlink { target: "/proc/self/fd/2" }),
    ("stdin", DevEntry::Symlink { target: "/proc/self/fd/0" }),
    ("stdout", DevEntry::Symlink { target: "/proc/self/fd/1" }),
    ("tty", DevEntry::Char { mode: 0o666, major: 5, minor: 0 }),
    ("urandom", DevEntry::Char { mode: 0o666, major: 1, minor: 9 }),
    ("zero", DevEntry::Char { mode: 0o666, major: 1, minor: 5 }),
];

/// Make the entries of [`MMDEBSTRAP_DEV`] that `tree/dev` lacks; whatever
/// stands there already (of any kind) is left as it is. Devices go through
/// `devices`.
fn complete_dev(tree: &Path, devices: &Devices) -> Result<()> {
    let dev = Path::new("dev");
    if let Ok(metadata) = fs_err::symlink_metadata(tree.join(dev)) {
        if !metadata.is_dir() {
            bail!("{} is not a directory after the bootstrap", tree.join(dev).display());
        }
    }
    for (name, entry) in MMDEBSTRAP_DEV {
        let relative = dev.join(name);
        let path = tree.join(&relative);
        if fs_err::symlink_metadata(&path).is_ok() {
            continue;
        }
        match *entry {
            DevEntry::Directory { mode } => {
                use std::os::unix::fs::PermissionsExt;
                fs_err::create_dir(&path)?;
                fs_err::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            }
            DevEntry::Symlink { target } => {
                std::os::unix::fs::symlink(target, &path).with_context(|| format!("creating {}", path.display()))?
            }
            DevEntry::Char { mode, major, minor } => {
                devices.make(tree, &relative, DeviceKind::Char, major, minor, mode)?
            }
        }
        let owned = nix::unistd::fchownat(
            None,
            &path,
            Some(0.into()),
            Some(0.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if let Err(errno) = owned {
            // Only a test running as an ordinary user gets here.
            if nix::unistd::geteuid().is_root() {
                return Err(std::io::Error::from(errno)).with_context(|| format!("chown 0:0 {}", path.display()));
            }
        }
    }
    Ok(())
}

/// The program a stage will run: the recipe's choice, or for `auto`
/// mmdebstrap when installed. The planner puts the answer in the stage's key.
pub fn resolve_tool(tool: BootstrapTool) -> &'static str {
    match tool {
        BootstrapTool::Mmdebstrap => "mmdebstrap",
        BootstrapTool::Debootstrap => "debootstrap",
        BootstrapTool::Auto if crate::tools::find("mmdebstrap").is_some() => "mmdebstrap",
        BootstrapTool::Auto => "debootstrap",
    }
}

pub fn run(stage: &Debootstrap, context: &StageContext<'_>) -> Result<()> {
    let mirror = context.mirror.context("no mirror was resolved for the debootstrap stage")?;
    let tree = context.tree.display().to_string();
    let archives = context.layout.apt_archives().display().to_string();
    let mmdebstrap = resolve_tool(stage.tool) == "mmdebstrap";
    if !mmdebstrap && crate::host::userns::standing() != crate::host::userns::Standing::Root {
        bail!(
            "debootstrap makes device nodes, which a build without root (in a user namespace) cannot; mmdebstrap can\nhint: {}",
            if crate::tools::find("mmdebstrap").is_some() { "leave out `tool: debootstrap` (mmdebstrap is the default), or build as root" } else { "apt-get install mmdebstrap (the default tool when installed), or build as root" }
        );
    }
    let argv: Vec<String> = if mmdebstrap {
        let mmdebstrap = crate::tools::require("mmdebstrap", "for this debootstrap stage (`tool: mmdebstrap`)")?;
        let mut argv = vec![
            mmdebstrap.display().to_string(),
            "--mode=root".into(),
            format!("--variant={}", stage.variant),
            format!("--architectures={}", context.arch),
            format!("--components={}", stage.components.join(",")),
            // The shared package cache, bound in for downloads and taken out
            // again before mmdebstrap's cleanup would empty it.
            format!("--setup-hook=mkdir -p \"$1/var/cache/apt/archives\" && mount --bind '{archives}' \"$1/var/cache/apt/archives\""),
            "--customize-hook=umount \"$1/var/cache/apt/archives\"".into(),
        ];
        if !stage.include.is_empty() {
            argv.push(format!("--include={}", stage.include.join(",")));
        }
        if let Some(pins) = context.apt_pins {
            // Locked: apt in and for the new tree takes only the locked versions.
            let file = context.scratch.join(PINS_FILE);
            fs_err::write(&file, pins)?;
            argv.push(format!("--setup-hook=mkdir -p \"$1/etc/apt/preferences.d\" && cp '{}' \"$1/etc/apt/preferences.d/{PINS_FILE}\"", file.display()));
            argv.push(format!("--customize-hook=rm -f \"$1/etc/apt/preferences.d/{PINS_FILE}\""));
        }
        argv.extend([stage.suite.clone(), tree, mirror.to_string()]);
        argv
    } else {
        if context.apt_pins.is_some() {
            bail!("build --locked pins package versions with apt preferences, which debootstrap cannot take\nhint: use `tool: mmdebstrap` (the default when it is installed)");
        }
        let debootstrap = crate::tools::require("debootstrap", "for this debootstrap stage")?;
        let mut argv = vec![
            debootstrap.display().to_string(),
            format!("--variant={}", stage.variant),
            format!("--arch={}", context.arch),
            format!("--components={}", stage.components.join(",")),
            format!("--cache-dir={archives}"),
        ];
        if !stage.include.is_empty() {
            argv.push(format!("--include={}", stage.include.join(",")));
        }
        argv.extend([stage.suite.clone(), tree, mirror.to_string()]);
        argv
    };
    let env = [
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("SOURCE_DATE_EPOCH", context.source_date_epoch.to_string()),
        ("LC_ALL", "C.UTF-8".to_string()),
        ("TMPDIR", context.scratch.display().to_string()),
        // A kernel in `include:` builds no initramfs in the tree (mmdebstrap
        // and debootstrap pass the environment to the packages' scripts).
        (crate::host::NO_INITRD.0, crate::host::NO_INITRD.1.to_string()),
    ];
    let command = Command {
        argv,
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        root: None,
        mounts: Vec::new(),
        log: context.log.clone(),
        stdin: None,
        interactive: false,
        cwd: None,
        private_mounts: true,
        label: None,
    };
    let _apt_lock = super::chroot::apt_lock(context.layout)?;
    context.host.run(&command)?;
    if mmdebstrap {
        complete_dev(context.tree, context.devices).context("completing /dev as mmdebstrap makes it")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::layer::Device;

    #[test]
    fn an_empty_dev_gets_what_mmdebstrap_makes_as_root() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        fs_err::create_dir(tree.join("dev")).unwrap();
        let devices = Devices::placeholders_only();
        complete_dev(tree, &devices).unwrap();
        let root = nix::unistd::geteuid().is_root();
        let mut names: Vec<String> = fs_err::read_dir(tree.join("dev"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let expected: Vec<&str> =
            MMDEBSTRAP_DEV.iter().map(|(name, _)| *name).filter(|name| !name.is_empty()).collect();
        assert_eq!(names, expected);
        let char_device = |name: &str, major, minor| {
            let metadata = fs_err::symlink_metadata(tree.join("dev").join(name)).unwrap();
            assert_eq!(devices.lookup(&metadata), Some(Device { kind: DeviceKind::Char, major, minor }), "{name}");
            assert_eq!(metadata.mode() & 0o7777, 0o666, "{name}");
            if root {
                assert_eq!((metadata.uid(), metadata.gid()), (0, 0), "{name}");
            }
        };
        char_device("console", 5, 1);
        char_device("full", 1, 7);
        char_device("null", 1, 3);
        char_device("ptmx", 5, 2);
        char_device("random", 1, 8);
        char_device("tty", 5, 0);
        char_device("urandom", 1, 9);
        char_device("zero", 1, 5);
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stderr", "/proc/self/fd/2"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
        ] {
            assert_eq!(fs_err::read_link(tree.join("dev").join(name)).unwrap(), Path::new(target), "{name}");
        }
        for name in ["pts", "shm"] {
            let metadata = fs_err::symlink_metadata(tree.join("dev").join(name)).unwrap();
            assert!(metadata.is_dir(), "{name}");
            assert_eq!(metadata.mode() & 0o7777, 0o755, "{name}");
        }
        assert_eq!(devices.placeholders(tree).unwrap().len(), 8);
    }

    #[test]
    fn a_complete_dev_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        let dev = tree.join("dev");
        fs_err::create_dir(&dev).unwrap();
        // What mmdebstrap left, in other shapes than the table's: none is replaced.
        for (name, entry) in MMDEBSTRAP_DEV {
            match entry {
                DevEntry::Directory { .. } if name.is_empty() => {}
                DevEntry::Directory { .. } => fs_err::create_dir(dev.join(name)).unwrap(),
                DevEntry::Symlink { .. } => std::os::unix::fs::symlink("elsewhere", dev.join(name)).unwrap(),
                DevEntry::Char { .. } => fs_err::write(dev.join(name), name).unwrap(),
            }
        }
        filetime::set_file_mtime(&dev, filetime::FileTime::from_unix_time(1_000, 0)).unwrap();
        // Every entry's inode, mode, mtime and ctime: any change moves one.
        let state = || -> Vec<_> {
            walkdir::WalkDir::new(tree)
                .sort_by_file_name()
                .into_iter()
                .map(|entry| {
                    let path = entry.unwrap().into_path();
                    let metadata = path.symlink_metadata().unwrap();
                    (path, metadata.ino(), metadata.mode(), metadata.mtime(), metadata.ctime(), metadata.ctime_nsec())
                })
                .collect()
        };
        let before = state();
        let devices = Devices::placeholders_only();
        complete_dev(tree, &devices).unwrap();
        assert_eq!(state(), before);
        assert!(devices.is_empty());
    }
}
