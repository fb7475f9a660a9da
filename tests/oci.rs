//! The `oci` base stage from an OCI image layout the test writes itself: three
//! layers (gzip, zstd, plain tar) with a whiteout, an opaque directory, a hard
//! link and a symlink, in a multi-platform index. The tree rootsmith builds is
//! compared with `umoci raw unpack` of the same image. Hostile layers, one
//! kind each, are refused naming the layer and the entry, and nothing is
//! written outside the tree. Needs root (owners, device nodes) and umoci.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use sha2::Digest;

/// A tar layer from (path, kind, content or link target) entries.
fn layer(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(if *kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        let bytes = path.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                header.set_size(0);
                header.set_link_name(data).unwrap();
                header.set_cksum();
                builder.append(&header, &[][..]).unwrap();
            }
            _ => {
                header.set_size(data.len() as u64);
                header.set_cksum();
                builder.append(&header, data.as_bytes()).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

struct ImageLayout {
    dir: PathBuf,
}

impl ImageLayout {
    fn new(dir: &Path) -> ImageLayout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        ImageLayout { dir: dir.to_path_buf() }
    }

    fn blob(&self, bytes: &[u8], media_type: &str) -> serde_json::Value {
        let digest = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(self.dir.join("blobs/sha256").join(&digest), bytes).unwrap();
        serde_json::json!({ "mediaType": media_type, "digest": format!("sha256:{digest}"), "size": bytes.len() })
    }

    /// An image of `layers` ((media type, uncompressed tar)); returns its manifest descriptor.
    fn image(&self, layers: &[(&str, Vec<u8>)]) -> serde_json::Value {
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for (media_type, tar) in layers {
            diff_ids.push(format!("sha256:{}", hex::encode(sha2::Sha256::digest(tar))));
            let bytes = match *media_type {
                "application/vnd.oci.image.layer.v1.tar+gzip" => {
                    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                    std::io::Write::write_all(&mut encoder, tar).unwrap();
                    encoder.finish().unwrap()
                }
                "application/vnd.oci.image.layer.v1.tar+zstd" => zstd::encode_all(&tar[..], 3).unwrap(),
                _ => tar.clone(),
            };
            descriptors.push(self.blob(&bytes, media_type));
        }
        let config = serde_json::json!({ "architecture": "amd64", "os": "linux", "rootfs": { "type": "layers", "diff_ids": diff_ids }, "config": {} });
        let config = self.blob(&serde_json::to_vec(&config).unwrap(), "application/vnd.oci.image.config.v1+json");
        let manifest = serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": descriptors });
        self.blob(&serde_json::to_vec(&manifest).unwrap(), "application/vnd.oci.image.manifest.v1+json")
    }

    fn index(&self, named: &[(&str, serde_json::Value)]) {
        let manifests: Vec<serde_json::Value> = named
            .iter()
            .map(|(name, descriptor)| {
                let mut descriptor = descriptor.clone();
                descriptor["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": name });
                descriptor
            })
            .collect();
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({ "schemaVersion": 2, "manifests": manifests })).unwrap(),
        )
        .unwrap();
    }
}

use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

/// Three layers: gzip, `second` (zstd, or gzip for umoci 0.4, which reads no
/// zstd), uncompressed.
fn layers(second: &'static str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            layer(&[
                ("etc/", D, ""),
                ("etc/a", F, "first\n"),
                ("etc/gone", F, "removed later\n"),
                ("etc/link", S, "a"),
                ("opt/", D, ""),
                ("opt/d/", D, ""),
                ("opt/d/old", F, "hidden by the opaque dir\n"),
                ("usr/", D, ""),
                ("usr/bin/", D, ""),
                ("usr/bin/tool", F, "#!/bin/true\n"),
                ("usr/bin/tool2", H, "usr/bin/tool"),
            ]),
        ),
        (
            second,
            layer(&[
                ("etc/.wh.gone", F, ""),
                ("etc/a", F, "second\n"),
                ("opt/d/", D, ""),
                ("opt/d/.wh..wh..opq", F, ""),
                ("opt/d/new", F, "after the opaque marker\n"),
            ]),
        ),
        ("application/vnd.oci.image.layer.v1.tar", layer(&[("srv/", D, ""), ("srv/data", F, "third layer\n")])),
    ]
}

