//! `serve --hosts` and `rootsmith hosts`: per-host files over HTTP and TFTP
//! (curl as the client), one-shot entries ended by an agent's report, reports
//! refused without the host's own token and kept without control characters,
//! inventories with mistakes refused with their line and column, and the
//! provisioning agent's script run on this machine against a file as its
//! disk. The bundle is a manifest only (fixtures/hosts); the VM tests are in
//! tests/fleet.rs. Only the recipe test needs root (a build).

mod common;

use std::path::{Path, PathBuf};

use common::*;

const INVENTORY: &str = "\
bundle: root/lab/1.0.0
default: local
hosts:
  - name: rack1-a
    mac: 52:54:00:00:00:11
    ip: 10.0.2.15
    entry: local
    args: rootsmith.agent.image=${server}images/a.img
  - name: rack1-b
    mac: 52:54:00:00:00:12
    entry: small-appended
";

struct Lab {
    dir: tempfile::TempDir,
    inventory: PathBuf,
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("root/lab/1.0.0");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::copy(repo().join("fixtures/hosts/bundle/manifest.json"), bundle.join("manifest.json")).unwrap();
    let inventory = dir.path().join("hosts.yaml");
    std::fs::write(&inventory, INVENTORY).unwrap();
    Lab { dir, inventory }
}

fn hosts(inventory: &Path, args: &[&str]) -> (i32, String, String) {
    let mut command = rootsmith();
    command.arg("hosts").arg("--hosts").arg(inventory).args(args);
    run(&mut command)
}

fn curl(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("curl").args(["-s", "-S", "-f"]).args(args).output().expect("curl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
    )
}

/// The report token a host's boot file gives its kernel, if any.
fn token_in(file: &str) -> Option<String> {
    file.split_whitespace().find_map(|word| word.strip_prefix("rootsmith.report_token=")).map(str::to_string)
}

/// An agent's report: `query` after `?`, the token (if any) as a bearer token.
fn send_report(http: &str, host: &str, query: &str, token: Option<&str>, body: &str) -> (bool, String) {
    let url = format!("{http}/.rootsmith/report/{host}?{query}");
    let authorization = token.map(|token| format!("Authorization: Bearer {token}"));
    let mut args = vec!["-X", "POST", "--data-binary", body];
    if let Some(authorization) = &authorization {
        args.extend(["-H", authorization.as_str()]);
    }
    args.push(&url);
    curl(&args)
}

