//! Helpers shared by the integration tests: run the real binary, check for root.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn rootsmith() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rootsmith"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run and return (exit code, stdout, stderr).
pub fn run(command: &mut Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = command.output().expect("rootsmith runs");
    (status.code().unwrap_or(-1), String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
}

/// Tests that build real trees need root (chroot, mounts, device nodes) and the
/// Debian package archive. CI runs as root. Elsewhere they fail loudly unless
/// ROOTSMITH_SKIP_ROOT_TESTS=1 says to skip them, which they then print.
pub fn needs_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("ROOTSMITH_SKIP_ROOT_TESTS").is_some() {
        eprintln!("SKIPPED {test}: needs root (ROOTSMITH_SKIP_ROOT_TESTS is set)");
        return false;
    }
    panic!("{test} needs root (chroot, mounts) and the package archive; run as root, or set ROOTSMITH_SKIP_ROOT_TESTS=1 to skip it knowingly");
}

/// The host's mount table, sorted, without the fields that change on their own.
pub fn mount_table() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Copy a directory tree (the recipes directory, to change a file in a copy).
pub fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let target = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}
