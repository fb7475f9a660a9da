//! Progress of a build: a spinner line per stage on a terminal, plain
//! timestamped lines otherwise (CI logs), nothing at all with `--json`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub trait Progress: Sync {
    /// A stage (or the outputs step) starts; `what` says how.
    fn start(&self, label: &str, what: &str);
    /// It ended: `state` is `cached` or `built`.
    fn done(&self, label: &str, state: &str, seconds: f64);
    fn note(&self, message: &str);
    /// It failed: the line stays, marked, with why.
    fn fail(&self, label: &str, why: &str) {
        eprintln!("[{}] {label}: failed: {why}", clock());
    }
    /// Something the user must see, even with --json (on stderr).
    fn warn(&self, message: &str) {
        eprintln!("warning: {message}");
    }
}

/// Another progress, with every warning also kept (a build's summary lists
/// them for machines: `build --json`).
pub struct KeepingWarnings<'a> {
    inner: &'a dyn Progress,
    pub warnings: std::sync::Mutex<Vec<String>>,
}

impl<'a> KeepingWarnings<'a> {
    pub fn new(inner: &'a dyn Progress) -> KeepingWarnings<'a> {
        KeepingWarnings { inner, warnings: std::sync::Mutex::new(Vec::new()) }
    }

    /// The warnings so far, in order.
    pub fn taken(&self) -> Vec<String> {
        self.warnings.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl Progress for KeepingWarnings<'_> {
    fn start(&self, label: &str, what: &str) {
        self.inner.start(label, what)
    }
    fn done(&self, label: &str, state: &str, seconds: f64) {
        self.inner.done(label, state, seconds)
    }
    fn note(&self, message: &str) {
        self.inner.note(message)
    }
    fn fail(&self, label: &str, why: &str) {
        self.inner.fail(label, why)
    }
    fn warn(&self, message: &str) {
        self.warnings.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(message.to_string());
        self.inner.warn(message)
    }
}

/// How a build shows its progress (`--progress`, `-q`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    /// Bars, whatever stderr is.
    Tty,
    /// Timestamped lines (CI logs).
    Plain,
    /// Nothing but warnings.
    Quiet,
}

pub fn for_mode(mode: Mode) -> Box<dyn Progress> {
    match mode {
        Mode::Quiet => Box::new(Silent),
        Mode::Auto if !std::io::stderr().is_terminal() => Box::new(Lines),
        Mode::Plain => Box::new(Lines),
        Mode::Auto | Mode::Tty => {
            Box::new(Bars { multi: MultiProgress::new(), bars: std::sync::Mutex::new(Vec::new()) })
        }
    }
}

pub fn for_terminal(quiet: bool) -> Box<dyn Progress> {
    for_mode(if quiet { Mode::Quiet } else { Mode::Auto })
}

pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: &str) {}
    fn done(&self, _: &str, _: &str, _: f64) {}
    fn note(&self, _: &str) {}
    fn fail(&self, _: &str, _: &str) {}
}

/// `[HH:MM:SS] label: message` lines on stderr.
pub struct Lines;

/// `HH:MM:SS` (UTC) for timestamped log lines.
pub fn clock() -> String {
    let seconds = crate::time::now_seconds() % 86_400;
    format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

impl Progress for Lines {
    fn start(&self, label: &str, what: &str) {
        eprintln!("[{}] {label}: {what}", clock());
    }
    fn done(&self, label: &str, state: &str, seconds: f64) {
        eprintln!("[{}] {label}: {state} in {seconds:.1}s", clock());
    }
    fn note(&self, message: &str) {
        eprintln!("[{}] {message}", clock());
    }
}

struct Bars {
    multi: MultiProgress,
    bars: std::sync::Mutex<Vec<(String, ProgressBar)>>,
}

impl Bars {
    /// The line of `label`: the one it started, or a new one (a cached
    /// stage never starts, yet gets its line).
    fn bar(&self, label: &str) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap();
        if let Some((_, bar)) = bars.iter().rev().find(|(name, bar)| name == label && !bar.is_finished()) {
            return bar.clone();
        }
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_prefix(label.to_string());
        bars.push((label.to_string(), bar.clone()));
        bar
    }
}

impl Progress for Bars {
    fn start(&self, label: &str, what: &str) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<24} {msg} {elapsed:>4}").expect("valid template"),
        );
        bar.set_prefix(label.to_string());
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars.lock().unwrap().push((label.to_string(), bar));
    }
    fn done(&self, label: &str, state: &str, seconds: f64) {
        let bar = self.bar(label);
        bar.set_style(ProgressStyle::with_template("✓ {prefix:<24} {msg}").expect("valid template"));
        bar.finish_with_message(if state == "cached" {
            "cached".to_string()
        } else {
            format!("{state} in {seconds:.1}s")
        });
    }
    fn fail(&self, label: &str, why: &str) {
        let bar = self.bar(label);
        bar.set_style(ProgressStyle::with_template("✗ {prefix:<24} {msg}").expect("valid template"));
        bar.finish_with_message(format!("failed: {}", why.lines().next().unwrap_or(why)));
    }
    fn note(&self, message: &str) {
        let _ = self.multi.println(message);
    }
    fn warn(&self, message: &str) {
        let _ = self.multi.println(format!("warning: {message}"));
    }
}

/// `1.5 MiB`: a size for people.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
