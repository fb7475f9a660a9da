use std::path::{Path, PathBuf};

use super::render::{self, Urls};
use super::served;
use super::state::{self, Override, Report, State};
use super::*;

fn bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hosts/bundle")
}

fn inventory(text: &str) -> Result<Inventory, Diagnostics> {
    load_str(Path::new("lab/hosts.yaml"), text, Some(&bundle()))
}

const LAB: &str = "\
default: local
hosts:
  - name: rack1-a
    mac: 52:54:00:00:00:11
    ip: 10.0.2.15
    entry: debian-http
    args: rootsmith.agent.image=${server}images/disk.img.zst
  - name: rack1-b
    mac: 52-54-00-00-00-12
    entry: small-appended
  - name: bench
    ip: 192.168.7.9
";

fn urls() -> Urls {
    Urls { server: "http://10.0.2.2:8080/".into(), bundle: "http://10.0.2.2:8080/lab/1.0.0/".into() }
}

#[test]
fn entries_parse() {
    assert_eq!(Entry::parse("local"), Some(Entry::Local));
    assert_eq!(Entry::parse("menu"), Some(Entry::Menu));
    assert_eq!(Entry::parse("debian-http"), Some(Entry::Kernel { kernel: "debian".into(), fetched: true }));
    assert_eq!(Entry::parse("my-kernel-appended"), Some(Entry::Kernel { kernel: "my-kernel".into(), fetched: false }));
    assert_eq!(Entry::parse("-http"), None);
    assert_eq!(Entry::parse("debian"), None);
}

#[test]
fn inventory_loads_with_names_for_each_loader() {
    let inventory = inventory(LAB).unwrap();
    assert_eq!(inventory.hosts.len(), 3);
    let a = inventory.host("52:54:00:00:00:11").unwrap();
    assert_eq!(a.name, "rack1-a");
    assert_eq!(a.mac_hyphens().as_deref(), Some("52-54-00-00-00-11"));
    assert_eq!(a.ip_hex().as_deref(), Some("0A00020F"));
    assert_eq!(inventory.host("10.0.2.15").unwrap().name, "rack1-a");
    assert_eq!(inventory.host("rack1-b").unwrap().entry, Entry::Kernel { kernel: "small".into(), fetched: false });
    assert_eq!(inventory.host("bench").unwrap().entry, Entry::Local, "no entry: the default");
    assert!(inventory.host("52:54:00:00:00:99").is_none());
}

fn problems(text: &str) -> Vec<(usize, usize, String)> {
    inventory(text).unwrap_err().0.into_iter().map(|d| (d.position.line, d.position.column, d.message)).collect()
}

#[test]
fn bad_inventories_name_line_and_column() {
    let duplicate = problems("hosts:\n  - name: a\n    mac: 52:54:00:00:00:11\n  - name: b\n    mac: 52:54:00:00:00:11\n    ip: 10.0.0.1\n  - name: c\n    ip: 10.0.0.1\n");
    assert_eq!(duplicate.len(), 2, "{duplicate:?}");
    assert_eq!((duplicate[0].0, duplicate[0].1), (5, 10));
    assert!(duplicate[0].2.contains("duplicate MAC 52:54:00:00:00:11: host `a` (line 3)"), "{duplicate:?}");
    assert_eq!((duplicate[1].0, duplicate[1].1), (8, 9));
    assert!(duplicate[1].2.contains("duplicate IP 10.0.0.1: host `b` (line 6)"));

    let missing_kernel = problems("hosts:\n  - name: a\n    mac: 52:54:00:00:00:11\n    entry: big-http\n");
    assert_eq!((missing_kernel[0].0, missing_kernel[0].1), (4, 12));
    assert!(
        missing_kernel[0].2.contains("has no kernel `big`") && missing_kernel[0].2.contains("debian, small"),
        "{missing_kernel:?}"
    );

    let malformed = problems(
        "default: nowhere\nhosts:\n  - name: a\n    mac: 52:54:00:00:11\n  - name: b\n    ip: 10.0.2\n  - name: c\n",
    );
    let at: Vec<(usize, usize)> = malformed.iter().map(|p| (p.0, p.1)).collect();
    assert_eq!(at, vec![(1, 10), (4, 10), (6, 9), (7, 9)], "{malformed:?}");
    assert!(malformed[0].2.contains("`nowhere` is not an entry"));
    assert!(malformed[3].2.contains("neither a MAC nor an IP"));

    let unknown_key = problems("hosts:\n  - name: a\n    mca: 52:54:00:00:00:11\n");
    assert_eq!((unknown_key[0].0, unknown_key[0].1), (3, 5), "{unknown_key:?}");
    assert!(unknown_key[0].2.contains("unknown field `mca`"));
}

