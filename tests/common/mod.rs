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
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
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

/// The ordinary user the tests build as, and its subordinate ranges.
pub const USER: &str = "rootsmith-ci";
pub const USER_RANGE: (u32, u32) = (400_000, 465_535);

pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The test user, made (with its ranges) when it is missing.
pub fn ordinary_user() -> User {
    if nix::unistd::User::from_name(USER).unwrap().is_none() {
        let status = Command::new("useradd").args(["--create-home", "--shell", "/bin/sh", USER]).status().unwrap();
        assert!(status.success(), "useradd {USER}");
    }
    let has_range = |file: &str| {
        std::fs::read_to_string(file).unwrap_or_default().lines().any(|line| line.starts_with(&format!("{USER}:")))
    };
    if !has_range("/etc/subuid") || !has_range("/etc/subgid") {
        let range = format!("{}-{}", USER_RANGE.0, USER_RANGE.1);
        let status =
            Command::new("usermod").args(["--add-subuids", &range, "--add-subgids", &range, USER]).status().unwrap();
        assert!(status.success(), "usermod --add-subuids {range}");
    }
    let user = nix::unistd::User::from_name(USER).unwrap().unwrap();
    User { uid: user.uid.as_raw(), gid: user.gid.as_raw(), home: user.dir }
}

impl User {
    /// Make `command` run as this user, with a clean environment.
    pub fn command(&self, command: &mut Command) {
        use std::os::unix::process::CommandExt;
        command
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("HOME", &self.home)
            .uid(self.uid)
            .gid(self.gid);
    }
}

