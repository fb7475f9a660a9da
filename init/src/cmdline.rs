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

#[cfg(test)]
mod tests {
    use super::*;

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