#[test]
fn per_host_files_for_ipxe_pxelinux_and_grub() {
    let inventory = inventory(LAB).unwrap();
    let mut state = State::default();
    state.tokens.insert("rack1-a".into(), "a1".repeat(16));
    let file = |path: &str| render::file(&inventory, &state, path, &urls());

    let dispatcher = file("boot.ipxe").unwrap();
    assert!(dispatcher.contains("chain --autofree hosts/${mac:hexhyp}.ipxe || chain --autofree hosts/${ip}.ipxe || chain --autofree hosts/default.ipxe"));

    let a = file("hosts/52-54-00-00-00-11.ipxe").unwrap();
    assert!(a.starts_with("#!ipxe\n"));
    assert!(a.contains("kernel http://10.0.2.2:8080/lab/1.0.0/lab-1.0.0-debian-vmlinuz console=ttyS0 rootsmith.agent.image=http://10.0.2.2:8080/images/disk.img.zst rootsmith.host=rack1-a rootsmith.report=http://10.0.2.2:8080/.rootsmith/report/rack1-a rootsmith.report_token=a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1 initrd=lab-1.0.0-initramfs.img rootsmith.rootfs_url=http://10.0.2.2:8080/lab/1.0.0/lab-1.0.0-rootfs.img\n"), "{a}");
    assert_eq!(file("hosts/10.0.2.15.ipxe"), Some(a.clone()), "by IP too");
    let b = file("hosts/52-54-00-00-00-12.ipxe").unwrap();
    assert!(
        b.contains("kernel http://10.0.2.2:8080/lab/1.0.0/lab-1.0.0-small-vmlinuz")
            && b.contains("initrd http://10.0.2.2:8080/lab/1.0.0/lab-1.0.0-rootfs.img"),
        "{b}"
    );
    assert!(
        b.contains("rootsmith.report=http://10.0.2.2:8080/.rootsmith/report/rack1-b initrd=")
            && !b.contains("report_token"),
        "no token in the state, none given: {b}"
    );
    assert!(file("hosts/52-54-00-00-00-99.ipxe").is_none(), "an unknown host falls through to the default");
    assert!(file("hosts/default.ipxe").unwrap().contains("sanboot --no-describe --drive 0x80"));

    let pxe_a = file("pxelinux.cfg/01-52-54-00-00-00-11").unwrap();
    assert_eq!(file("pxelinux.cfg/0A00020F"), Some(pxe_a.clone()));
    assert!(pxe_a.contains("DEFAULT debian-http\n") && pxe_a.contains("KERNEL lab-1.0.0-debian-vmlinuz\n"), "{pxe_a}");
    assert!(file("pxelinux.cfg/C0A80709").unwrap().contains("LOCALBOOT 0"), "bench boots its disk");
    assert!(file("pxelinux.cfg/default").unwrap().contains("LOCALBOOT 0"));
    assert!(file("pxelinux.cfg/0A00020").is_none(), "PXELINUX's shortened names are not hosts");

    let grub_b = file("grub.cfg-01-52-54-00-00-00-12").unwrap();
    assert!(
        grub_b.contains("set default=small-appended")
            && grub_b.contains("initrd lab-1.0.0-initramfs.img lab-1.0.0-rootfs.img"),
        "{grub_b}"
    );
    assert!(file("grub.cfg").unwrap().contains("exit"));
    assert!(file("lab-1.0.0-rootfs.img").is_none());
}

