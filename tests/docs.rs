//! Every `rootsmith …` command line that README.md and docs/*.md show stays
//! true to the binary (no root, no network).
//!
//! Lines come from fenced code blocks (a line starting with `rootsmith `, its
//! `# comment` and any redirection left off) and from inline code spans that
//! start with `rootsmith ` (synopses like `rootsmith build RECIPE [--out DIR]`
//! and commands named in prose). For each, the subcommands named must exist
//! and every option must be in that subcommand's `--help` (a global one
//! included); a value clap lists the choices of (`--via http`, each of
//! `appended|http|pxe`, `completions bash`) must be one of them. A fenced line
//! with no placeholder (NAME, VERSION, `…`, `a|b`) whose command is offline,
//! needs no root and changes nothing outside a scratch directory (`check`,
//! `init`, `completions`, `man`, `cache dir|ls|verify`, `release ls`, `--help`)
//! is also run, in a scratch directory of its document (`recipes/` and
//! `fixtures/` linked in, in document order, so `init` then `check` works),
//! with the cache, `--out` and HOME in it; it must exit 0. Run with
//! `--nocapture` to see which lines were run and which were checked.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use common::{repo, rootsmith, run};

/// A command line as a document shows it.
struct Shown {
    /// `docs/commands.md:23`
    place: String,
    text: String,
    /// From a fenced code block (a command to run), not an inline span.
    fenced: bool,
}

fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    docs.insert(0, repo().join("README.md"));
    docs
}

fn is_command(text: &str) -> bool {
    text == "rootsmith" || text.starts_with("rootsmith ")
}

/// The command lines of one document, in order.
fn command_lines(name: &str, text: &str) -> Vec<Shown> {
    let mut shown = Vec::new();
    // The text outside fenced blocks, with their lines left empty so the
    // line numbers of inline spans stay right.
    let mut prose = String::new();
    let mut in_fence = false;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
        } else if in_fence {
            let command = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
            if is_command(command) {
                shown.push(Shown {
                    place: format!("{name}:{}", index + 1),
                    text: strip_comment(command).to_string(),
                    fenced: true,
                });
            }
        } else {
            prose.push_str(line);
        }
        prose.push('\n');
    }
    let mut inline = Vec::new();
    let bytes = prose.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'`' {
            at += 1;
            continue;
        }
        let run = bytes[at..].iter().take_while(|&&b| b == b'`').count();
        let fence = &prose[at..at + run];
        let start = at + run;
        // The closing run is exactly as long as the opening one.
        let mut end = None;
        let mut search = start;
        while let Some(offset) = prose[search..].find(fence) {
            let found = search + offset;
            let length = bytes[found..].iter().take_while(|&&b| b == b'`').count();
            if length == run {
                end = Some(found);
                break;
            }
            search = found + length;
        }
        let Some(end) = end else { break };
        let content = prose[start..end].split_whitespace().collect::<Vec<_>>().join(" ");
        // A bare `rootsmith` in prose names the program, not a command line.
        if content.starts_with("rootsmith ") {
            let line = prose[..at].matches('\n').count() + 1;
            inline.push((line, content));
        }
        at = end + run;
    }
    shown.extend(inline.into_iter().map(|(line, text)| Shown { place: format!("{name}:{line}"), text, fenced: false }));
    shown.sort_by_key(|line| line.place.rsplit(':').next().unwrap().parse::<usize>().unwrap());
    shown
}

/// A shell comment (` # …`) left off.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let cut = (1..bytes.len()).find(|&i| bytes[i] == b'#' && bytes[i - 1].is_ascii_whitespace()).unwrap_or(bytes.len());
    line[..cut].trim_end()
}

/// Words as a shell splits them (quotes kept together), up to the first
/// operator (`>`, `|`, `;`, `&&`); a synopsis's `[`, `]` and escaped `\|` undone.
fn words(text: &str) -> Vec<String> {
    let text = text.replace("\\|", "|");
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut started = false;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, c) => word.push(c),
        }
    }
    if started || !word.is_empty() {
        words.push(word);
    }
    let mut kept = Vec::new();
    for word in words {
        if ["|", "||", "&&", ";", "&"].contains(&word.as_str())
            || word.starts_with('>')
            || word.starts_with("2>")
            || word.starts_with('<')
        {
            break;
        }
        let word: String = word.chars().filter(|c| !matches!(c, '[' | ']')).collect();
        if !word.is_empty() {
            kept.push(word);
        }
    }
    kept
}

