//! Index of where every node of a YAML document sits, by path (`stages[2].files.src`).
//!
//! serde_yaml reports locations for its own errors (unknown keys, wrong types) but
//! the typed recipe it produces has no positions. Semantic checks (a missing file, a
//! misplaced base stage, an undefined variable) look their node up here instead.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the recipe file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Position {
    fn from(marker: Marker) -> Self {
        Position { line: marker.line(), column: marker.col() + 1 }
    }
}

/// Positions of the keys and values of one document.
#[derive(Debug, Default)]
pub struct SpanIndex {
    keys: HashMap<String, Position>,
    values: HashMap<String, Position>,
    /// The first key given twice in one mapping, where it is given again.
    duplicate: Option<(String, Position)>,
}

impl SpanIndex {
    /// Build the index; a document that does not parse gives an empty index (serde
    /// reports the syntax error itself).
    pub fn build(source: &str) -> SpanIndex {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut builder, false).is_err() {
            return SpanIndex::default();
        }
        builder.index
    }

    /// Where the value at `path` starts (falling back to its key, then to the
    /// closest ancestor that has a position).
    pub fn value(&self, path: &str) -> Position {
        self.lookup(path, true)
    }

    /// The first key given a second time in one mapping (its path) and
    /// where the second one is: serde reports a duplicate with no place.
    pub fn first_duplicate(&self) -> Option<&(String, Position)> {
        self.duplicate.as_ref()
    }

    /// Where the key of `path` starts (the value for sequence items).
    pub fn key(&self, path: &str) -> Position {
        self.lookup(path, false)
    }

    fn lookup(&self, path: &str, value_first: bool) -> Position {
        let mut current = path.to_string();
        loop {
            let (first, second) = if value_first { (&self.values, &self.keys) } else { (&self.keys, &self.values) };
            if let Some(position) = first.get(&current).or_else(|| second.get(&current)) {
                return *position;
            }
            match parent_path(&current) {
                Some(parent) => current = parent,
                None => return Position { line: 1, column: 1 },
            }
        }
    }
}

fn parent_path(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(path[..cut].to_string())
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    index: SpanIndex,
}

impl Builder {
    /// The path of the node about to be read, or `None` when the next scalar is a
    /// mapping key.
    fn next_value_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Mapping { key: None, .. }) => None,
            Some(Frame::Mapping { path, key: Some(key) }) => Some(join(path, key)),
            Some(Frame::Sequence { path, index }) => Some(format!("{path}[{index}]")),
        }
    }

    /// A value was completed: the parent moves to its next key or item.
    fn finish_value(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Mapping { key, .. }) => *key = None,
            Some(Frame::Sequence { index, .. }) => *index += 1,
            None => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        match event {
            Event::Scalar(text, ..) => match self.next_value_path() {
                None => {
                    if let Some(Frame::Mapping { path, key }) = self.stack.last_mut() {
                        match self.index.keys.entry(join(path, &text)) {
                            std::collections::hash_map::Entry::Occupied(first) => {
                                self.index.duplicate.get_or_insert((first.key().clone(), marker.into()));
                            }
                            std::collections::hash_map::Entry::Vacant(slot) => {
                                slot.insert(marker.into());
                            }
                        }
                        *key = Some(text);
                    }
                }
                Some(path) => {
                    self.index.values.insert(path, marker.into());
                    self.finish_value();
                }
            },
            Event::Alias(_) => {
                if let Some(path) = self.next_value_path() {
                    self.index.values.insert(path, marker.into());
                }
                self.finish_value();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A collection used as a mapping key is not valid in a recipe; give it
                // a placeholder path so the walk stays consistent.
                let path = self.next_value_path().unwrap_or_else(|| "?".to_string());
                self.index.values.insert(path.clone(), marker.into());
                let frame = if matches!(event, Event::MappingStart(..)) {
                    Frame::Mapping { path, key: None }
                } else {
                    Frame::Sequence { path, index: 0 }
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.finish_value();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_values() {
        let source = "name: x\nstages:\n  - packages:\n      install: [a, b]\n  - run: { sh: true }\n";
        let index = SpanIndex::build(source);
        assert_eq!(index.key("name"), Position { line: 1, column: 1 });
        assert_eq!(index.value("name"), Position { line: 1, column: 7 });
        assert_eq!(index.key("stages[0].packages"), Position { line: 3, column: 5 });
        assert_eq!(index.value("stages[0].packages.install[1]"), Position { line: 4, column: 20 });
        assert_eq!(index.value("stages[1].run.sh"), Position { line: 5, column: 16 });
    }

    #[test]
    fn a_key_given_twice_is_found_where_it_is_given_again() {
        let index = SpanIndex::build("name: a\nversion: 1\nstages:\n  - run: { sh: x, sh: y }\nname: b\n");
        assert_eq!(index.first_duplicate(), Some(&("stages[0].run.sh".to_string(), Position { line: 4, column: 19 })));
        assert_eq!(index.key("name"), Position { line: 1, column: 1 }, "the first one keeps its place");
        assert!(SpanIndex::build("a: 1\nb: { a: 2 }\n").first_duplicate().is_none(), "one key per mapping");
    }

    #[test]
    fn falls_back_to_the_closest_ancestor() {
        let index = SpanIndex::build("stages:\n  - run: {}\n");
        assert_eq!(index.value("stages[0].run.sh"), Position { line: 2, column: 10 });
    }
}
