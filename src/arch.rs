//! The architectures rootsmith builds for (Debian names), what each is called
//! elsewhere (Rust targets, ELF machines), the host's own, and whether this
//! host can run a foreign one's programs (user-mode emulation through
//! binfmt_misc).

use std::path::Path;

/// The recipe's `arch:` values rootsmith supports.
pub const SUPPORTED: &[&str] = &["amd64", "arm64"];

/// The architecture a recipe builds for when it names none.
pub const DEFAULT: &str = "amd64";

/// `arch` is one rootsmith supports.
pub fn is_supported(arch: &str) -> bool {
    SUPPORTED.contains(&arch)
}

/// What one architecture is called outside Debian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Names {
    /// The Debian name, as a recipe writes it.
    pub debian: &'static str,
    /// The Rust target the init is built for.
    pub rust_target: &'static str,
    /// `e_machine` of its ELF executables.
    pub elf_machine: u16,
    /// QEMU's name: `qemu-NAME-static`, the binfmt_misc entry `qemu-NAME`.
    pub qemu: &'static str,
    /// How a bundle of this architecture boots in QEMU.
    pub machine: Machine,
    /// The GNU triplet's prefix of the cross compiler that builds this
    /// architecture's kernels elsewhere (`CROSS_COMPILE`), and its package.
    pub cross_compile: &'static str,
    pub cross_gcc_package: &'static str,
}

/// A QEMU system emulator for an architecture's bundles: its program, the
/// Debian package that has it, the machine and CPU it emulates, and the
/// serial console the kernel writes to there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    pub program: &'static str,
    pub package: &'static str,
    /// `-machine` (`accel=…` is added).
    pub machine: &'static str,
    /// `-cpu` under TCG, if QEMU's default will not do (the `virt` machine's
    /// default is a 32-bit cortex-a15).
    pub tcg_cpu: Option<&'static str>,
    /// The kernel's name of the first serial port: `console=NAME`.
    pub console: &'static str,
    /// The firmware's network boot (the NIC's iPXE option ROM) works without
    /// a firmware image: only a PC BIOS has one built in.
    pub network_boot: bool,
}

const NAMES: &[Names] = &[
    Names {
        debian: "amd64",
        rust_target: "x86_64-unknown-linux-gnu",
        elf_machine: 62,
        qemu: "x86_64",
        machine: Machine {
            program: "qemu-system-x86_64",
            package: "qemu-system-x86",
            machine: "q35",
            tcg_cpu: None,
            console: "ttyS0",
            network_boot: true,
        },
        cross_compile: "x86_64-linux-gnu-",
        cross_gcc_package: "gcc-x86-64-linux-gnu",
    },
    Names {
        debian: "arm64",
        rust_target: "aarch64-unknown-linux-gnu",
        elf_machine: 183,
        qemu: "aarch64",
        machine: Machine {
            program: "qemu-system-aarch64",
            package: "qemu-system-arm",
            machine: "virt",
            tcg_cpu: Some("max"),
            console: "ttyAMA0",
            network_boot: false,
        },
        cross_compile: "aarch64-linux-gnu-",
        cross_gcc_package: "gcc-aarch64-linux-gnu",
    },
];

/// The QEMU machine of a supported architecture; amd64's for any other
/// (a bundle's manifest was checked when it was read).
pub fn machine(arch: &str) -> &'static Machine {
    &names(arch).unwrap_or(&NAMES[0]).machine
}

/// The other names of a supported architecture.
pub fn names(arch: &str) -> Option<&'static Names> {
    NAMES.iter().find(|names| names.debian == arch)
}

/// `CROSS_COMPILE` for building `arch`'s kernels on this host, and the
/// package of its gcc: `None` for the host's own architecture (or one
/// rootsmith does not know).
pub fn cross_compile(arch: &str) -> Option<(&'static str, &'static str)> {
    names(arch).filter(|names| names.debian != host()).map(|names| (names.cross_compile, names.cross_gcc_package))
}