/// Every path of a tree with what it is: file contents, link targets, `dir`.
fn listing(root: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(Result::unwrap)
        .map(|entry| {
            let relative = entry.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let what = if entry.path_is_symlink() {
                format!("-> {}", std::fs::read_link(entry.path()).unwrap().display())
            } else if entry.file_type().is_dir() {
                "dir".into()
            } else {
                let bytes = std::fs::read(entry.path()).unwrap();
                match String::from_utf8(bytes.clone()) {
                    Ok(text) if text.len() < 200 => text,
                    _ => format!("{} bytes, sha256 {}", bytes.len(), hex::encode(sha2::Sha256::digest(&bytes))),
                }
            };
            (relative, what)
        })
        .collect()
}

fn build(dir: &Path, stage: &str) -> (i32, String, PathBuf) {
    std::fs::write(
        dir.join("recipe.yaml"),
        format!("rootsmith: 1\nname: from-oci\nversion: 1.0.0\nstages:\n  - {stage}\n"),
    )
    .unwrap();
    let out = dir.join("out");
    let mut command = rootsmith();
    command
        .arg("build")
        .arg("--fast")
        .arg("--cache")
        .arg(dir.join("cache"))
        .arg("--out")
        .arg(&out)
        .arg(dir.join("recipe.yaml"));
    let (code, _, stderr) = run(&mut command);
    (code, stderr, out.join("from-oci/1.0.0"))
}

fn unpack_bundle(bundle: &Path, into: &Path) {
    unpack_tar_zst(&bundle.join("from-oci-1.0.0-rootfs.tar.zst"), into);
}

fn unpack_tar_zst(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let status =
        std::process::Command::new("tar").arg("-C").arg(into).arg("--zstd").arg("-xf").arg(archive).status().unwrap();
    assert!(status.success(), "unpacking {}", archive.display());
}

