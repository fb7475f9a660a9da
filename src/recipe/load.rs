//! Raw recipe → checked [`Recipe`]: serde errors get their position, then every
//! semantic check runs and all problems are reported together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::model::*;
use super::schema::*;
use super::vars::substitute;
use crate::diagnostic::{yaml_diagnostic, Diagnostic, Diagnostics, Position, SpanIndex};
use crate::names::{check_version, valid_name};

/// What the command line adds to a recipe.
#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// `--set name=value`, applied over `vars:`.
    pub sets: Vec<(String, String)>,
}

const VARIANTS: &[&str] =
    &["extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important", "debootstrap", "standard"];
const STAGE_KINDS: &str = "debootstrap, tarball, release, oci, packages, files, run, kernel";
const CONFIG_TARGETS: &[&str] = &["defconfig", "tinyconfig", "allnoconfig"];

/// Read and check the recipe at `file`.
pub fn load(file: &Path, options: &LoadOptions) -> Result<Recipe, Diagnostics> {
    let unreadable =
        |position: Position, message: String| Diagnostics(vec![Diagnostic::unquoted(file, position, message)]);
    let bytes = fs_err::read(file)
        .map_err(|error| unreadable(Position { line: 1, column: 1 }, format!("cannot read recipe: {error}")))?;
    let source = String::from_utf8(bytes).map_err(|error| {
        // Name the line and the byte, not 1:1.
        let bytes = error.as_bytes();
        let at = error.utf8_error().valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        let column = at - bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |newline| newline + 1) + 1;
        unreadable(
            Position { line, column },
            format!("the recipe is not UTF-8 text: byte 0x{:02x} at line {line}, column {column}", bytes[at]),
        )
    })?;
    load_str(file, &source, options)
}

/// Check recipe text as if it were read from `file` (relative paths resolve
/// against `file`'s directory).
pub fn load_str(file: &Path, source: &str, options: &LoadOptions) -> Result<Recipe, Diagnostics> {
    let spans = SpanIndex::build(source);
    let (raw, structural) = crate::diagnostic::parse_all::<RawRecipe>(file, source, &spans, &|error| {
        serde_diagnostic(file, source, error)
    })?;
    // Absolute, so resolved paths stay right for commands run elsewhere
    // (merge_config.sh runs in the kernel's build directory).
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { std::path::PathBuf::from(".") } else { dir };
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let mut checker = Checker { file, source, spans: &spans, dir: &dir, problems: structural, vars: raw.vars.clone() };
    let recipe = checker.check(raw, options);
    if checker.problems.is_empty() {
        let mut recipe = recipe;
        recipe.spans = spans;
        Ok(recipe)
    } else {
        Err(Diagnostics(checker.problems))
    }
}

fn serde_diagnostic(file: &Path, source: &str, error: &serde_yaml::Error) -> Diagnostic {
    let message = error.to_string();
    // serde_yaml gives a duplicate key no place: the span index finds it.
    if message.contains("duplicate entry with key") {
        if let Some((path, position)) = SpanIndex::build(source).first_duplicate() {
            return Diagnostic::new(file, source, *position, format!("`{path}` is given twice"))
                .with_hint("a key appears once in each mapping: remove one of them");
        }
    }
    let hint = if message.contains("unknown field") {
        if message.contains("`debootstrap`") {
            format!("a stage is `name:` plus one of: {STAGE_KINDS}")
        } else {
            "check the spelling; docs/recipe.md lists every key".to_string()
        }
    } else if message.contains("missing field") {
        "add the field; docs/recipe.md says what it takes".to_string()
    } else if message.contains("invalid type") {
        "docs/recipe.md gives the type of every key".to_string()
    } else {
        "the recipe must be valid YAML".to_string()
    };
    yaml_diagnostic(file, source, error, &hint, crate::diagnostic::keys_of::<RawRecipe>())
}

struct Checker<'a> {
    file: &'a Path,
    source: &'a str,
    spans: &'a SpanIndex,
    dir: &'a Path,
    problems: Vec<Diagnostic>,
    vars: BTreeMap<String, String>,
}