#[test]
fn one_shot_entries_end_with_a_successful_report() {
    let inventory = inventory(LAB).unwrap();
    let bench = inventory.host("bench").unwrap().clone();
    let mut state = State::default();
    state.set.insert("bench".into(), Override { entry: "debian-http".into(), once: true, at: String::new() });
    assert_eq!(
        state::current_entry(&inventory, &state, &bench),
        Entry::Kernel { kernel: "debian".into(), fetched: true }
    );
    let report = |status: &str| Report {
        at: String::new(),
        status: status.into(),
        step: None,
        entry: String::new(),
        cleared: false,
        log: String::new(),
        from: String::new(),
    };

    let next = state::record_report(&inventory, &mut state, &bench, report("failed"));
    assert_eq!(next.name(), "debian-http", "a failure keeps the one-shot entry");
    assert!(!state.reports["bench"].cleared);

    let next = state::record_report(&inventory, &mut state, &bench, report("ok"));
    assert_eq!(next, Entry::Local);
    assert!(state.reports["bench"].cleared && state.reports["bench"].entry == "debian-http");
    assert!(state.set.is_empty());

    // A lasting entry stays after a report.
    state.set.insert("bench".into(), Override { entry: "menu".into(), once: false, at: String::new() });
    assert_eq!(state::record_report(&inventory, &mut state, &bench, report("ok")), Entry::Menu);
}

#[test]
fn state_is_kept_beside_the_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let store = state::StateStore::for_inventory(&dir.path().join("lab.yaml"));
    assert_eq!(store.dir, dir.path().join("lab.state"));
    assert_eq!(store.load().unwrap(), State::default());
    store
        .update(|state| {
            state.set.insert("a".into(), Override { entry: "local".into(), once: false, at: "t".into() });
            Ok(())
        })
        .unwrap();
    assert_eq!(store.load().unwrap().set["a"].entry, "local");
    let failed: anyhow::Result<()> = store.update(|state| {
        state.set.clear();
        anyhow::bail!("no")
    });
    assert!(failed.is_err());
    assert_eq!(store.load().unwrap().set.len(), 1, "a failed change is not written");
    assert_eq!(store.write_log("a", b"log").unwrap(), "reports/a.log");
    assert_eq!(fs_err::read(store.dir.join("reports/a.log")).unwrap(), b"log");
}

