//! Keeps the module map in docs/architecture.md true.
//!
//! The map is the table under the heading `## Who may import whom`: one row per
//! top-level module of src/, naming the top-level modules it may import
//! (`—` for none, `anything` for no limit). These tests scan every file under
//! src/ with a small std-only scanner (comments and string literals stripped,
//! `use` trees expanded, `crate::`, `self::`, `super::`, child-module and, on
//! the binary side, `rootsmith::` paths resolved) and check:
//!
//! - the map has exactly one row per top-level module, and its own graph has no
//!   cycle (`every_module_has_a_row_and_the_map_has_no_cycle`);
//! - every import from one top-level module into another is allowed by the map,
//!   and the library never imports the binary side (`main`, `cli`,
//!   `commands`) (`imports_follow_the_map`);
//! - no two top-level modules import each other (`no_two_modules_import_each_other`);
//! - no cycle between files, test code aside (`no_file_cycles`).
//!
//! ROOTSMITH_ARCH_DOC and ROOTSMITH_ARCH_SRC override the map's path and the
//! source dir (defaults: docs/architecture.md and src/ of the package).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const HEADING: &str = "## Who may import whom";
const HOW_TO_FIX: &str = "How to fix: either move the code where the map allows it, or change the map in docs/architecture.md in the same commit and say why.";
const HOW_TO_FIX_PAIRS: &str = "How to fix: one module of each pair must stop importing the other: move the shared items down into a module both may import (or a new one), then either the code follows the map, or change the map in docs/architecture.md in the same commit and say why.";
const HOW_TO_FIX_FILES: &str = "How to fix: move what the files share (types, constants, helpers) into a file each of them imports and none of them is imported by, e.g. for mod.rs <-> child.rs a new sibling file that mod.rs re-exports; if that changes who imports whom between top-level modules, change the map in docs/architecture.md in the same commit and say why.";
/// Top-level modules of the binary (declared by main.rs); main.rs may add more.
const BINARY_MODULES: &[&str] = &["cli", "commands"];

// ---------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------

fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_MANIFEST_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn doc_path() -> (PathBuf, String) {
    match std::env::var_os("ROOTSMITH_ARCH_DOC") {
        Some(path) => {
            let path = PathBuf::from(path);
            let shown = path.display().to_string();
            (path, shown)
        }
        None => (manifest_dir().join("docs/architecture.md"), "docs/architecture.md".to_string()),
    }
}

fn src_dir() -> PathBuf {
    std::env::var_os("ROOTSMITH_ARCH_SRC").map(PathBuf::from).unwrap_or_else(|| manifest_dir().join("src"))
}

