//! A table of bad recipes and the line:column each error must point at.

use std::path::Path;

use super::*;

/// A recipe directory with the files the good parts of the table refer to.
fn fixture_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs_err::create_dir(dir.path().join("overlay")).unwrap();
    fs_err::write(dir.path().join("overlay/motd"), "hi\n").unwrap();
    fs_err::write(dir.path().join("configure.sh"), "true\n").unwrap();
    fs_err::write(dir.path().join("base.tar"), "").unwrap();
    nix::unistd::mkfifo(&dir.path().join("fifo.tar"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    dir
}

fn errors_of(source: &str) -> Vec<(usize, usize, String)> {
    let dir = fixture_dir();
    let file = dir.path().join("recipe.yaml");
    match load_str(&file, source, &LoadOptions::default()) {
        Ok(_) => Vec::new(),
        Err(Diagnostics(list)) => {
            list.iter().map(|d| (d.position.line, d.position.column, d.message.clone())).collect()
        }
    }
}

const HEAD: &str = "rootsmith: 1\nname: demo\nversion: 1.0.0\n";

#[test]
fn good_recipe_loads() {
    let dir = fixture_dir();
    let source = format!(
        "{HEAD}vars: {{ suite: bookworm }}\nstages:\n  - debootstrap: {{ suite: \"${{suite}}\", include: [systemd-sysv] }}\n    name: base\n  - packages: {{ install: [curl] }}\n  - files: {{ src: overlay, dest: /etc, modes: {{ motd: \"0600\" }} }}\n  - run: {{ script: configure.sh }}\n  - run: {{ sh: echo $HOME }}\n"
    );
    let options = LoadOptions { sets: vec![("suite".into(), "trixie".into())] };
    let recipe = load_str(&dir.path().join("r.yaml"), &source, &options).unwrap();
    let names: Vec<&str> = recipe.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["base", "packages", "files", "run", "run-5"]);
    match &recipe.stages[0].kind {
        StageKind::Debootstrap(d) => assert_eq!((d.suite.as_str(), d.variant.as_str()), ("trixie", "minbase")),
        other => panic!("{other:?}"),
    }
    match &recipe.stages[2].kind {
        StageKind::Files(f) => assert_eq!(f.modes["motd"], 0o600),
        other => panic!("{other:?}"),
    }
    assert_eq!(recipe.outputs.squashfs, Compression { algorithm: Algorithm::Zstd, level: Some(15) });
    assert_eq!(recipe.outputs.initramfs.compression, Compression { algorithm: Algorithm::Zstd, level: Some(19) });
    assert_eq!(recipe.outputs.initramfs.module_names(), ["loop", "squashfs", "overlay"]);
    assert_eq!(recipe.boot, Boot::default());
    let error = recipe.stage_index("nope", "--rebuild").unwrap_err();
    assert_eq!(error.line_column(), (5, 1));
    assert!(error.hint.unwrap().contains("base, packages, files, run, run-5"));
}

