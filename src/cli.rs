//! Command-line types (clap only; the commands live in `commands/`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "rootsmith", version, about = "Build Linux root filesystems and netboot bundles from YAML recipes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct RecipeArgs {
    /// The recipe file
    pub recipe: PathBuf,
    /// Override a recipe variable (repeatable)
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
    pub sets: Vec<(String, String)>,
    /// Build for this architecture instead of the recipe's `arch:`, as the bundle NAME-ARCH (the same as --set arch=ARCH)
    #[arg(long = "arch", value_name = "ARCH", value_parser = clap::builder::PossibleValuesParser::new(rootsmith::arch::SUPPORTED))]
    pub arch: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct CacheArgs {
    /// The stage cache directory [default: $XDG_CACHE_HOME/rootsmith]
    #[arg(long = "cache", env = "ROOTSMITH_CACHE", value_name = "DIR", global = true)]
    pub cache: Option<PathBuf>,
}

/// How a command that builds gets root's powers (docs/commands.md, "Running without root").
#[derive(Debug, Args, Clone)]
pub struct PrivilegeArgs {
    /// auto: root as it is, anyone else in a user namespace of their /etc/subuid range; root: only as root; userns: always in a user namespace
    #[arg(long, value_enum, env = "ROOTSMITH_PRIVILEGES", default_value = "auto", global = true)]
    pub privileges: PrivilegeMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrivilegeMode {
    Auto,
    Root,
    Userns,
}

impl PrivilegeArgs {
    pub fn mode(&self) -> rootsmith::host::userns::Privileges {
        use rootsmith::host::userns::Privileges;
        match self.privileges {
            PrivilegeMode::Auto => Privileges::Auto,
            PrivilegeMode::Root => Privileges::Root,
            PrivilegeMode::Userns => Privileges::Userns,
        }
    }
}

/// `rootsmith build`: what the command line says; `commands::build` turns it
/// into the library's `BuildOptions`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Where bundles go
    #[arg(long = "out", env = "ROOTSMITH_OUT", value_name = "DIR", default_value = "out")]
    pub out: PathBuf,
    /// The bundle's version [default: the recipe's]
    #[arg(long = "version", value_name = "V")]
    pub version: Option<String>,
    /// Rebuild this stage and every stage after it, even when cached
    #[arg(long, value_name = "STAGE")]
    pub rebuild: Option<String>,
    /// Developer loop: low compression (recorded in the manifest)
    #[arg(long)]
    pub fast: bool,
    /// Fail instead of building a stage that is not cached (locally or in --cache-remote)
    #[arg(long)]
    pub cache_only: bool,
    /// Share the stage cache through this registry repository (HOST[:PORT]/REPO)
    #[arg(long, env = "ROOTSMITH_CACHE_REMOTE", value_name = "REF")]
    pub cache_remote: Option<String>,
    /// Install exactly the package versions of RECIPE.lock (see `lock`)
    #[arg(long)]
    pub locked: bool,
    /// Print a JSON summary on stdout instead of progress (an error object on failure)
    #[arg(long)]
    pub json: bool,
    /// Replace VERSION when it is published already with other contents, if
    /// it is neither signed nor promoted (the developer loop)
    #[arg(long)]
    pub replace: bool,
    /// Sign the bundle with this OpenSSH private key (see `release sign`)
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub privileges: PrivilegeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a recipe into OUT/NAME/VERSION
    Build(BuildArgs),
    /// Check a recipe without running anything
    Check {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Print the result as JSON on stdout: each error with file, line, column, message and hint
        #[arg(long)]
        json: bool,
    },
    /// Show each stage's key and whether the cache has it
    Plan {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[command(flatten)]
        cache: CacheArgs,
        /// For each miss, name the input that changed since its last build
        #[arg(long)]
        explain: bool,
        /// Plan the outputs of a `build --fast`
        #[arg(long)]
        fast: bool,
        #[arg(long)]
        json: bool,
    },
    /// Open a shell in the tree as it is after a stage (changes are thrown away)
    Shell {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[command(flatten)]
        cache: CacheArgs,
        /// The stage whose result to enter [default: the last]
        #[arg(long, value_name = "STAGE")]
        stage: Option<String>,
        /// Run this command instead of an interactive shell
        #[arg(last = true)]
        command: Vec<String>,
        #[command(flatten)]
        privileges: PrivilegeArgs,
    },
    /// Write RECIPE.lock: every remote input resolved, every installed package's version
    Lock {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        privileges: PrivilegeArgs,
    },
    /// Serve bundles over HTTP for netboot (read-only)
    Serve {
        /// The directory to serve: a bundle, or the whole --out directory
        dir: PathBuf,
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Connections (and TFTP transfers) served at once; a new connection takes the slot of the one waiting longest for a request head, and gets 503 only when all are busy
        #[arg(long, default_value_t = 64)]
        max_connections: usize,
        /// Also answer TFTP read requests for the same directory on this address (e.g. 0.0.0.0:69)
        #[arg(long, value_name = "ADDR")]
        tftp: Option<String>,
        /// A hosts inventory: per-host PXELINUX, GRUB and iPXE files, and agents' reports (docs/fleet.md)
        #[arg(long, value_name = "FILE")]
        hosts: Option<PathBuf>,
        /// The URL machines reach this server at (e.g. http://192.168.1.2:8080/), written into per-host files fetched over TFTP
        #[arg(long, value_name = "URL")]
        public_url: Option<String>,
    },
    /// A lab's hosts: what each one boots, one-shot entries, agents' reports
    Hosts {
        #[command(flatten)]
        inventory: InventoryArgs,
        #[command(subcommand)]
        action: HostsAction,
    },
    /// Boot a bundle in QEMU and pass when an expected console line appears
    BootTest {
        #[command(flatten)]
        boot: BootArgs,
        /// The console line to wait for [default: the recipe's boot.marker, else the init's `switching root`]
        #[arg(long, value_name = "TEXT")]
        expect: Option<String>,
        /// Seconds to wait for it
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        timeout: u64,
        /// Where the console log goes [default: in the temp dir]
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Boot a bundle in QEMU interactively, the serial console on this terminal
    Qemu {
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Versions in the --out directory: list, show, promote, diff, verify
    Release {
        #[command(subcommand)]
        action: ReleaseAction,
    },
    /// Inspect and maintain the stage cache
    Cache {
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        privileges: PrivilegeArgs,
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Write a starter recipe NAME.yaml, and the files it uses (NAME/), in the current directory
    Init {
        /// The recipe's name: lower-case letters, digits, `.`, `_`, `-`
        name: String,
    },
    /// Print the completion script of a shell on stdout
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Print the man page rootsmith.1 (roff) on stdout, or write it and one page per command into a directory
    Man {
        /// Write rootsmith.1 and a page per command (rootsmith-build.1, …) into DIR instead
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The completion script of `shell` for the whole command line.
pub fn completions(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rootsmith", &mut script);
    String::from_utf8(script).expect("completion scripts are UTF-8")
}

/// The man page rootsmith.1 (roff): the commands, and the options every command shares.
pub fn man_page() -> String {
    use clap::CommandFactory;
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page).expect("writing into memory cannot fail");
    String::from_utf8(page).expect("the man page is UTF-8")
}

/// rootsmith.1 and a page per command (rootsmith-build.1, rootsmith-cache-ls.1, …),
/// each as `--help` shows it, written into `dir`.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    clap_mangen::generate_to(Cli::command(), dir)
}

/// `--via`: how the rootfs reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ViaArg {
    /// The rootfs as a second initrd after the thin initramfs
    Appended,
    /// The init fetches the rootfs over HTTP
    Http,
    /// The NIC's iPXE ROM loads boot.ipxe over TFTP, the kernel and initramfs over HTTP
    Pxe,
    /// OVMF (UEFI) starts iPXE, which fetches the kernel's UKI over HTTP; the init fetches the rootfs from the URL the UKI carries
    Uki,
}

/// `--secure-boot`: whether `--via uki` enforces Secure Boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecureBootArg {
    /// When the bundle's UKIs are signed
    Auto,
    On,
    Off,
}

impl From<ViaArg> for rootsmith::lab::boottest::Via {
    fn from(via: ViaArg) -> Self {
        match via {
            ViaArg::Appended => Self::Appended,
            ViaArg::Http => Self::Http,
            ViaArg::Pxe => Self::Pxe,
            ViaArg::Uki => Self::Uki,
        }
    }
}

/// `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelArg {
    /// KVM when a short probe boot proves it works, else TCG
    Auto,
    Kvm,
    Tcg,
}

