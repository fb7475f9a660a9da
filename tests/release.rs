//! Releases read back: `release verify` catches a flipped byte in any
//! artifact, a rootfs.img from another build and a missing file; `release
//! promote` makes a new version from the same bytes and refuses a tampered
//! candidate; `release ls` and `show` describe them. Hostile bundles (a
//! manifest naming files outside the bundle, a FIFO or a symlink for an
//! artifact, a copy in another version's directory) are refused, promptly,
//! touching nothing outside. The bundles come from a small tarball-based
//! recipe (builds need root).

mod common;

use std::path::{Path, PathBuf};

use common::*;

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab { dir: tempfile::tempdir().unwrap() };
        let tree = lab.dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/motd"), "release test\n").unwrap();
        std::fs::write(tree.join("etc/data"), vec![42u8; 3 << 20]).unwrap();
        assert!(std::process::Command::new("tar")
            .arg("-C")
            .arg(&tree)
            .args(["-cf"])
            .arg(lab.dir.path().join("base.tar"))
            .arg(".")
            .status()
            .unwrap()
            .success());
        lab
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Build the recipe (name `rel`) at `version`, with `motd` in the tree.
    fn build(&self, version: &str, motd: &str) -> PathBuf {
        self.build_with(version, motd, &[])
    }

    /// The same, with a dpkg status listing `packages` (name, version).
    fn build_with(&self, version: &str, motd: &str, packages: &[(&str, &str)]) -> PathBuf {
        self.build_into(version, motd, packages, "cache", &self.out())
    }

    fn build_into(&self, version: &str, motd: &str, packages: &[(&str, &str)], cache: &str, out: &Path) -> PathBuf {
        self.build_logged(version, motd, packages, cache, out).0
    }

    /// [`Self::build_into`], also giving the build's stderr.
    fn build_logged(
        &self,
        version: &str,
        motd: &str,
        packages: &[(&str, &str)],
        cache: &str,
        out: &Path,
    ) -> (PathBuf, String) {
        let recipe = self.dir.path().join(format!("rel-{version}.yaml"));
        let overlay = self.dir.path().join(format!("overlay-{motd}"));
        std::fs::create_dir_all(overlay.join("etc")).unwrap();
        std::fs::write(overlay.join("etc/motd"), format!("{motd}\n")).unwrap();
        if !packages.is_empty() {
            std::fs::create_dir_all(overlay.join("var/lib/dpkg")).unwrap();
            let status: String = packages
                .iter()
                .map(|(name, version)| {
                    format!(
                        "Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {version}\n\n"
                    )
                })
                .collect();
            std::fs::write(overlay.join("var/lib/dpkg/status"), status).unwrap();
        }
        std::fs::write(&recipe, format!("rootsmith: 1\nname: rel\nversion: {version}\nsource_date_epoch: 1700000000\nstages:\n  - tarball: {{ path: base.tar }}\n  - files: {{ src: overlay-{motd}, dest: / }}\n")).unwrap();
        let mut command = rootsmith();
        command
            .arg("build")
            .arg("--fast")
            .arg("--cache")
            .arg(self.dir.path().join(cache))
            .arg("--out")
            .arg(out)
            .arg(&recipe);
        let (code, _, stderr) = run(&mut command);
        assert_eq!(code, 0, "{stderr}");
        (out.join("rel").join(version), stderr)
    }

    fn release(&self, args: &[&str]) -> (i32, String, String) {
        run(&mut self.release_command(args))
    }

    /// `release ARGS` that must end within a minute (a hang fails the test).
    fn release_within(&self, args: &[&str]) -> (i32, String, String) {
        run_within(&mut self.release_command(args), std::time::Duration::from_secs(60))
    }

    fn release_command(&self, args: &[&str]) -> std::process::Command {
        let mut command = rootsmith();
        command.arg("release").args(args);
        if args[0] != "verify" {
            command.arg("--out").arg(self.out());
        }
        command
    }
}

/// A copy of a bundle to break.
fn copy_bundle(bundle: &Path, to: &Path) -> PathBuf {
    copy_tree(bundle, to);
    to.to_path_buf()
}

fn verify(lab: &Lab, bundle: &Path) -> (i32, String) {
    let (code, stdout, stderr) = lab.release(&["verify", bundle.to_str().unwrap()]);
    (code, format!("{stdout}{stderr}"))
}

