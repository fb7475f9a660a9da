//! What changes while a lab runs: one-shot entries set by `rootsmith hosts set`,
//! each host's report token and the last report of each host's agent. Kept
//! in `STEM.state/` beside the inventory (`state.json`, and `reports/HOST.log`
//! with each report's log), written under a lock and replaced atomically, so
//! `serve` and `hosts set` can both change it. What a report brings is kept
//! without control characters, so printing it cannot drive a terminal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{Entry, Host, Inventory};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Entries set by `hosts set`, by host name; they win over the inventory's.
    #[serde(default)]
    pub set: BTreeMap<String, Override>,
    /// The last report of each host, by host name.
    #[serde(default)]
    pub reports: BTreeMap<String, Report>,
    /// Each host's report token, by host name: written into its kernel command
    /// line (`rootsmith.report_token=`), required with its reports. Made when
    /// the host's files are first made, renewed by `hosts set`.
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Override {
    pub entry: String,
    /// Cleared by the host's next successful report.
    pub once: bool,
    pub at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub at: String,
    /// `ok` or `failed`.
    pub status: String,
    /// The step that failed (or the last one done).
    pub step: Option<String>,
    /// The entry the host booted when it reported.
    pub entry: String,
    /// Whether this report ended a one-shot entry.
    pub cleared: bool,
    /// The report's log, relative to the state directory.
    pub log: String,
    pub from: String,
}

#[derive(Debug, Clone)]
pub struct StateStore {
    pub dir: PathBuf,
}

/// A hosts state is read no further than this: a few kilobytes per host.
pub const MAX_STATE_BYTES: u64 = 64 << 20;