impl From<AccelArg> for rootsmith::lab::boottest::AccelChoice {
    fn from(accel: AccelArg) -> Self {
        match accel {
            AccelArg::Auto => Self::Auto,
            AccelArg::Kvm => Self::Kvm,
            AccelArg::Tcg => Self::Tcg,
        }
    }
}

/// How a build shows what it does.
#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// Stream every command's output (it is in the stage's log either way)
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Show nothing but warnings and errors
    #[arg(short, long)]
    pub quiet: bool,
    /// Bars on a terminal, timestamped lines in logs (`auto`), or force one
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressArg {
    Auto,
    Tty,
    Plain,
}

impl OutputArgs {
    pub fn mode(&self, json: bool) -> rootsmith::progress::Mode {
        use rootsmith::progress::Mode;
        match (self.quiet || json, self.progress) {
            (true, _) => Mode::Quiet,
            (false, ProgressArg::Auto) => Mode::Auto,
            (false, ProgressArg::Tty) => Mode::Tty,
            (false, ProgressArg::Plain) => Mode::Plain,
        }
    }

    pub fn host(&self) -> rootsmith::host::RealHost {
        rootsmith::host::RealHost { echo: self.verbose }
    }
}

#[derive(Debug, Args, Clone)]
pub struct BootArgs {
    /// The bundle directory (OUT/NAME/VERSION)
    pub bundle: PathBuf,
    /// How the rootfs reaches the guest
    #[arg(long, value_enum, default_value = "appended")]
    pub via: ViaArg,
    /// The kernel to boot (by its stage name) [default: the first]
    #[arg(long, value_name = "NAME")]
    pub kernel: Option<String>,
    /// Guest memory in MiB
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub memory: u32,
    /// QEMU's accelerator
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Extra kernel arguments (repeatable)
    #[arg(long = "append", value_name = "ARG")]
    pub append: Vec<String>,
    /// For --via http|pxe|uki: use this server (its base URL as the guest reaches it, e.g. http://10.0.2.2:8080/b/) instead of starting one
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// For --via pxe: load boot.ipxe from rootsmith's own TFTP server instead of QEMU's
    #[arg(long)]
    pub tftp: bool,
    /// For --via uki: enforce Secure Boot in the firmware
    #[arg(long, value_enum, default_value = "auto")]
    pub secure_boot: SecureBootArg,
    /// For --via uki: the OVMF variable store to start from, with your keys enrolled [default: Debian's snakeoil one with Secure Boot, else an empty one]
    #[arg(long, value_name = "FILE")]
    pub efi_vars: Option<PathBuf>,
    /// For --via uki with Secure Boot: the key (PEM) that signs iPXE, whose certificate the variable store's db holds [default: Debian's snakeoil test key]
    #[arg(long, value_name = "KEY", requires = "efi_cert")]
    pub efi_key: Option<PathBuf>,
    /// The certificate (PEM) of --efi-key
    #[arg(long, value_name = "CERT", requires = "efi_key")]
    pub efi_cert: Option<PathBuf>,
}

