use std::path::{Path, PathBuf};

use super::render::{self, Urls};
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
    assert!(missing_kernel[0].2.contains("has no kernel `big`") && missing_kernel[0].2.contains("debian, small"), "{missing_kernel:?}");

    let malformed = problems("default: nowhere\nhosts:\n  - name: a\n    mac: 52:54:00:00:11\n  - name: b\n    ip: 10.0.2\n  - name: c\n");
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
    let state = State::default();
    let file = |path: &str| render::file(&inventory, &state, path, &urls());

    let dispatcher = file("boot.ipxe").unwrap();
    assert!(dispatcher.contains("chain --autofree hosts/${mac:hexhyp}.ipxe || chain --autofree hosts/${ip}.ipxe || chain --autofree hosts/default.ipxe"));

    let a = file("hosts/52-54-00-00-00-11.ipxe").unwrap();
    assert!(a.starts_with("#!ipxe\n"));
    assert!(a.contains("kernel http://10.0.2.2:8080/lab/1.0.0/lab-1.0.0-debian-vmlinuz console=ttyS0 rootsmith.agent.image=http://10.0.2.2:8080/images/disk.img.zst rootsmith.host=rack1-a rootsmith.report=http://10.0.2.2:8080/.rootsmith/report/rack1-a initrd=lab-1.0.0-initramfs.img rootsmith.rootfs_url=http://10.0.2.2:8080/lab/1.0.0/lab-1.0.0-rootfs.img\n"), "{a}");
    assert_eq!(file("hosts/10.0.2.15.ipxe"), Some(a.clone()), "by IP too");
    let b = file("hosts/52-54-00-00-00-12.ipxe").unwrap();
    assert!(b.contains("kernel http://10.0.2.2:8080/lab/1.0.0/lab-1.0.0-small-vmlinuz") && b.contains("initrd http://10.0.2.2:8080/lab/1.0.0/lab-1.0.0-rootfs.img"), "{b}");
    assert!(file("hosts/52-54-00-00-00-99.ipxe").is_none(), "an unknown host falls through to the default");
    assert!(file("hosts/default.ipxe").unwrap().contains("sanboot --no-describe --drive 0x80"));

    let pxe_a = file("pxelinux.cfg/01-52-54-00-00-00-11").unwrap();
    assert_eq!(file("pxelinux.cfg/0A00020F"), Some(pxe_a.clone()));
    assert!(pxe_a.contains("DEFAULT debian-http\n") && pxe_a.contains("KERNEL lab-1.0.0-debian-vmlinuz\n"), "{pxe_a}");
    assert!(file("pxelinux.cfg/C0A80709").unwrap().contains("LOCALBOOT 0"), "bench boots its disk");
    assert!(file("pxelinux.cfg/default").unwrap().contains("LOCALBOOT 0"));
    assert!(file("pxelinux.cfg/0A00020").is_none(), "PXELINUX's shortened names are not hosts");

    let grub_b = file("grub.cfg-01-52-54-00-00-00-12").unwrap();
    assert!(grub_b.contains("set default=small-appended") && grub_b.contains("initrd lab-1.0.0-initramfs.img lab-1.0.0-rootfs.img"), "{grub_b}");
    assert!(file("grub.cfg").unwrap().contains("exit"));
    assert!(file("lab-1.0.0-rootfs.img").is_none());
}

#[test]
fn one_shot_entries_end_with_a_successful_report() {
    let inventory = inventory(LAB).unwrap();
    let bench = inventory.host("bench").unwrap().clone();
    let mut state = State::default();
    state.set.insert("bench".into(), Override { entry: "debian-http".into(), once: true, at: String::new() });
    assert_eq!(state::current_entry(&inventory, &state, &bench), Entry::Kernel { kernel: "debian".into(), fetched: true });
    let report = |status: &str| Report { at: String::new(), status: status.into(), step: None, entry: String::new(), cleared: false, log: String::new(), from: String::new() };

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
    store.update(|state| {
        state.set.insert("a".into(), Override { entry: "local".into(), once: false, at: "t".into() });
        Ok(())
    }).unwrap();
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