#[test]
fn report_tokens_are_random_per_host_and_made_once() {
    let token = state::new_token().unwrap();
    assert!(token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    assert_ne!(state::new_token().unwrap(), token);

    let dir = tempfile::tempdir().unwrap();
    let store = state::StateStore::for_inventory(&dir.path().join("lab.yaml"));
    let inventory = inventory(LAB).unwrap();
    let first = store.load_with_tokens(&inventory).unwrap();
    assert_eq!(first.tokens.keys().collect::<Vec<_>>(), vec!["bench", "rack1-a", "rack1-b"]);
    assert_ne!(first.tokens["rack1-a"], first.tokens["rack1-b"]);
    assert_eq!(store.load().unwrap(), first, "written");
    assert_eq!(store.load_with_tokens(&inventory).unwrap(), first, "kept");

    assert!(state::token_matches(&first, "rack1-a", Some(&first.tokens["rack1-a"])));
    assert!(!state::token_matches(&first, "rack1-a", Some(&first.tokens["rack1-b"])));
    assert!(!state::token_matches(&first, "rack1-a", Some(&first.tokens["rack1-a"][..31])));
    assert!(!state::token_matches(&first, "rack1-a", None));
    assert!(!state::token_matches(&first, "rack9", Some("")), "a host without a token has none that matches");
}

#[test]
fn control_characters_are_removed_from_what_reports_bring() {
    assert_eq!(state::single_line("\x1b]0;title\x07\x1b[2Jverify\r\n\t\u{9b}1m\x7f"), "]0;title[2Jverify1m");
    // Escape sequences go whole, not only their ESC.
    assert_eq!(state::log_text(b"\x1b[31mred\x1b[0m\r\nline\ttab\n\x07end\xc2\x9b\xff"), "red\nline\ttab\nend\u{fffd}");
    assert_eq!(state::log_text(b"\x1b]0;pwned\x07a\x1b]2;t\x1b\\b\x1b[?25l\x1b(Bc\x1b["), "abc");
    // A stray introducer hides nothing after it.
    assert_eq!(state::log_text(b"a\x1b[\xff kept\n\x1b]title\nnext"), "a\u{fffd} kept\n\nnext");

    let inventory = inventory(LAB).unwrap();
    let bench = inventory.host("bench").unwrap().clone();
    let mut state = State::default();
    let report = Report {
        at: String::new(),
        status: "ok\x1b[8m".into(),
        step: Some("do\x1bne".into()),
        entry: String::new(),
        cleared: false,
        log: String::new(),
        from: "\n10.0.2.15".into(),
    };
    state::record_report(&inventory, &mut state, &bench, report);
    let kept = &state.reports["bench"];
    assert_eq!((kept.status.as_str(), kept.step.as_deref(), kept.from.as_str()), ("ok[8m", Some("done"), "10.0.2.15"));
}

/// A served directory with the fixture bundle at `lab/1.0.0` and LAB as its inventory.
fn served() -> (tempfile::TempDir, served::ServedInventory) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("root/lab/1.0.0");
    fs_err::create_dir_all(&bundle).unwrap();
    fs_err::copy(self::bundle().join("manifest.json"), bundle.join("manifest.json")).unwrap();
    let file = dir.path().join("root/lab.yaml");
    fs_err::write(&file, format!("bundle: lab/1.0.0\n{LAB}")).unwrap();
    let served =
        served::ServedInventory::open(&file, &dir.path().join("root"), Some("http://10.0.2.2:8080".into())).unwrap();
    (dir, served)
}

#[test]
fn a_report_without_the_hosts_token_changes_nothing() {
    let (dir, served) = served();
    let peer: std::net::SocketAddr = "10.0.2.15:40000".parse().unwrap();
    served
        .store
        .update(|state| {
            state.set.insert("rack1-a".into(), Override { entry: "menu".into(), once: true, at: String::new() });
            Ok(())
        })
        .unwrap();
    let before = served.store.load().unwrap();
    assert!(before.tokens.is_empty());
    assert_eq!(served.report("lab/1.0.0/hosts/x", None, b"", peer).unwrap_err().0, 404);
    // No token yet: no report is taken.
    assert_eq!(served.report(".rootsmith/report/rack1-a?status=ok", Some(""), b"log", peer).unwrap_err().0, 403);

    // Its file gives the host its token.
    let file = served.file("lab/1.0.0/hosts/52-54-00-00-00-11.ipxe", None).unwrap().unwrap();
    let token = served.store.load().unwrap().tokens["rack1-a"].clone();
    assert!(file.contains(&format!(" rootsmith.report_token={token} ")), "{file}");
    let other = served.store.load().unwrap().tokens["rack1-b"].clone();
    for offered in [None, Some(other.as_str()), Some(&token[1..]), Some("")] {
        let (status, message) =
            served.report(".rootsmith/report/rack1-a?status=ok&step=done", offered, b"log", peer).unwrap_err();
        assert_eq!(status, 403, "{offered:?}: {message}");
    }
    let after = served.store.load().unwrap();
    assert_eq!(
        (after.set.clone(), after.reports.clone()),
        (before.set.clone(), before.reports.clone()),
        "nothing changed"
    );
    assert!(!served.store.dir.join("reports/rack1-a.log").exists());

    assert_eq!(served.report(".rootsmith/report/rack1-a?step=done", Some(&token), b"log", peer).unwrap_err().0, 400);
    let reply = served
        .report(
            ".rootsmith/report/52:54:00:00:00:11?status=ok&step=%1b%5b2Jdone",
            Some(&token),
            b"\x1b[2Jlog\r\n",
            peer,
        )
        .unwrap();
    assert_eq!(reply, "recorded; rack1-a boots debian-http next\n");
    let state = served.store.load().unwrap();
    assert!(state.set.is_empty() && state.reports["rack1-a"].step.as_deref() == Some("[2Jdone"), "{state:?}");
    // The log's escape sequence is removed whole.
    assert_eq!(fs_err::read_to_string(served.store.dir.join("reports/rack1-a.log")).unwrap(), "log\n");

    // The state is the server's own: never served.
    let root = dir.path().join("root").canonicalize().unwrap();
    assert!(served.is_private(&root.join("lab.state/state.json")));
    assert!(!served.is_private(&root.join("lab.yaml")) && !served.is_private(&root.join("lab/1.0.0/manifest.json")));
}