/// A word that stands for something: `NAME`, `BUNDLE_URL`, `k=v…`, `a|b`.
fn is_placeholder(word: &str) -> bool {
    word.contains('…')
        || word.contains('|')
        || (word.starts_with(|c: char| c.is_ascii_uppercase())
            && word.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || matches!(c, '_' | '=' | '-' | '.')))
}

/// What one command's `--help` offers.
#[derive(Clone, Default)]
struct Level {
    subcommands: BTreeSet<String>,
    /// Each option (`--out`, `-h`): whether it takes a value, and the values
    /// it accepts when clap lists them.
    options: BTreeMap<String, (bool, Option<BTreeSet<String>>)>,
    /// The accepted values of each positional argument, in order, when listed.
    positionals: Vec<Option<BTreeSet<String>>>,
}

/// `[possible values: a, b]` in a help line.
fn possible_values(line: &str) -> Option<BTreeSet<String>> {
    let list = line.split("[possible values: ").nth(1)?.split(']').next()?;
    Some(list.split(", ").map(str::to_string).collect())
}

fn level(path: &[String], levels: &mut HashMap<Vec<String>, Level>) -> Level {
    if let Some(level) = levels.get(path) {
        return level.clone();
    }
    let (code, help, stderr) = run(rootsmith().args(path).arg("--help"));
    assert_eq!(code, 0, "{} --help: {stderr}", command_name(path));
    let mut level = Level::default();
    let mut section = "";
    // The names of the option the description lines below belong to, and
    // whether they are in a `Possible values:` list.
    let mut described: Vec<String> = Vec::new();
    let mut listing = false;
    for line in help.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let fields: Vec<&str> = line.split_whitespace().collect();
        match section {
            "Commands:" if indent == 2 => {
                if let Some(name) = fields.first().filter(|name| **name != "help") {
                    level.subcommands.insert(name.to_string());
                }
            }
            "Arguments:" if indent == 2 && fields.first().is_some_and(|f| f.starts_with('<') || f.starts_with('[')) => {
                level.positionals.push(possible_values(line));
            }
            "Options:" if (1..=6).contains(&indent) => {
                described.clear();
                listing = false;
                let mut takes_value = false;
                for (index, field) in fields.iter().enumerate() {
                    let field = field.trim_end_matches(',');
                    let is_option = (field.starts_with("--") && field.len() > 2)
                        || (field.len() == 2 && field.starts_with('-') && field != "--");
                    if !is_option {
                        break;
                    }
                    takes_value = fields.get(index + 1).is_some_and(|next| next.starts_with('<'));
                    described.push(field.to_string());
                }
                for name in &described {
                    level.options.insert(name.clone(), (takes_value, possible_values(line)));
                }
            }
            "Options:" if indent > 6 => {
                let trimmed = line.trim();
                let mut values = Vec::new();
                if trimmed == "Possible values:" {
                    listing = true;
                } else if listing && trimmed.starts_with("- ") {
                    values.push(trimmed[2..].split(':').next().unwrap().trim().to_string());
                } else if let Some(listed) = possible_values(line) {
                    values.extend(listed);
                } else if !trimmed.is_empty() {
                    listing = false;
                }
                for name in described.iter().filter(|_| !values.is_empty()) {
                    if let Some((_, accepted)) = level.options.get_mut(name) {
                        accepted.get_or_insert_with(BTreeSet::new).extend(values.iter().cloned());
                    }
                }
            }
            _ => {}
        }
    }
    levels.insert(path.to_vec(), level.clone());
    level
}

