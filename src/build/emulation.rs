//! QEMU user-mode emulation for a build of a foreign architecture: checked
//! (and, as root, enabled) before the first stage that runs.

use std::path::Path;

use anyhow::Result;

use crate::host::{Command, Host};
use crate::progress::Progress;

/// Before anything runs for a foreign `arch` (a build: before its first stage
/// that is not cached): the host's user-mode emulation checked. As the machine's root, rootsmith closes the gaps a reboot opens
/// again (binfmt_misc unmounted, the `qemu-…` entry disabled or not yet
/// registered) itself, and says so; a missing package is never installed
/// for the user but named, with every other gap, in the error.
pub fn ready(arch: &str, host: &dyn Host, progress: &dyn Progress) -> Result<()> {
    let root = Path::new("/");
    if crate::host::userns::standing() == crate::host::userns::Standing::Root {
        // Mounting binfmt_misc reveals whether the entry is registered and
        // enabled, so look again after each round.
        for _ in 0..2 {
            let gaps = crate::arch::emulation_gaps(root, crate::arch::host(), arch);
            let fixes: Vec<Vec<String>> = gaps.iter().filter_map(crate::arch::Gap::enabling_argv).collect();
            if fixes.is_empty() {
                break;
            }
            let log = tempfile::NamedTempFile::new()?;
            for argv in fixes {
                // A mount is made where the host sees it too, not only in
                // this process's own namespace (whose mounts die with it);
                // registering the entry is the kernel's, seen from both.
                let original = crate::host::overlay::in_original_mounts();
                if argv[0] == "mount" && !original.is_empty() {
                    let _ = host.run(&Command::on_host(&original[0], original[1..].iter().chain(&argv), log.path()));
                }
                progress.note(&format!(
                    "building for {arch} on this {} host: running `{}` (as root) to enable QEMU user-mode emulation",
                    crate::arch::host(),
                    argv.join(" ")
                ));
                if let Err(error) = host.run(&Command::on_host(&argv[0], &argv[1..], log.path())) {
                    // The check below names every gap left and its fix.
                    progress.warn(&format!("{error:#}"));
                    return crate::arch::check_emulation(root, crate::arch::host(), arch);
                }
            }
        }
    }
    crate::arch::check_emulation(root, crate::arch::host(), arch)
}