/// An arm64 bundle has no PXELINUX menu (PXELINUX boots only x86): its
/// inventory serves and writes none either.
#[test]
fn an_arm64_inventory_has_no_pxelinux_files() {
    let mut inventory = inventory(LAB).unwrap();
    inventory.menu.arch = "arm64".into();
    let state = State::default();
    let file = |path: &str| render::file(&inventory, &state, path, &urls());
    assert!(file("pxelinux.cfg/default").is_none() && file("pxelinux.cfg/01-52-54-00-00-00-11").is_none());
    assert!(file("hosts/52-54-00-00-00-11.ipxe").is_some() && file("grub.cfg-01-52-54-00-00-00-11").is_some());
    let paths = render::paths(&inventory);
    assert!(
        !paths.iter().any(|path| path.starts_with("pxelinux.cfg/")) && paths.contains(&"grub.cfg".to_string()),
        "{paths:?}"
    );
}

#[test]
fn a_state_file_that_is_a_fifo_or_a_symlink_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = state::StateStore::for_inventory(&dir.path().join("hosts.yaml"));
    let file = dir.path().join("hosts.state/state.json");
    fs_err::create_dir_all(file.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(&file, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    let load = store.clone();
    std::thread::spawn(move || sender.send(load.load().map(|_| ()).map_err(|error| format!("{error:#}"))));
    let error = receiver.recv_timeout(std::time::Duration::from_secs(10)).expect("loading a FIFO hung").unwrap_err();
    assert!(error.contains("is a FIFO, not a regular file"), "{error}");
    fs_err::remove_file(&file).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &file).unwrap();
    assert!(store.load().is_err(), "a symlink was followed");
}

#[test]
fn a_typo_in_a_live_inventory_keeps_the_last_one_that_checked_in_service() {
    let (dir, served) = served();
    let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = logged.clone();
    let served = served.with_log(Box::new(move |line| sink.lock().unwrap().push(line.to_string())));
    let file = dir.path().join("root/lab.yaml");
    let before = served.file("lab/1.0.0/hosts/52-54-00-00-00-11.ipxe", None).unwrap().unwrap();
    // A second host named as the first, added while serve runs.
    let typo = format!("bundle: lab/1.0.0\n{LAB}  - name: rack1-a\n    mac: 52:54:00:00:00:99\n");
    fs_err::write(&file, &typo).unwrap();
    for _ in 0..3 {
        let served_now = served.file("lab/1.0.0/hosts/52-54-00-00-00-11.ipxe", None).unwrap().unwrap();
        assert_eq!(served_now, before, "the fleet is served from the last inventory that checked");
        assert!(served.file("lab/1.0.0/hosts/default.ipxe", None).unwrap().is_ok());
    }
    let error = served.current_error().expect("the error is kept");
    let line = typo.lines().position(|line| line.contains("52:54:00:00:00:99")).unwrap();
    assert!(error.contains("duplicate name rack1-a") && error.contains(&format!("lab.yaml:{line}:")), "{error}");
    assert_eq!(logged.lock().unwrap().len(), 1, "logged once per change: {:?}", logged.lock().unwrap());
    fs_err::write(&file, format!("bundle: lab/1.0.0\n{LAB}")).unwrap();
    assert!(served.file("lab/1.0.0/hosts/52-54-00-00-00-11.ipxe", None).unwrap().is_ok());
    assert_eq!(served.current_error(), None);
    assert!(logged.lock().unwrap()[1].contains("checks again"), "{:?}", logged.lock().unwrap());
}
