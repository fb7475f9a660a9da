//! The architectures rootsmith builds for (Debian names), what each is called
//! elsewhere (Rust targets, ELF machines), the host's own, and whether this
//! host can run a foreign one's programs (user-mode emulation through
//! binfmt_misc).

/// The recipe's `arch:` values rootsmith supports.
pub const SUPPORTED: &[&str] = &["amd64", "arm64"];

/// The architecture a recipe builds for when it names none.
pub const DEFAULT: &str = "amd64";

/// `arch` is one rootsmith supports.
pub fn is_supported(arch: &str) -> bool {
    SUPPORTED.contains(&arch)
}