fn ls(inventory: &Path) -> serde_json::Value {
    let (code, stdout, stderr) = hosts(inventory, &["ls", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn serve_gives_each_host_its_files_and_a_report_ends_a_one_shot_entry() {
    let lab = lab();
    let root = lab.dir.path().join("root");
    let inventory = lab.inventory.to_str().unwrap();
    let server = ServeProcess::start_with(&root, true, &["--hosts", inventory, "--public-url", "http://10.9.8.7:8080"]);
    let http = &server.http;
    let tftp = server.tftp.clone().unwrap();

    // HTTP: the address the client used goes into the files.
    let (ok, a) = curl(&[&format!("{http}/lab/1.0.0/hosts/52-54-00-00-00-11.ipxe")]);
    assert!(ok && a.contains("sanboot --no-describe --drive 0x80"), "rack1-a boots its disk:\n{a}");
    let (ok, b) = curl(&[&format!("{http}/lab/1.0.0/hosts/52-54-00-00-00-12.ipxe")]);
    assert!(
        ok && b.contains(&format!("kernel {http}/lab/1.0.0/lab-1.0.0-small-vmlinuz"))
            && b.contains("rootsmith.host=rack1-b"),
        "{b}"
    );
    let (ok, unknown) = curl(&[&format!("{http}/lab/1.0.0/hosts/52-54-00-00-00-99.ipxe")]);
    assert!(!ok && unknown.contains("404"), "an unknown host has no script: {unknown}");
    let (ok, dispatcher) = curl(&[&format!("{http}/lab/1.0.0/boot.ipxe")]);
    assert!(ok && dispatcher.contains("chain --autofree hosts/${mac:hexhyp}.ipxe"), "{dispatcher}");

    // TFTP: PXELINUX's names, with --public-url in the files.
    let (ok, pxe_b) = curl(&[&format!("tftp://{tftp}/lab/1.0.0/pxelinux.cfg/01-52-54-00-00-00-12")]);
    assert!(
        ok && pxe_b.contains("DEFAULT small-appended")
            && pxe_b.contains("rootsmith.report=http://10.9.8.7:8080/.rootsmith/report/rack1-b"),
        "{pxe_b}"
    );
    let (ok, pxe_a) = curl(&[&format!("tftp://{tftp}/lab/1.0.0/pxelinux.cfg/0A00020F")]);
    assert!(ok && pxe_a.contains("LOCALBOOT 0"), "{pxe_a}");
    let (ok, default) = curl(&[&format!("tftp://{tftp}/lab/1.0.0/pxelinux.cfg/default")]);
    assert!(ok && default.contains("LOCALBOOT 0"), "{default}");
    let (ok, _) = curl(&[&format!("tftp://{tftp}/lab/1.0.0/pxelinux.cfg/01-52-54-00-00-00-99")]);
    assert!(!ok, "no file for an unknown host over TFTP either");

    // A one-shot entry, seen by the next request without a restart.
    let (code, _, stderr) = hosts(&lab.inventory, &["set", "52:54:00:00:00:11", "debian-http", "--once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("rack1-a boots debian-http, then local after its next successful report"), "{stderr}");
    let (_, a) = curl(&[&format!("{http}/lab/1.0.0/hosts/52-54-00-00-00-11.ipxe")]);
    assert!(a.contains(&format!("kernel {http}/lab/1.0.0/lab-1.0.0-debian-vmlinuz")), "{a}");
    assert!(
        a.contains(&format!("rootsmith.agent.image={http}/images/a.img"))
            && a.contains(&format!("rootsmith.rootfs_url={http}/lab/1.0.0/lab-1.0.0-rootfs.img")),
        "{a}"
    );
    let (_, grub_a) = curl(&[&format!("{http}/lab/1.0.0/grub.cfg-01-52-54-00-00-00-11")]);
    assert!(grub_a.contains("set default=debian-http"), "{grub_a}");
    let listed = ls(&lab.inventory);
    assert_eq!(listed["hosts"][0]["entry"], "debian-http");
    assert_eq!(listed["hosts"][0]["once"], true);

    // A failed report keeps the entry; a successful one ends it. Each carries
    // the token the host's file gave its kernel.
    let token = token_in(&a).expect("a report token on the kernel's command line");
    let (ok, reply) = send_report(http, "rack1-a", "status=failed&step=verify", Some(&token), "step two broke");
    assert!(ok && reply.contains("rack1-a boots debian-http next"), "{reply}");
    let (ok, reply) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "all good",
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{http}/.rootsmith/report/rack1-a?status=ok&step=done"),
    ]);
    assert!(ok && reply.contains("rack1-a boots local next"), "{reply}");
    let listed = ls(&lab.inventory);
    let report = &listed["hosts"][0]["report"];
    assert_eq!(
        (listed["hosts"][0]["entry"].as_str(), report["status"].as_str(), report["cleared"].as_bool()),
        (Some("local"), Some("ok"), Some(true)),
        "{listed}"
    );
    assert_eq!(report["entry"], "debian-http");
    assert_eq!(std::fs::read_to_string(report["log"].as_str().unwrap()).unwrap(), "all good");
    let (_, a) = curl(&[&format!("{http}/lab/1.0.0/hosts/52-54-00-00-00-11.ipxe")]);
    assert!(a.contains("sanboot"), "back to its disk:\n{a}");
    let (code, table, _) = hosts(&lab.inventory, &["ls"]);
    assert_eq!(code, 0);
    assert!(
        table.lines().any(|line| line.starts_with("rack1-a")
            && line.contains("52:54:00:00:00:11")
            && line.contains(" ok at done via debian-http")),
        "{table}"
    );

    // Reports for hosts the inventory lacks, or without a status, are refused.
    let (ok, reply) = send_report(http, "rack9", "status=ok", Some(&token), "x");
    assert!(!ok && reply.contains("404"), "{reply}");
    let (ok, reply) = send_report(http, "rack1-b", "", token_in(&b).as_deref(), "x");
    assert!(!ok && reply.contains("400"), "{reply}");
    let log = server.logged();
    assert!(
        log.contains("\"POST /.rootsmith/report/rack1-a?status=ok&step=done\" 200")
            || log.contains("\"PUT /.rootsmith/report/rack1-a?status=ok&step=done\" 200"),
        "{log}"
    );
}

#[test]
fn hosts_set_names_what_exists() {
    let lab = lab();
    // A host the inventory does not have is a usage error.
    let (code, _, stderr) = hosts(&lab.inventory, &["set", "rack7", "local"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no host `rack7`") && stderr.contains("rack1-a, rack1-b"), "{stderr}");
    let (code, _, stderr) = hosts(&lab.inventory, &["set", "rack1-a", "big-http"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("has no kernel `big`"), "{stderr}");
    let (code, _, stderr) = hosts(&lab.inventory, &["set", "rack1-a", "menu"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(ls(&lab.inventory)["hosts"][0]["entry"], "menu");
    let (code, _, stderr) = hosts(&lab.inventory, &["clear", "rack1-a"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(ls(&lab.inventory)["hosts"][0]["entry"], "local");
}

#[test]
fn serve_of_an_inventory_whose_bundle_is_outside_the_directory_is_a_usage_error() {
    let lab = lab();
    let elsewhere = lab.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mut command = rootsmith();
    command.arg("serve").arg(&elsewhere).args(["--addr", "127.0.0.1:0", "--hosts"]).arg(&lab.inventory);
    let (code, _, stderr) = run_within(&mut command, std::time::Duration::from_secs(20));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is not inside the directory served"), "{stderr}");
}

#[test]
fn a_bad_inventory_stops_serve_with_line_and_column() {
    let lab = lab();
    std::fs::write(
        &lab.inventory,
        INVENTORY.replace("52:54:00:00:00:12", "52:54:00:00:00:11").replace("small-appended", "tiny-http"),
    )
    .unwrap();
    let mut command = rootsmith();
    command
        .arg("serve")
        .arg(lab.dir.path().join("root"))
        .args(["--addr", "127.0.0.1:0", "--hosts"])
        .arg(&lab.inventory);
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 2, "{stderr}");
    let file = lab.inventory.display().to_string();
    assert!(stderr.contains(&format!("{file}:11:12")) && stderr.contains("has no kernel `tiny`"), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:10:10"))
            && stderr.contains("duplicate MAC 52:54:00:00:00:11: host `rack1-a` (line 5)"),
        "{stderr}"
    );
}

#[test]
fn a_recipes_inventory_goes_into_its_bundle_and_its_state_stays_outside() {
    if !needs_root("a_recipes_inventory_goes_into_its_bundle_and_its_state_stays_outside") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tree/etc")).unwrap();
    std::fs::write(dir.path().join("tree/etc/hostname"), "lab\n").unwrap();
    tar_base(dir.path());
    std::fs::write(
        dir.path().join("lab.yaml"),
        "default: menu\nhosts:\n  - name: rack1-a\n    mac: 52:54:00:00:00:11\n    entry: local\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("lab-recipe.yaml"),
        "rootsmith: 1\nname: lab\nversion: 2.0.0\nstages:\n  - tarball: { path: base.tar }\nhosts: lab.yaml\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let mut command = rootsmith();
    command
        .arg("build")
        .arg("--fast")
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(&out)
        .arg(dir.path().join("lab-recipe.yaml"));
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let bundle = out.join("lab/2.0.0");
    assert_eq!(std::fs::read(bundle.join("hosts.yaml")).unwrap(), std::fs::read(dir.path().join("lab.yaml")).unwrap());
    let sums = std::fs::read_to_string(bundle.join("SHA256SUMS")).unwrap();
    assert!(sums.contains(&format!("{}  hosts.yaml", sha256(&bundle.join("hosts.yaml")))), "{sums}");

    // The inventory in the bundle names that bundle; its state goes beside it.
    let inventory = bundle.join("hosts.yaml");
    let (code, _, stderr) = hosts(&inventory, &["set", "rack1-a", "menu", "--once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.join("lab/.2.0.0.hosts-state/state.json").is_file());
    let listed = ls(&inventory);
    assert_eq!((listed["hosts"][0]["entry"].as_str(), listed["default"].as_str()), (Some("menu"), Some("menu")));
    let mut command = rootsmith();
    command.args(["release", "verify"]).arg(&bundle);
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "the bundle is as published: {stdout}{stderr}");
    let mut command = rootsmith();
    command.args(["release", "ls", "--out"]).arg(&out);
    let (_, stdout, _) = run(&mut command);
    assert_eq!(stdout.matches("2.0.0").count(), 1, "the state is no version: {stdout}");

    // serve from the --out directory: the files are under the bundle's path.
    let server = ServeProcess::start_with(&out, false, &["--hosts", inventory.to_str().unwrap()]);
    let (ok, dispatcher) = curl(&[&format!("{}/lab/2.0.0/boot.ipxe", server.http)]);
    assert!(ok && dispatcher.contains("hosts/${mac:hexhyp}.ipxe"), "{dispatcher}");
    let (ok, default) = curl(&[&format!("{}/lab/2.0.0/hosts/default.ipxe", server.http)]);
    assert!(ok && default.contains("menu lab 2.0.0"), "machines not listed get the menu:\n{default}");
    let (ok, reply) = curl(&[&format!("{}/lab/.2.0.0.hosts-state/state.json", server.http)]);
    assert!(!ok && reply.contains("404"), "the state, with the report tokens, is not served: {reply}");
}

#[test]
fn hosts_write_gives_the_files_serve_would() {
    let lab = lab();
    let written = lab.dir.path().join("tftp-root");
    let (code, _, stderr) =
        hosts(&lab.inventory, &["write", written.to_str().unwrap(), "--url", "http://10.9.8.7:8080/lab/1.0.0"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("wrote 13 files for 2 hosts"), "{stderr}");
    let server =
        ServeProcess::start_with(&lab.dir.path().join("root"), false, &["--hosts", lab.inventory.to_str().unwrap()]);
    let mut compared = 0;
    for entry in
        walkdir::WalkDir::new(&written).into_iter().map(Result::unwrap).filter(|entry| entry.file_type().is_file())
    {
        let path = entry.path().strip_prefix(&written).unwrap().to_str().unwrap().to_string();
        let (ok, served) = curl(&["-H", "Host: 10.9.8.7:8080", &format!("{}/lab/1.0.0/{path}", server.http)]);
        assert!(ok, "{path}: {served}");
        assert_eq!(std::fs::read_to_string(entry.path()).unwrap(), served, "{path}");
        compared += 1;
    }
    assert_eq!(compared, 13);
    for path in [
        "pxelinux.cfg/01-52-54-00-00-00-11",
        "pxelinux.cfg/0A00020F",
        "grub.cfg-01-52-54-00-00-00-12",
        "hosts/10.0.2.15.ipxe",
    ] {
        assert!(written.join(path).is_file(), "{path}");
    }
}

/// The agent's script, run on this machine against `rootsmith serve --hosts`:
/// a job fetched from the server names the image; the disk is a file.
fn agent(work: &Path, args: &[&str]) -> (i32, String, String) {
    let mut command = std::process::Command::new("bash");
    command
        .arg(repo().join("recipes/provision-agent/overlay/usr/local/sbin/rootsmith-agent"))
        .args(args)
        .env("ROOTSMITH_AGENT_WORK", work);
    run(&mut command)
}

#[test]
fn the_agent_script_writes_only_a_verified_image_and_reports() {
    use sha2::Digest;
    let lab = lab();
    let root = lab.dir.path().join("root");
    std::fs::create_dir_all(root.join("images")).unwrap();
    let image: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let compressed = zstd::encode_all(&image[..], 3).unwrap();
    std::fs::write(root.join("images/disk.img.zst"), &compressed).unwrap();
    let good = hex::encode(sha2::Sha256::digest(&compressed));
    let server = ServeProcess::start_with(&root, false, &["--hosts", lab.inventory.to_str().unwrap()]);
    let http = &server.http;
    std::fs::write(root.join("images/job.sh"), format!("IMAGE_URL={http}/images/disk.img.zst\nIMAGE_SHA256={good}\n"))
        .unwrap();
    let report = format!("{http}/.rootsmith/report/rack1-b");
    let (_, file) = curl(&[&format!("{http}/lab/1.0.0/hosts/52-54-00-00-00-12.ipxe")]);
    let token = token_in(&file).expect("rack1-b's file gives a report token");

    for stage in ["auto", "never"] {
        let disk = lab.dir.path().join(format!("disk-{stage}.raw"));
        std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
        let (code, stdout, stderr) = agent(
            &lab.dir.path().join("work"),
            &[
                "--job",
                &format!("{http}/images/job.sh"),
                "--disk",
                disk.to_str().unwrap(),
                "--stage",
                stage,
                "--report",
                &report,
                "--report-token",
                &token,
            ],
        );
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(stdout.contains(&format!("image written and verified: {} bytes", image.len())), "{stdout}");
        let written = std::fs::read(&disk).unwrap();
        assert_eq!((&written[..image.len()], written.len()), (&image[..], 4 << 20), "--stage {stage}");
        let listed = ls(&lab.inventory);
        assert_eq!(
            (listed["hosts"][1]["report"]["status"].as_str(), listed["hosts"][1]["report"]["step"].as_str()),
            (Some("ok"), Some("done"))
        );
    }

    // A checksum the download does not match, an image larger than the disk, a
    // stream that does not decompress: each stops before the disk is written.
    let disk = lab.dir.path().join("disk-kept.raw");
    let kept: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&disk, &kept).unwrap();
    let small = lab.dir.path().join("small.raw");
    std::fs::write(&small, vec![7u8; 1 << 20]).unwrap();
    std::fs::write(root.join("images/broken.zst"), b"not zstd at all").unwrap();
    let broken = hex::encode(sha2::Sha256::digest(b"not zstd at all"));
    let url = format!("{http}/images/disk.img.zst");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--image", &url, "--sha256", &"0".repeat(64), "--disk", disk.to_str().unwrap()],
            "the image does not match: expected sha256 0000",
        ),
        (
            &["--image", &url, "--sha256", &good, "--disk", small.to_str().unwrap()],
            &format!("the image is {} bytes", image.len()),
        ),
        (
            &["--image", &format!("{http}/images/broken.zst"), "--sha256", &broken, "--disk", disk.to_str().unwrap()],
            "cannot read the image",
        ),
    ];
    for (args, message) in cases {
        let mut args = args.to_vec();
        args.extend(["--report", &report, "--report-token", &token]);
        let (code, stdout, _) = agent(&lab.dir.path().join("work"), &args);
        assert_eq!(code, 1, "{stdout}");
        assert!(stdout.contains("failed at verify: ") && stdout.contains(message), "{message:?} in\n{stdout}");
        assert_eq!(std::fs::read(&disk).unwrap(), kept, "the disk is untouched");
        assert_eq!(std::fs::read(&small).unwrap(), vec![7u8; 1 << 20]);
        let listed = ls(&lab.inventory);
        assert_eq!(
            (listed["hosts"][1]["report"]["status"].as_str(), listed["hosts"][1]["report"]["step"].as_str()),
            (Some("failed"), Some("verify")),
            "{listed}"
        );
    }
}

#[test]
fn a_report_needs_the_hosts_own_token_and_hosts_set_renews_it() {
    let lab = lab();
    let root = lab.dir.path().join("root");
    let server = ServeProcess::start_with(
        &root,
        true,
        &["--hosts", lab.inventory.to_str().unwrap(), "--public-url", "http://10.9.8.7:8080"],
    );
    let http = &server.http;
    let tftp = server.tftp.clone().unwrap();
    let file = |mac: &str| curl(&[&format!("{http}/lab/1.0.0/hosts/{mac}.ipxe")]).1;
    for (host, once) in [("rack1-a", false), ("rack1-b", true)] {
        let mut args = vec!["set", host, "debian-http"];
        if once {
            args.push("--once");
        }
        let (code, _, stderr) = hosts(&lab.inventory, &args);
        assert_eq!(code, 0, "{stderr}");
    }
    let b = file("52-54-00-00-00-12");
    let token = token_in(&b).unwrap_or_else(|| panic!("a report token on rack1-b's command line:\n{b}"));
    assert!(token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    assert!(
        b.contains(&format!("rootsmith.report={http}/.rootsmith/report/rack1-b rootsmith.report_token={token}")),
        "{b}"
    );
    let (ok, pxe) = curl(&[&format!("tftp://{tftp}/lab/1.0.0/pxelinux.cfg/01-52-54-00-00-00-12")]);
    assert!(ok && token_in(&pxe) == Some(token.clone()), "the same token over TFTP:\n{pxe}");
    assert_eq!(token_in(&file("52-54-00-00-00-12")), Some(token.clone()), "the token stays until `hosts set`");
    let other = token_in(&file("52-54-00-00-00-11")).expect("rack1-a's token");
    assert_ne!(other, token, "each host has its own");

    // No token, another host's, a made-up one: 403, and nothing changes.
    let bearer = format!("Authorization: Bearer {other}");
    let url = format!("{http}/.rootsmith/report/rack1-b?status=ok&step=done");
    for (args, what) in [
        (vec!["-X", "POST", "--data-binary", "x", url.as_str()], "no token"),
        (vec!["-X", "POST", "--data-binary", "x", "-H", bearer.as_str(), url.as_str()], "rack1-a's token"),
        (
            vec![
                "-X",
                "PUT",
                "--data-binary",
                "x",
                "-H",
                "Authorization: Bearer 00000000000000000000000000000000",
                url.as_str(),
            ],
            "a made-up token",
        ),
        (vec!["-X", "POST", "--data-binary", "x", &format!("{url}&token={token}")], "the token in the query"),
    ] {
        let (ok, reply) = curl(&args);
        assert!(!ok && reply.contains("403"), "{what}: {reply}");
    }
    let listed = ls(&lab.inventory);
    assert_eq!(
        (listed["hosts"][1]["entry"].as_str(), listed["hosts"][1]["once"].as_bool()),
        (Some("debian-http"), Some(true)),
        "{listed}"
    );
    assert!(listed["hosts"][1]["report"].is_null(), "{listed}");
    assert!(!listed.to_string().contains(&token), "hosts ls does not show tokens: {listed}");
    let state = lab.dir.path().join("hosts.state");
    assert!(!state.join("reports/rack1-b.log").exists(), "a refused report keeps no log");

    // Its own token: recorded, and the one-shot entry ends.
    let (ok, reply) = send_report(http, "rack1-b", "status=ok&step=done", Some(&token), "all good");
    assert!(ok && reply.contains("rack1-b boots small-appended next"), "{reply}");

    // `hosts set` gives the host a new token: the old one no longer reports.
    let (code, _, stderr) = hosts(&lab.inventory, &["set", "rack1-b", "debian-http", "--once"]);
    assert_eq!(code, 0, "{stderr}");
    let renewed = token_in(&file("52-54-00-00-00-12")).unwrap();
    assert_ne!(renewed, token);
    assert_eq!(token_in(&file("52-54-00-00-00-11")), Some(other), "another host's token stays");
    let (ok, reply) = send_report(http, "rack1-b", "status=ok&step=done", Some(&token), "late");
    assert!(!ok && reply.contains("403"), "{reply}");
    assert_eq!(ls(&lab.inventory)["hosts"][1]["entry"], "debian-http");
    let (ok, reply) = send_report(http, "rack1-b", "status=ok&step=done", Some(&renewed), "again");
    assert!(ok && reply.contains("rack1-b boots small-appended next"), "{reply}");
    assert!(!server.logged().contains(&renewed), "no token in the access log");
}

#[test]
fn the_state_beside_an_inventory_in_the_served_directory_is_not_served() {
    let lab = lab();
    let root = lab.dir.path().join("root");
    let inventory = root.join("lab.yaml");
    std::fs::write(&inventory, INVENTORY.replace("bundle: root/lab/1.0.0", "bundle: lab/1.0.0")).unwrap();
    let (code, _, stderr) = hosts(&inventory, &["set", "rack1-b", "debian-http", "--once"]);
    assert_eq!(code, 0, "{stderr}");
    std::fs::create_dir_all(root.join("lab.state/reports")).unwrap();
    std::fs::write(root.join("lab.state/reports/rack1-b.log"), "a log").unwrap();
    assert!(root.join("lab.state/state.json").is_file());
    let server = ServeProcess::start_with(&root, true, &["--hosts", inventory.to_str().unwrap()]);
    let tftp = server.tftp.clone().unwrap();
    let (ok, _) = curl(&[&format!("{}/lab/1.0.0/hosts/52-54-00-00-00-12.ipxe", server.http)]);
    assert!(ok);
    for path in
        ["lab.state/state.json", "lab.state/reports/rack1-b.log", "lab.state/lock", "lab/../lab.state/state.json"]
    {
        let (ok, reply) = curl(&["--path-as-is", &format!("{}/{path}", server.http)]);
        assert!(!ok && reply.contains("404"), "{path}: {reply}");
        let (ok, reply) = curl(&[&format!("tftp://{tftp}/{path}")]);
        assert!(!ok, "{path} over TFTP: {reply}");
    }
    let (ok, reply) = curl(&[&format!("{}/lab.yaml", server.http)]);
    assert!(ok && reply.contains("rack1-a"), "the inventory itself is served: {reply}");
}

#[test]
fn reports_are_kept_and_printed_without_control_characters() {
    let lab = lab();
    let root = lab.dir.path().join("root");
    let server = ServeProcess::start_with(&root, false, &["--hosts", lab.inventory.to_str().unwrap()]);
    let http = &server.http;
    let (_, file) = curl(&[&format!("{http}/lab/1.0.0/hosts/52-54-00-00-00-12.ipxe")]);
    let token = token_in(&file);
    // Escape sequences in the step (percent-encoded) and in the log.
    let (ok, reply) = send_report(
        http,
        "rack1-b",
        "status=failed&step=%1B%5D0%3Bpwned%07%1B%5B2Jverify%0D",
        token.as_deref(),
        "\x1b[31mred\x1b[0m\r\nline\ttab\n\x07end\u{9b}2J",
    );
    assert!(ok, "{reply}");
    let listed = ls(&lab.inventory);
    assert_eq!(listed["hosts"][1]["report"]["step"], "]0;pwned[2Jverify", "{listed}");
    let log = std::fs::read_to_string(listed["hosts"][1]["report"]["log"].as_str().unwrap()).unwrap();
    // Escape sequences are removed whole (C1's CSI too).
    assert_eq!(log, "red\nline\ttab\nend");
    let printable = |text: &str| !text.chars().any(|c| c.is_control() && c != '\n');
    let (code, table, _) = hosts(&lab.inventory, &["ls"]);
    assert_eq!(code, 0);
    assert!(printable(&table) && table.contains(" failed at ]0;pwned[2Jverify via small-appended"), "{table:?}");

    // Raw control bytes in the request line, as no well-behaved client sends them.
    let mut stream = std::net::TcpStream::connect(http.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    let request = format!("POST /.rootsmith/report/rack1-b?status=failed&step=\x1b[2J\x1b]0;raw\x07 HTTP/1.1\r\nHost: x\r\n{authorization}Content-Length: 3\r\nConnection: close\r\n\r\nlog");
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let (_, table, _) = hosts(&lab.inventory, &["ls"]);
    assert!(printable(&table) && table.contains(" failed at [2J]0;raw via small-appended"), "{table:?}");
    let logged = server.log_containing("step=\\u{1b}[2J");
    assert!(printable(&logged), "the access log escapes them: {logged:?}");
    assert!(
        logged.contains("step=\\u{1b}[2J\\u{1b}]0;raw\\u{7} HTTP")
            || logged.contains("step=\\u{1b}[2J\\u{1b}]0;raw\\u{7}\" 200"),
        "{logged}"
    );
}