impl BootArgs {
    pub fn options(&self) -> rootsmith::lab::boottest::BootOptions {
        rootsmith::lab::boottest::BootOptions {
            bundle: self.bundle.clone(),
            via: self.via.into(),
            kernel: self.kernel.clone(),
            memory_mib: self.memory,
            accel: self.accel.into(),
            append: self.append.clone(),
            server: self.server.clone(),
            own_tftp: self.tftp,
            secure_boot: match self.secure_boot {
                SecureBootArg::Auto => rootsmith::lab::boottest::SecureBootChoice::Auto,
                SecureBootArg::On => rootsmith::lab::boottest::SecureBootChoice::On,
                SecureBootArg::Off => rootsmith::lab::boottest::SecureBootChoice::Off,
            },
            efi: rootsmith::lab::efi::EfiSettings {
                secure_boot: false,
                vars: self.efi_vars.clone(),
                loader_key: self.efi_key.clone().zip(self.efi_cert.clone()),
            },
        }
    }
}

#[derive(Debug, Args, Clone)]
pub struct OutArgs {
    /// Where bundles are
    #[arg(long = "out", env = "ROOTSMITH_OUT", value_name = "DIR", default_value = "out")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseAction {
    /// Versions per recipe: published, size, kernels, candidate or released
    Ls {
        #[command(flatten)]
        out: OutArgs,
        #[arg(long)]
        json: bool,
    },
    /// One version's manifest, readable
    Show {
        name: String,
        version: String,
        #[command(flatten)]
        out: OutArgs,
        #[arg(long)]
        json: bool,
    },
    /// Make version TO from FROM's artifacts, without a rebuild (FROM must verify)
    Promote {
        name: String,
        from: String,
        to: String,
        #[command(flatten)]
        out: OutArgs,
        /// Sign TO with this OpenSSH private key (FROM's signature is not carried over: TO has a manifest of its own)
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// The Secure Boot key (PEM) that signs TO's UKIs, which a promotion makes anew; needed when FROM's are signed
        #[arg(long, value_name = "KEY", requires = "uki_cert")]
        uki_key: Option<PathBuf>,
        /// The certificate (PEM) of --uki-key
        #[arg(long, value_name = "CERT", requires = "uki_key")]
        uki_cert: Option<PathBuf>,
    },
    /// Sign a version: an SSH signature over its manifest (which pins every artifact's SHA-256), in manifest.json.sig
    Sign {
        name: String,
        version: String,
        /// An OpenSSH private key (ssh-keygen -t ed25519); encrypted: its passphrase in ROOTSMITH_SIGNING_PASSPHRASE
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[command(flatten)]
        out: OutArgs,
    },
    /// What changed from version A to B: a summary, then packages, kernels, artifact sizes, stage keys, files
    Diff {
        name: String,
        a: String,
        b: String,
        #[command(flatten)]
        out: OutArgs,
        #[arg(long)]
        json: bool,
        /// Every line of every section (a long section is otherwise summed up)
        #[arg(long)]
        full: bool,
        /// Only this section, every line of it
        #[arg(long, value_name = "SECTION", value_parser = clap::builder::PossibleValuesParser::new(rootsmith::release::diff::SECTIONS))]
        section: Option<String>,
    },
    /// Check a bundle: SHA256SUMS, chunk list, cookies, squashfs, manifest
    Verify {
        /// The bundle directory (OUT/NAME/VERSION)
        dir: PathBuf,
        /// Also rebuild this recipe (the bundle's own) on an empty cache and compare every artifact
        #[arg(long, value_name = "RECIPE")]
        rebuild: Option<PathBuf>,
        /// Require a signature by this OpenSSH public key (KEY.pub), checked before anything else
        #[arg(long, value_name = "PUB")]
        key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        privileges: PrivilegeArgs,
    },
}