/// (recipe body after the common head, expected line, column, part of the message)
const BAD: &[(&str, usize, usize, &str)] = &[
    // unknown keys
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - packages: { instal: [curl] }\n", 6, 17, "unknown field `instal`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - packagez: { install: [curl] }\n", 6, 5, "unknown field `packagez`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\nextra: 1\n", 6, 1, "unknown field `extra`"),
    ("source_date_epoch: -5\nstages:\n  - debootstrap: { suite: bookworm }\n", 4, 20, "source_date_epoch -5 is outside the times"),
    ("source_date_epoch: 253402300800\nstages:\n  - debootstrap: { suite: bookworm }\n", 4, 20, "253402300800 is outside the times"),
    // wrong types
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - packages: { install: curl }\n", 6, 26, "invalid type"),
    ("stages: {}\n", 4, 9, "invalid type"),
    ("arch: [amd64]\nstages: []\n", 4, 7, "invalid type"),
    // missing fields
    ("stages:\n  - debootstrap: { variant: minbase }\n", 5, 18, "missing field `suite`"),
    // referenced files missing
    ("stages:\n  - tarball: { path: missing.tar.zst }\n", 5, 22, "file `missing.tar.zst` does not exist"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - files: { src: nothere/ }\n", 6, 19, "directory `nothere/` does not exist"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - files: { src: configure.sh }\n", 6, 19, "is not a directory"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - run: { script: gone.sh }\n", 6, 20, "file `gone.sh` does not exist"),
    // only regular files are read: a FIFO blocks, a device never ends
    ("stages:\n  - tarball: { path: fifo.tar }\n", 5, 22, "`fifo.tar` is a FIFO, not a regular file"),
    ("stages:\n  - tarball: { path: /dev/zero }\n", 5, 22, "`/dev/zero` is a character device, not a regular file"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - run: { script: fifo.tar }\n", 6, 20, "`fifo.tar` is a FIFO"),
    ("stages:\n  - debootstrap: { suite: bookworm }\nhosts: /dev/null\n", 6, 8, "`/dev/null` is a character device"),
    // base stage placement
    ("stages:\n  - packages: { install: [curl] }\n", 5, 5, "the first stage is `packages`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - tarball: { path: base.tar }\n", 6, 5, "base stage `tarball` must be the first stage"),
    // stage shape
    ("stages:\n  - debootstrap: { suite: bookworm }\n    tarball: { path: base.tar }\n", 6, 5, "a stage has one kind"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - name: lonely\n", 6, 5, "this stage has no kind"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - run: { sh: x }\n    name: a\n  - run: { sh: y }\n    name: a\n", 9, 11, "two stages are named `a`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - run: {}\n", 6, 5, "needs `sh` or `script`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - run: { sh: x, script: configure.sh }\n", 6, 19, "not both"),
    // values
    ("stages:\n  - debootstrap: { suite: \"${suit}\" }\n", 5, 27, "undefined variable `suit`"),
    ("stages:\n  - debootstrap: { suite: bookworm, variant: tiny }\n", 5, 46, "unknown variant `tiny`"),
    ("stages:\n  - debootstrap: { suite: bookworm, mirror: ftp.example }\n", 5, 45, "is not a URL"),
    ("stages:\n  - debootstrap: { suite: bookworm, tool: cdebootstrap }\n", 5, 43, "unknown tool `cdebootstrap`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - kernel: { package: linux-image-amd64, source: { package: linux-source-6.1 } }\n", 6, 15, "not both"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - kernel: { name: lts }\n", 6, 5, "needs `source`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - kernel: { source: { tarball: linux.tar.xz }, config: { base: defconfig } }\n", 6, 25, "needs its `sha256`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - kernel: { source: { package: linux-source-6.1 } }\n", 6, 5, "needs `config`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - kernel: { source: { package: linux-source-6.1 }, config: { base: defconfig, fragments: [nope.config] } }\n", 6, 93, "file `nope.config` does not exist"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - kernel: { source: { package: linux-source-6.1 }, config: { base: my.config } }\n", 6, 70, "file `my.config` does not exist"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - kernel: { package: linux-image-amd64, localversion: -x }\n", 6, 43, "only applies to a kernel built from `source`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - kernel: { name: a, package: linux-image-amd64 }\n    name: b\n", 6, 15, "named twice"),
    ("stages:\n  - kernel: { package: linux-image-amd64 }\n", 5, 5, "the first stage is `kernel`"),
    ("arch: sparc\nstages:\n  - debootstrap: { suite: bookworm }\n", 4, 7, "architecture `sparc` is not supported"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - files: { src: overlay, dest: etc }\n", 6, 34, "must be an absolute path"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - files: { src: overlay, owner: root }\n", 6, 35, "is not UID:GID"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - files: { src: overlay, modes: { motd: \"999\" } }\n", 6, 43, "not an octal mode"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - files: { src: overlay, modes: { gone: \"0600\" } }\n", 6, 37, "`modes` names `gone`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - packages: {}\n", 6, 5, "needs `install` or `remove`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\noutputs:\n  rootfs: { squashfs: { compression: brotli } }\n", 7, 38, "unknown compression `brotli`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\noutputs:\n  tarball: { level: 40 }\n", 7, 21, "level 40 is out of range"),
    ("stages:\n  - debootstrap: { suite: bookworm }\noutputs:\n  rootfs: { squashfs: { compression: xz, level: 3 } }\n", 7, 49, "takes no level"),
    // release base
    ("stages:\n  - release: { name: rel, version: 1/0 }\n", 5, 36, "invalid version `1/0`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\n  - release: { name: rel, version: 1.0.0 }\n", 6, 5, "base stage `release` must be the first stage"),
    // netboot
    ("stages:\n  - debootstrap: { suite: bookworm }\noutputs:\n  initramfs: { compression: xz }\n", 7, 29, "unknown compression `xz`"),
    ("stages:\n  - debootstrap: { suite: bookworm }\noutputs:\n  initramfs: { modules: [virtio_net, \"../evil\"] }\n", 7, 38, "`../evil` is not a module name"),
    ("stages:\n  - debootstrap: { suite: bookworm }\nboot:\n  cmdline: \"console=ttyS0 rootsmith.rootfs_url=http://x/\"\n", 7, 12, "sets rootsmith.rootfs_url"),
    ("stages:\n  - debootstrap: { suite: bookworm }\nboot: { marker: \"\" }\n", 6, 17, "boot.marker is empty"),
    ("stages:\n  - debootstrap: { suite: bookworm }\nboot:\n  cmdline: \"console=ttyS0\\nchain http://evil/ && shell\"\n", 7, 12, "line break"),
    ("stages:\n  - debootstrap: { suite: bookworm }\nboot:\n  cmdline: \"quiet || shell\"\n", 7, 12, "boot scripts give a meaning"),
    ("stages:\n  - debootstrap: { suite: bookworm }\nboot: { cmdline: x, kernel: y }\n", 6, 21, "unknown field `kernel`"),
    // a key given twice: where it is given again
    ("stages:\n  - debootstrap: { suite: bookworm }\nversion: 2.0.0\n", 6, 1, "`version` is given twice"),
    ("stages:\n  - run: { sh: a, sh: b }\n", 5, 19, "`stages[0].run.sh` is given twice"),
];

#[test]
fn bad_recipes_point_at_the_right_place() {
    let mut failures = Vec::new();
    for (body, line, column, message) in BAD {
        let errors = errors_of(&format!("{HEAD}{body}"));
        let found = errors.iter().any(|(l, c, m)| (*l, *c) == (*line, *column) && m.contains(message));
        if !found {
            failures.push(format!("{body:?}\n  want {line}:{column} {message:?}\n  got  {errors:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn header_errors_point_at_their_values() {
    let cases: &[(&str, usize, usize, &str)] = &[
        (
            "rootsmith: 2\nname: demo\nversion: 1.0.0\nstages:\n  - debootstrap: { suite: x }\n",
            1,
            12,
            "schema version 2",
        ),
        (
            "rootsmith: 1\nname: Demo!\nversion: 1.0.0\nstages:\n  - debootstrap: { suite: x }\n",
            2,
            7,
            "invalid recipe name",
        ),
        ("rootsmith: 1\nname: demo\nversion: 1/0\nstages:\n  - debootstrap: { suite: x }\n", 3, 10, "invalid version"),
        ("rootsmith: 1\nversion: 1.0.0\nstages: []\n", 1, 1, "missing field `name`"),
        (
            "rootsmith: 1\nname: demo\nversion: 1.0.0\nstages:\n  - debootstrap: { suite: x\n",
            6,
            1,
            "did not find expected",
        ),
    ];
    for (source, line, column, message) in cases {
        let errors = errors_of(source);
        assert!(
            errors.iter().any(|(l, c, m)| (*l, *c) == (*line, *column) && m.contains(message)),
            "{source:?}: {errors:?}"
        );
    }
}

/// `arch:` takes what rootsmith builds for, no more: Debian architectures
/// it has no init or boot chain for are refused at the value, and the hint
/// lists the supported ones.
#[test]
fn only_supported_architectures_are_accepted() {
    let dir = fixture_dir();
    for arch in ["amd64", "arm64"] {
        let source = format!("{HEAD}arch: {arch}\nstages:\n  - debootstrap: {{ suite: bookworm }}\n");
        let recipe = load_str(&dir.path().join("r.yaml"), &source, &LoadOptions::default())
            .unwrap_or_else(|errors| panic!("{arch}: {errors:?}"));
        assert_eq!(recipe.arch, arch);
    }
    let source = format!("{HEAD}stages:\n  - debootstrap: {{ suite: bookworm }}\n");
    assert_eq!(
        load_str(&dir.path().join("r.yaml"), &source, &LoadOptions::default()).unwrap().arch,
        "amd64",
        "the default"
    );
    for arch in ["armhf", "i386", "ppc64el", "riscv64", "s390x", "x86_64", "aarch64", "AMD64"] {
        let source = format!("{HEAD}stages:\n  - debootstrap: {{ suite: bookworm }}\narch:   {arch}\n");
        let Diagnostics(errors) = load_str(&dir.path().join("r.yaml"), &source, &LoadOptions::default()).unwrap_err();
        assert_eq!(errors.len(), 1, "{arch}: {errors:?}");
        assert_eq!(errors[0].line_column(), (6, 9), "{arch}: at the value");
        assert_eq!(errors[0].message, format!("architecture `{arch}` is not supported"));
        assert_eq!(errors[0].hint.as_deref(), Some("rootsmith builds for: amd64, arm64"), "{arch}");
    }
}

/// `--set arch=A` (what `--arch A` passes) builds the recipe for A as the
/// bundle NAME-A, and `${arch}` is the architecture built for.
#[test]
fn set_arch_builds_the_recipe_for_another_architecture_as_its_own_bundle() {
    let dir = fixture_dir();
    let source = format!("{HEAD}arch: amd64\nstages:\n  - debootstrap: {{ suite: bookworm }}\n  - kernel: {{ package: \"linux-image-${{arch}}\" }}\n");
    let package = |recipe: &Recipe| match &recipe.stages[1].kind {
        StageKind::Kernel(Kernel::Package { package }) => package.clone(),
        other => panic!("{other:?}"),
    };
    let plain = load_str(&dir.path().join("r.yaml"), &source, &LoadOptions::default()).unwrap();
    assert_eq!(
        (plain.name.as_str(), plain.arch.as_str(), package(&plain).as_str()),
        ("demo", "amd64", "linux-image-amd64")
    );
    let options = LoadOptions { sets: vec![("arch".into(), "arm64".into())] };
    let arm64 = load_str(&dir.path().join("r.yaml"), &source, &options).unwrap();
    assert_eq!(
        (arm64.name.as_str(), arm64.arch.as_str(), package(&arm64).as_str()),
        ("demo-arm64", "arm64", "linux-image-arm64")
    );
    let options = LoadOptions { sets: vec![("arch".into(), "armhf".into())] };
    let Diagnostics(errors) = load_str(&dir.path().join("r.yaml"), &source, &options).unwrap_err();
    assert_eq!(errors[0].message, "--set arch=armhf: architecture `armhf` is not supported");
    assert_eq!(errors[0].line_column(), (4, 1), "at `arch:`");
}

#[test]
fn set_of_an_undeclared_variable_is_an_error() {
    let dir = fixture_dir();
    let source = format!("{HEAD}vars: {{ suite: bookworm }}\nstages:\n  - debootstrap: {{ suite: \"${{suite}}\" }}\n");
    let options = LoadOptions { sets: vec![("suit".into(), "trixie".into())] };
    let Diagnostics(errors) = load_str(&dir.path().join("r.yaml"), &source, &options).unwrap_err();
    assert_eq!(errors[0].line_column(), (4, 1));
    assert!(errors[0].message.contains("`suit`"));
}

#[test]
fn a_recipe_that_is_not_utf8_is_named_at_its_line_and_byte() {
    let dir = fixture_dir();
    let file = dir.path().join("latin1.yaml");
    fs_err::write(&file, b"rootsmith: 1\nname: demo\n# caf\xe9\nversion: 1.0.0\n").unwrap();
    let Diagnostics(errors) = load(&file, &LoadOptions::default()).unwrap_err();
    assert_eq!((errors[0].position.line, errors[0].position.column), (3, 6), "{:?}", errors[0]);
    assert!(errors[0].message.contains("not UTF-8 text: byte 0xe9 at line 3, column 6"), "{}", errors[0].message);
}

#[test]
fn missing_recipe_file_is_a_diagnostic() {
    let Diagnostics(errors) = load(Path::new("/nonexistent/recipe.yaml"), &LoadOptions::default()).unwrap_err();
    assert!(errors[0].message.contains("cannot read recipe"));
}

#[test]
fn paths_resolve_to_absolute_ones_from_a_relative_recipe_path() {
    let dir = fixture_dir();
    let source =
        format!("{HEAD}stages:\n  - debootstrap: {{ suite: bookworm }}\n  - run: {{ script: configure.sh }}\n");
    fs_err::write(dir.path().join("r.yaml"), &source).unwrap();
    let previous = std::env::current_dir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    let loaded = load(Path::new("r.yaml"), &LoadOptions::default());
    std::env::set_current_dir(previous).unwrap();
    let recipe = loaded.unwrap();
    match &recipe.stages[1].kind {
        StageKind::Run(Run { script: Script::File(path), .. }) => {
            assert!(path.resolved.is_absolute(), "{}", path.resolved.display());
            assert!(path.resolved.is_file());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_recipes_inventory_is_checked_against_its_kernels() {
    let dir = fixture_dir();
    let inventory = "hosts:\n  - name: a\n    mac: 52:54:00:00:00:11\n    entry: agent-http\n  - name: b\n    mac: 52:54:00:00:00:12\n    entry: big-appended\n";
    fs_err::write(dir.path().join("lab.yaml"), inventory).unwrap();
    let source = format!("{HEAD}stages:\n  - tarball: {{ path: base.tar }}\n  - kernel: {{ name: agent, package: linux-image-amd64 }}\nhosts: lab.yaml\n");
    let file = dir.path().join("recipe.yaml");
    let Err(Diagnostics(list)) = load_str(&file, &source, &LoadOptions::default()) else {
        panic!("big-appended names no kernel of the recipe")
    };
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        (list[0].file.clone(), list[0].position.line, list[0].position.column),
        (dir.path().join("lab.yaml"), 7, 12)
    );
    assert!(list[0].message.contains("has no kernel `big` (it has: agent)"), "{}", list[0].message);

    fs_err::write(dir.path().join("lab.yaml"), inventory.replace("big-appended", "local")).unwrap();
    let recipe = load_str(&file, &source, &LoadOptions::default()).unwrap();
    assert_eq!(recipe.hosts.unwrap().written, "lab.yaml");

    fs_err::write(
        dir.path().join("lab.yaml"),
        format!("bundle: out/x/1\n{}", inventory.replace("big-appended", "local")),
    )
    .unwrap();
    let Err(Diagnostics(list)) = load_str(&file, &source, &LoadOptions::default()) else {
        panic!("a recipe's inventory names no bundle")
    };
    assert_eq!((list[0].position.line, list[0].position.column), (1, 1));
    let missing = errors_of(&format!("{HEAD}stages:\n  - tarball: {{ path: base.tar }}\nhosts: nowhere.yaml\n"));
    assert_eq!(missing, vec![(6, 8, "file `nowhere.yaml` does not exist".to_string())]);
}

#[test]
fn oci_stages_name_one_source() {
    let dir = fixture_dir();
    fs_err::create_dir(dir.path().join("layout")).unwrap();
    let errors = |stage: &str| errors_of(&format!("{HEAD}stages:\n  - oci: {stage}\n"));
    let both = errors("{ image: \"127.0.0.1:5000/a/b:1\", layout: layout }");
    assert!(both[0].2.contains("`image` or `layout`, not both"), "{both:?}");
    let neither = errors("{ ref: x }");
    assert!(neither[0].2.contains("needs `image: REF` or `layout: DIR`"), "{neither:?}");
    let ref_with_image = errors("{ image: \"127.0.0.1:5000/a/b:1\", ref: x }");
    assert_eq!((ref_with_image[0].0, ref_with_image[0].1), (5, 43), "{ref_with_image:?}");
    let bad = errors("{ image: \"Not A Reference!\" }");
    assert_eq!((bad[0].0, bad[0].1), (5, 19), "{bad:?}");
    assert!(bad[0].2.contains("is not an image reference"), "{bad:?}");
    let missing = errors("{ layout: nowhere }");
    assert!(missing[0].2.contains("directory `nowhere` does not exist"), "{missing:?}");
}

#[test]
fn every_unknown_key_is_reported_in_one_run_with_the_other_problems() {
    let source = format!("{HEAD}stages:\n  - debootstrap: {{ suite: bookworm, varient: minbase }}\n  - packages: {{ instal: [curl] }}\n    nmae: tools\n  - run: {{ script: missing.sh }}\nouputs: {{}}\n");
    let errors = errors_of(&source);
    let expected = [
        (5, 37, "unknown field `varient`"),
        (6, 17, "unknown field `instal`"),
        (7, 5, "unknown field `nmae`"),
        (8, 20, "file `missing.sh` does not exist"),
        (9, 1, "unknown field `ouputs`"),
        (6, 5, "a packages stage needs `install` or `remove`"),
    ];
    for (line, column, message) in expected {
        assert!(
            errors.iter().any(|(l, c, m)| (*l, *c) == (line, column) && m.contains(message)),
            "missing {line}:{column} {message} in {errors:?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:?}");
}

#[test]
fn a_recipe_without_initramfs_modules_gets_the_default_drivers_and_an_empty_list_none() {
    let dir = fixture_dir();
    let load = |outputs: &str| {
        load_str(
            &dir.path().join("r.yaml"),
            &format!("{HEAD}stages:\n  - tarball: {{ path: base.tar }}\n{outputs}"),
            &LoadOptions::default(),
        )
        .unwrap()
    };
    assert!(load("").outputs.initramfs.default_modules);
    assert!(load("outputs:\n  initramfs: { compression: gzip }\n").outputs.initramfs.default_modules);
    let none = load("outputs:\n  initramfs: { modules: [] }\n").outputs.initramfs;
    assert!(!none.default_modules && none.modules.is_empty());
    let listed = load("outputs:\n  initramfs: { modules: [e1000] }\n").outputs.initramfs;
    assert!(!listed.default_modules);
    assert_eq!(listed.module_names(), ["loop", "squashfs", "overlay", "e1000"]);
}

#[test]
fn a_recipe_or_inventory_that_is_not_yaml_is_named_never_quoted() {
    let dir = fixture_dir();
    let file = dir.path().join("recipe.yaml");
    let shadow = "root:$y$j9T$hunter2hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n";
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n";
    for text in [shadow, key] {
        let Diagnostics(list) = load_str(&file, text, &LoadOptions::default()).unwrap_err();
        let shown = Diagnostics(list.clone()).to_string();
        assert!(!shown.contains("hunter2") && !shown.contains("b3Blbn"), "{shown}");
        assert_eq!(list[0].file, file);
        assert!(list[0].message.contains("its text is not shown"), "{shown}");

        // The same text given as the recipe's inventory.
        fs_err::write(dir.path().join("lab.yaml"), text).unwrap();
        let Diagnostics(list) = load_str(
            &file,
            &format!("{HEAD}stages:\n  - tarball: {{ path: base.tar }}\nhosts: lab.yaml\n"),
            &LoadOptions::default(),
        )
        .unwrap_err();
        let shown = Diagnostics(list.clone()).to_string();
        assert!(!shown.contains("hunter2") && !shown.contains("b3Blbn"), "{shown}");
        assert_eq!(list[0].file, dir.path().join("lab.yaml"));
        assert!(shown.contains("lab.yaml:1:1"), "{shown}");
    }
}

#[test]
fn uki_output_is_true_or_its_settings() {
    let dir = fixture_dir();
    let load = |outputs: &str| {
        let source = format!("{HEAD}stages:\n  - tarball: {{ path: base.tar }}\n  - kernel: {{ name: debian, package: linux-image-amd64 }}\n  - kernel: {{ name: lts, package: linux-image-amd64 }}\noutputs:\n  uki: {outputs}\n");
        load_str(&dir.path().join("r.yaml"), &source, &LoadOptions::default())
    };
    assert_eq!(load("true").unwrap().outputs.uki, Some(Uki { kernels: None, rootfs_url: None, sign: None }));
    // Signing: the key and certificate, relative to the recipe.
    let signed = load("{ sign: { key: configure.sh, cert: base.tar } }").unwrap().outputs.uki.unwrap().sign.unwrap();
    assert_eq!(
        (signed.key.written.as_str(), signed.key.resolved.clone()),
        ("configure.sh", dir.path().join("configure.sh"))
    );
    assert_eq!(signed.cert.resolved, dir.path().join("base.tar"));
    assert_eq!(load("false").unwrap().outputs.uki, None);
    let uki = load("{ kernels: [lts], rootfs_url: \"http://dhcp-server:80/b/r.img\" }").unwrap().outputs.uki.unwrap();
    assert!(uki.covers("lts") && !uki.covers("debian"));
    assert_eq!(uki.rootfs_url.as_deref(), Some("http://dhcp-server:80/b/r.img"));
    assert_eq!(
        Uki::default_rootfs_url("demo", "1.0", "demo-1.0-rootfs.img"),
        "http://dhcp-server:8080/demo/1.0/demo-1.0-rootfs.img"
    );
}

#[test]
fn uki_output_errors_point_at_the_value() {
    let errors = |stages: &str, outputs: &str| {
        errors_of(&format!("{HEAD}stages:\n  - tarball: {{ path: base.tar }}\n{stages}outputs:\n  uki: {outputs}\n"))
    };
    let kernel = "  - kernel: { name: debian, package: linux-image-amd64 }\n";
    let unknown = errors(kernel, "{ signed: key.pem }");
    assert_eq!((unknown[0].0, unknown[0].1), (8, 10), "{unknown:?}");
    assert!(unknown[0].2.contains("unknown field `signed`"), "{unknown:?}");
    // A key that is not there, a certificate that is a FIFO: each at its value.
    let sign = errors(kernel, "{ sign: { key: no-such.key, cert: fifo.tar } }");
    assert_eq!(sign.len(), 2, "{sign:?}");
    assert_eq!((sign[0].0, sign[0].1), (8, 23), "{sign:?}");
    assert!(sign[0].2.contains("file `no-such.key` does not exist"), "{sign:?}");
    assert_eq!((sign[1].0, sign[1].1), (8, 42), "{sign:?}");
    assert!(sign[1].2.contains("`fifo.tar` is a FIFO"), "{sign:?}");
    let missing_cert = errors(kernel, "{ sign: { key: configure.sh } }");
    assert!(missing_cert[0].2.contains("missing field `cert`"), "{missing_cert:?}");
    let bad_type = errors(kernel, "yes please");
    assert_eq!(bad_type[0].0, 8, "{bad_type:?}");
    assert!(bad_type[0].2.contains("true, false, or a mapping"), "{bad_type:?}");
    let other_kernel = errors(kernel, "{ kernels: [debian, lts] }");
    assert_eq!(other_kernel.len(), 1, "{other_kernel:?}");
    assert_eq!((other_kernel[0].0, other_kernel[0].1), (8, 28), "{other_kernel:?}");
    assert!(other_kernel[0].2.contains("`lts`, which is not a kernel stage"), "{other_kernel:?}");
    let arm64 = errors_of(&format!(
        "{HEAD}arch: arm64\nstages:\n  - tarball: {{ path: base.tar }}\n{kernel}outputs:\n  uki: true\n"
    ));
    assert_eq!(arm64.len(), 1, "{arm64:?}");
    assert!(arm64[0].2.contains("x86-64 Unified Kernel Images, and this recipe builds for arm64"), "{arm64:?}");
    let no_kernel = errors("", "true");
    assert_eq!((no_kernel[0].0, no_kernel[0].1), (7, 3), "{no_kernel:?}");
    assert!(no_kernel[0].2.contains("no kernel stage"), "{no_kernel:?}");
    for url in ["\"https://dhcp-server/r.img\"", "\"http://x/a b\"", "\"http://x:port/r\"", "\"ftp://x/r\""] {
        let bad = errors(kernel, &format!("{{ rootfs_url: {url} }}"));
        assert_eq!((bad.len(), bad[0].0, bad[0].1), (1, 8, 22), "{url}: {bad:?}");
    }
}