#[test]
fn layers_apply_like_umoci_from_a_multi_platform_layout() {
    if !needs_root("layers_apply_like_umoci_from_a_multi_platform_layout") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = ImageLayout::new(&dir.path().join("image"));
    let amd64 = image.image(&layers("application/vnd.oci.image.layer.v1.tar+zstd"));
    let amd64_gzip = image.image(&layers("application/vnd.oci.image.layer.v1.tar+gzip"));
    let arm64 = image
        .image(&[("application/vnd.oci.image.layer.v1.tar", layer(&[("etc/", D, ""), ("etc/arch", F, "arm64\n")]))]);
    let mut platforms = Vec::new();
    for (descriptor, arch) in [(&arm64, "arm64"), (&amd64, "amd64")] {
        let mut descriptor = descriptor.clone();
        descriptor["platform"] = serde_json::json!({ "architecture": arch, "os": "linux" });
        platforms.push(descriptor);
    }
    let index = image.blob(&serde_json::to_vec(&serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": platforms })).unwrap(), "application/vnd.oci.image.index.v1+json");
    image.index(&[("multi", index), ("single", amd64_gzip)]);

    let (code, stderr, bundle) = build(dir.path(), "oci: { layout: image, ref: multi }");
    assert_eq!(code, 0, "{stderr}");
    let ours = dir.path().join("ours");
    unpack_bundle(&bundle, &ours);
    let theirs = dir.path().join("theirs");
    let output = std::process::Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:single", image.dir.display()))
        .arg(&theirs)
        .output()
        .expect("umoci runs (apt-get install umoci)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (ours_list, theirs_list) = (listing(&ours), listing(&theirs));
    assert_eq!(ours_list, theirs_list, "rootsmith's tree and umoci's differ");
    assert_eq!(ours_list.get("etc/a").map(String::as_str), Some("second\n"));
    assert!(
        !ours_list.contains_key("etc/gone")
            && !ours_list.contains_key("opt/d/old")
            && ours_list.contains_key("opt/d/new")
    );
    assert!(!ours_list.contains_key("etc/arch"), "the amd64 manifest of the index, not arm64's");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(ours.join("usr/bin/tool")).unwrap().ino(),
        std::fs::metadata(ours.join("usr/bin/tool2")).unwrap().ino(),
        "the hard link stays one file"
    );

    // Built for arm64, the same recipe takes the index's arm64 manifest.
    let mut command = rootsmith();
    command
        .arg("build")
        .arg("--fast")
        .arg("--arch")
        .arg("arm64")
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg(dir.path().join("recipe.yaml"));
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let arm = dir.path().join("arm");
    unpack_tar_zst(&dir.path().join("out/from-oci-arm64/1.0.0/from-oci-arm64-1.0.0-rootfs.tar.zst"), &arm);
    assert_eq!(listing(&arm).get("etc/arch").map(String::as_str), Some("arm64\n"), "the arm64 manifest of the index");
    assert!(!arm.join("etc/a").exists());

    // The key is the manifest digest: the same image is a hit, a moved tag a miss.
    let mut command = rootsmith();
    command.arg("plan").arg("--cache").arg(dir.path().join("cache")).arg(dir.path().join("recipe.yaml")).arg("--json");
    let state = |stdout: &str| {
        serde_json::from_str::<serde_json::Value>(stdout).unwrap()[0]["state"].as_str().unwrap().to_string()
    };
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(state(&stdout), "hit", "{stdout}");
    image.index(&[(
        "multi",
        image.image(&[(
            "application/vnd.oci.image.layer.v1.tar",
            layer(&[("etc/", D, ""), ("etc/moved", F, "the tag moved\n")]),
        )]),
    )]);
    let (code, stdout, _) = run(&mut command);
    assert_eq!(code, 0);
    assert_eq!(state(&stdout), "miss", "a moved tag is a new manifest digest: {stdout}");
}

#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() {
    if !needs_root("hostile_layers_are_refused_and_write_nothing_outside") {
        return;
    }
    // (name, the layer's entries as (path, type, content or link), the path refused)
    type Case<'a> = (&'a str, Vec<(&'a str, tar::EntryType, &'a str)>, &'a str);
    let cases: [Case; 5] = [
        ("dotdot", vec![("../escaped", F, "x")], "../escaped"),
        ("absolute", vec![("/escaped", F, "x")], "/escaped"),
        ("symlink-escape", vec![("up", S, "../../../.."), ("up/escaped", F, "x")], "up/escaped"),
        ("hardlink-out", vec![("shadow", H, "../outside/secret")], "shadow"),
        ("whiteout-dotdot", vec![(".wh...", F, "")], ".wh.."),
    ];
    for (name, entries, entry) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "secret\n").unwrap();
        let image = ImageLayout::new(&dir.path().join("image"));
        let good = layer(&[("etc/", D, ""), ("etc/ok", F, "fine\n")]);
        let manifest = image.image(&[
            ("application/vnd.oci.image.layer.v1.tar", good),
            ("application/vnd.oci.image.layer.v1.tar", layer(&entries)),
        ]);
        image.index(&[("bad", manifest.clone())]);
        let before = listing(dir.path());
        let (code, stderr, bundle) = build(dir.path(), "oci: { layout: image, ref: bad }");
        assert_ne!(code, 0, "{name}: {stderr}");
        assert!(
            stderr.contains("layer 2 of 2") && stderr.contains(entry),
            "{name}: the layer and the entry are named:\n{stderr}"
        );
        assert!(!bundle.exists(), "{name}: no bundle");
        let ours = |path: &str| {
            ["cache", "out"].iter().any(|dir| path == *dir || path.starts_with(&format!("{dir}/")))
                || path == "recipe.yaml"
        };
        let after: BTreeMap<String, String> = listing(dir.path()).into_iter().filter(|(path, _)| !ours(path)).collect();
        assert_eq!(after, before, "{name}: nothing changed outside the cache");
    }
}