#[test]
fn verify_catches_every_kind_of_damage() {
    if !needs_root("verify_catches_every_kind_of_damage") {
        return;
    }
    let lab = Lab::new();
    let bundle = lab.build("1.0.0", "one");
    let (code, output) = verify(&lab, &bundle);
    assert_eq!(code, 0, "{output}");
    for check in ["manifest", "SHA256SUMS", "chunk list", "cookie", "squashfs"] {
        assert!(output.lines().any(|line| line.starts_with("ok") && line.contains(check)), "{check}: {output}");
    }
    let artifacts: Vec<String> = std::fs::read_to_string(bundle.join("SHA256SUMS"))
        .unwrap()
        .lines()
        .map(|line| line.split("  ").nth(1).unwrap().to_string())
        .collect();
    assert!(artifacts.len() >= 5, "{artifacts:?}");

    // A flipped byte in each artifact, one at a time.
    for (index, artifact) in artifacts.iter().enumerate() {
        let broken = copy_bundle(&bundle, &lab.dir.path().join(format!("flip-{index}/rel/1.0.0")));
        let path = broken.join(artifact);
        let mut bytes = std::fs::read(&path).unwrap();
        match bytes.len() {
            // An empty file (packages.txt of a tree without dpkg) gains a byte instead.
            0 => bytes.push(b'x'),
            len => bytes[len / 2] ^= 0x01,
        }
        std::fs::write(&path, bytes).unwrap();
        let (code, output) = verify(&lab, &broken);
        assert_eq!(code, 1, "a flipped byte in {artifact} passed:\n{output}");
        let expected = if artifact == "manifest.json" { "manifest" } else { artifact.as_str() };
        assert!(
            output.lines().any(|line| line.starts_with("FAILED") && line.contains(expected)),
            "{artifact}:\n{output}"
        );
    }
    // The rootfs.img of another build (with its SHA256SUMS line, so only the contract catches it).
    let other = lab.build("2.0.0", "two");
    let swapped = copy_bundle(&bundle, &lab.dir.path().join("swap/rel/1.0.0"));
    std::fs::copy(other.join("rel-2.0.0-rootfs.img"), swapped.join("rel-1.0.0-rootfs.img")).unwrap();
    let sums = std::fs::read_to_string(swapped.join("SHA256SUMS")).unwrap();
    let fixed: String = sums
        .lines()
        .map(|line| {
            if line.ends_with("rel-1.0.0-rootfs.img") {
                format!("{}  rel-1.0.0-rootfs.img\n", sha256(&swapped.join("rel-1.0.0-rootfs.img")))
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(swapped.join("SHA256SUMS"), fixed).unwrap();
    let (code, output) = verify(&lab, &swapped);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("FAILED chunk list") && output.contains("FAILED cookie"), "{output}");
    assert!(output.contains("the initramfs expects rel (cookie"), "{output}");
    // A missing file.
    let missing = copy_bundle(&bundle, &lab.dir.path().join("missing/rel/1.0.0"));
    std::fs::remove_file(missing.join("packages.txt")).unwrap();
    let (code, output) = verify(&lab, &missing);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("packages.txt is missing"), "{output}");
}

#[test]
fn promote_renames_the_same_bytes_and_refuses_a_tampered_candidate() {
    if !needs_root("promote_renames_the_same_bytes_and_refuses_a_tampered_candidate") {
        return;
    }
    let lab = Lab::new();
    let candidate = lab.build("1.2.0-rc2", "candidate");
    let (code, stdout, stderr) = lab.release(&["promote", "rel", "1.2.0-rc2", "1.2.0"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("promoted rel 1.2.0-rc2 to 1.2.0"), "{stdout}");
    let released = lab.out().join("rel/1.2.0");
    for (old, new) in [
        ("rel-1.2.0-rc2-rootfs.img", "rel-1.2.0-rootfs.img"),
        ("rel-1.2.0-rc2-initramfs.img", "rel-1.2.0-initramfs.img"),
        ("rel-1.2.0-rc2-rootfs.tar.zst", "rel-1.2.0-rootfs.tar.zst"),
        ("packages.txt", "packages.txt"),
    ] {
        assert_eq!(sha256(&candidate.join(old)), sha256(&released.join(new)), "{new} has {old}'s bytes");
        assert!(old == new || !released.join(old).exists());
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(released.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["version"], "1.2.0");
    assert_eq!(manifest["promoted_from"]["version"], "1.2.0-rc2");
    assert_eq!(manifest["promoted_from"]["manifest_sha256"], sha256(&candidate.join("manifest.json")));
    assert_eq!(manifest["boot"]["rootfs_image"], "rel-1.2.0-rootfs.img");
    assert_ne!(
        std::fs::read(released.join("SHA256SUMS")).unwrap(),
        std::fs::read(candidate.join("SHA256SUMS")).unwrap()
    );
    let (code, output) = verify(&lab, &released);
    assert_eq!(code, 0, "{output}");
    // ls and show describe both.
    let (code, stdout, _) = lab.release(&["ls"]);
    assert_eq!(code, 0);
    let line = |version: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(version))
            .unwrap_or_else(|| panic!("{version} in {stdout}"))
            .to_string()
    };
    assert!(line("1.2.0-rc2").contains("candidate"), "{stdout}");
    assert!(line("1.2.0").contains("released (from 1.2.0-rc2)"), "{stdout}");
    let (code, stdout, _) = lab.release(&["show", "rel", "1.2.0"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("promoted from 1.2.0-rc2") && stdout.contains("rel-1.2.0-rootfs.img"), "{stdout}");
    // A published version is never overwritten.
    let (code, _, stderr) = lab.release(&["promote", "rel", "1.2.0-rc2", "1.2.0"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("never overwritten"), "{stderr}");

    // A tampered candidate is refused, and nothing is published.
    let tampered = lab.build("1.3.0-rc1", "tampered");
    let image = tampered.join("rel-1.3.0-rc1-rootfs.img");
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[200] ^= 0xff;
    std::fs::write(&image, bytes).unwrap();
    let (code, _, stderr) = lab.release(&["promote", "rel", "1.3.0-rc1", "1.3.0"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("fails verification, so it is not promoted")
            && stderr.contains("rel-1.3.0-rc1-rootfs.img differs"),
        "{stderr}"
    );
    assert!(!lab.out().join("rel/1.3.0").exists());
    let leftovers: Vec<_> = std::fs::read_dir(lab.out().join("rel"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The rootfs image and tarball of a bundle are the cache's files (hard
/// links), not copies; a bundle changed in place, as none should be, damages
/// the cache's copy, and the next build that publishes it finds that, makes
/// it again and publishes the right bytes.
#[test]
fn a_bundle_changed_in_place_heals_the_cache_it_shares() {
    use std::os::unix::fs::MetadataExt;
    if !needs_root("a_bundle_changed_in_place_heals_the_cache_it_shares") {
        return;
    }
    let lab = Lab::new();
    let first = lab.build("2.1.0", "shared");
    let image = first.join("rel-2.1.0-rootfs.img");
    let digest = sha256(&image);
    for shared in ["rel-2.1.0-rootfs.img", "rel-2.1.0-rootfs.tar.zst"] {
        assert_eq!(std::fs::metadata(first.join(shared)).unwrap().nlink(), 2, "{shared} is not the cache's file");
    }
    assert_eq!(std::fs::metadata(first.join("rel-2.1.0-initramfs.img")).unwrap().nlink(), 1, "the initramfs is a copy");
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[200] ^= 0xff;
    std::fs::write(&image, bytes).unwrap();
    let (second, stderr) = lab.build_logged("2.1.1", "shared", &[], "cache", &lab.out());
    assert!(
        stderr.contains("cached output rootfs.img") && stderr.contains("discarding it and building it again"),
        "{stderr}"
    );
    assert_eq!(sha256(&second.join("rel-2.1.1-rootfs.img")), digest);
    let (code, output) = verify(&lab, &second);
    assert_eq!(code, 0, "{output}");
    let (code, output) = verify(&lab, &first);
    assert_eq!(code, 1, "the bundle changed in place still fails: {output}");
}

/// A cache another user owns: the bundle shares no inode with it, so that
/// user cannot rewrite the published release through a link, and a byte
/// flipped in the cache leaves the bundle as it was.
#[test]
fn a_bundle_shares_no_inode_with_a_cache_another_user_owns() {
    use std::os::unix::fs::MetadataExt;
    if !needs_root("a_bundle_shares_no_inode_with_a_cache_another_user_owns") {
        return;
    }
    let lab = Lab::new();
    let cache = lab.dir.path().join("theirs");
    std::fs::create_dir(&cache).unwrap();
    std::os::unix::fs::chown(&cache, Some(65534), Some(65534)).unwrap();
    // Refused, unless told that sharing it is intended.
    let recipe = lab.dir.path().join("theirs.yaml");
    std::fs::create_dir_all(lab.dir.path().join("overlay-theirs/etc")).unwrap();
    std::fs::write(lab.dir.path().join("overlay-theirs/etc/motd"), "theirs\n").unwrap();
    std::fs::write(&recipe, "rootsmith: 1\nname: rel\nversion: 3.0.0\nsource_date_epoch: 1700000000\nstages:\n  - tarball: { path: base.tar }\n  - files: { src: overlay-theirs, dest: / }\n").unwrap();
    let build = |shared: bool| {
        let mut command = rootsmith();
        command.arg("build").arg("--fast").arg("--cache").arg(&cache).arg("--out").arg(lab.out()).arg(&recipe);
        if shared {
            command.env("ROOTSMITH_SHARED_DIRS", "1");
        }
        run(&mut command)
    };
    let (code, _, stderr) = build(false);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is not safe") && stderr.contains("belongs to nobody (uid 65534)"), "{stderr}");
    assert!(!lab.out().join("rel/3.0.0").exists() && !cache.join("v1").exists(), "something was built");
    let (code, _, stderr) = build(true);
    assert_eq!(code, 0, "{stderr}");
    let bundle = lab.out().join("rel/3.0.0");
    for file in ["rel-3.0.0-rootfs.img", "rel-3.0.0-rootfs.tar.zst"] {
        assert_eq!(std::fs::metadata(bundle.join(file)).unwrap().nlink(), 1, "{file} is linked to the cache's");
    }
    // Every cached copy of the image changed: the bundle is not.
    let mut changed = 0;
    for entry in walkdir::WalkDir::new(cache.join("v1/outputs")).into_iter().flatten() {
        if entry.file_name() == "rootfs.img" {
            let mut bytes = std::fs::read(entry.path()).unwrap();
            bytes[200] ^= 0xff;
            std::fs::write(entry.path(), bytes).unwrap();
            changed += 1;
        }
    }
    assert!(changed > 0);
    let (code, output) = verify(&lab, &bundle);
    assert_eq!(code, 0, "the published release changed with the cache: {output}");
}

/// The developer loop: a file changed, the same version built again. Without
/// `--replace` the build stops before any stage (it could only fail at its
/// end); with it the version is replaced, unless it is signed.
#[test]
fn a_changed_file_and_the_same_version_stop_early_or_replace() {
    if !needs_root("a_changed_file_and_the_same_version_stop_early_or_replace") {
        return;
    }
    let lab = Lab::new();
    lab.build("4.0.0", "first");
    let dir = lab.dir.path();
    let recipe = dir.join("loop.yaml");
    std::fs::create_dir_all(dir.join("loop/etc")).unwrap();
    std::fs::write(dir.join("loop/etc/motd"), "one\n").unwrap();
    std::fs::write(&recipe, "rootsmith: 1\nname: loop\nversion: 0.1.0\nsource_date_epoch: 1700000000\nstages:\n  - tarball: { path: base.tar }\n  - files: { src: loop, dest: / }\n").unwrap();
    let build = |extra: &[&str]| {
        let mut command = rootsmith();
        command.arg("build").arg("--fast").arg("--cache").arg(dir.join("cache")).arg("--out").arg(lab.out());
        command.args(extra).arg(&recipe);
        run(&mut command)
    };
    let (code, _, stderr) = build(&[]);
    assert_eq!(code, 0, "{stderr}");
    let manifest = lab.out().join("loop/0.1.0/manifest.json");
    let first = std::fs::read(&manifest).unwrap();
    std::fs::write(dir.join("loop/etc/motd"), "two\n").unwrap();
    let (code, _, stderr) = build(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("stage `files` has other inputs") && stderr.contains("nothing was built"), "{stderr}");
    assert!(!stderr.contains("building"), "a stage ran: {stderr}");
    assert_eq!(std::fs::read(&manifest).unwrap(), first);
    let (code, _, stderr) = build(&["--replace"]);
    assert_eq!(code, 0, "{stderr}");
    assert_ne!(std::fs::read(&manifest).unwrap(), first, "not replaced");
    let (code, output) = verify(&lab, &lab.out().join("loop/0.1.0"));
    assert_eq!(code, 0, "{output}");
    let leftovers: Vec<_> = std::fs::read_dir(lab.out().join("loop"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["0.1.0"], "the old bundle was left beside the new one");
    // A signed version is never replaced.
    std::fs::write(lab.out().join("loop/0.1.0/manifest.json.sig"), "signed").unwrap();
    std::fs::write(dir.join("loop/etc/motd"), "three\n").unwrap();
    let (code, _, stderr) = build(&["--replace"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot be replaced: it is signed"), "{stderr}");
}

/// `out/NAME/stable -> 2.0.0-rc1`: not a version. ls names it once (it does
/// not list 2.0.0-rc1 twice), and verify refuses it with or without a
/// trailing `/`, the same way.
#[test]
fn a_symlinked_version_is_refused_the_same_way_everywhere() {
    if !needs_root("a_symlinked_version_is_refused_the_same_way_everywhere") {
        return;
    }
    let lab = Lab::new();
    lab.build("2.0.0-rc1", "linked");
    std::os::unix::fs::symlink("2.0.0-rc1", lab.out().join("rel/stable")).unwrap();
    let (code, stdout, stderr) = lab.release(&["ls", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rows.iter().filter(|row| row["version"] == "2.0.0-rc1").count(), 1, "{stdout}");
    let link = rows.iter().find(|row| row["version"] == "stable").unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(link["state"], "broken");
    assert!(link["error"].as_str().unwrap().contains("a symlink (to 2.0.0-rc1), not a version"), "{link}");
    for path in ["rel/stable", "rel/stable/"] {
        let (code, _, stderr) =
            run(rootsmith().args(["release", "verify"]).arg(format!("{}/{path}", lab.out().display())));
        assert_eq!(code, 2, "{path}: {stderr}");
        assert!(stderr.contains("is a symlink (to 2.0.0-rc1)"), "{path}: {stderr}");
    }
}

/// `build --json` for CI: the warnings it gave (an unreachable remote cache)
/// and the bundle's artifacts with their sizes and digests.
#[test]
fn the_json_summary_has_the_warnings_and_the_artifacts() {
    if !needs_root("the_json_summary_has_the_warnings_and_the_artifacts") {
        return;
    }
    let lab = Lab::new();
    lab.build("5.0.0", "json");
    let recipe = lab.dir.path().join("rel-5.0.0.yaml");
    let mut command = rootsmith();
    command.args(["build", "--fast", "--json", "--cache"]).arg(lab.dir.path().join("cache"));
    command
        .arg("--out")
        .arg(lab.out())
        .args(["--version", "5.0.1", "--cache-remote", "127.0.0.1:9/nowhere"])
        .arg(&recipe);
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let warnings = summary["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("remote cache 127.0.0.1:9/nowhere")), "{summary}");
    let artifacts = summary["artifacts"].as_array().unwrap();
    let image = artifacts.iter().find(|a| a["name"] == "rel-5.0.1-rootfs.img").unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(image["sha256"].as_str().unwrap(), sha256(&lab.out().join("rel/5.0.1/rel-5.0.1-rootfs.img")));
    assert!(image["size"].as_u64().unwrap() > 0);
}

/// Give a built bundle a kernel entry and config, as a kernel stage would.
fn add_kernel_config(bundle: &Path, config: &str) {
    std::fs::create_dir_all(bundle.join("kernel")).unwrap();
    std::fs::write(bundle.join("kernel/tiny-config"), config).unwrap();
    let path = bundle.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["kernels"] = serde_json::json!([{ "name": "tiny", "release": "6.1.0-tiny", "config_sha256": "00", "vmlinuz": "x", "debs": [] }]);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

#[test]
fn diff_names_exactly_what_changed() {
    if !needs_root("diff_names_exactly_what_changed") {
        return;
    }
    let lab = Lab::new();
    let a = lab.build_with("1.0.0", "same", &[("base-files", "12.4"), ("curl", "7.88.1-10"), ("less", "590-2")]);
    let b = lab.build_with(
        "1.1.0",
        "other",
        &[("base-files", "12.4"), ("curl", "7.88.1-10"), ("less", "590-2"), ("jq", "1.6-2.1")],
    );
    let c = lab.build_with(
        "1.2.0",
        "third",
        &[("base-files", "12.4"), ("curl", "7.88.1-10+deb12u5"), ("less", "590-2"), ("jq", "1.6-2.1")],
    );
    add_kernel_config(&a, "CONFIG_A=y\n# CONFIG_IKCONFIG is not set\nCONFIG_LOCALVERSION=\"-x\"\n");
    add_kernel_config(&b, "CONFIG_A=y\nCONFIG_IKCONFIG=y\nCONFIG_LOCALVERSION=\"-x\"\n");
    let (code, stdout, stderr) = lab.release(&["diff", "rel", "1.0.0", "1.1.0", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let diff: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // Exactly one package and one kernel option differ.
    assert_eq!(diff["packages_added"], serde_json::json!({ "jq:amd64": "1.6-2.1" }));
    assert_eq!(diff["packages_removed"], serde_json::json!({}));
    assert_eq!(diff["packages_changed"], serde_json::json!({}));
    assert_eq!(diff["kernels"][0]["options"], serde_json::json!({ "CONFIG_IKCONFIG": ["n", "y"] }));
    assert_eq!(diff["kernels"].as_array().unwrap().len(), 1);
    // Only the stage whose input changed has a new key.
    assert_eq!(diff["stages"].as_object().unwrap().keys().collect::<Vec<_>>(), ["files"]);
    let artifacts: Vec<&str> =
        diff["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert!(
        artifacts.contains(&"packages.txt")
            && artifacts.iter().all(|name| !name.contains("1.0.0") && !name.contains("1.1.0")),
        "sizes compared by generic names: {artifacts:?}"
    );
    // The SBOM of each bundle lists its packages.
    let sbom: serde_json::Value = serde_json::from_slice(&std::fs::read(c.join("sbom.spdx.json")).unwrap()).unwrap();
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    let names: Vec<&str> = sbom["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base-files", "curl", "jq", "less"]);
    assert_eq!(sbom["packages"][1]["versionInfo"], "7.88.1-10+deb12u5");
    let (code, text, _) = lab.release(&["diff", "rel", "1.0.0", "1.1.0"]);
    assert_eq!(code, 0);
    assert!(text.contains("  + jq:amd64 1.6-2.1\n") && text.contains("  CONFIG_IKCONFIG: n → y\n"), "{text}");
    // The rootfs files that changed, with their sizes; nothing else.
    let changed: Vec<&String> = diff["files"]["changed"].as_object().unwrap().keys().collect();
    assert_eq!(changed, ["/etc/motd", "/var/lib/dpkg/status"], "{}", diff["files"]);
    assert_eq!(
        (
            diff["files"]["changed"]["/etc/motd"][0]["size"].as_u64(),
            diff["files"]["changed"]["/etc/motd"][1]["size"].as_u64()
        ),
        (Some(5), Some(6))
    );
    assert!(
        diff["files"]["added"].as_object().unwrap().is_empty()
            && diff["files"]["removed"].as_object().unwrap().is_empty(),
        "{}",
        diff["files"]
    );
    assert!(
        text.contains("files: 0 added, 0 removed, 2 changed\n") && text.contains("  ~ /etc/motd (content, 5 → 6 B)\n"),
        "{text}"
    );
    // A changed version shows as a change, both versions named.
    let (code, text, _) = lab.release(&["diff", "rel", "1.1.0", "1.2.0"]);
    assert_eq!(code, 0);
    assert!(text.contains("  ~ curl:amd64 7.88.1-10 → 7.88.1-10+deb12u5\n"), "{text}");
    assert!(c.is_dir());
}

#[test]
fn a_release_is_a_base_for_development() {
    if !needs_root("a_release_is_a_base_for_development") {
        return;
    }
    let lab = Lab::new();
    let release = lab.build("1.0.0", "released");
    let dev = lab.dir.path().join("dev");
    std::fs::create_dir_all(dev.join("extra/etc")).unwrap();
    std::fs::write(dev.join("extra/etc/dev-tool"), "added on top\n").unwrap();
    let recipe = dev.join("dev.yaml");
    std::fs::write(&recipe, "rootsmith: 1\nname: dev\nversion: 0.1.0\nstages:\n  - release: { name: rel, version: 1.0.0 }\n  - files: { src: extra, dest: / }\n").unwrap();
    let build = |extra: &[&str]| {
        let mut command = rootsmith();
        command
            .args(["build", "--fast", "--json"])
            .arg("--cache")
            .arg(lab.dir.path().join("cache"))
            .arg("--out")
            .arg(lab.out())
            .args(extra)
            .arg(&recipe);
        run(&mut command)
    };
    let (code, stdout, stderr) = build(&[]);
    assert_eq!(code, 0, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let kinds: Vec<&str> = summary["stages"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["release", "files"], "the release's own stages do not run again");
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(lab.out().join("dev/0.1.0/dev-0.1.0-rootfs.tar.zst"))
        .arg("--zstd")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("etc/motd") && listing.contains("etc/dev-tool") && listing.contains("etc/data"),
        "{listing}"
    );

    // A release tarball that no longer matches its manifest is refused.
    let tarball = release.join("rel-1.0.0-rootfs.tar.zst");
    let mut bytes = std::fs::read(&tarball).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&tarball, bytes).unwrap();
    let (code, _, stderr) = build(&["--version", "0.2.0", "--rebuild", "release"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("but the release's manifest says"), "{stderr}");
    // A release of another architecture is not a base for this one.
    std::fs::write(
        &recipe,
        "rootsmith: 1\nname: dev\nversion: 0.1.0\narch: arm64\nstages:\n  - release: { name: rel, version: 1.0.0 }\n",
    )
    .unwrap();
    let (code, _, stderr) = build(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the release base rel 1.0.0 is an amd64 bundle, and this recipe builds for arm64"),
        "{stderr}"
    );
    // A release that is not there says where it looked.
    std::fs::write(
        &recipe,
        "rootsmith: 1\nname: dev\nversion: 0.1.0\nstages:\n  - release: { name: rel, version: 9.9.9 }\n",
    )
    .unwrap();
    let (code, _, stderr) = build(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("the release base rel 9.9.9 is not in"), "{stderr}");
}

#[test]
fn the_fast_recipe_is_reproducible_on_two_empty_caches() {
    if !needs_root("the_fast_recipe_is_reproducible_on_two_empty_caches") {
        return;
    }
    let lab = Lab::new();
    let packages = [("base-files", "12.4"), ("curl", "7.88.1-10")];
    let a = lab.build_into("1.0.0", "same", &packages, "cache-a", &lab.dir.path().join("out-a"));
    let b = lab.build_into("1.0.0", "same", &packages, "cache-b", &lab.dir.path().join("out-b"));
    let sums = |bundle: &Path| std::fs::read_to_string(bundle.join("SHA256SUMS")).unwrap();
    assert_eq!(sums(&a), sums(&b), "two cold builds of the same recipe differ");
    assert!(sums(&a).lines().count() >= 6);
}

#[test]
fn verify_rebuild_passes_for_a_reproducible_recipe() {
    if !needs_root("verify_rebuild_passes_for_a_reproducible_recipe") {
        return;
    }
    let lab = Lab::new();
    let bundle = lab.build("1.0.0", "again");
    let recipe = lab.dir.path().join("rel-1.0.0.yaml");
    let (code, stdout, stderr) =
        lab.release(&["verify", bundle.to_str().unwrap(), "--rebuild", recipe.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("ok") && line.contains("rebuild") && line.contains("gives the same")),
        "{stdout}"
    );
    // Another recipe is refused: it is not the one the bundle was built from.
    let other = lab.dir.path().join("other.yaml");
    std::fs::write(&other, std::fs::read_to_string(&recipe).unwrap() + "# changed\n").unwrap();
    let (code, _, stderr) = lab.release(&["verify", bundle.to_str().unwrap(), "--rebuild", other.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is not the recipe rel 1.0.0 was built from"), "{stderr}");
}

/// Rewrite a bundle's manifest with `edit`, and its SHA256SUMS to match (the
/// manifest's artifacts, the manifest itself, then `extra` lines), as someone
/// tampering with a bundle would.
fn tamper(bundle: &Path, edit: impl FnOnce(&mut serde_json::Value), extra: &[String]) {
    let path = bundle.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let mut lines: Vec<String> = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}  {}", a["sha256"].as_str().unwrap(), a["name"].as_str().unwrap()))
        .collect();
    lines.push(format!("{}  manifest.json", sha256(&path)));
    lines.extend(extra.iter().cloned());
    std::fs::write(bundle.join("SHA256SUMS"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn a_hostile_bundle_reaches_nothing_outside_itself() {
    if !needs_root("a_hostile_bundle_reaches_nothing_outside_itself") {
        return;
    }
    let lab = Lab::new();
    let candidate = lab.build("1.0.0-rc1", "hostile");
    let pristine = copy_bundle(&candidate, &lab.dir.path().join("elsewhere/rel/1.0.0-rc1"));

    // A manifest (and SHA256SUMS, to match) naming files outside the bundle,
    // by a relative and by an absolute path: promote refuses and leaves them be.
    let relative = lab.dir.path().join("victim-relative");
    let absolute = lab.dir.path().join("victim-absolute");
    for victim in [&relative, &absolute] {
        std::fs::write(victim, "keep me\n").unwrap();
    }
    let artifact = |name: String, path: &Path| serde_json::json!({ "name": name, "size": 8, "sha256": sha256(path) });
    tamper(
        &candidate,
        |manifest| {
            let artifacts = manifest["artifacts"].as_array_mut().unwrap();
            artifacts.push(artifact("../../../victim-relative".into(), &relative));
            artifacts.push(artifact(absolute.display().to_string(), &absolute));
        },
        &[],
    );
    let (code, _, stderr) = lab.release(&["promote", "rel", "1.0.0-rc1", "1.0.0"]);
    for victim in [&relative, &absolute] {
        assert_eq!(std::fs::read_to_string(victim).unwrap(), "keep me\n", "promote changed {}", victim.display());
    }
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("\"../../../victim-relative\" is not a file a bundle may hold"), "{stderr}");
    assert!(!lab.out().join("rel/1.0.0").exists());
    let (code, output) = verify(&lab, &candidate);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.lines().any(|line| line.starts_with("FAILED manifest")
            && line.contains("is not a file a bundle may hold: it is an absolute path")),
        "{output}"
    );

    // FROM is a version, not a path: a bundle outside --out is not promoted.
    let (code, _, stderr) = lab.release(&["promote", "rel", "../../elsewhere/rel/1.0.0-rc1", "2.0.0"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is not a valid version"), "{stderr}");
    assert!(!lab.out().join("rel/2.0.0").exists());

    // A SHA256SUMS line naming a host file: never hashed, its digest never printed.
    let secret = lab.dir.path().join("secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    let sums = copy_bundle(&pristine, &lab.dir.path().join("sums/rel/1.0.0-rc1"));
    let zeros = "0".repeat(64);
    tamper(&sums, |_| {}, &[format!("{zeros}  ../../../secret"), format!("{zeros}  {}", secret.display())]);
    let (code, output) = verify(&lab, &sums);
    assert_eq!(code, 1, "{output}");
    assert!(!output.contains(&sha256(&secret)), "verify printed the digest of a host file:\n{output}");
    assert!(
        output.lines().any(|line| line.starts_with("FAILED SHA256SUMS")
            && line.contains("\"../../../secret\" is not a file a bundle may hold")),
        "{output}"
    );
}

#[test]
fn special_files_in_a_bundle_fail_promptly() {
    if !needs_root("special_files_in_a_bundle_fail_promptly") {
        return;
    }
    let lab = Lab::new();
    let candidate = lab.build("1.0.0-rc1", "special");
    // rootfs.img a FIFO: named, never waited on.
    let fifo = copy_bundle(&candidate, &lab.dir.path().join("fifo/rel/1.0.0-rc1"));
    let image = fifo.join("rel-1.0.0-rc1-rootfs.img");
    std::fs::remove_file(&image).unwrap();
    nix::unistd::mkfifo(&image, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (code, stdout, stderr) = lab.release_within(&["verify", fifo.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.lines().any(|line| line.starts_with("FAILED SHA256SUMS")
            && line.contains("rel-1.0.0-rc1-rootfs.img: is a FIFO, not a regular file")),
        "{stdout}"
    );
    // The initramfs a symlink to /dev/zero: not followed, nothing read.
    let zero = copy_bundle(&candidate, &lab.dir.path().join("zero/rel/1.0.0-rc1"));
    let initramfs = zero.join("rel-1.0.0-rc1-initramfs.img");
    std::fs::remove_file(&initramfs).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &initramfs).unwrap();
    let (code, stdout, stderr) = lab.release_within(&["verify", zero.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("rel-1.0.0-rc1-initramfs.img: is a symbolic link"), "{stdout}");
    // promote of a candidate holding a FIFO: refused promptly, nothing published.
    let packages = candidate.join("packages.txt");
    std::fs::remove_file(&packages).unwrap();
    nix::unistd::mkfifo(&packages, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (code, _, stderr) = lab.release_within(&["promote", "rel", "1.0.0-rc1", "1.0.0"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("packages.txt: is a FIFO"), "{stderr}");
    assert!(!lab.out().join("rel/1.0.0").exists());
}

#[test]
fn ls_names_a_broken_bundle_and_verify_a_misplaced_one() {
    if !needs_root("ls_names_a_broken_bundle_and_verify_a_misplaced_one") {
        return;
    }
    let lab = Lab::new();
    let bundle = lab.build("1.0.0", "placed");
    // A copy in another version's directory, and a manifest that is not one.
    let misplaced = copy_bundle(&bundle, &lab.out().join("rel/1.0.1"));
    std::fs::create_dir_all(lab.out().join("rel/1.0.2")).unwrap();
    std::fs::write(lab.out().join("rel/1.0.2/manifest.json"), "{ not json").unwrap();
    let (code, output) = verify(&lab, &misplaced);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.lines().any(|line| line.starts_with("FAILED manifest")
            && line
                .contains("manifest.json says version 1.0.0, but the bundle is in the directory of version \"1.0.1\"")),
        "{output}"
    );
    let (code, stdout, stderr) = lab.release(&["ls"]);
    assert_eq!(code, 0, "{stderr}");
    let versions: Vec<&str> = stdout.lines().skip(1).filter_map(|line| line.split_whitespace().nth(1)).collect();
    assert_eq!(versions, ["1.0.0"], "{stdout}");
    for (version, why) in [("1.0.1", "says version 1.0.0"), ("1.0.2", "does not follow the manifest schema")] {
        assert!(
            stderr.lines().any(|line| line.contains(&format!("rel/{version} is broken")) && line.contains(why)),
            "{version}: {stderr}"
        );
    }
    let (code, stdout, _) = lab.release(&["ls", "--json"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let states: Vec<(&str, &str)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["version"].as_str().unwrap(), row["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("1.0.0", "released"), ("1.0.1", "broken"), ("1.0.2", "broken")]);
    let (code, _, stderr) = lab.release(&["show", "rel", "1.0.1"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("says version 1.0.0"), "{stderr}");
}

/// A key pair from ssh-keygen: (private key, public key).
fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client) runs");
    assert!(status.success());
    (key.clone(), key.with_extension("pub"))
}

/// Signed releases: `build --sign`, `release sign` and `promote --sign` write
/// manifest.json.sig; `release verify --key` checks it before anything else
/// and names what failed (a flipped byte in the manifest or in an artifact,
/// another key, no signature); ssh-keygen accepts rootsmith's signature.
#[test]
fn signed_releases_are_checked_before_anything_else() {
    if !needs_root("signed_releases_are_checked_before_anything_else") {
        return;
    }
    let lab = Lab::new();
    let keys = lab.dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (key, public) = key_pair(&keys, "release");
    let (other_key, other_public) = key_pair(&keys, "other");
    let verify_with = |bundle: &Path, public: &Path| {
        let (code, stdout, stderr) =
            lab.release(&["verify", bundle.to_str().unwrap(), "--key", public.to_str().unwrap()]);
        (code, format!("{stdout}{stderr}"))
    };

    // build --sign: the bundle verifies with the key, and unsigned checks still pass.
    let recipe_bundle = lab.build("2.0.0-rc1", "signed");
    let listed = |field: &str| {
        let (code, stdout, stderr) = lab.release(&["ls", "--json"]);
        assert_eq!(code, 0, "{stderr}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
        rows.into_iter().find(|row| row["version"] == "2.0.0-rc1").unwrap()[field].clone()
    };
    let published = listed("published");
    assert_eq!(listed("signed_by"), serde_json::Value::Null);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (code, stdout, stderr) =
        run(rootsmith().args(["release", "sign", "rel", "2.0.0-rc1", "--key"]).arg(&key).arg("--out").arg(lab.out()));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("signed rel 2.0.0-rc1 with SHA256:"), "{stdout}");
    // Signing changes neither when it was published, and ls and show name the key.
    assert_eq!(listed("published"), published, "signing moved the version's time");
    let fingerprint = stdout.split(" with ").nth(1).and_then(|rest| rest.split(": ").next()).unwrap().to_string();
    assert_eq!(listed("signed_by").as_str(), Some(fingerprint.as_str()), "{stdout}");
    let (_, shown, _) = lab.release(&["show", "rel", "2.0.0-rc1"]);
    assert!(shown.contains("signed by SHA256:"), "{shown}");
    let signature = recipe_bundle.join("manifest.json.sig");
    let first = std::fs::read(&signature).unwrap();
    let (code, output) = verify_with(&recipe_bundle, &public);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("signature") && output.contains("manifest.json signed by SHA256:"), "{output}");
    let (code, output) = verify(&lab, &recipe_bundle);
    assert_eq!(code, 0, "a signature file is no unlisted file: {output}");
    // Signing again gives the same bytes (Ed25519 is deterministic).
    run(rootsmith().args(["release", "sign", "rel", "2.0.0-rc1", "--key"]).arg(&key).arg("--out").arg(lab.out()));
    assert_eq!(std::fs::read(&signature).unwrap(), first);

    // The outside tool agrees: ssh-keygen -Y verify with an allowed-signers file.
    let allowed = keys.join("allowed_signers");
    std::fs::write(&allowed, format!("release@rootsmith {}", std::fs::read_to_string(&public).unwrap())).unwrap();
    let manifest = std::fs::File::open(recipe_bundle.join("manifest.json")).unwrap();
    let check = std::process::Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "rootsmith-release", "-I", "release@rootsmith", "-f"])
        .arg(&allowed)
        .arg("-s")
        .arg(&signature)
        .stdin(manifest)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "ssh-keygen refuses rootsmith's signature: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Another key, no signature, a flipped byte in the manifest, in an artifact.
    let (code, output) = verify_with(&recipe_bundle, &other_public);
    assert_eq!(code, 1);
    assert!(output.contains("was made by another key"), "{output}");
    let unsigned = copy_bundle(&recipe_bundle, &lab.dir.path().join("unsigned/rel/2.0.0-rc1"));
    std::fs::remove_file(unsigned.join("manifest.json.sig")).unwrap();
    let (code, output) = verify_with(&unsigned, &public);
    assert_eq!(code, 1);
    assert!(output.contains("the bundle is not signed (manifest.json.sig is missing)"), "{output}");
    let edited = copy_bundle(&recipe_bundle, &lab.dir.path().join("edited/rel/2.0.0-rc1"));
    let text = std::fs::read_to_string(edited.join("manifest.json")).unwrap();
    std::fs::write(edited.join("manifest.json"), text.replacen("\"fast\": true", "\"fast\": false", 1)).unwrap();
    let (code, output) = verify_with(&edited, &public);
    assert_eq!(code, 1);
    assert!(output.contains("manifest.json does not match its signature"), "{output}");
    assert!(!output.contains("SHA256SUMS"), "nothing after a failed signature is checked: {output}");
    let flipped = copy_bundle(&recipe_bundle, &lab.dir.path().join("flipped/rel/2.0.0-rc1"));
    let image = flipped.join("rel-2.0.0-rc1-rootfs.img");
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[300] ^= 1;
    std::fs::write(&image, bytes).unwrap();
    let (code, output) = verify_with(&flipped, &public);
    assert_eq!(code, 1);
    assert!(output.contains("rel-2.0.0-rc1-rootfs.img differs"), "the signed manifest pins the artifact: {output}");

    // promote drops the signature (the new manifest is not the signed one) unless --sign.
    let (code, _, stderr) = lab.release(&["promote", "rel", "2.0.0-rc1", "2.0.0"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, output) = verify_with(&lab.out().join("rel/2.0.0"), &public);
    assert_eq!(code, 1);
    assert!(output.contains("not signed"), "{output}");
    let (code, _, stderr) = run(rootsmith()
        .args(["release", "promote", "rel", "2.0.0-rc1", "2.0.1", "--sign"])
        .arg(&other_key)
        .arg("--out")
        .arg(lab.out()));
    assert_eq!(code, 0, "{stderr}");
    let (code, output) = verify_with(&lab.out().join("rel/2.0.1"), &other_public);
    assert_eq!(code, 0, "{output}");

    // build --sign signs what it publishes; a bad key stops it before anything runs.
    let recipe = lab.dir.path().join("rel-2.0.0-rc1.yaml");
    let (code, stdout, stderr) = run(rootsmith()
        .args(["build", "--fast", "--json", "--version", "2.1.0", "--sign"])
        .arg(&key)
        .arg("--cache")
        .arg(lab.dir.path().join("cache"))
        .arg("--out")
        .arg(lab.out())
        .arg(&recipe));
    assert_eq!(code, 0, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(summary["signed_by"].as_str().unwrap().starts_with("SHA256:"), "{summary}");
    let (code, output) = verify_with(&lab.out().join("rel/2.1.0"), &public);
    assert_eq!(code, 0, "{output}");
    let (code, _, stderr) = run(rootsmith()
        .args(["build", "--fast", "--version", "2.2.0", "--sign"])
        .arg(&public)
        .arg("--cache")
        .arg(lab.dir.path().join("cache"))
        .arg("--out")
        .arg(lab.out())
        .arg(&recipe));
    assert_eq!(code, 1);
    assert!(stderr.contains("is not an OpenSSH private key"), "{stderr}");
    assert!(!lab.out().join("rel/2.2.0").exists(), "a build with a bad key published");
}