// ---------------------------------------------------------------------------
// Stripping comments and literals
// ---------------------------------------------------------------------------

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The source with comments, string and char literals blanked out (newlines
/// kept, so line numbers stay right). Lifetimes and labels are left alone.
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let n = c.len();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, from: usize, to: usize| {
        for &ch in &c[from..to.min(n)] {
            out.push(if ch == '\n' { '\n' } else { ' ' });
        }
    };
    let mut i = 0;
    while i < n {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        // Line comment (also /// and //! docs).
        if ch == '/' && next == Some('/') {
            let mut j = i;
            while j < n && c[j] != '\n' {
                j += 1;
            }
            blank(&mut out, i, j);
            i = j;
            continue;
        }
        // Block comment, nested.
        if ch == '/' && next == Some('*') {
            let mut j = i + 2;
            let mut depth = 1;
            while j < n && depth > 0 {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
            continue;
        }
        let prev_ident = i > 0 && is_ident_char(c[i - 1]);
        // Raw strings: r"..", r#".."#, br#".."#, cr"..".
        if !prev_ident && (ch == 'r' || ((ch == 'b' || ch == 'c') && next == Some('r'))) {
            let mut j = if ch == 'r' { i + 1 } else { i + 2 };
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) == Some(&'"') {
                j += 1;
                while j < n {
                    if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                blank(&mut out, i, j);
                i = j;
                continue;
            }
            // A raw identifier (r#type) or a plain identifier: fall through.
        }
        // Strings (b".." and c".." leave their prefix letter, harmless).
        if ch == '"' {
            let mut j = i + 1;
            while j < n {
                if c[j] == '\\' {
                    j += 2;
                    continue;
                }
                if c[j] == '"' {
                    j += 1;
                    break;
                }
                j += 1;
            }
            blank(&mut out, i, j);
            i = j;
            continue;
        }
        // Char literals; a lifetime or label ('a, 'static, 'outer:) has no closing quote.
        if ch == '\'' {
            if next == Some('\\') {
                let mut j = i + 3;
                while j < n && c[j] != '\'' && c[j] != '\n' {
                    j += 1;
                }
                blank(&mut out, i, j + 1);
                i = j + 1;
                continue;
            }
            if c.get(i + 2) == Some(&'\'') {
                blank(&mut out, i, i + 3);
                i += 3;
                continue;
            }
        }
        out.push(ch);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num,
    PathSep,
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

fn tokenize(stripped: &str) -> Vec<Token> {
    let c: Vec<char> = stripped.chars().collect();
    let n = c.len();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < n {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == 'r'
            && c.get(i + 1) == Some(&'#')
            && c.get(i + 2).is_some_and(|&d| is_ident_char(d) && !d.is_ascii_digit())
        {
            // Raw identifier r#name.
            let mut j = i + 2;
            while j < n && is_ident_char(c[j]) {
                j += 1;
            }
            tokens.push(Token { tok: Tok::Ident(c[i + 2..j].iter().collect()), line });
            i = j;
        } else if ch.is_ascii_digit() {
            let mut j = i;
            while j < n && is_ident_char(c[j]) {
                j += 1;
            }
            tokens.push(Token { tok: Tok::Num, line });
            i = j;
        } else if is_ident_char(ch) {
            let mut j = i;
            while j < n && is_ident_char(c[j]) {
                j += 1;
            }
            tokens.push(Token { tok: Tok::Ident(c[i..j].iter().collect()), line });
            i = j;
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            tokens.push(Token { tok: Tok::PathSep, line });
            i += 2;
        } else {
            tokens.push(Token { tok: Tok::Punct(ch), line });
            i += 1;
        }
    }
    tokens
}

fn ident(tokens: &[Token], i: usize) -> Option<&str> {
    match tokens.get(i) {
        Some(Token { tok: Tok::Ident(name), .. }) => Some(name),
        _ => None,
    }
}

/// `pub(in crate::a)`: the path after `in` is a visibility, not an import.
fn is_visibility_path(tokens: &[Token], i: usize) -> bool {
    i >= 3 && ident(tokens, i - 1) == Some("in") && is_punct(tokens, i - 2, '(') && ident(tokens, i - 3) == Some("pub")
}

fn is_punct(tokens: &[Token], i: usize, p: char) -> bool {
    matches!(tokens.get(i), Some(Token { tok: Tok::Punct(q), .. }) if *q == p)
}

fn is_sep(tokens: &[Token], i: usize) -> bool {
    matches!(tokens.get(i), Some(Token { tok: Tok::PathSep, .. }))
}

// ---------------------------------------------------------------------------
// Scanning one file
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Library,
    Binary,
}

/// A `mod NAME;` or `mod NAME { .. }` at file level.
#[derive(Debug, Clone)]
struct ModDecl {
    name: String,
    line: usize,
    test: bool,
}

/// A path into the crate, resolved to segments from the crate root.
#[derive(Debug, Clone, PartialEq)]
struct Reference {
    line: usize,
    /// Which crate root the path starts from (`crate::` in a binary-side file
    /// is main.rs, `rootsmith::` is lib.rs).
    side: Side,
    path: Vec<String>,
    /// The path as written (`super::Thing`, `crate::{a, b}` expanded to one leaf).
    written: String,
    /// In `#[cfg(test)]` code.
    test: bool,
}

#[derive(Debug, Default)]
struct Scan {
    refs: Vec<Reference>,
    mods: Vec<ModDecl>,
}

#[derive(Debug, Clone)]
struct Ctx {
    /// Inline modules (`mod tests { .. }`) the code is in, below the file's module.
    suffix: Vec<String>,
    test: bool,
}

/// The matching close of the bracket at `open` (any of `([{`), counting all bracket kinds.
fn matching_close(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    let mut i = open;
    while i < tokens.len() {
        if let Tok::Punct(p) = tokens[i].tok {
            match p {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    tokens.len().saturating_sub(1)
}

/// The last token of the item starting at `i`: a `use` ends at its `;`, any
/// other item at its first top-level `;` or the close of its first top-level `{`.
fn item_end(tokens: &[Token], i: usize) -> usize {
    let is_use = ident(tokens, i) == Some("use");
    let mut j = i;
    while j < tokens.len() {
        match tokens[j].tok {
            Tok::Punct(';') => return j,
            Tok::Punct('(') | Tok::Punct('[') => j = matching_close(tokens, j),
            Tok::Punct('{') => {
                let close = matching_close(tokens, j);
                if !is_use {
                    return close;
                }
                j = close;
            }
            _ => {}
        }
        j += 1;
    }
    tokens.len().saturating_sub(1)
}

/// Index past `pub`, `pub(crate)`, `pub(in a::b)` at `i`.
fn skip_visibility(tokens: &[Token], mut i: usize) -> usize {
    if ident(tokens, i) == Some("pub") {
        i += 1;
        if is_punct(tokens, i, '(') {
            i = matching_close(tokens, i) + 1;
        }
    }
    i
}

/// Per token, the context it is in (inline module, test code), and the file's module declarations.
fn contexts(tokens: &[Token]) -> (Vec<Ctx>, Vec<ModDecl>) {
    let mut ctx_of = vec![Ctx { suffix: Vec::new(), test: false }; tokens.len()];
    let mut mods = Vec::new();
    // Open inline modules: (brace depth inside them, context).
    let mut stack: Vec<(usize, Ctx)> = Vec::new();
    let root = Ctx { suffix: Vec::new(), test: false };
    let mut depth = 0usize;
    let mut pending_test = false;
    let mut pending_push: Option<Ctx> = None;
    let mut i = 0;
    while i < tokens.len() {
        let current = stack.last().map(|(_, ctx)| ctx.clone()).unwrap_or_else(|| root.clone());
        // Attributes: #[..] and #![..]; note #[cfg(test)].
        if is_punct(tokens, i, '#')
            && (is_punct(tokens, i + 1, '[') || (is_punct(tokens, i + 1, '!') && is_punct(tokens, i + 2, '[')))
        {
            let inner = is_punct(tokens, i + 1, '!');
            let open = if inner { i + 2 } else { i + 1 };
            let close = matching_close(tokens, open);
            let body: Vec<&Tok> = tokens[open + 1..close].iter().map(|t| &t.tok).collect();
            let cfg_test = body.len() == 4
                && body[0] == &Tok::Ident("cfg".into())
                && body[1] == &Tok::Punct('(')
                && body[2] == &Tok::Ident("test".into())
                && body[3] == &Tok::Punct(')');
            for ctx in &mut ctx_of[i..=close] {
                *ctx = current.clone();
            }
            if cfg_test {
                if inner {
                    // #![cfg(test)]: the whole enclosing module is test code.
                    let test = Ctx { suffix: current.suffix.clone(), test: true };
                    for ctx in &mut ctx_of[close + 1..] {
                        *ctx = test.clone();
                    }
                    if stack.is_empty() {
                        return (ctx_of, mods);
                    }
                } else {
                    pending_test = true;
                }
            }
            i = close + 1;
            continue;
        }
        // Start of an item after attributes.
        let after_vis = skip_visibility(tokens, i);
        if ident(tokens, after_vis) == Some("mod") {
            if let Some(name) = ident(tokens, after_vis + 1) {
                let test = current.test || pending_test;
                if stack.is_empty() {
                    mods.push(ModDecl { name: name.to_string(), line: tokens[after_vis].line, test });
                }
                if is_punct(tokens, after_vis + 2, '{') {
                    let mut suffix = current.suffix.clone();
                    suffix.push(name.to_string());
                    pending_push = Some(Ctx { suffix, test });
                }
                for ctx in &mut ctx_of[i..after_vis + 2] {
                    *ctx = current.clone();
                }
                pending_test = false;
                i = after_vis + 2;
                continue;
            }
        }
        if pending_test {
            // A #[cfg(test)] item other than a module: all of it is test code.
            let end = item_end(tokens, i);
            let test = Ctx { suffix: current.suffix.clone(), test: true };
            for ctx in &mut ctx_of[i..=end] {
                *ctx = test.clone();
            }
            // Keep brace depth right: the item's braces are balanced.
            pending_test = false;
            i = end + 1;
            continue;
        }
        ctx_of[i] = current.clone();
        match tokens[i].tok {
            Tok::Punct('{') => {
                depth += 1;
                if let Some(ctx) = pending_push.take() {
                    stack.push((depth, ctx));
                }
            }
            Tok::Punct('}') => {
                if stack.last().is_some_and(|(d, _)| *d == depth) {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        i += 1;
    }
    (ctx_of, mods)
}

/// Parses a path starting at the identifier `i` (a use tree when it has
/// `{..}` groups); returns each leaf path with the line of its last segment.
fn parse_tree(tokens: &[Token], mut i: usize) -> (Vec<(Vec<String>, usize)>, usize) {
    let mut segs = vec![ident(tokens, i).unwrap_or_default().to_string()];
    let mut line = tokens[i].line;
    i += 1;
    loop {
        if !is_sep(tokens, i) {
            break;
        }
        if let Some(name) = ident(tokens, i + 1) {
            segs.push(name.to_string());
            line = tokens[i + 1].line;
            i += 2;
            continue;
        }
        if is_punct(tokens, i + 1, '{') {
            let (group, next) = parse_group(tokens, i + 1);
            let leaves = group
                .into_iter()
                .map(|(suffix, line)| {
                    let mut path = segs.clone();
                    path.extend(suffix);
                    (path, line)
                })
                .collect();
            return (leaves, next);
        }
        if is_punct(tokens, i + 1, '*') {
            segs.push("*".to_string()); // a glob names the module itself; dropped when resolving
            return (vec![(segs, tokens[i + 1].line)], i + 2);
        }
        break; // `::<` turbofish or anything else
    }
    (vec![(segs, line)], i)
}

/// Parses the `{ .. }` of a use tree at `open`; returns the leaf suffixes.
fn parse_group(tokens: &[Token], open: usize) -> (Vec<(Vec<String>, usize)>, usize) {
    let mut leaves = Vec::new();
    let mut i = open + 1;
    while i < tokens.len() {
        if is_punct(tokens, i, '}') {
            return (leaves, i + 1);
        }
        if is_punct(tokens, i, '{') {
            // `{a, {b, c}}` (rare but legal)
            let (group, next) = parse_group(tokens, i);
            leaves.extend(group);
            i = next;
            continue;
        }
        match ident(tokens, i) {
            Some("self") if !is_sep(tokens, i + 1) => {
                leaves.push((Vec::new(), tokens[i].line));
                i += 1;
            }
            Some("as") => i += 2,
            Some(_) => {
                let (sub, next) = parse_tree(tokens, i);
                leaves.extend(sub);
                i = next;
            }
            None => {
                if is_punct(tokens, i, '*') {
                    leaves.push((vec!["*".to_string()], tokens[i].line));
                }
                i += 1;
            }
        }
    }
    (leaves, i)
}

/// Scans one file whose module is `modpath` (empty for lib.rs and main.rs).
fn scan_source(src: &str, modpath: &[String], side: Side) -> Scan {
    let tokens = tokenize(&strip(src));
    let (ctx_of, mods) = contexts(&tokens);
    let children: BTreeSet<&str> = mods.iter().map(|m| m.name.as_str()).collect();
    let mut refs = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let Some(first) = ident(&tokens, i) else {
            i += 1;
            continue;
        };
        let ctx = &ctx_of[i];
        let starts_path = is_sep(&tokens, i + 1)
            && !is_sep(&tokens, i.wrapping_sub(1))
            && !is_punct(&tokens, i.wrapping_sub(1), '.')
            // pub(in crate::a) is a visibility, not an import
            && !is_visibility_path(&tokens, i);
        let known = match first {
            "crate" | "self" | "super" => true,
            "rootsmith" => side == Side::Binary,
            name => ctx.suffix.is_empty() && children.contains(name),
        };
        if !starts_path || !known {
            i += 1;
            continue;
        }
        let (leaves, next) = parse_tree(&tokens, i);
        let mut here: Vec<String> = modpath.to_vec();
        here.extend(ctx.suffix.iter().cloned());
        for (mut segs, line) in leaves {
            let written = segs.join("::");
            if segs.last().is_some_and(|s| s == "*") {
                segs.pop();
            }
            let (root_side, abs) = match segs[0].as_str() {
                "crate" => (side, segs[1..].to_vec()),
                "rootsmith" => (Side::Library, segs[1..].to_vec()),
                "self" => (side, here.iter().cloned().chain(segs[1..].iter().cloned()).collect()),
                "super" => {
                    let ups = segs.iter().take_while(|s| *s == "super").count();
                    if ups > here.len() {
                        continue; // beyond the crate root: not valid Rust, ignore
                    }
                    let base = &here[..here.len() - ups];
                    (side, base.iter().cloned().chain(segs[ups..].iter().cloned()).collect())
                }
                _ => (side, modpath.iter().cloned().chain(segs.iter().cloned()).collect()),
            };
            refs.push(Reference { line, side: root_side, path: abs, written, test: ctx.test });
        }
        i = next.max(i + 1);
    }
    Scan { refs, mods }
}

// ---------------------------------------------------------------------------
// The crate
// ---------------------------------------------------------------------------

struct SrcFile {
    /// "src/cache/mod.rs"
    rel: String,
    /// ["cache"]; empty for the crate roots.
    modpath: Vec<String>,
    side: Side,
    scan: Scan,
}

impl SrcFile {
    fn top(&self) -> Option<&str> {
        self.modpath.first().map(String::as_str)
    }
    /// Test files (tests.rs, anything under a `tests` module).
    fn is_test_file(&self) -> bool {
        self.modpath.iter().any(|s| s == "tests")
    }
}

struct Crate {
    files: Vec<SrcFile>,
    /// "cache::store" -> index into files
    module_files: BTreeMap<String, usize>,
    top_modules: BTreeSet<String>,
    binary_modules: BTreeSet<String>,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let file = parts.pop().unwrap();
    if parts.is_empty() && (file == "lib.rs" || file == "main.rs") {
        return Vec::new();
    }
    if file != "mod.rs" {
        parts.push(file.trim_end_matches(".rs").to_string());
    }
    parts
}

fn load_crate(src: &Path) -> Crate {
    let mut paths = Vec::new();
    rs_files(src, &mut paths);
    assert!(!paths.is_empty(), "no .rs files under {}", src.display());
    let mut raw = Vec::new();
    for path in paths {
        let rel_path = path.strip_prefix(src).unwrap().to_path_buf();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        raw.push((format!("src/{}", rel_path.display()), module_path(&rel_path), text));
    }
    // The binary side: cli, commands and whatever main.rs declares.
    let mut binary_modules: BTreeSet<String> = BINARY_MODULES.iter().map(|s| s.to_string()).collect();
    if let Some((_, _, text)) = raw.iter().find(|(rel, _, _)| rel == "src/main.rs") {
        for decl in scan_source(text, &[], Side::Binary).mods {
            binary_modules.insert(decl.name);
        }
    }
    let mut files = Vec::new();
    let mut module_files = BTreeMap::new();
    let mut top_modules = BTreeSet::new();
    for (rel, modpath, text) in raw {
        let side = if rel == "src/main.rs" || modpath.first().is_some_and(|t| binary_modules.contains(t)) {
            Side::Binary
        } else {
            Side::Library
        };
        if let Some(top) = modpath.first() {
            top_modules.insert(top.clone());
            module_files.insert(modpath.join("::"), files.len());
        }
        let scan = scan_source(&text, &modpath, side);
        files.push(SrcFile { rel, modpath, side, scan });
    }
    binary_modules.retain(|m| top_modules.contains(m));
    Crate { files, module_files, top_modules, binary_modules }
}

impl Crate {
    /// The deepest module file a path names (the crate root when none).
    fn target(&self, side: Side, path: &[String]) -> Option<usize> {
        for k in (1..=path.len()).rev() {
            if let Some(&index) = self.module_files.get(&path[..k].join("::")) {
                return Some(index);
            }
        }
        let root = match side {
            Side::Library => "src/lib.rs",
            Side::Binary => "src/main.rs",
        };
        self.files.iter().position(|f| f.rel == root)
    }

    /// Every reference from one top-level module (or crate root) to another
    /// top-level module: (file index, reference, from, to). `from` is "main"
    /// or "lib" for the crate roots.
    fn module_refs(&self) -> Vec<(usize, &Reference, String, String)> {
        let mut out = Vec::new();
        for (index, file) in self.files.iter().enumerate() {
            let from = match (file.top(), file.side) {
                (Some(top), _) => top.to_string(),
                (None, Side::Binary) => "main".to_string(),
                (None, Side::Library) => "lib".to_string(),
            };
            for r in &file.scan.refs {
                let Some(to) = r.path.first() else { continue };
                if to == "main" || (self.top_modules.contains(to) && *to != from) {
                    out.push((index, r, from.clone(), to.clone()));
                }
            }
        }
        out
    }

    /// The detected top-level graph, for failure messages.
    fn graph_report(&self) -> String {
        let mut edges: BTreeMap<&str, BTreeMap<&str, (usize, usize)>> = BTreeMap::new();
        for m in &self.top_modules {
            edges.entry(m.as_str()).or_default();
        }
        let refs = self.module_refs();
        for (_, r, from, to) in &refs {
            if from == "lib" {
                continue;
            }
            let count = edges.entry(from.as_str()).or_default().entry(to.as_str()).or_default();
            if r.test {
                count.1 += 1;
            } else {
                count.0 += 1;
            }
        }
        let mut out = String::from("Detected top-level graph (module -> modules it imports, with reference counts; \"test\" = only from test code):\n");
        for (from, tos) in &edges {
            let side = if self.binary_modules.contains(*from) || *from == "main" { " [binary]" } else { "" };
            let list: Vec<String> = tos
                .iter()
                .map(
                    |(to, (normal, test))| {
                        if *normal == 0 {
                            format!("{to} (test {test})")
                        } else {
                            format!("{to} ({})", normal + test)
                        }
                    },
                )
                .collect();
            let list = if list.is_empty() { "—".to_string() } else { list.join(", ") };
            let _ = writeln!(out, "  {from}{side} -> {list}");
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The map
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Allowed {
    Anything,
    These(BTreeSet<String>),
}

#[derive(Debug)]
struct Row {
    line: usize,
    allowed: Allowed,
}

#[derive(Debug, Default)]
struct Map {
    rows: BTreeMap<String, Row>,
    errors: Vec<String>,
}

fn backticked(cell: &str) -> Option<String> {
    let inner = cell.trim().strip_prefix('`')?.strip_suffix('`')?;
    (!inner.is_empty() && inner.chars().all(is_ident_char)).then(|| inner.to_string())
}

fn parse_map(text: &str, shown: &str) -> Map {
    let mut map = Map::default();
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim_end() == HEADING) else {
        map.errors.push(format!("{shown} has no line `{HEADING}`; the map is the table under it"));
        return map;
    };
    for (offset, line) in lines[start + 1..].iter().enumerate() {
        let number = start + offset + 2;
        let line = line.trim();
        if line.starts_with('#') {
            break; // next section
        }
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.iter().all(|c| c.chars().all(|ch| ch == '-' || ch == ':' || ch.is_whitespace())) {
            continue; // |---|---|
        }
        if cells.len() == 2 && cells[0] == "module" {
            continue; // header
        }
        if cells.len() != 2 {
            map.errors.push(format!("{shown}:{number}: a row has two cells, `module` and `may import`: {line}"));
            continue;
        }
        let Some(module) = backticked(cells[0]) else {
            map.errors
                .push(format!("{shown}:{number}: the first cell is one backticked module name, e.g. `cache`: {line}"));
            continue;
        };
        let allowed = match cells[1] {
            "anything" => Allowed::Anything,
            "—" => Allowed::These(BTreeSet::new()),
            list => {
                let names: Vec<Option<String>> = list.split(',').map(backticked).collect();
                if names.iter().any(Option::is_none) {
                    map.errors.push(format!(
                        "{shown}:{number}: the second cell is `—`, `anything`, or backticked module names separated by commas: {line}"
                    ));
                    continue;
                }
                Allowed::These(names.into_iter().flatten().collect())
            }
        };
        if let Some(previous) = map.rows.get(&module) {
            map.errors.push(format!(
                "{shown}:{number}: a second row for `{module}` (the first is on line {})",
                previous.line
            ));
            continue;
        }
        map.rows.insert(module, Row { line: number, allowed });
    }
    if map.rows.is_empty() && map.errors.is_empty() {
        map.errors.push(format!("{shown}: the table under `{HEADING}` has no rows"));
    }
    map
}

fn load_map() -> (Map, String) {
    let (path, shown) = doc_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("reading the module map {} ({e}): write it, with a table under `{HEADING}` (set ROOTSMITH_ARCH_DOC to check another file)", path.display())
    });
    (parse_map(&text, &shown), shown)
}

fn describe(allowed: Option<&Allowed>) -> String {
    match allowed {
        None => "no row".to_string(),
        Some(Allowed::Anything) => "anything".to_string(),
        Some(Allowed::These(set)) if set.is_empty() => "— (nothing)".to_string(),
        Some(Allowed::These(set)) => set.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
    }
}

// ---------------------------------------------------------------------------
// Graph helpers
// ---------------------------------------------------------------------------

/// Strongly connected components (Tarjan), each sorted, only those with more than one node.
fn cycles(n: usize, edges: &BTreeMap<usize, BTreeSet<usize>>) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a BTreeMap<usize, BTreeSet<usize>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        let succs: Vec<usize> = s.edges.get(&v).map(|set| set.iter().copied().collect()).unwrap_or_default();
        for w in succs {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

fn show_path(r: &Reference) -> String {
    // `rootsmith::` (binary side) and `crate::` name the same library modules.
    let root = if r.written.starts_with("rootsmith") { "rootsmith" } else { "crate" };
    let resolved = if r.path.is_empty() { root.to_string() } else { format!("{root}::{}", r.path.join("::")) };
    if resolved == r.written {
        resolved
    } else {
        format!("{} (= {resolved})", r.written)
    }
}

fn fail(title: &str, body: &str, hint: &str, krate: &Crate) -> ! {
    panic!("\n{title}\n\n{body}\n{hint}\n\n{}", krate.graph_report());
}

// ---------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------

#[test]
fn every_module_has_a_row_and_the_map_has_no_cycle() {
    let krate = load_crate(&src_dir());
    let (map, shown) = load_map();
    let mut problems = map.errors.clone();
    let missing: Vec<&String> = krate.top_modules.iter().filter(|m| !map.rows.contains_key(*m)).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{shown} has no row for: {} (add one row per module, like | `name` | … |)",
            missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    for (module, row) in &map.rows {
        if module == "main" || module == "lib" {
            problems.push(format!("{shown}:{}: `{module}` is a crate root, not a module; leave its row out", row.line));
        } else if !krate.top_modules.contains(module) {
            problems.push(format!(
                "{shown}:{}: a row for `{module}`, but there is no src/{module}.rs or src/{module}/",
                row.line
            ));
        }
        if let Allowed::These(set) = &row.allowed {
            for name in set {
                if !krate.top_modules.contains(name) {
                    problems.push(format!(
                        "{shown}:{}: `{module}` may import `{name}`, which is not a top-level module",
                        row.line
                    ));
                }
                if !krate.binary_modules.contains(module) && (krate.binary_modules.contains(name) || name == "main") {
                    problems.push(format!(
                        "{shown}:{}: `{module}` is library code and may not import `{name}` (binary side: main.rs, {})",
                        row.line,
                        krate.binary_modules.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    // The map's own graph must be a DAG (rows saying `anything` are left out).
    let names: Vec<&String> = map.rows.keys().collect();
    let index: BTreeMap<&String, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (module, row) in &map.rows {
        if let Allowed::These(set) = &row.allowed {
            for name in set {
                if let Some(&to) = index.get(name) {
                    if name != module {
                        edges.entry(index[module]).or_default().insert(to);
                    }
                }
            }
        }
    }
    for component in cycles(names.len(), &edges) {
        let members: BTreeSet<usize> = component.iter().copied().collect();
        let mut text = format!(
            "{shown}: the map allows a cycle among {}:",
            component.iter().map(|&i| format!("`{}`", names[i])).collect::<Vec<_>>().join(", ")
        );
        for &from in &component {
            for to in edges.get(&from).into_iter().flatten().filter(|t| members.contains(t)) {
                let _ = write!(
                    text,
                    "\n    `{}` (line {}) may import `{}`",
                    names[from], map.rows[names[from]].line, names[*to]
                );
            }
        }
        problems.push(text);
    }
    if !problems.is_empty() {
        let body: String = problems.iter().map(|p| format!("  {p}\n")).collect();
        fail(
            &format!("The module map in {shown} does not match src/ ({} problems):", problems.len()),
            &body,
            HOW_TO_FIX,
            &krate,
        );
    }
}

#[test]
fn imports_follow_the_map() {
    let krate = load_crate(&src_dir());
    let (map, shown) = load_map();
    assert!(
        map.errors.is_empty() || !map.rows.is_empty(),
        "the module map {shown} does not parse:\n  {}",
        map.errors.join("\n  ")
    );
    let mut violations = Vec::new();
    // The library never declares the binary's modules.
    for file in &krate.files {
        if file.rel == "src/lib.rs" {
            for decl in &file.scan.mods {
                if krate.binary_modules.contains(&decl.name) || BINARY_MODULES.contains(&decl.name.as_str()) {
                    violations.push(format!(
                        "src/lib.rs:{}: the library declares `mod {}`; it is the binary's (declare it in main.rs)",
                        decl.line, decl.name
                    ));
                }
            }
        }
    }
    for (index, r, from, to) in krate.module_refs() {
        let file = &krate.files[index];
        if from == "main" {
            continue; // the binary's root may use anything
        }
        let test = if r.test { " (in test code)" } else { "" };
        let library = file.side == Side::Library;
        if library && (krate.binary_modules.contains(&to) || to == "main") {
            violations.push(format!(
                "{}:{}: {from} imports {to} (the library may never import the binary side: main, {}); path {}{test}",
                file.rel,
                r.line,
                krate.binary_modules.iter().cloned().collect::<Vec<_>>().join(", "),
                show_path(r)
            ));
            continue;
        }
        if from == "lib" {
            continue;
        }
        let allowed = map.rows.get(&from).map(|row| &row.allowed);
        let ok = match allowed {
            Some(Allowed::Anything) => true,
            Some(Allowed::These(set)) => set.contains(&to),
            None => false,
        };
        if !ok {
            violations.push(format!(
                "{}:{}: {from} imports {to} ({shown} allows {from}: {}); path {}{test}",
                file.rel,
                r.line,
                describe(allowed),
                show_path(r)
            ));
        }
    }
    if !violations.is_empty() {
        let body: String = violations.iter().map(|v| format!("  {v}\n")).collect();
        fail(&format!("{} import(s) break the module map in {shown}:", violations.len()), &body, HOW_TO_FIX, &krate);
    }
}

#[test]
fn no_two_modules_import_each_other() {
    let krate = load_crate(&src_dir());
    // (from, to) -> first example
    let mut example: BTreeMap<(String, String), String> = BTreeMap::new();
    for (index, r, from, to) in krate.module_refs() {
        if from == "main" || from == "lib" || to == "main" {
            continue;
        }
        let test = if r.test { " (in test code)" } else { "" };
        example
            .entry((from, to))
            .or_insert_with(|| format!("{}:{}: {}{test}", krate.files[index].rel, r.line, show_path(r)));
    }
    let mut pairs = Vec::new();
    for ((from, to), here) in &example {
        if from < to {
            if let Some(back) = example.get(&(to.clone(), from.clone())) {
                pairs.push(format!(
                    "  {from} <-> {to}\n    {from} imports {to} at {here}\n    {to} imports {from} at {back}\n"
                ));
            }
        }
    }
    if !pairs.is_empty() {
        fail(
            &format!("{} pair(s) of top-level modules import each other:", pairs.len()),
            &pairs.concat(),
            HOW_TO_FIX_PAIRS,
            &krate,
        );
    }
}

#[test]
fn no_file_cycles() {
    let krate = load_crate(&src_dir());
    let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let mut example: BTreeMap<(usize, usize), String> = BTreeMap::new();
    for (index, file) in krate.files.iter().enumerate() {
        if file.is_test_file() {
            continue;
        }
        for r in &file.scan.refs {
            if r.test {
                continue;
            }
            let Some(target) = krate.target(r.side, &r.path) else { continue };
            if target == index {
                continue;
            }
            edges.entry(index).or_default().insert(target);
            example.entry((index, target)).or_insert_with(|| format!("{}:{}: {}", file.rel, r.line, show_path(r)));
        }
    }
    let found = cycles(krate.files.len(), &edges);
    if !found.is_empty() {
        let mut body = String::new();
        for component in &found {
            let members: BTreeSet<usize> = component.iter().copied().collect();
            let _ = writeln!(
                body,
                "  cycle among {} files: {}",
                component.len(),
                component.iter().map(|&i| krate.files[i].rel.as_str()).collect::<Vec<_>>().join(", ")
            );
            for &from in component {
                for &to in edges.get(&from).into_iter().flatten().filter(|t| members.contains(t)) {
                    let _ = writeln!(
                        body,
                        "    {} -> {}   ({})",
                        krate.files[from].rel,
                        krate.files[to].rel,
                        example[&(from, to)]
                    );
                }
            }
        }
        fail(
            &format!("{} import cycle(s) between files (test code aside):", found.len()),
            &body,
            HOW_TO_FIX_FILES,
            &krate,
        );
    }
}

// ---------------------------------------------------------------------------
// The checker's own tests
// ---------------------------------------------------------------------------

#[test]
fn scanner_finds_exactly_the_crate_paths() {
    let src = r####"//! Docs mention crate::in_doc::x here.
use std::collections::BTreeMap;
use crate::{cache::{store::{self, hash_file}, key}, time::now};
use super::sibling::Thing;
/* a block comment: crate::in_block::x /* nested crate::nested::y */ */
pub(crate) fn f<'a>(x: &'a str) -> char {
    let s = "crate::in_string::x";
    let r = r#"crate::in_raw::"x""#;
    let c = '"';
    let q = '\'';
    'outer: loop { break 'outer; }
    crate::digest::sha256::<u8>(x);
    c
}
pub(in crate::a) struct Hidden;
mod child;
pub use child::Reexported;
use self::child::Other;
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testonly::x;
}
"####;
    let here = vec!["a".to_string(), "b".to_string()];
    let scan = scan_source(src, &here, Side::Library);
    let found: Vec<(usize, String, bool)> = scan.refs.iter().map(|r| (r.line, r.path.join("::"), r.test)).collect();
    let expected: Vec<(usize, String, bool)> = vec![
        (3, "cache::store".into(), false),
        (3, "cache::store::hash_file".into(), false),
        (3, "cache::key".into(), false),
        (3, "time::now".into(), false),
        (4, "a::sibling::Thing".into(), false),
        (12, "digest::sha256".into(), false),
        (17, "a::b::child::Reexported".into(), false),
        (18, "a::b::child::Other".into(), false),
        (21, "a::b".into(), true),
        (22, "testonly::x".into(), true),
    ];
    assert_eq!(found, expected);
    let mods: Vec<(String, bool)> = scan.mods.iter().map(|m| (m.name.clone(), m.test)).collect();
    assert_eq!(mods, vec![("child".to_string(), false), ("tests".to_string(), true)]);
}

#[test]
fn scanner_resolves_binary_side_and_mod_rs_paths() {
    // src/commands/mod.rs: `super` is the binary root, `rootsmith::` the library.
    let src = "use rootsmith::recipe::{Diagnostics, LoadOptions};\nuse crate::cli::CacheArgs;\npub fn f() { super::run(); self::build::go(); }\n";
    let scan = scan_source(src, &["commands".to_string()], Side::Binary);
    let found: Vec<(Side, String)> = scan.refs.iter().map(|r| (r.side, r.path.join("::"))).collect();
    assert_eq!(
        found,
        vec![
            (Side::Library, "recipe::Diagnostics".to_string()),
            (Side::Library, "recipe::LoadOptions".to_string()),
            (Side::Binary, "cli::CacheArgs".to_string()),
            (Side::Binary, "run".to_string()),
            (Side::Binary, "commands::build::go".to_string()),
        ]
    );
    // In a library file, `rootsmith::` is not a crate path (it would not compile).
    assert!(scan_source("fn f() { rootsmith::x(); }", &["cache".to_string()], Side::Library).refs.is_empty());
}

#[test]
fn map_parser_reads_the_table() {
    let doc = "# Architecture\n\n## Who may import whom\n\n| module | may import |\n|---|---|\n| `time` | — |\n| `progress` | `time` |\n| `cache` | `digest`, `fileops`, `time` |\n| `cli` | anything |\n| broken | x |\n\n## Next\n| `ignored` | — |\n";
    let map = parse_map(doc, "doc");
    assert_eq!(map.rows.keys().cloned().collect::<Vec<_>>(), vec!["cache", "cli", "progress", "time"]);
    assert_eq!(map.rows["time"].allowed, Allowed::These(BTreeSet::new()));
    assert_eq!(map.rows["cli"].allowed, Allowed::Anything);
    assert_eq!(
        map.rows["cache"].allowed,
        Allowed::These(["digest", "fileops", "time"].iter().map(|s| s.to_string()).collect())
    );
    assert_eq!(map.errors.len(), 1, "{:?}", map.errors);
    assert!(map.errors[0].starts_with("doc:11:"), "{:?}", map.errors);
}

#[test]
fn cycles_are_found() {
    let edges: BTreeMap<usize, BTreeSet<usize>> =
        [(0, [1].into()), (1, [2].into()), (2, [0].into()), (3, [0].into()), (4, [4].into())].into_iter().collect();
    assert_eq!(cycles(5, &edges), vec![vec![0, 1, 2]]);
}
