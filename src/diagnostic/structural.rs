//! Parsing a YAML document into its serde types with every unknown key
//! reported in one run, each at its line and column.

use std::path::Path;

use super::report::{Diagnostic, Diagnostics};
use super::spans::{Position, SpanIndex};

/// Parse `source` as a `T`, with every unknown key reported at once: each one
/// is reported at its place, taken out, and the rest parsed again. Other
/// structural errors (a wrong type, a missing field) stop the parse. `report`
/// turns a serde error into a diagnostic (with the caller's hints).
pub fn parse_all<T: serde::de::DeserializeOwned>(
    file: &Path,
    source: &str,
    spans: &SpanIndex,
    report: &dyn Fn(&serde_yaml::Error) -> Diagnostic,
) -> Result<(T, Vec<Diagnostic>), Diagnostics> {
    let mut problems = Vec::new();
    let mut text = source.to_string();
    // Each round removes one key, so this ends; the bound is for safety.
    for _ in 0..1000 {
        let error = match serde_path_to_error::deserialize::<_, T>(serde_yaml::Deserializer::from_str(&text)) {
            Ok(raw) => return Ok((raw, problems)),
            Err(error) => error,
        };
        let mut path = yaml_path(error.path());
        let inner = error.into_inner();
        let field = unknown_field(&inner);
        // The path may already end at the unknown key itself.
        if let Some(parent) = field.as_deref().and_then(|field| path.strip_suffix(field)) {
            path = parent.trim_end_matches('.').to_string();
        }
        let mut value: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|error| Diagnostics(vec![report(&error)]))?;
        let removed = field.as_deref().is_some_and(|field| remove_key(&mut value, &path, field));
        let diagnostic = report(&inner);
        // The first parse is of the text as written, so its own position is
        // right; later ones are of the text without earlier unknown keys, so
        // the place comes from the path.
        let moved = |position: Position| {
            // A file that must not be quoted stays unquoted.
            let moved = match diagnostic.source_line {
                Some(_) => Diagnostic::new(file, source, position, diagnostic.message.clone()),
                None => Diagnostic::unquoted(file, position, diagnostic.message.clone()),
            };
            match &diagnostic.hint {
                Some(hint) => moved.with_hint(hint.clone()),
                None => moved,
            }
        };
        let diagnostic = match (&field, text == source) {
            (Some(field), _) => moved(spans.key(&join_path(&path, field))),
            (None, true) => diagnostic,
            (None, false) => moved(spans.value(&path)),
        };
        problems.push(diagnostic);
        if !removed {
            return Err(Diagnostics(problems));
        }
        text = serde_yaml::to_string(&value).map_err(|error| Diagnostics(vec![report(&error)]))?;
    }
    Err(Diagnostics(problems))
}

/// `stages[1].packages`: a serde path in the span index's form.
fn yaml_path(path: &serde_path_to_error::Path) -> String {
    let mut text = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key } | serde_path_to_error::Segment::Enum { variant: key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    text
}

fn join_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The key serde refused as unknown. serde gives no structured form of it,
/// only its message: ``unknown field `instal`, expected …``.
fn unknown_field(error: &serde_yaml::Error) -> Option<String> {
    let message = error.to_string();
    let (_, rest) = message.split_once("unknown field `")?;
    rest.split_once('`').map(|(field, _)| field.to_string())
}

/// Remove `key` from the mapping at `path` (`stages[1].packages`).
fn remove_key(value: &mut serde_yaml::Value, path: &str, key: &str) -> bool {
    let mut node = value;
    for part in path.split('.').filter(|part| !part.is_empty()) {
        let (name, indices) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            let Some(next) = node.get_mut(name) else { return false };
            node = next;
        }
        for index in indices.split(['[', ']']).filter(|index| !index.is_empty()) {
            let Some(next) = index.parse::<usize>().ok().and_then(|index| node.get_mut(index)) else { return false };
            node = next;
        }
    }
    node.as_mapping_mut().and_then(|mapping| mapping.remove(key)).is_some()
}