impl StateStore {
    /// `lab/hosts.yaml` keeps its state in `lab/hosts.state/`. The inventory a
    /// recipe put in its bundle keeps it beside the bundle
    /// (`out/NAME/.VERSION.hosts-state/`), so the bundle stays as published.
    pub fn for_inventory(file: &Path) -> StateStore {
        let stem = file.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_else(|| "hosts".into());
        let dir = file.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if dir.join("manifest.json").is_file() {
            let bundle = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
            if let (Some(parent), Some(version)) = (bundle.parent(), bundle.file_name()) {
                return StateStore { dir: parent.join(format!(".{}.{stem}-state", version.to_string_lossy())) };
            }
        }
        StateStore { dir: file.with_file_name(format!("{stem}.state")) }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The state as the file holds it: a regular file only (a FIFO would
    /// never end, a symlink lead elsewhere), read no further than
    /// [`MAX_STATE_BYTES`].
    pub fn load(&self) -> Result<State> {
        match crate::fileops::read_regular_no_follow(&self.file(), MAX_STATE_BYTES + 1) {
            Ok(bytes) if bytes.len() as u64 > MAX_STATE_BYTES => {
                anyhow::bail!("{} is larger than {MAX_STATE_BYTES} bytes: not a hosts state", self.file().display())
            }
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a rootsmith hosts state", self.file().display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(error) => Err(error).with_context(|| format!("reading {}", self.file().display())),
        }
    }

    /// Change the state under the lock; it is written only when `change` succeeds.
    pub fn update<T>(&self, change: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        fs_err::create_dir_all(&self.dir)?;
        let _lock = crate::fileops::lock_file(&self.dir.join("lock"))?;
        let mut state = self.load()?;
        let result = change(&mut state)?;
        let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
        serde_json::to_writer_pretty(&mut temp, &state)?;
        temp.as_file().sync_all()?;
        temp.persist(self.file())?;
        Ok(result)
    }

    /// The state, with a report token for every host of `inventory`: those
    /// missing are made and written.
    pub fn load_with_tokens(&self, inventory: &Inventory) -> Result<State> {
        let state = self.load()?;
        if inventory.hosts.iter().all(|host| state.tokens.contains_key(&host.name)) {
            return Ok(state);
        }
        self.update(|state| {
            for host in &inventory.hosts {
                if !state.tokens.contains_key(&host.name) {
                    state.tokens.insert(host.name.clone(), new_token()?);
                }
            }
            Ok(state.clone())
        })
    }

    /// Keep a report's log as text without control characters ([`log_text`]);
    /// returns its path relative to the state directory.
    pub fn write_log(&self, host: &str, log: &[u8]) -> Result<String> {
        let relative = format!("reports/{host}.log");
        let path = self.dir.join(&relative);
        fs_err::create_dir_all(path.parent().expect("under reports"))?;
        let mut temp = tempfile::NamedTempFile::new_in(path.parent().expect("under reports"))?;
        std::io::Write::write_all(&mut temp, log_text(log).as_bytes())?;
        temp.persist(&path)?;
        Ok(relative)
    }
}

/// What `host` boots now: its `hosts set` entry, else the inventory's. An
/// entry the bundle no longer has falls back to the inventory's.
pub fn current_entry(inventory: &Inventory, state: &State, host: &Host) -> Entry {
    state.set.get(&host.name).and_then(|set| inventory.entry(&set.entry).ok()).unwrap_or_else(|| host.entry.clone())
}

/// A new report token: 128 bits from the kernel's random source, in hex.
pub fn new_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut fs_err::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Whether `offered` is `host`'s report token. A host without one has none
/// that matches. Compared in time that does not depend on where they differ.
pub fn token_matches(state: &State, host: &str, offered: Option<&str>) -> bool {
    let (Some(token), Some(offered)) = (state.tokens.get(host), offered) else { return false };
    token.len() == offered.len() && token.bytes().zip(offered.bytes()).fold(0u8, |differ, (a, b)| differ | (a ^ b)) == 0
}

/// `text` for one line of a table: every control character removed.
pub fn single_line(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// A report's log (or a console) as text: invalid UTF-8 replaced, terminal
/// escape sequences removed whole (`ESC [ … m` colours, `ESC ] … BEL`
/// titles, two-character escapes), and every other control character but
/// newline and tab (a carriage return too: it redraws a line).
pub fn log_text(log: &[u8]) -> String {
    let text = String::from_utf8_lossy(log);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // C1's one-character CSI.
            '\u{9b}' => skip_csi(&mut chars),
            '\u{1b}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    skip_csi(&mut chars);
                }
                // OSC: printable text up to BEL or ESC \ (a line break or
                // any other control character ends it too, and stays).
                Some(']') => {
                    chars.next();
                    while let Some(&c) = chars.peek() {
                        if c == '\u{7}' {
                            chars.next();
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next();
                            chars.next_if_eq(&'\\');
                            break;
                        }
                        if c.is_control() {
                            break;
                        }
                        chars.next();
                    }
                }
                // nF escapes (ESC ( B): intermediates, then a final byte.
                Some(' '..='/') => {
                    while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
                    chars.next_if(|c| ('0'..='~').contains(c));
                }
                // A two-character escape (ESC 7, ESC =, …).
                Some(c) if ('0'..='~').contains(c) => {
                    chars.next();
                }
                _ => {}
            },
            c if !c.is_control() || c == '\n' || c == '\t' => out.push(c),
            _ => {}
        }
    }
    out
}

/// Skip a control sequence's parameter and intermediate bytes and its final
/// byte; anything else ends it (and is kept), so a stray introducer never
/// hides the rest of the text.
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars.next_if(|c| ('0'..='?').contains(c) || (' '..='/').contains(c)).is_some() {}
    chars.next_if(|c| ('@'..='~').contains(c));
}

/// Record a report; a successful one ends the host's one-shot entry. Returns
/// what the host boots next. Its text fields are kept on one line each.
pub fn record_report(inventory: &Inventory, state: &mut State, host: &Host, mut report: Report) -> Entry {
    report.status = single_line(&report.status);
    report.step = report.step.as_deref().map(single_line);
    report.from = single_line(&report.from);
    report.entry = current_entry(inventory, state, host).name();
    if report.status == "ok" && state.set.get(&host.name).is_some_and(|set| set.once) {
        state.set.remove(&host.name);
        report.cleared = true;
    }
    state.reports.insert(host.name.clone(), report);
    current_entry(inventory, state, host)
}