/// A value the line gives (`http`, or each of `appended|http|pxe`) is one
/// the argument accepts; placeholders (`NAME`, `…`) are not checked.
fn check_value(value: &str, accepted: Option<&BTreeSet<String>>, what: &str) -> Result<(), String> {
    let Some(accepted) = accepted else { return Ok(()) };
    if value.contains('…') || (is_placeholder(value) && !value.contains('|')) {
        return Ok(());
    }
    for alternative in value.split('|') {
        if !accepted.contains(alternative) {
            return Err(format!(
                "`{alternative}` is not a value of {what} (it takes {})",
                accepted.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(())
}

/// `rootsmith release verify`
fn command_name(path: &[String]) -> String {
    std::iter::once("rootsmith").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}

/// The subcommands a line names, or what is wrong with it.
fn check_arguments(words: &[String], levels: &mut HashMap<Vec<String>, Level>) -> Result<Vec<String>, String> {
    let mut path: Vec<String> = Vec::new();
    let mut current = level(&path, levels);
    let mut positional = 0;
    let mut index = 1;
    while index < words.len() {
        let word = &words[index];
        if word == "--" {
            break;
        }
        let is_option = word.starts_with("--") || (word.len() == 2 && word.starts_with('-'));
        if is_option {
            let (name, inline) = match word.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (word.as_str(), None),
            };
            let Some((takes_value, accepted)) = current.options.get(name) else {
                return Err(format!(
                    "`{name}` is not an option of `{}` (it has {})",
                    command_name(&path),
                    current.options.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            };
            let value = match inline {
                Some(value) => Some(value),
                None if *takes_value => {
                    index += 1;
                    words.get(index).map(String::as_str)
                }
                None => None,
            };
            if let Some(value) = value {
                check_value(value, accepted.as_ref(), &format!("`{name}` of `{}`", command_name(&path)))?;
            }
        } else if !current.subcommands.is_empty() {
            if !current.subcommands.contains(word) {
                return Err(format!(
                    "`{word}` is not a command of `{}` (it has {})",
                    command_name(&path),
                    current.subcommands.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            path.push(word.clone());
            current = level(&path, levels);
            positional = 0;
        } else {
            let accepted = current.positionals.get(positional).cloned().flatten();
            check_value(word, accepted.as_ref(), &format!("argument {} of `{}`", positional + 1, command_name(&path)))?;
            positional += 1;
        }
        index += 1;
    }
    Ok(path)
}

/// Commands that run offline, without root, changing nothing outside the
/// directory they run in (and the cache and --out given to them there).
fn runs_offline(path: &[String], words: &[String]) -> bool {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let safe = matches!(
        path.as_slice(),
        [] | ["check"]
            | ["init"]
            | ["completions"]
            | ["man"]
            | ["cache", "dir"]
            | ["cache", "ls"]
            | ["cache", "verify"]
            | ["release", "ls"]
    );
    safe && !words.iter().any(|word| {
        word == "--repair" || word == "--dir" || word.starts_with("--dir=") || word == "--cache" || word == "--out"
    })
}

/// A document's scratch directory: `recipes/` and `fixtures/` of the
/// repository, and room for what the commands write.
fn scratch(root: &Path, document: &str) -> PathBuf {
    let dir = root.join(document.replace('/', "_"));
    if !dir.exists() {
        std::fs::create_dir_all(dir.join("home")).unwrap();
        for linked in ["recipes", "fixtures"] {
            std::os::unix::fs::symlink(repo().join(linked), dir.join(linked)).unwrap();
        }
    }
    dir
}

#[test]
fn every_documented_command_line_is_accepted_and_the_offline_ones_run() {
    let scratch_root = tempfile::tempdir().unwrap();
    let mut levels = HashMap::new();
    let (mut executed, mut checked, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for document in documents() {
        let name = document.strip_prefix(repo()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&document).unwrap();
        for shown in command_lines(&name, &text) {
            let words = words(&shown.text);
            let path = match check_arguments(&words, &mut levels) {
                Ok(path) => path,
                Err(problem) => {
                    problems.push(format!("{}: `{}`: {problem}", shown.place, shown.text));
                    continue;
                }
            };
            let concrete = !words.iter().skip(1).any(|word| is_placeholder(word));
            if !(shown.fenced && concrete && runs_offline(&path, &words)) {
                checked.push(format!("{}: {}", shown.place, shown.text));
                continue;
            }
            let dir = scratch(scratch_root.path(), &name);
            let (code, _, stderr) = run(rootsmith()
                .args(&words[1..])
                .current_dir(&dir)
                .env("HOME", dir.join("home"))
                .env("ROOTSMITH_CACHE", dir.join("cache"))
                .env("ROOTSMITH_OUT", dir.join("out"))
                .env_remove("XDG_CACHE_HOME")
                .env_remove("XDG_CONFIG_HOME")
                .env_remove("ROOTSMITH_CONFIG")
                .env_remove("ROOTSMITH_HOSTS")
                .env_remove("SOURCE_DATE_EPOCH"));
            if code != 0 {
                problems.push(format!("{}: `{}` exits {code}: {}", shown.place, shown.text, stderr.trim_end()));
            }
            executed.push(format!("{}: {}", shown.place, shown.text));
        }
    }
    println!("run ({}):", executed.len());
    for line in &executed {
        println!("  {line}");
    }
    println!("options checked ({}):", checked.len());
    for line in &checked {
        println!("  {line}");
    }
    assert!(problems.is_empty(), "documented command lines the binary disagrees with:\n{}", problems.join("\n"));
    // The extraction itself: the docs show dozens of command lines.
    assert!(executed.len() >= 5, "only {} documented lines were run", executed.len());
    assert!(checked.len() >= 40, "only {} documented lines were checked", checked.len());
}

/// The checker finds what it is for: a missing option, a missing subcommand,
/// an option of another command; and reads synopses as they are written.
#[test]
fn the_checker_catches_what_drifts() {
    let mut levels = HashMap::new();
    let check = |line: &str, levels: &mut HashMap<Vec<String>, Level>| check_arguments(&words(line), levels);
    assert_eq!(
        check("rootsmith release verify DIR --rebuild RECIPE --json", &mut levels).unwrap(),
        ["release", "verify"]
    );
    assert_eq!(
        check("rootsmith hosts [--hosts FILE] [--bundle DIR] ls [--json]", &mut levels).unwrap(),
        ["hosts", "ls"]
    );
    assert_eq!(
        check("rootsmith boot-test BUNDLE [--via appended\\|http\\|pxe] [--memory MIB] [--append ARG]…", &mut levels)
            .unwrap(),
        ["boot-test"]
    );
    assert_eq!(check("rootsmith shell RECIPE [--stage S] [-- CMD…]", &mut levels).unwrap(), ["shell"]);
    assert_eq!(
        check("rootsmith completions bash > /etc/bash_completion.d/rootsmith", &mut levels).unwrap(),
        ["completions"]
    );
    assert!(check("rootsmith release verify DIR --out out", &mut levels)
        .unwrap_err()
        .contains("`--out` is not an option of `rootsmith release verify`"));
    assert!(check("rootsmith --cache DIR build RECIPE", &mut levels)
        .unwrap_err()
        .contains("`--cache` is not an option of `rootsmith`"));
    assert!(check("rootsmith release undo NAME", &mut levels)
        .unwrap_err()
        .contains("`undo` is not a command of `rootsmith release`"));
    assert!(check("rootsmith serve out/ --tftp=0.0.0.0:69 --adr 0.0.0.0:8080", &mut levels)
        .unwrap_err()
        .contains("`--adr`"));
    assert!(check("rootsmith boot-test out/b/1 --via htpp", &mut levels)
        .unwrap_err()
        .contains("`htpp` is not a value of `--via` of `rootsmith boot-test`"));
    assert!(check("rootsmith qemu BUNDLE [--accel auto\\|kvm\\|hvf]", &mut levels)
        .unwrap_err()
        .contains("`hvf` is not a value of `--accel`"));
    assert!(check("rootsmith completions bash\\|zsh\\|tcsh", &mut levels)
        .unwrap_err()
        .contains("`tcsh` is not a value of argument 1 of `rootsmith completions`"));

    let shown = command_lines("t.md", "A `rootsmith hosts --hosts lab.yaml write DIR --url\nhttp://h/` span.\n\n```sh\nrootsmith check r.yaml   # note\n```\n`rootsmith-init` and `rootsmith.host=X` are not commands.\n");
    let lines: Vec<(&str, &str, bool)> = shown.iter().map(|s| (s.place.as_str(), s.text.as_str(), s.fenced)).collect();
    assert_eq!(
        lines,
        [
            ("t.md:1", "rootsmith hosts --hosts lab.yaml write DIR --url http://h/", false),
            ("t.md:5", "rootsmith check r.yaml", true)
        ]
    );
    assert!(is_placeholder("NAME") && is_placeholder("k=v…") && is_placeholder("a|b") && is_placeholder("BUNDLE_URL"));
    assert!(!is_placeholder("20G") && !is_placeholder("recipes/debian-minimal.yaml") && !is_placeholder("1.2.0-rc1"));
}