#[test]
fn a_corrupted_blob_is_refused_before_it_is_read() {
    if !needs_root("a_corrupted_blob_is_refused_before_it_is_read") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = ImageLayout::new(&dir.path().join("image"));
    let manifest = image.image(&layers("application/vnd.oci.image.layer.v1.tar+zstd"));
    image.index(&[("latest", manifest)]);
    let gzip_layer = std::fs::read_dir(image.dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read(p).unwrap().starts_with(&[0x1f, 0x8b]))
        .unwrap();
    let mut bytes = std::fs::read(&gzip_layer).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&gzip_layer, bytes).unwrap();
    let (code, stderr, _) = build(dir.path(), "oci: { layout: image }");
    assert_ne!(code, 0);
    assert!(stderr.contains("layer 1 of 3") && stderr.contains("does not match its descriptor"), "{stderr}");
}

/// Debian's `docker-registry` on a loopback port, storage in `dir`, stopped when dropped.
struct RegistryProcess {
    child: std::process::Child,
    address: String,
}

impl RegistryProcess {
    fn start(dir: &Path) -> RegistryProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(&config, format!("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n", dir.join("storage").display())).unwrap();
        let mut child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry runs (apt-get install docker-registry)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&address).is_ok() {
                return RegistryProcess { child, address };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("docker-registry did not listen on {address}");
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards to `upstream`, recording each request line, and cuts the first
/// full (no Range) response for a blob larger than twice `cut` after `cut`
/// body bytes.
fn start_cutting_proxy(upstream: String, cut: usize) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    start_proxy(upstream, cut, false)
}

/// Like the cutting proxy, but `flip`: every big blob arrives whole with one byte changed.
fn start_proxy(upstream: String, cut: usize, flip: bool) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut cut_done = false;
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let mut reader = BufReader::new(client.try_clone().unwrap());
            // The proxy closes each connection itself.
            let head: String = read_request_head(&mut reader)
                .split_inclusive("\r\n")
                .filter(|line| !line.to_lowercase().starts_with("connection:"))
                .collect();
            if head.is_empty() {
                continue;
            }
            let first = head.lines().next().unwrap_or_default().to_string();
            let ranged = head.to_lowercase().contains("\nrange:");
            log.lock().unwrap().push(format!("{first}{}", if ranged { " (range)" } else { "" }));
            let mut server = std::net::TcpStream::connect(&upstream).unwrap();
            server.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes()).unwrap();
            let mut response = Vec::new();
            let _ = server.read_to_end(&mut response);
            let body_at = response.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(response.len());
            let cut_this = !cut_done
                && first.contains("/blobs/sha256:")
                && first.starts_with("GET")
                && !ranged
                && response.len() - body_at > 2 * cut;
            cut_done |= cut_this;
            let big_blob =
                first.contains("/blobs/sha256:") && first.starts_with("GET") && response.len() - body_at > 2 * cut;
            if flip && big_blob {
                response[body_at + cut] ^= 0x01;
            }
            let end = if cut_this && !flip { (body_at + cut).min(response.len()) } else { response.len() };
            let mut client = client;
            let _ = client.write_all(&response[..end]);
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    });
    (address, seen)
}