/// The binary and its init copied under `dir` (bin/, lib/rootsmith/, the
/// layout `make install` makes), where an ordinary user can run them; the binary's path.
pub fn install_for_users(dir: &Path) -> PathBuf {
    let bin = dir.join("bin/rootsmith");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_rootsmith"));
    let init = exe.parent().unwrap().parent().unwrap().join("x86_64-unknown-linux-gnu/init/rootsmith-init");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::create_dir_all(dir.join("lib/rootsmith")).unwrap();
    std::fs::copy(&exe, &bin).unwrap();
    std::fs::copy(&init, dir.join("lib/rootsmith/rootsmith-init")).expect("the init is built (make init)");
    let arm64_init = exe.parent().unwrap().parent().unwrap().join("aarch64-unknown-linux-gnu/init/rootsmith-init");
    std::fs::copy(&arm64_init, dir.join("lib/rootsmith/rootsmith-init-arm64"))
        .expect("the arm64 init is built (make init)");
    bin
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

/// A `rootsmith serve` process on loopback ports of its own choosing (unless
/// `extra` gives `--addr`), killed when dropped: its HTTP base URL, with
/// `--tftp` its TFTP address, and every line it logged.
pub struct ServeProcess {
    child: std::process::Child,
    pub http: String,
    pub tftp: Option<String>,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServeProcess {
    pub fn start(root: &Path, tftp: bool) -> ServeProcess {
        ServeProcess::start_with(root, tftp, &[])
    }

    pub fn start_with(root: &Path, tftp: bool, extra: &[&str]) -> ServeProcess {
        use std::io::{BufRead, BufReader};
        let mut command = rootsmith();
        command.arg("serve").arg(root).args(extra);
        if !extra.contains(&"--addr") {
            command.args(["--addr", "127.0.0.1:0"]);
        }
        if tftp {
            command.args(["--tftp", "127.0.0.1:0"]);
        }
        let mut child = command.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let (mut http, mut tftp_address) = (None, None);
        for _ in 0..if tftp { 2 } else { 1 } {
            let mut line = String::new();
            stderr.read_line(&mut line).unwrap();
            let address = |marker: &str| {
                line.split(marker)
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .map(|a| a.trim_end_matches('/').to_string())
            };
            http = http.or_else(|| address(" on http://").map(|a| format!("http://{a}")));
            tftp_address = tftp_address.or_else(|| address("over TFTP on "));
        }
        // Keep reading the access log so the server never writes to a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                kept.lock().unwrap().push(line);
            }
        });
        ServeProcess { child, http: http.expect("serve printed its HTTP address"), tftp: tftp_address, log }
    }

    pub fn logged(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log once a line holding `wanted` is in it (a thread reads the
    /// server's stderr, so a line comes a moment after the event), or as it
    /// is after 5 s.
    pub fn log_containing(&self, wanted: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.logged().contains(wanted) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.logged()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DIR/tree` whose `/bin` has the host's static busybox and `applets`
/// linked to it, and `DIR/base.tar` made of it (a tarball base that runs
/// scripts in a second).
pub fn busybox_tree(dir: &Path, applets: &[&str]) {
    let bin = dir.join("tree/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(dir.join("tree/etc")).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed (make deps)");
    for applet in applets {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    tar_base(dir);
}

/// Read a child's standard error until it holds `needle`; what was read.
/// Fails when the stream ends first or `limit` passes.
pub fn read_until(stderr: &mut impl std::io::Read, needle: &str, limit: std::time::Duration) -> String {
    let started = std::time::Instant::now();
    let mut seen = String::new();
    while !seen.contains(needle) {
        let mut buffer = [0u8; 256];
        let read = stderr.read(&mut buffer).unwrap();
        assert!(
            read > 0 && started.elapsed() < limit,
            "the output ended (or {limit:?} passed) before `{needle}`: {seen}"
        );
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    seen
}

/// `DIR/base.tar` made of `DIR/tree`, for the tarball base of a test recipe.
pub fn tar_base(dir: &Path) {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir.join("tree"))
        .args(["-cf", "base.tar", "."])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "tar of {}", dir.join("tree").display());
}

/// An HTTP request's head as a client sent it (each line with its CRLF, no
/// blank line), for test proxies; empty when the client sent nothing.
pub fn read_request_head(reader: &mut impl std::io::BufRead) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            return head;
        }
        head.push_str(&line);
    }
}

/// Like [`run`], with a deadline: a command still running after `limit` is
/// killed and the test fails, so a hang shows as a failure, not a stuck test.
pub fn run_within(command: &mut Command, limit: std::time::Duration) -> (i32, String, String) {
    use std::io::Read;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the command starts");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let (stdout, stderr) =
        (drain(Box::new(child.stdout.take().unwrap())), drain(Box::new(child.stderr.take().unwrap())));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still ran after {limit:?}: it hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (status.code().unwrap_or(-1), stdout.join().unwrap(), stderr.join().unwrap())
}

/// `rootsmith boot-test --via VIA` of `bundle` (timeout 300 s), its console
/// log in `log`: (exit code, stdout, the console).
pub fn boot_test(bundle: &Path, via: &str, extra: &[&str], log: &Path) -> (i32, String, String) {
    let mut command = rootsmith();
    command.args(["boot-test", "--via", via, "--timeout", "300", "--log"]).arg(log).args(extra).arg(bundle);
    let (code, stdout, stderr) = run(&mut command);
    let console = std::fs::read_to_string(log).unwrap_or_default();
    eprintln!("boot-test --via {via} {extra:?}: exit {code}\n{stderr}");
    (code, stdout, console)
}

/// A copy of `bundle` made of hard links (rootsmith reads a bundle's files
/// only as regular files, never through symlinks), except `rootfs.img`,
/// which is `rootfs`.
pub fn bundle_with_rootfs(bundle: &Path, dir: &Path, rootfs: Vec<u8>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for entry in walkdir::WalkDir::new(bundle).min_depth(1) {
        let entry = entry.unwrap();
        let target = dir.join(entry.path().strip_prefix(bundle).unwrap());
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else if name.ends_with("-rootfs.img") {
            std::fs::write(&target, &rootfs).unwrap();
        } else {
            std::fs::hard_link(entry.path(), &target).unwrap();
        }
    }
    dir.to_path_buf()
}

/// The bundle's `NAME-VERSION-rootfs.img`.
pub fn rootfs_image(bundle: &Path) -> PathBuf {
    std::fs::read_dir(bundle)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-rootfs.img"))
        .unwrap()
}

/// A copy of `bundle` whose rootfs.img has one byte flipped, booted over
/// HTTP: the init stops at the chunk that holds it, before unpacking it, and
/// names the chunk, its offset and both digests. Returns the original rootfs.img.
pub fn a_flipped_byte_is_refused(bundle: &Path, dir: &Path, logs: &Path) -> Vec<u8> {
    use rootsmith_init::contract::CHUNK_SIZE;
    let original = std::fs::read(rootfs_image(bundle)).unwrap();
    let offset = 5 * (1 << 20) + 123;
    let mut flipped = original.clone();
    flipped[offset] ^= 0x40;
    let chunk = offset / CHUNK_SIZE as usize;
    let range = chunk * CHUNK_SIZE as usize..((chunk + 1) * CHUNK_SIZE as usize).min(original.len());
    let (expected, actual) = (
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&original[range.clone()])),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&flipped[range])),
    );
    let tampered = bundle_with_rootfs(bundle, &dir.join("flipped"), flipped);
    let (code, _, console) = boot_test(&tampered, "http", &["--expect", "does not match"], &logs.join("flipped.log"));
    assert_eq!(code, 0, "{console}");
    let line = format!("rootsmith-init: error: rootfs.img chunk {chunk} at byte offset {} does not match: expected sha256 {expected}, got {actual}", chunk as u64 * CHUNK_SIZE);
    assert!(console.contains(&line), "wanted {line:?} in:\n{console}");
    assert!(!console.contains("switching root"));
    original
}

/// An initramfs whose `/init`, a static program built with `gcc` (the
/// host's, or a cross compiler such as `aarch64-linux-gnu-gcc`), prints
/// `marker` on the console: a kernel that boots it reaches userspace.
pub fn marker_initramfs(dir: &Path, gcc: &str, marker: &str) -> PathBuf {
    let source = dir.join("init.c");
    std::fs::write(&source, format!("#include <unistd.h>\nint main(void) {{ static const char m[] = \"{marker}\\n\"; write(1, m, sizeof m - 1); return 0; }}\n")).unwrap();
    let init = dir.join("init");
    let status = Command::new(gcc).args(["-static", "-Os", "-o"]).arg(&init).arg(&source).status().unwrap();
    assert!(status.success(), "{gcc} -static failed (libc6-dev, or libc6-dev-arm64-cross for aarch64-linux-gnu-gcc, provides the static libc)");
    let binary = std::fs::read(&init).unwrap();
    let image = dir.join("marker.cpio");
    let mut out = std::fs::File::create(&image).unwrap();
    cpio::newc::Builder::new("dev").mode(0o040755).nlink(2).write(&mut out, 0).finish().unwrap();
    cpio::newc::Builder::new("dev/console")
        .mode(0o020600)
        .rdev_major(5)
        .rdev_minor(1)
        .write(&mut out, 0)
        .finish()
        .unwrap();
    let mut entry = cpio::newc::Builder::new("init").mode(0o100755).write(&mut out, binary.len() as u32);
    std::io::Write::write_all(&mut entry, &binary).unwrap();
    entry.finish().unwrap();
    cpio::newc::trailer(&mut out).unwrap();
    image
}