impl Checker<'_> {
    fn problem(&mut self, position: Position, message: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Diagnostic::new(self.file, self.source, position, message).with_hint(hint));
    }

    fn at_value(&mut self, path: &str, message: impl Into<String>, hint: impl Into<String>) {
        let position = self.spans.value(path);
        self.problem(position, message, hint);
    }

    fn at_key(&mut self, path: &str, message: impl Into<String>, hint: impl Into<String>) {
        let position = self.spans.key(path);
        self.problem(position, message, hint);
    }

    fn check(&mut self, raw: RawRecipe, options: &LoadOptions) -> Recipe {
        if raw.rootsmith != SCHEMA_VERSION {
            self.at_value(
                "rootsmith",
                format!("unsupported recipe schema version {}", raw.rootsmith),
                format!("this rootsmith reads `rootsmith: {SCHEMA_VERSION}`"),
            );
        }
        if !valid_name(&raw.name) {
            self.at_value(
                "name",
                format!("invalid recipe name `{}`", raw.name),
                "use lower-case letters, digits, `.`, `_` and `-`, starting with a letter or digit",
            );
        }
        if let Err(why) = check_version(&raw.version) {
            self.at_value(
                "version",
                format!("invalid version `{}`: {why}", raw.version),
                "use a semver-like version such as 1.2.0 or 1.2.0-rc1",
            );
        }
        let mut arch = raw.arch.clone().unwrap_or_else(|| crate::arch::DEFAULT.to_string());
        if !crate::arch::is_supported(&arch) {
            self.at_value(
                "arch",
                format!("architecture `{arch}` is not supported"),
                format!("rootsmith builds for: {}", crate::arch::SUPPORTED.join(", ")),
            );
        }
        let mut recipe_name = raw.name.clone();
        for (name, value) in &options.sets {
            if self.vars.contains_key(name) {
                self.vars.insert(name.clone(), value.clone());
            } else if name == "arch" {
                // `--set arch=A` (or `--arch A`): the same recipe for A,
                // published as a bundle of its own, NAME-A.
                if crate::arch::is_supported(value) {
                    arch = value.clone();
                    recipe_name = format!("{}-{value}", raw.name);
                } else {
                    self.at_key(
                        "arch",
                        format!("--set arch={value}: architecture `{value}` is not supported"),
                        format!("rootsmith builds for: {}", crate::arch::SUPPORTED.join(", ")),
                    );
                }
            } else {
                self.at_key(
                    "vars",
                    format!("--set names `{name}`, which `vars:` does not define"),
                    "declare the variable with a default under `vars:`",
                );
            }
        }
        // `${arch}` in a stage is the architecture built for (e.g.
        // `package: linux-image-${arch}`), unless `vars:` has its own.
        self.vars.entry("arch".to_string()).or_insert_with(|| arch.clone());
        if raw.stages.is_empty() {
            self.at_key(
                "stages",
                "the recipe has no stages",
                "start with a base stage: debootstrap, tarball, release or oci",
            );
        }
        let mut stages = Vec::new();
        let mut names = BTreeSet::new();
        let mut kind_counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (index, raw_stage) in raw.stages.into_iter().enumerate() {
            let path = format!("stages[{index}]");
            let kernel_name = raw_stage.kernel.as_ref().and_then(|kernel| kernel.name.clone());
            if kernel_name.is_some() && raw_stage.name.is_some() {
                self.at_key(
                    &format!("{path}.kernel.name"),
                    "this kernel stage is named twice",
                    "keep `name:` either beside `kernel:` or inside it",
                );
            }
            let raw_name_inside = raw_stage.name.is_none() && kernel_name.is_some();
            let name_given = raw_stage.name.clone().or(kernel_name);
            // Placement depends only on which kind key is there, so it is checked
            // even when the stage's own fields have problems.
            if let [kind_name] = raw_stage.kind_names().as_slice() {
                let is_base = matches!(*kind_name, "debootstrap" | "tarball" | "release" | "oci");
                if is_base && index > 0 {
                    self.at_key(
                        &format!("{path}.{kind_name}"),
                        format!("base stage `{kind_name}` must be the first stage"),
                        "a recipe has one base (debootstrap, tarball, release or oci) and it comes first",
                    );
                } else if !is_base && index == 0 {
                    self.at_key(
                        &format!("{path}.{kind_name}"),
                        format!("the first stage is `{kind_name}`, not a base stage"),
                        "start with a base stage: debootstrap, tarball, release or oci",
                    );
                }
            }
            let Some(kind) = self.check_stage(&path, raw_stage) else { continue };
            *kind_counts.entry(kind.kind_name()).or_default() += 1;
            let name_path = if raw_name_inside { format!("{path}.kernel.name") } else { format!("{path}.name") };
            let name = match name_given {
                Some(name) => {
                    if !valid_name(&name) {
                        self.at_value(
                            &name_path,
                            format!("invalid stage name `{name}`"),
                            "use lower-case letters, digits, `.`, `_` and `-`",
                        );
                    }
                    name
                }
                None if kind_counts[kind.kind_name()] == 1 => kind.kind_name().to_string(),
                None => format!("{}-{}", kind.kind_name(), index + 1),
            };
            if !names.insert(name.clone()) {
                self.at_value(
                    &name_path,
                    format!("two stages are named `{name}`"),
                    "stage names must be unique: give this one a `name:`",
                );
            }
            stages.push(Stage { name, kind });
        }
        if let Some(epoch) = raw.source_date_epoch {
            if let Err(error) = crate::time::check_epoch(epoch) {
                self.at_value(
                    "source_date_epoch",
                    format!("source_date_epoch {error}"),
                    "give the seconds since 1970 of the release's date, e.g. `source_date_epoch: 1700000000`",
                );
            }
        }
        let outputs = self.check_outputs(raw.outputs, &stages);
        if outputs.uki.is_some() && arch != "amd64" {
            // The stub is Debian's x86-64 one (systemd-boot-efi:amd64).
            self.at_key(
                "outputs.uki",
                format!("outputs.uki makes x86-64 Unified Kernel Images, and this recipe builds for {arch}"),
                "leave `uki` out for this architecture; its kernels boot from boot.ipxe or grub.cfg",
            );
        }
        let boot = self.check_boot(raw.boot);
        let hosts = raw.hosts.and_then(|written| {
            let written = self.subst("hosts", &written);
            self.local_file("hosts", &written, false)
        });
        if let Some(hosts) = &hosts {
            self.check_inventory(hosts, &raw.name, &raw.version, &stages);
        }
        Recipe {
            file: self.file.to_path_buf(),
            dir: self.dir.to_path_buf(),
            name: recipe_name,
            version: raw.version,
            arch,
            source_date_epoch: raw.source_date_epoch,
            vars: self.vars.clone(),
            stages,
            outputs,
            boot,
            hosts,
            source: self.source.to_string(),
            spans: SpanIndex::default(),
        }
    }

    /// `${var}` substitution with the error placed on the value.
    fn subst(&mut self, path: &str, text: &str) -> String {
        match substitute(text, &self.vars) {
            Ok(value) => value,
            Err(name) => {
                let defined: Vec<&str> = self.vars.keys().map(String::as_str).collect();
                let hint = if defined.is_empty() {
                    "define it under `vars:`".to_string()
                } else {
                    format!("defined variables: {}", defined.join(", "))
                };
                self.at_value(path, format!("undefined variable `{name}`"), hint);
                text.to_string()
            }
        }
    }

    fn subst_list(&mut self, path: &str, items: Vec<String>) -> Vec<String> {
        items.into_iter().enumerate().map(|(index, item)| self.subst(&format!("{path}[{index}]"), &item)).collect()
    }

    fn check_stage(&mut self, path: &str, raw: RawStage) -> Option<StageKind> {
        let mut kinds = Vec::new();
        if let Some(value) = raw.debootstrap {
            kinds.push(("debootstrap", self.check_debootstrap(&format!("{path}.debootstrap"), value)));
        }
        if let Some(value) = raw.tarball {
            let field = format!("{path}.tarball.path");
            let written = self.subst(&field, &value.path);
            let path = self.local_file(&field, &written, false);
            kinds.push(("tarball", path.map(|path| StageKind::Tarball(Tarball { path }))));
        }
        if let Some(value) = raw.release {
            let field = format!("{path}.release");
            let name = self.subst(&format!("{field}.name"), &value.name);
            let version = self.subst(&format!("{field}.version"), &value.version);
            if let Err(why) = check_version(&version) {
                self.at_value(
                    &format!("{field}.version"),
                    format!("invalid version `{version}`: {why}"),
                    "name a published version, e.g. `1.2.0`",
                );
            }
            let out = value.out.map(|out| self.dir.join(self.subst(&format!("{field}.out"), &out)));
            kinds.push(("release", Some(StageKind::Release(Release { name, version, out }))));
        }
        if let Some(value) = raw.oci {
            kinds.push(("oci", self.check_oci(&format!("{path}.oci"), value)));
        }
        if let Some(value) = raw.packages {
            let field = format!("{path}.packages");
            let install = self.subst_list(&format!("{field}.install"), value.install);
            let remove = self.subst_list(&format!("{field}.remove"), value.remove);
            if install.is_empty() && remove.is_empty() {
                self.at_key(
                    &field,
                    "a packages stage needs `install` or `remove`",
                    "list packages, e.g. `install: [curl]`",
                );
            }
            kinds.push(("packages", Some(StageKind::Packages(Packages { install, remove }))));
        }
        if let Some(value) = raw.files {
            kinds.push(("files", self.check_files(&format!("{path}.files"), value)));
        }
        if let Some(value) = raw.run {
            kinds.push(("run", self.check_run(&format!("{path}.run"), value)));
        }
        if let Some(value) = raw.kernel {
            kinds.push(("kernel", self.check_kernel(&format!("{path}.kernel"), value)));
        }
        match kinds.len() {
            0 => {
                self.at_key(
                    &format!("{path}.name"),
                    "this stage has no kind",
                    format!("a stage is `name:` plus one of: {STAGE_KINDS}"),
                );
                None
            }
            1 => kinds.pop().and_then(|(_, kind)| kind),
            _ => {
                let second = kinds[1].0;
                self.at_key(
                    &format!("{path}.{second}"),
                    format!("a stage has one kind, this one has `{}` and `{second}`", kinds[0].0),
                    "split it into two stages, one per list item",
                );
                None
            }
        }
    }

    fn check_debootstrap(&mut self, path: &str, raw: RawDebootstrap) -> Option<StageKind> {
        let suite = self.subst(&format!("{path}.suite"), &raw.suite);
        let variant = raw
            .variant
            .map(|value| self.subst(&format!("{path}.variant"), &value))
            .unwrap_or_else(|| "minbase".to_string());
        if !VARIANTS.contains(&variant.as_str()) {
            self.at_value(
                &format!("{path}.variant"),
                format!("unknown variant `{variant}`"),
                format!("use one of: {}", VARIANTS.join(", ")),
            );
        }
        let mut components = self.subst_list(&format!("{path}.components"), raw.components);
        if components.is_empty() {
            components.push("main".to_string());
        }
        let include = self.subst_list(&format!("{path}.include"), raw.include);
        let mirror = raw.mirror.map(|value| self.subst(&format!("{path}.mirror"), &value));
        if let Some(mirror) = &mirror {
            if !(mirror.starts_with("http://") || mirror.starts_with("https://") || mirror.starts_with("file://")) {
                self.at_value(
                    &format!("{path}.mirror"),
                    format!("mirror `{mirror}` is not a URL"),
                    "write it as http://HOST/PATH, https://… or file:///PATH",
                );
            }
        }
        let tool = match raw.tool.as_deref() {
            None | Some("auto") => BootstrapTool::Auto,
            Some("mmdebstrap") => BootstrapTool::Mmdebstrap,
            Some("debootstrap") => BootstrapTool::Debootstrap,
            Some(other) => {
                self.at_value(
                    &format!("{path}.tool"),
                    format!("unknown tool `{other}`"),
                    "use auto (the default), mmdebstrap or debootstrap",
                );
                BootstrapTool::Auto
            }
        };
        Some(StageKind::Debootstrap(Debootstrap { suite, variant, components, include, mirror, tool }))
    }

    fn check_oci(&mut self, path: &str, raw: RawOci) -> Option<StageKind> {
        match (raw.image, raw.layout) {
            (Some(_), Some(_)) => {
                self.at_key(&format!("{path}.layout"), "an oci stage takes `image` or `layout`, not both", "keep one");
                None
            }
            (None, None) => {
                self.at_key(
                    path,
                    "an oci stage needs `image: REF` or `layout: DIR`",
                    "e.g. `oci: { layout: images/base, ref: bookworm }`",
                );
                None
            }
            (Some(image), None) => {
                let reference = self.subst(&format!("{path}.image"), &image);
                if raw.reference.is_some() {
                    self.at_key(
                        &format!("{path}.ref"),
                        "`ref` names an image in a layout; a registry image has its tag in `image`",
                        "write `image: HOST/REPO:TAG`",
                    );
                }
                if let Err(error) = crate::reference::parse_reference(&reference) {
                    self.at_value(
                        &format!("{path}.image"),
                        format!("{error:#}"),
                        "e.g. `image: 127.0.0.1:5000/base/debian:bookworm`",
                    );
                    return None;
                }
                Some(StageKind::Oci(Oci { source: OciSource::Registry { reference } }))
            }
            (None, Some(layout)) => {
                let written = self.subst(&format!("{path}.layout"), &layout);
                let reference = raw.reference.map(|reference| self.subst(&format!("{path}.ref"), &reference));
                let dir = self.local_file(&format!("{path}.layout"), &written, true)?;
                Some(StageKind::Oci(Oci { source: OciSource::Layout { dir, reference } }))
            }
        }
    }

    fn check_files(&mut self, path: &str, raw: RawFiles) -> Option<StageKind> {
        let written = self.subst(&format!("{path}.src"), &raw.src);
        let src = self.local_file(&format!("{path}.src"), &written, true);
        let dest = raw.dest.map(|value| self.subst(&format!("{path}.dest"), &value)).unwrap_or_else(|| "/".to_string());
        if !dest.starts_with('/') || dest.split('/').any(|part| part == "..") {
            self.at_value(
                &format!("{path}.dest"),
                format!("`dest` must be an absolute path inside the tree, not `{dest}`"),
                "write it like /etc/myapp",
            );
        }
        let (uid, gid) = match raw.owner.as_deref() {
            None => (0, 0),
            Some(owner) => match owner.split_once(':').and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?))) {
                Some(pair) => pair,
                None => {
                    self.at_value(
                        &format!("{path}.owner"),
                        format!("owner `{owner}` is not UID:GID"),
                        "write numeric ids, e.g. `owner: \"1000:1000\"`",
                    );
                    (0, 0)
                }
            },
        };
        let mut modes = BTreeMap::new();
        for (file, mode) in raw.modes {
            let field = format!("{path}.modes.{file}");
            match u32::from_str_radix(mode.trim_start_matches("0o"), 8) {
                Ok(value) if value <= 0o7777 => {
                    if let Some(src) = &src {
                        if fs_err::symlink_metadata(src.resolved.join(&file)).is_err() {
                            self.at_key(
                                &field,
                                format!("`modes` names `{file}`, which is not in `{}`", src.written),
                                "paths in `modes` are relative to `src`",
                            );
                        }
                    }
                    modes.insert(file, value);
                }
                _ => self.at_value(
                    &field,
                    format!("mode `{mode}` is not an octal mode"),
                    "quote it as a string, e.g. \"0600\"",
                ),
            }
        }
        let src = src?;
        Some(StageKind::Files(Files { src, dest, uid, gid, modes }))
    }

    fn check_run(&mut self, path: &str, raw: RawRun) -> Option<StageKind> {
        let env: BTreeMap<String, String> = raw
            .env
            .into_iter()
            .map(|(key, value)| {
                let value = self.subst(&format!("{path}.env.{key}"), &value);
                (key, value)
            })
            .collect();
        let script = match (raw.sh, raw.script) {
            (Some(text), None) => Script::Inline(text),
            (None, Some(file)) => {
                let written = self.subst(&format!("{path}.script"), &file);
                Script::File(self.local_file(&format!("{path}.script"), &written, false)?)
            }
            (Some(_), Some(_)) => {
                self.at_key(
                    &format!("{path}.script"),
                    "a run stage takes `sh` or `script`, not both",
                    "keep one of them",
                );
                return None;
            }
            (None, None) => {
                self.at_key(
                    path,
                    "a run stage needs `sh` or `script`",
                    "inline commands with `sh: |` or name a file with `script:`",
                );
                return None;
            }
        };
        Some(StageKind::Run(Run { script, env }))
    }

    fn check_kernel(&mut self, path: &str, raw: RawKernel) -> Option<StageKind> {
        let local_list = |checker: &mut Self, field: &str, items: Vec<String>| -> Vec<LocalPath> {
            items
                .into_iter()
                .enumerate()
                .filter_map(|(index, item)| {
                    let at = format!("{path}.{field}[{index}]");
                    let written = checker.subst(&at, &item);
                    checker.local_file(&at, &written, false)
                })
                .collect()
        };
        match (raw.source, raw.package) {
            (Some(_), Some(_)) => {
                self.at_key(
                    &format!("{path}.package"),
                    "a kernel is built from `source` or taken from a `package`, not both",
                    "keep one of them",
                );
                None
            }
            (None, None) => {
                self.at_key(
                    path,
                    "a kernel stage needs `source` (to build one) or `package` (to install one)",
                    "e.g. `source: { package: linux-source-6.1 }` with `config:`, or `package: linux-image-amd64`",
                );
                None
            }
            (None, Some(package)) => {
                let package = self.subst(&format!("{path}.package"), &package);
                for (field, given) in [
                    ("config", raw.config.is_some()),
                    ("patches", !raw.patches.is_empty()),
                    ("localversion", raw.localversion.is_some()),
                    ("headers", raw.headers.is_some()),
                ] {
                    if given {
                        self.at_key(
                            &format!("{path}.{field}"),
                            format!("`{field}` only applies to a kernel built from `source`"),
                            "a packaged kernel is installed as the package ships it",
                        );
                    }
                }
                Some(StageKind::Kernel(Kernel::Package { package }))
            }
            (Some(source), None) => {
                let source_path = format!("{path}.source");
                let source = match (source.package, source.tarball, source.sha256) {
                    (Some(package), None, None) => {
                        Some(KernelSource::Package(self.subst(&format!("{source_path}.package"), &package)))
                    }
                    (None, Some(tarball), Some(sha256)) => {
                        let location = self.subst(&format!("{source_path}.tarball"), &tarball);
                        if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                            self.at_value(
                                &format!("{source_path}.sha256"),
                                "`sha256` must be 64 hex digits",
                                "sha256sum prints it",
                            );
                        }
                        let local = if location.starts_with("http://") || location.starts_with("https://") {
                            None
                        } else {
                            self.local_file(&format!("{source_path}.tarball"), &location, false)
                        };
                        Some(KernelSource::Tarball { location, local, sha256: sha256.to_ascii_lowercase() })
                    }
                    (None, Some(_), None) => {
                        self.at_key(
                            &format!("{source_path}.tarball"),
                            "a kernel tarball needs its `sha256`",
                            "add `sha256: HEX` (sha256sum prints it)",
                        );
                        None
                    }
                    _ => {
                        self.at_key(
                            &source_path,
                            "a kernel source is `{ package: NAME }` or `{ tarball: PATH-or-URL, sha256: HEX }`",
                            "e.g. `source: { package: linux-source-6.1 }`",
                        );
                        None
                    }
                };
                let patches = local_list(self, "patches", raw.patches);
                let Some(config) = raw.config else {
                    self.at_key(
                        path,
                        "a kernel built from source needs `config`",
                        "e.g. `config: { base: defconfig, fragments: [kernel/netboot.config] }`",
                    );
                    return None;
                };
                let base_text = self.subst(&format!("{path}.config.base"), &config.base);
                let base = if CONFIG_TARGETS.contains(&base_text.as_str()) {
                    Some(ConfigBase::Target(base_text))
                } else {
                    self.local_file(&format!("{path}.config.base"), &base_text, false).map(ConfigBase::File)
                };
                let fragments = local_list(self, "config.fragments", config.fragments);
                let localversion =
                    raw.localversion.map(|v| self.subst(&format!("{path}.localversion"), &v)).unwrap_or_default();
                if !localversion.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+' | '_')) {
                    self.at_value(
                        &format!("{path}.localversion"),
                        format!("`{localversion}` cannot go into a kernel release string"),
                        "use letters, digits, `-`, `.`, `+` and `_`, e.g. -netboot",
                    );
                }
                Some(StageKind::Kernel(Kernel::Build(KernelBuild {
                    source: source?,
                    patches,
                    base: base?,
                    fragments,
                    localversion,
                    install: raw.install.unwrap_or(false),
                    headers: raw.headers.unwrap_or(false),
                })))
            }
        }
    }

    /// A regular file (or directory when `directory`) the recipe refers to,
    /// which must exist. A FIFO or a device is refused here, before anything
    /// would read it: reading one blocks or never ends.
    fn local_file(&mut self, field: &str, written: &str, directory: bool) -> Option<LocalPath> {
        let resolved = self.dir.join(written);
        let what = if directory { "directory" } else { "file" };
        match fs_err::metadata(&resolved) {
            Ok(metadata) if (directory && metadata.is_dir()) || (!directory && metadata.is_file()) => {
                Some(LocalPath { written: written.to_string(), resolved })
            }
            Ok(metadata) if !directory && !metadata.is_dir() => {
                self.at_value(
                    field,
                    format!(
                        "`{written}` is a {}, not a regular file",
                        crate::fileops::kind_name(std::os::unix::fs::MetadataExt::mode(&metadata))
                    ),
                    format!(
                        "`{}` must name a regular file; a FIFO or a device is never read",
                        field.rsplit('.').next().unwrap_or(field)
                    ),
                );
                None
            }
            Ok(_) => {
                self.at_value(
                    field,
                    format!("`{written}` is not a {what}"),
                    format!("`{}` must name a {what}", field.rsplit('.').next().unwrap_or(field)),
                );
                None
            }
            Err(_) => {
                self.at_value(
                    field,
                    format!("{what} `{written}` does not exist"),
                    format!("paths are relative to the recipe's directory, {}", self.dir.display()),
                );
                None
            }
        }
    }

    fn check_outputs(&mut self, raw: RawOutputs, stages: &[Stage]) -> Outputs {
        let squashfs = raw.rootfs.and_then(|rootfs| rootfs.squashfs);
        let squashfs = self.check_compression(
            "outputs.rootfs.squashfs",
            squashfs,
            Algorithm::Zstd,
            15,
            &["zstd", "gzip", "xz", "lz4", "lzo"],
        );
        let tarball =
            self.check_compression("outputs.tarball", raw.tarball, Algorithm::Zstd, 9, &["zstd", "gzip", "xz", "none"]);
        let raw_initramfs =
            raw.initramfs.unwrap_or(RawInitramfs { compression: None, level: None, modules: None, shell: false });
        // No `modules:` at all: the common NIC and storage drivers, where the kernel has them.
        let default_modules = raw_initramfs.modules.is_none();
        let modules = raw_initramfs.modules.unwrap_or_default();
        let compression = self.check_compression(
            "outputs.initramfs",
            Some(RawCompression { compression: raw_initramfs.compression, level: raw_initramfs.level }),
            Algorithm::Zstd,
            19,
            &["zstd", "gzip", "none"],
        );
        for (index, module) in modules.iter().enumerate() {
            if module.is_empty() || !module.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                self.at_value(
                    &format!("outputs.initramfs.modules[{index}]"),
                    format!("`{module}` is not a module name"),
                    "name modules as modprobe does, e.g. `virtio_net`",
                );
            }
        }
        let initramfs = Initramfs { compression, modules, default_modules, shell: raw_initramfs.shell };
        let oci = raw.oci.map(|raw| {
            if raw.layout.is_none() && raw.push.is_none() {
                self.at_key(
                    "outputs.oci",
                    "the oci output needs `layout: DIR`, `push: REF` or both",
                    "e.g. `oci: { push: \"127.0.0.1:5000/lab/base:1.0.0\" }`",
                );
            }
            let layout = raw.layout.map(|layout| self.dir.join(self.subst("outputs.oci.layout", &layout)));
            let push = raw.push.map(|push| self.subst("outputs.oci.push", &push));
            if let Some(Err(error)) = push.as_deref().map(crate::reference::parse_reference) {
                self.at_value(
                    "outputs.oci.push",
                    format!("{error:#}"),
                    "e.g. `push: \"127.0.0.1:5000/lab/base:1.0.0\"`",
                );
            }
            OciOutput { layout, push }
        });
        let uki = raw.uki.and_then(|raw| self.check_uki(raw, stages));
        Outputs { squashfs, tarball, initramfs, oci, uki }
    }

    fn check_uki(&mut self, raw: RawUki, stages: &[Stage]) -> Option<Uki> {
        let settings = match raw {
            RawUki::Enabled(false) => return None,
            RawUki::Enabled(true) => RawUkiSettings { kernels: None, rootfs_url: None, sign: None },
            RawUki::Settings(settings) => settings,
        };
        let kernels: Vec<&str> = stages
            .iter()
            .filter(|stage| matches!(stage.kind, StageKind::Kernel(_)))
            .map(|stage| stage.name.as_str())
            .collect();
        if kernels.is_empty() {
            self.at_key(
                "outputs.uki",
                "outputs.uki asks for a Unified Kernel Image, but the recipe has no kernel stage",
                "add a kernel stage, e.g. `- kernel: { name: debian, package: linux-image-amd64 }`",
            );
        }
        let chosen = settings.kernels.map(|names| self.subst_list("outputs.uki.kernels", names));
        for (index, name) in chosen.iter().flatten().enumerate() {
            if !kernels.contains(&name.as_str()) {
                self.at_value(
                    &format!("outputs.uki.kernels[{index}]"),
                    format!("outputs.uki.kernels names `{name}`, which is not a kernel stage of this recipe"),
                    format!(
                        "the kernel stages are: {}",
                        if kernels.is_empty() { "none".to_string() } else { kernels.join(", ") }
                    ),
                );
            }
        }
        if chosen.as_ref().is_some_and(Vec::is_empty) {
            self.at_value(
                "outputs.uki.kernels",
                "outputs.uki.kernels is empty",
                "name the kernel stages that get a UKI, or leave `kernels` out for every one",
            );
        }
        let rootfs_url = settings.rootfs_url.map(|url| self.subst("outputs.uki.rootfs_url", &url));
        if let Some(url) = &rootfs_url {
            if let Err(why) = check_baked_url(url).and_then(|()| rootsmith_init::cmdline::check_script_safe(url)) {
                self.at_value("outputs.uki.rootfs_url", why, "write http://HOST[:PORT]/PATH/NAME-VERSION-rootfs.img; the host `dhcp-server` stands for the DHCP server of the lease");
            }
        }
        let sign = settings.sign.and_then(|sign| {
            let key = self.subst("outputs.uki.sign.key", &sign.key);
            let cert = self.subst("outputs.uki.sign.cert", &sign.cert);
            let key = self.local_file("outputs.uki.sign.key", &key, false);
            let cert = self.local_file("outputs.uki.sign.cert", &cert, false);
            Some(UkiSign { key: key?, cert: cert? })
        });
        Some(Uki { kernels: chosen, rootfs_url, sign })
    }

    /// The inventory's own problems, at their place in the inventory file.
    fn check_inventory(&mut self, hosts: &LocalPath, name: &str, version: &str, stages: &[Stage]) {
        let Ok(source) = fs_err::read_to_string(&hosts.resolved) else {
            self.at_value(
                "hosts",
                format!("cannot read `{}`", hosts.written),
                "the inventory must be a readable text file",
            );
            return;
        };
        let kernels = stages
            .iter()
            .filter(|stage| matches!(stage.kind, StageKind::Kernel(_)))
            .map(|stage| stage.name.clone())
            .collect();
        let bundle = crate::inventory::BundleKernels { name: name.to_string(), version: version.to_string(), kernels };
        // Named as the user would write it from where the recipe was given.
        let shown = self.file.parent().unwrap_or(Path::new("")).join(&hosts.written);
        if let Err(diagnostics) = crate::inventory::check_for_recipe(&shown, &source, &bundle) {
            self.problems.extend(diagnostics.0);
        }
    }

    fn check_boot(&mut self, raw: Option<RawBoot>) -> Boot {
        let Some(raw) = raw else { return Boot::default() };
        let cmdline = raw.cmdline.map(|text| self.subst("boot.cmdline", &text)).unwrap_or_default();
        if let Err(why) = rootsmith_init::cmdline::check_script_safe(&cmdline) {
            self.at_value(
                "boot.cmdline",
                format!("boot.cmdline: {why}"),
                "a kernel command line is words of printable ASCII: quote a value with spaces in double quotes",
            );
        }
        for word in rootsmith_init::cmdline::words(&cmdline) {
            if word.starts_with("rootsmith.rootfs_url=") {
                self.at_value(
                    "boot.cmdline",
                    "boot.cmdline sets rootsmith.rootfs_url",
                    "leave it out: each menu's fetched entry adds it with the bundle's own URL",
                );
            }
        }
        let marker = raw.marker.map(|text| self.subst("boot.marker", &text));
        if marker.as_deref() == Some("") {
            self.at_value(
                "boot.marker",
                "boot.marker is empty",
                "give a line the booted rootfs prints, or leave `marker` out",
            );
        }
        Boot { cmdline, marker }
    }

    fn check_compression(
        &mut self,
        path: &str,
        raw: Option<RawCompression>,
        default: Algorithm,
        default_level: i32,
        allowed: &[&str],
    ) -> Compression {
        let raw = raw.unwrap_or(RawCompression { compression: None, level: None });
        let algorithm = match raw.compression.as_deref() {
            None => default,
            Some(name) if allowed.contains(&name) => algorithm_named(name),
            Some(name) => {
                self.at_value(
                    &format!("{path}.compression"),
                    format!("unknown compression `{name}`"),
                    format!("use one of: {}", allowed.join(", ")),
                );
                default
            }
        };
        let range = match algorithm {
            Algorithm::Zstd => Some((1, 22)),
            Algorithm::Gzip => Some((1, 9)),
            Algorithm::Xz if !path.contains("squashfs") => Some((0, 9)),
            _ => None,
        };
        let level = match (range, raw.level) {
            (Some((low, high)), Some(level)) if level < low || level > high => {
                self.at_value(
                    &format!("{path}.level"),
                    format!("{} level {level} is out of range", algorithm.name()),
                    format!("use {low}..={high}"),
                );
                Some(default_level.clamp(low, high))
            }
            (Some(_), Some(level)) => Some(level),
            (Some((low, high)), None) => {
                Some(if algorithm == default { default_level } else { default_level.clamp(low, high) })
            }
            (None, Some(_)) => {
                self.at_value(
                    &format!("{path}.level"),
                    format!("{} takes no level here", algorithm.name()),
                    "remove `level`",
                );
                None
            }
            (None, None) => None,
        };
        Compression { algorithm, level }
    }
}

/// A rootfs URL that can go into a kernel command line as one word and that
/// the init can fetch.
fn check_baked_url(url: &str) -> Result<(), String> {
    if url.len() > 1024 {
        return Err(format!("the rootfs URL is {} bytes long; at most 1024 fit a command line", url.len()));
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control() || *c == '"') {
        return Err(format!("the rootfs URL {url:?} holds {c:?}, which would break the kernel command line"));
    }
    rootsmith_init::http::Url::parse(url).map(|_| ())
}

fn algorithm_named(name: &str) -> Algorithm {
    match name {
        "gzip" => Algorithm::Gzip,
        "xz" => Algorithm::Xz,
        "lz4" => Algorithm::Lz4,
        "lzo" => Algorithm::Lzo,
        "none" => Algorithm::None,
        _ => Algorithm::Zstd,
    }
}