#[test]
fn pulls_from_a_local_registry_resuming_a_broken_download() {
    if !needs_root("pulls_from_a_local_registry_resuming_a_broken_download") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = ImageLayout::new(&dir.path().join("image"));
    let big: String =
        (0..200_000u32).map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26)).collect();
    let mut layers = layers("application/vnd.oci.image.layer.v1.tar+zstd");
    layers.push(("application/vnd.oci.image.layer.v1.tar+gzip", layer(&[("var/", D, ""), ("var/big", F, &big)])));
    let amd64 = image.image(&layers);
    image.index(&[("base", amd64)]);
    let registry = RegistryProcess::start(dir.path());
    let pushed = std::process::Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", "--insecure-policy"])
        .arg(format!("oci:{}:base", image.dir.display()))
        .arg(format!("docker://{}/rootsmith/test:1", registry.address))
        .output()
        .expect("skopeo runs (apt-get install skopeo)");
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));

    // Through a proxy that breaks the first blob download after 1000 bytes.
    let (proxy, seen) = start_cutting_proxy(registry.address.clone(), 1000);
    let (code, stderr, bundle) = build(dir.path(), &format!("oci: {{ image: \"{proxy}/rootsmith/test:1\" }}"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("resuming sha256:") && stderr.contains("at byte 1000 of"), "{stderr}");
    let requests = seen.lock().unwrap().clone();
    assert!(requests.iter().any(|line| line.contains("/blobs/sha256:") && line.ends_with("(range)")), "{requests:?}");
    let pulled = dir.path().join("pulled");
    unpack_bundle(&bundle, &pulled);

    // The tag is a remote input: the lock records the manifest digest it named.
    let mut command = rootsmith();
    command.arg("lock").arg("--cache").arg(dir.path().join("cache")).arg(dir.path().join("recipe.yaml"));
    let (code, _, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let lock = std::fs::read_to_string(dir.path().join("recipe.lock")).unwrap();
    let inspected =
        skopeo(&["inspect", "--tls-verify=false", &format!("docker://{}/rootsmith/test:1", registry.address)]);
    let digest = inspected["Digest"].as_str().unwrap();
    assert!(
        lock.contains(&format!("{proxy}/rootsmith/test:1: {digest}"))
            || lock.contains(&format!("{proxy}/rootsmith/test:1': {digest}")),
        "{lock}"
    );

    // The same tree as from the layout itself.
    let layout_dir = dir.path().join("from-layout");
    std::fs::create_dir(&layout_dir).unwrap();
    let (code, stderr, layout_bundle) =
        build(&layout_dir, &format!("oci: {{ layout: {}, ref: base }}", image.dir.display()));
    assert_eq!(code, 0, "{stderr}");
    let from_layout = dir.path().join("from-layout-tree");
    unpack_bundle(&layout_bundle, &from_layout);
    assert_eq!(listing(&pulled), listing(&from_layout));
    assert_eq!(listing(&pulled).get("var/big").map(|text| text.contains("200000 bytes")), Some(true));

    // A registry answer that does not match the digest is never kept.
    let (flipping, _) = start_proxy(registry.address.clone(), 1000, true);
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    let (code, stderr, bundle) = build(&corrupt, &format!("oci: {{ image: \"{flipping}/rootsmith/test:1\" }}"));
    assert_ne!(code, 0);
    assert!(!bundle.exists());
    assert!(stderr.contains("after 5 tries") && stderr.to_lowercase().contains("digest"), "{stderr}");
    let kept: Vec<PathBuf> =
        std::fs::read_dir(corrupt.join("cache/v1/oci/blobs/sha256")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(kept.len(), 3, "the three small layers, not the corrupted one: {kept:?}");
    for blob in kept {
        assert_eq!(sha256(&blob), blob.file_name().unwrap().to_string_lossy(), "every kept blob is what its name says");
    }

    // Another recipe of the same image on the same cache: no blob is downloaded again.
    seen.lock().unwrap().clear();
    std::fs::remove_dir_all(dir.path().join("out")).unwrap();
    let (code, stderr, _) =
        build(dir.path(), &format!("oci: {{ image: \"{proxy}/rootsmith/test:1\" }}\n    name: again"));
    assert_eq!(code, 0, "{stderr}");
    let requests = seen.lock().unwrap().clone();
    assert!(!requests.iter().any(|line| line.contains("/blobs/")), "{requests:?}");
    assert!(
        requests.iter().any(|line| line.contains("/manifests/1")),
        "the tag is resolved at plan time: {requests:?}"
    );
}

fn skopeo(args: &[&str]) -> serde_json::Value {
    let output = std::process::Command::new("skopeo").args(args).output().expect("skopeo runs");
    assert!(output.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn the_oci_output_round_trips_through_a_registry() {
    if !needs_root("the_oci_output_round_trips_through_a_registry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = RegistryProcess::start(dir.path());
    let source = dir.path().join("source");
    std::fs::create_dir_all(source.join("tree/etc")).unwrap();
    std::fs::write(source.join("tree/etc/hostname"), "base\n").unwrap();
    std::fs::create_dir_all(source.join("tree/usr/bin")).unwrap();
    std::fs::write(source.join("tree/usr/bin/tool"), "#!/bin/true\n").unwrap();
    tar_base(&source);
    std::fs::create_dir_all(source.join("overlay/etc")).unwrap();
    std::fs::write(source.join("overlay/etc/motd"), "from the files stage\n").unwrap();
    let reference = format!("{}/rootsmith/roundtrip:1.0.0", registry.address);
    let recipe = format!("rootsmith: 1\nname: roundtrip\nversion: 1.0.0\nsource_date_epoch: 1700000000\nstages:\n  - tarball: {{ path: base.tar }}\n  - files: {{ src: overlay, dest: / }}\noutputs:\n  oci: {{ layout: image, push: \"{reference}\" }}\n");
    std::fs::write(source.join("roundtrip.yaml"), &recipe).unwrap();
    let build_into = |cache: &str, out: &str| {
        let mut command = rootsmith();
        command
            .arg("build")
            .arg("--fast")
            .arg("--cache")
            .arg(dir.path().join(cache))
            .arg("--out")
            .arg(dir.path().join(out))
            .arg(source.join("roundtrip.yaml"));
        let (code, _, stderr) = run(&mut command);
        assert_eq!(code, 0, "{stderr}");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(out).join("roundtrip/1.0.0/manifest.json")).unwrap())
                .unwrap();
        manifest["oci_image"].as_str().unwrap().to_string()
    };
    let digest = build_into("cache-a", "out-a");

    let pushed = skopeo(&["inspect", "--tls-verify=false", &format!("docker://{reference}")]);
    assert_eq!(
        (pushed["Digest"].as_str(), pushed["Architecture"].as_str(), pushed["Os"].as_str()),
        (Some(digest.as_str()), Some("amd64"), Some("linux")),
        "{pushed}"
    );
    assert_eq!(pushed["Layers"].as_array().unwrap().len(), 2, "one layer per stage: {pushed}");
    assert_eq!(pushed["Created"].as_str(), Some("2023-11-14T22:13:20Z"), "created is SOURCE_DATE_EPOCH");
    let layout = skopeo(&["inspect", &format!("oci:{}:1.0.0", source.join("image").display())]);
    assert_eq!(layout["Digest"].as_str(), Some(digest.as_str()));
    let config = skopeo(&["inspect", "--config", "--tls-verify=false", &format!("docker://{reference}")]);
    assert_eq!(config["history"].as_array().unwrap().len(), 2, "{config}");
    let copied = dir.path().join("copied");
    let output = std::process::Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--insecure-policy"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:copied", copied.display()))
        .output()
        .unwrap();
    assert!(output.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&output.stderr));

    // Pulled back by the oci stage on an empty cache: the same tree, the same rootfs bytes.
    let pull = dir.path().join("pull");
    std::fs::create_dir(&pull).unwrap();
    let (code, stderr, bundle) = build(&pull, &format!("oci: {{ image: \"{reference}\" }}"));
    assert_eq!(code, 0, "{stderr}");
    let (ours, theirs) = (dir.path().join("tree-a"), dir.path().join("tree-pulled"));
    unpack_tar_zst(&dir.path().join("out-a/roundtrip/1.0.0/roundtrip-1.0.0-rootfs.tar.zst"), &ours);
    unpack_bundle(&bundle, &theirs);
    assert_eq!(listing(&ours), listing(&theirs));
    assert_eq!(listing(&theirs).get("etc/motd").map(String::as_str), Some("from the files stage\n"));

    // The same inputs on another empty cache give the same image.
    assert_eq!(build_into("cache-b", "out-b"), digest);
}

