//! A stage's commands: every process a stage starts dies with the build (a
//! build killed with SIGKILL during a `run` stage leaves none running,
//! however deep), `-v` streams their output, and a failure names the stage,
//! the status and a log that is still there (needs root: chroot, mounts, PID
//! namespaces).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{busybox_tree, needs_root, read_until, rootsmith, run};

/// Processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(marker) {
            found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

#[test]
fn a_killed_build_leaves_no_process_of_its_stage_behind() {
    if !needs_root("a_killed_build_leaves_no_process_of_its_stage_behind") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    busybox_tree(dir.path(), &["sh", "sleep", "touch"]);
    // The stage starts a grandchild in the background, then waits itself.
    let recipe = dir.path().join("sleeper.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: sleeper\nversion: 1.0.0\nstages:\n  - tarball: { path: base.tar }\n  - run: { sh: \"sleep 371 & sleep 372; touch /etc/done\" }\n").unwrap();
    let mut child = rootsmith()
        .args(["build", "--fast", "--cache"])
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg(&recipe)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut stderr = child.stderr.take().unwrap();
    read_until(&mut stderr, "run (run): building", Duration::from_secs(120));
    // Both sleeps run before the build is killed.
    while processes_with("sleep 371").is_empty() || processes_with("sleep 372").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "the stage's processes never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = processes_with("sleep 37").into_iter().filter(|line| !line.contains("cargo")).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes of the killed build's stage are still running: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn one_run_stage(dir: &Path, shell: &str) -> std::path::PathBuf {
    busybox_tree(dir, &["sh", "sleep", "touch"]);
    let recipe = dir.join("stage.yaml");
    std::fs::write(&recipe, format!("rootsmith: 1\nname: stage\nversion: 1.0.0\nstages:\n  - tarball: {{ path: base.tar }}\n  - name: work\n    run: {{ sh: \"{shell}\" }}\n")).unwrap();
    recipe
}

#[test]
fn verbose_streams_a_commands_output_and_a_failure_is_a_json_object_with_its_log() {
    if !needs_root("verbose_streams_a_commands_output_and_a_failure_is_a_json_object_with_its_log") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipe = one_run_stage(dir.path(), "echo marker-from-the-stage; exit 3");
    let build = |extra: &[&str]| {
        run(rootsmith()
            .args(["build", "--fast", "--cache"])
            .arg(dir.path().join("cache"))
            .arg("--out")
            .arg(dir.path().join("out"))
            .args(extra)
            .arg(&recipe))
    };

    let (code, _, stderr) = build(&["-v"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("marker-from-the-stage"), "-v streams the command's output: {stderr}");
    let (_, _, quiet) = build(&["-q"]);
    assert!(
        !quiet.contains("building") && quiet.contains("stage `work` (run) failed"),
        "-q shows only the error: {quiet}"
    );

    let (code, stdout, _) = build(&["--json"]);
    assert_eq!(code, 1);
    let error: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("--json prints an error object: {stdout}"));
    assert_eq!(error["stage"], "work");
    assert_eq!(error["status"], "exit status 3");
    let log = std::path::PathBuf::from(error["log"].as_str().unwrap());
    assert!(
        std::fs::read_to_string(&log).unwrap().contains("marker-from-the-stage"),
        "the log named on failure is still there after the build"
    );
}