#[derive(Debug, Args, Clone)]
pub struct InventoryArgs {
    /// The hosts inventory
    #[arg(long = "hosts", env = "ROOTSMITH_HOSTS", value_name = "FILE", default_value = "hosts.yaml", global = true)]
    pub file: PathBuf,
    /// The bundle, when the inventory names none
    #[arg(long, value_name = "DIR", global = true)]
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum HostsAction {
    /// Each host: its MAC and IP, the entry it boots now, its last report
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Point a host (name, MAC or IP) at an entry: KERNEL-http, KERNEL-appended, menu or local
    Set {
        host: String,
        entry: String,
        /// Back to the inventory's entry after the host's next successful report
        #[arg(long)]
        once: bool,
    },
    /// Back to the inventory's entry now
    Clear { host: String },
    /// Write every per-host file into DIR, for another TFTP or HTTP server (as `serve --hosts` makes them now)
    Write {
        dir: PathBuf,
        /// The URL the bundle's directory is served at (e.g. http://192.168.1.2/provision-agent/0.1.0/)
        #[arg(long, value_name = "URL")]
        url: String,
        /// The server's root URL, for `${server}` and reports [default: URL's scheme and host]
        #[arg(long, value_name = "URL")]
        server_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Print the cache directory: --cache, else ROOTSMITH_CACHE, else $XDG_CACHE_HOME/rootsmith, else ~/.cache/rootsmith
    Dir,
    /// List cached stages and outputs
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove old entries and unreferenced layers
    Gc {
        /// Keep at most this much (e.g. 20G, 500M)
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        keep_size: Option<u64>,
        /// Remove entries older than this (e.g. 30d, 12h)
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Option<u64>,
    },
    /// Check every layer, record and output against its digest
    Verify {
        /// Remove what is broken (a later build makes it again)
        #[arg(long)]
        repair: bool,
    },
    /// Push every cached stage to a registry repository (HOST[:PORT]/REPO)
    Push { repository: String },
    /// Pull every stage a registry repository holds into this cache
    Pull { repository: String },
}

fn parse_set(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))
}

/// `500M`, `20G`, `1024` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) =
        text.trim().split_at(text.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(text.trim().len()));
    let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a size like 500M or 20G"))?;
    let factor = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use K, M, G or T)")),
    };
    Ok(number * factor)
}

/// `30d`, `12h`, `15m`, `90s`, in seconds.
pub fn parse_age(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let number: u64 = number.parse().map_err(|_| format!("`{text}` is not an age like 30d or 12h"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("`{text}`: unknown unit (use s, m, h, d or w)")),
    };
    Ok(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_parse() {
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("10").unwrap(), 10);
        assert!(parse_size("ten").is_err());
        assert_eq!(parse_age("30d").unwrap(), 30 * 86_400);
        assert!(parse_age("3y").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