/// The Debian name of a Rust `target_arch` (`std::env::consts::ARCH`); an
/// unknown one is returned as it is.
pub fn debian_name(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "arm" => "armhf",
        "powerpc64" => "ppc64el",
        other => other,
    }
}

/// The host's Debian architecture: the one this binary runs as.
pub fn host() -> &'static str {
    debian_name(std::env::consts::ARCH)
}

/// Where the kernel's binfmt_misc lives, under a root directory.
pub const BINFMT_MISC: &str = "proc/sys/fs/binfmt_misc";

/// One thing a host lacks to run a foreign architecture's programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// `/usr/bin/qemu-NAME-static` is not there.
    Interpreter { qemu: &'static str },
    /// binfmt_misc is not mounted (its `status` file is missing).
    BinfmtMisc,
    /// No `qemu-NAME` entry is registered.
    NotRegistered { qemu: &'static str },
    /// The entry is registered but disabled.
    Disabled { qemu: &'static str },
    /// The entry lacks the F flag: the kernel would look for the interpreter
    /// inside the tree's chroot, where it is not.
    NotFixBinary { qemu: &'static str },
    /// `arch-test`, which mmdebstrap runs to see that the emulation works.
    ArchTest,
}

impl Gap {
    /// What is wrong, in a line.
    pub fn message(&self) -> String {
        match self {
            Gap::Interpreter { qemu } => format!("/usr/bin/qemu-{qemu}-static is not installed (package qemu-user-static)"),
            Gap::BinfmtMisc => "binfmt_misc is not mounted at /proc/sys/fs/binfmt_misc".into(),
            Gap::NotRegistered { qemu } => format!("no binfmt_misc entry `qemu-{qemu}` is registered (package binfmt-support registers qemu-user-static's)"),
            Gap::Disabled { qemu } => format!("the binfmt_misc entry `qemu-{qemu}` is disabled"),
            Gap::NotFixBinary { qemu } => format!("the binfmt_misc entry `qemu-{qemu}` lacks the F flag, so programs in a chroot cannot find their interpreter (qemu-user-static registers it with F)"),
            Gap::ArchTest => "arch-test is not installed (package arch-test), which mmdebstrap runs to check the emulation".into(),
        }
    }

    /// The command that closes the gap.
    pub fn fix(&self) -> String {
        match self {
            Gap::Interpreter { .. } => "apt-get install qemu-user-static".into(),
            Gap::BinfmtMisc => "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc".into(),
            Gap::NotRegistered { qemu } => {
                format!("apt-get install binfmt-support qemu-user-static && update-binfmts --enable qemu-{qemu}")
            }
            Gap::Disabled { qemu } => format!("update-binfmts --enable qemu-{qemu}"),
            Gap::NotFixBinary { qemu } => {
                format!("apt-get install --reinstall qemu-user-static && update-binfmts --enable qemu-{qemu}")
            }
            Gap::ArchTest => "apt-get install arch-test".into(),
        }
    }
}

impl Gap {
    /// The command that closes the gap without installing anything (a mount,
    /// an entry enabled): one that root may run for the user, unasked, since
    /// a reboot undoes both. `None` for a package to install.
    pub fn enabling_argv(&self) -> Option<Vec<String>> {
        match self {
            Gap::BinfmtMisc => Some(
                ["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"].map(String::from).to_vec(),
            ),
            Gap::Disabled { qemu } | Gap::NotRegistered { qemu } => {
                Some(vec!["update-binfmts".into(), "--enable".into(), format!("qemu-{qemu}")])
            }
            Gap::Interpreter { .. } | Gap::NotFixBinary { .. } | Gap::ArchTest => None,
        }
    }
}

/// What the host under `root` lacks to run `arch`'s programs when it is a
/// `host` machine: nothing when they are the same architecture. Reads
/// `root/usr/bin` and `root/proc/sys/fs/binfmt_misc` only, so a test can
/// hand it a fake root.
pub fn emulation_gaps(root: &Path, host: &str, arch: &str) -> Vec<Gap> {
    if arch == host {
        return Vec::new();
    }
    let Some(Names { qemu, .. }) = names(arch) else {
        // The recipe check refuses an unsupported arch before this runs.
        return Vec::new();
    };
    let mut gaps = Vec::new();
    if !root.join(format!("usr/bin/qemu-{qemu}-static")).is_file() {
        gaps.push(Gap::Interpreter { qemu });
    }
    let binfmt = root.join(BINFMT_MISC);
    if !binfmt.join("status").exists() {
        gaps.push(Gap::BinfmtMisc);
    } else {
        match std::fs::read_to_string(binfmt.join(format!("qemu-{qemu}"))) {
            Err(_) => gaps.push(Gap::NotRegistered { qemu }),
            Ok(entry) => {
                if entry.lines().next().map(str::trim) != Some("enabled") {
                    gaps.push(Gap::Disabled { qemu });
                }
                let flags = entry.lines().find_map(|line| line.strip_prefix("flags:")).unwrap_or("");
                if !flags.trim().contains('F') {
                    gaps.push(Gap::NotFixBinary { qemu });
                }
            }
        }
    }
    if !root.join("usr/bin/arch-test").is_file() {
        gaps.push(Gap::ArchTest);
    }
    gaps
}

/// `Ok` when the host under `root` can run `arch`'s programs, else an error
/// that lists every gap with the command that closes it.
pub fn check_emulation(root: &Path, host: &str, arch: &str) -> anyhow::Result<()> {
    let gaps = emulation_gaps(root, host, arch);
    if gaps.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = gaps.iter().map(|gap| format!("  - {}\n    fix: {}", gap.message(), gap.fix())).collect();
    anyhow::bail!(
        "a build for {arch} on this {host} host runs the tree's {arch} programs through QEMU user-mode emulation, which this host is not ready for; nothing was built:\n{}\nhint: run the fixes above as root, in this order; docs/recipe.md (Architectures) says what a foreign architecture needs",
        list.join("\n")
    )
}

/// [`check_emulation`] of this machine, for `arch`.
pub fn check_host_emulation(arch: &str) -> anyhow::Result<()> {
    check_emulation(Path::new("/"), host(), arch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake root: `/usr/bin` with the given programs, binfmt_misc mounted
    /// (its `status` file) or not, and a `qemu-aarch64` entry with this text.
    fn root(programs: &[&str], mounted: bool, entry: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(dir.path().join("usr/bin")).unwrap();
        for program in programs {
            fs_err::write(dir.path().join("usr/bin").join(program), "").unwrap();
        }
        let binfmt = dir.path().join(BINFMT_MISC);
        fs_err::create_dir_all(&binfmt).unwrap();
        if mounted {
            fs_err::write(binfmt.join("status"), "enabled\n").unwrap();
        }
        if let Some(text) = entry {
            fs_err::write(binfmt.join("qemu-aarch64"), text).unwrap();
        }
        dir
    }

    const READY: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\n";
    const ALL: &[&str] = &["qemu-aarch64-static", "arch-test"];

    #[test]
    fn the_host_and_supported_names() {
        assert_eq!(debian_name("x86_64"), "amd64");
        assert_eq!(debian_name("aarch64"), "arm64");
        assert_eq!(debian_name("mips"), "mips");
        assert!(is_supported("amd64") && is_supported("arm64") && !is_supported("armhf"));
        for arch in SUPPORTED {
            assert!(names(arch).is_some(), "{arch} has its names");
        }
        assert_eq!(names("arm64").unwrap().rust_target, "aarch64-unknown-linux-gnu");
        assert_eq!(names("amd64").unwrap().elf_machine, 62);
        assert_eq!((machine("arm64").program, machine("arm64").console), ("qemu-system-aarch64", "ttyAMA0"));
        assert_eq!((machine("amd64").program, machine("amd64").console), ("qemu-system-x86_64", "ttyS0"));
    }

    #[test]
    fn the_same_architecture_needs_nothing() {
        // Even a root with nothing in it: no emulation runs.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(emulation_gaps(empty.path(), "amd64", "amd64"), []);
        assert_eq!(emulation_gaps(empty.path(), "arm64", "arm64"), []);
        check_emulation(empty.path(), "arm64", "arm64").unwrap();
    }

    #[test]
    fn a_ready_host_has_no_gaps() {
        let dir = root(ALL, true, Some(READY));
        assert_eq!(emulation_gaps(dir.path(), "amd64", "arm64"), []);
        check_emulation(dir.path(), "amd64", "arm64").unwrap();
    }

    /// (programs in /usr/bin, binfmt_misc mounted, the entry's text, the gaps)
    type Case<'a> = (&'a [&'a str], bool, Option<&'a str>, &'a [Gap]);

    #[test]
    fn each_missing_piece_is_a_gap() {
        let cases: &[Case] = &[
            (&["arch-test"], true, Some(READY), &[Gap::Interpreter { qemu: "aarch64" }]),
            (&["qemu-aarch64-static"], true, Some(READY), &[Gap::ArchTest]),
            // Not mounted: the entry cannot be read, so only the mount is named.
            (ALL, false, None, &[Gap::BinfmtMisc]),
            (ALL, true, None, &[Gap::NotRegistered { qemu: "aarch64" }]),
            (
                ALL,
                true,
                Some("disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\n"),
                &[Gap::Disabled { qemu: "aarch64" }],
            ),
            (
                ALL,
                true,
                Some("enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: \n"),
                &[Gap::NotFixBinary { qemu: "aarch64" }],
            ),
            (&[], false, None, &[Gap::Interpreter { qemu: "aarch64" }, Gap::BinfmtMisc, Gap::ArchTest]),
        ];
        for (programs, mounted, entry, want) in cases {
            let dir = root(programs, *mounted, *entry);
            assert_eq!(emulation_gaps(dir.path(), "amd64", "arm64"), *want, "{programs:?} mounted={mounted} {entry:?}");
        }
    }

    /// Root may mount binfmt_misc and enable an entry; it never installs a package for the user.
    #[test]
    fn only_a_mount_and_an_enable_are_done_for_the_user() {
        assert_eq!(
            Gap::BinfmtMisc.enabling_argv().unwrap().join(" "),
            "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"
        );
        assert_eq!(
            Gap::Disabled { qemu: "aarch64" }.enabling_argv().unwrap().join(" "),
            "update-binfmts --enable qemu-aarch64"
        );
        assert_eq!(
            Gap::NotRegistered { qemu: "aarch64" }.enabling_argv().unwrap().join(" "),
            "update-binfmts --enable qemu-aarch64"
        );
        for gap in [Gap::Interpreter { qemu: "aarch64" }, Gap::NotFixBinary { qemu: "aarch64" }, Gap::ArchTest] {
            assert_eq!(gap.enabling_argv(), None, "{gap:?}");
        }
    }

    /// The error names every gap, its package and the command that closes it.
    #[test]
    fn the_error_names_packages_and_fixes() {
        let dir = root(&[], true, Some("disabled\nflags: F\n"));
        let error = check_emulation(dir.path(), "amd64", "arm64").unwrap_err().to_string();
        for part in [
            "a build for arm64 on this amd64 host",
            "nothing was built",
            "/usr/bin/qemu-aarch64-static is not installed (package qemu-user-static)",
            "fix: apt-get install qemu-user-static",
            "`qemu-aarch64` is disabled",
            "fix: update-binfmts --enable qemu-aarch64",
            "arch-test is not installed (package arch-test)",
            "fix: apt-get install arch-test",
        ] {
            assert!(error.contains(part), "{part:?} is not in:\n{error}");
        }
        let unmounted = root(ALL, false, None);
        let error = check_emulation(unmounted.path(), "amd64", "arm64").unwrap_err().to_string();
        assert!(error.contains("fix: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"), "{error}");
        // An arm64 host building amd64 needs x86_64's emulation.
        let error = check_emulation(unmounted.path(), "arm64", "amd64").unwrap_err().to_string();
        assert!(error.contains("/usr/bin/qemu-x86_64-static is not installed"), "{error}");
    }
}