/// A recipe of a tarball base and a files stage in `dir`; returns its path.
fn two_stage_recipe(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("tree/etc")).unwrap();
    std::fs::write(dir.join("tree/etc/hostname"), "shared\n").unwrap();
    tar_base(dir);
    std::fs::create_dir_all(dir.join("overlay/etc")).unwrap();
    std::fs::write(dir.join("overlay/etc/motd"), "shared cache\n").unwrap();
    let recipe = dir.join("shared.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: shared\nversion: 1.0.0\nsource_date_epoch: 1700000000\nstages:\n  - tarball: { path: base.tar }\n  - files: { src: overlay, dest: / }\n").unwrap();
    recipe
}

fn build_json(recipe: &Path, cache: &Path, out: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut command = rootsmith();
    command
        .arg("build")
        .arg("--fast")
        .arg("--json")
        .arg("--cache")
        .arg(cache)
        .arg("--out")
        .arg(out)
        .args(extra)
        .arg(recipe);
    let (code, stdout, stderr) = run(&mut command);
    (code, serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null), stderr)
}

fn states(summary: &serde_json::Value) -> Vec<String> {
    summary["stages"].as_array().unwrap().iter().map(|stage| stage["state"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_second_machine_pulls_every_stage_from_the_remote_cache() {
    if !needs_root("a_second_machine_pulls_every_stage_from_the_remote_cache") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = RegistryProcess::start(dir.path());
    let recipe = two_stage_recipe(&dir.path().join("src"));
    let remote = format!("{}/rootsmith/cache", registry.address);

    // Machine A builds and shares.
    let (code, a, stderr) =
        build_json(&recipe, &dir.path().join("cache-a"), &dir.path().join("out-a"), &["--cache-remote", &remote]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(states(&a), ["built", "built"]);
    assert_eq!(a["outputs"]["state"], "built");

    // Machine B, empty cache: every stage and the outputs pulled, nothing built, the same bytes.
    let (code, b, stderr) =
        build_json(&recipe, &dir.path().join("cache-b"), &dir.path().join("out-b"), &["--cache-remote", &remote]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(states(&b), ["pulled", "pulled"], "{stderr}");
    assert_eq!(b["outputs"]["state"], "pulled", "{stderr}");
    let sums = |out: &str| std::fs::read_to_string(dir.path().join(out).join("shared/1.0.0/SHA256SUMS")).unwrap();
    assert_eq!(sums("out-a"), sums("out-b"));
    // With --cache-only, too: nothing may be built, and nothing needs to be.
    let (code, g, stderr) = build_json(
        &recipe,
        &dir.path().join("cache-g"),
        &dir.path().join("out-g"),
        &["--cache-remote", &remote, "--cache-only"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        (states(&g), g["outputs"]["state"].as_str()),
        (vec!["pulled".to_string(), "pulled".to_string()], Some("pulled"))
    );
    assert_eq!(sums("out-g"), sums("out-a"));

    // `cache pull` fills a third cache; it then builds with no remote and no stage to build.
    let mut command = rootsmith();
    command.arg("cache").arg("--cache").arg(dir.path().join("cache-c")).args(["pull", &remote]);
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("2 stages pulled") && stdout.contains("2 outputs pulled"), "{stdout}");
    let (code, c, stderr) = build_json(&recipe, &dir.path().join("cache-c"), &dir.path().join("out-c"), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(states(&c), ["cached", "cached"]);
    assert_eq!(c["outputs"]["state"], "cached");
    assert_eq!(sums("out-c"), sums("out-a"));
    let mut command = rootsmith();
    command.arg("cache").arg("--cache").arg(dir.path().join("cache-c")).args(["push", &remote]);
    let (code, stdout, _) = run(&mut command);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("0 stages pushed")
            && stdout.contains("2 already there")
            && stdout.contains("0 outputs pushed, 2 already there"),
        "{stdout}"
    );

    // An unreachable remote is a warning, unless --cache-only.
    let dead = "127.0.0.1:9/rootsmith/cache";
    let (code, d, stderr) =
        build_json(&recipe, &dir.path().join("cache-d"), &dir.path().join("out-d"), &["--cache-remote", dead]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(states(&d), ["built", "built"]);
    assert!(stderr.contains("warning: remote cache 127.0.0.1:9/rootsmith/cache"), "{stderr}");
    let (code, _, stderr) = build_json(
        &recipe,
        &dir.path().join("cache-e"),
        &dir.path().join("out-e"),
        &["--cache-remote", dead, "--cache-only"],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("the remote cache 127.0.0.1:9/rootsmith/cache (--cache-only needs it)"), "{stderr}");

    // The settings file names the remote when the command line does not.
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, format!("cache_remote: {remote}\n")).unwrap();
    let mut command = rootsmith();
    command
        .arg("build")
        .arg("--fast")
        .arg("--json")
        .arg("--cache")
        .arg(dir.path().join("cache-f"))
        .arg("--out")
        .arg(dir.path().join("out-f"))
        .arg(&recipe)
        .env("ROOTSMITH_CONFIG", &config);
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(states(&serde_json::from_str(&stdout).unwrap()), ["pulled", "pulled"]);
}

/// A layer whose only entry is GNU sparse: 512 bytes of data, then a hole up
/// to `real_size`.
fn sparse_layer(real_size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("huge").unwrap();
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_mode(0o644);
    header.set_size(512);
    let gnu = header.as_gnu_mut().unwrap();
    gnu.set_real_size(real_size);
    gnu.sparse[0].set_offset(0);
    gnu.sparse[0].set_length(512);
    gnu.sparse[1].set_offset(real_size);
    gnu.sparse[1].set_length(0);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, &[b'x'; 512][..]).unwrap();
    builder.into_inner().unwrap()
}

/// A layer that is one PAX record of `size` bytes: a few KB compressed, and
/// what the tar reader would hold in memory whole.
fn pax_bomb_layer(size: usize) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.set_path("bomb").unwrap();
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.resize(512 + size, b'a');
    bytes
}

#[test]
fn oversized_and_bomb_layers_are_refused_quickly() {
    if !needs_root("oversized_and_bomb_layers_are_refused_quickly") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let cases: [(&str, &str, Vec<u8>, &str); 2] = [
        // 4 EiB: more than any filesystem has free.
        (
            "sparse",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            sparse_layer(1 << 62),
            "entry `huge`: it claims 4611686018427387904 bytes (4.0 EiB)",
        ),
        (
            "pax-bomb",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            pax_bomb_layer(256 << 20),
            "the archive runs on past byte 16777216 with more than 16777216 bytes (16.0 MiB) of headers",
        ),
    ];
    for (name, media_type, tar, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let image = ImageLayout::new(&dir.path().join("image"));
        let manifest = image.image(&[(media_type, tar)]);
        image.index(&[("bad", manifest)]);
        let blobs: u64 = std::fs::read_dir(dir.path().join("image/blobs/sha256"))
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().len())
            .sum();
        assert!(blobs < 1 << 20, "{name}: the image is {blobs} bytes");
        let started = std::time::Instant::now();
        let (code, stderr, bundle) = build(dir.path(), "oci: { layout: image, ref: bad }");
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "{name}: took {:?}", started.elapsed());
        assert_ne!(code, 0, "{name}: {stderr}");
        assert!(stderr.contains("layer 1 of 1") && stderr.contains(reason), "{name}:\n{stderr}");
        assert!(!bundle.exists(), "{name}: no bundle");
        let written: u64 = walkdir::WalkDir::new(dir.path().join("cache"))
            .into_iter()
            .map(Result::unwrap)
            .filter(|entry| entry.file_type().is_file())
            .map(|entry| entry.metadata().unwrap().blocks() * 512)
            .sum();
        assert!(written < 64 << 20, "{name}: the cache grew by {written} bytes");
    }
}
