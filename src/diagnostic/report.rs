//! One problem at its place in a file, rendered the way compilers do.

use std::fmt;
use std::path::PathBuf;

use super::spans::Position;

/// One problem found in a recipe before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub position: Position,
    pub message: String,
    pub hint: Option<String>,
    /// The text of the offending line, kept so the error renders without the
    /// file; `None` for a file whose text must not be quoted.
    pub source_line: Option<String>,
}

impl Diagnostic {
    pub fn new(file: &std::path::Path, source: &str, position: Position, message: impl Into<String>) -> Self {
        let source_line = source.lines().nth(position.line.saturating_sub(1)).unwrap_or("").to_string();
        Diagnostic {
            file: file.to_path_buf(),
            position,
            message: message.into(),
            hint: None,
            source_line: Some(source_line),
        }
    }

    /// A problem at a place in a file whose text is not shown: a file that
    /// turned out not to be what was asked for may be anything (a key, an
    /// environment), so only its name and the line and column are given.
    pub fn unquoted(file: &std::path::Path, position: Position, message: impl Into<String>) -> Self {
        Diagnostic { file: file.to_path_buf(), position, message: message.into(), hint: None, source_line: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `line:column`, as the tests and tools compare it.
    pub fn line_column(&self) -> (usize, usize) {
        (self.position.line, self.position.column)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Position { line, column } = self.position;
        let gutter = line.to_string().len();
        writeln!(f, "{}", self.message)?;
        match &self.source_line {
            Some(source_line) => {
                writeln!(f, "{:gutter$}--> {}:{line}:{column}", "", self.file.display())?;
                writeln!(f, "{:gutter$} |", "")?;
                writeln!(f, "{line} | {source_line}")?;
                // Keep tabs so the caret lines up under tab-indented text.
                let pad: String = source_line
                    .chars()
                    .take(column.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                write!(f, "{:gutter$} | {pad}^", "")?;
            }
            None => write!(f, "{:gutter$}--> {}:{line}:{column}", "", self.file.display())?,
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// All the problems of one recipe (validation keeps going after the first).
#[derive(Debug)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A serde_yaml error of any YAML file rootsmith reads, at its line and
/// column. `keys` are the top-level keys the file takes ([`keys_of`]).
///
/// The file's text is quoted (its line, and the values serde quotes) only when
/// it is YAML keys and values with at least one key of `keys`: the user's own
/// recipe, inventory or settings. Anything else is most likely not what was
/// meant to be given (a key, `/etc/shadow`, whose lines are YAML keys, an
/// environment), so the diagnostic names the file, the line and column, and
/// quotes nothing of it.
pub fn yaml_diagnostic(
    file: &std::path::Path,
    source: &str,
    error: &serde_yaml::Error,
    hint: &str,
    keys: &[&str],
) -> Diagnostic {
    let position = error
        .location()
        .map(|location| Position { line: location.line(), column: location.column() })
        .unwrap_or(Position { line: 1, column: 1 });
    let without_location = |error: &serde_yaml::Error| {
        // serde_yaml appends " at line L column C"; the diagnostic shows that itself.
        let mut message = error.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        message
    };
    let kind = match serde_yaml::from_str::<serde_yaml::Value>(source) {
        Ok(serde_yaml::Value::Mapping(mapping)) => {
            if keys.is_empty() || mapping.keys().any(|key| key.as_str().is_some_and(|key| keys.contains(&key))) {
                return Diagnostic::new(file, source, position, without_location(error)).with_hint(hint);
            }
            let shown: Vec<String> = keys.iter().map(|key| format!("`{key}`")).collect();
            return Diagnostic::unquoted(
                file,
                position,
                format!("none of the file's keys is one it may have ({}); its text is not shown", shown.join(", ")),
            )
            .with_hint(hint);
        }
        // The YAML parser's own messages name the problem, never the text.
        Err(syntax) => {
            return Diagnostic::unquoted(file, position, format!("not valid YAML: {}", without_location(&syntax)))
                .with_hint(hint)
        }
        Ok(serde_yaml::Value::Null) => "nothing",
        Ok(serde_yaml::Value::Bool(_) | serde_yaml::Value::Number(_) | serde_yaml::Value::String(_)) => {
            "a single value"
        }
        Ok(serde_yaml::Value::Sequence(_)) => "a list",
        Ok(serde_yaml::Value::Tagged(_)) => "a tagged value",
    };
    Diagnostic::unquoted(
        file,
        Position { line: 1, column: 1 },
        format!("not YAML keys and values: the file reads as {kind} (its text is not shown)"),
    )
    .with_hint(hint)
}

/// The field names of a struct that derives `Deserialize`: the keys a file of
/// it may have at its top, as serde itself knows them.
pub fn keys_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor};
    struct Probe(std::cell::Cell<&'static [&'static str]>);
    impl<'de> serde::Deserializer<'de> for &Probe {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(Error::custom("only its fields were wanted"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit unit_struct
            newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let probe = Probe(std::cell::Cell::new(&[]));
    let _ = T::deserialize(&probe);
    probe.0.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_caret_and_hint() {
        let source = "name: x\nstages:\n  - packagez: {}\n";
        let diagnostic = Diagnostic::new(
            std::path::Path::new("r.yaml"),
            source,
            Position { line: 3, column: 5 },
            "unknown stage kind `packagez`",
        )
        .with_hint("a stage is one of: packages, run");
        let text = diagnostic.to_string();
        assert_eq!(
            text,
            "unknown stage kind `packagez`\n --> r.yaml:3:5\n  |\n3 |   - packagez: {}\n  |     ^\nhint: a stage is one of: packages, run"
        );
    }

    #[test]
    fn a_file_that_is_not_yaml_keys_is_named_never_quoted() {
        let file = std::path::Path::new("hosts.yaml");
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inventory {
            hosts: u32,
            bundle: Option<u32>,
        }
        let keys = keys_of::<Inventory>();
        assert_eq!(keys, ["hosts", "bundle"]);
        let check = |source: &str, secret: &str, expected: &str| {
            let error = serde_yaml::from_str::<Inventory>(source).unwrap_err();
            let text = yaml_diagnostic(file, source, &error, "an inventory has `hosts`", keys).to_string();
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains(expected), "{text}");
        };
        // /etc/shadow: its lines end in `:`, so YAML reads them as keys.
        check(
            "root:$y$j9T$hunter2hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
            "hunter2",
            "none of the file's keys is one it may have (`hosts`, `bundle`); its text is not shown\n --> hosts.yaml:",
        );
        check("{\"auths\": {\"registry\": {\"auth\": \"aHVudGVyMg==\"}}}\n", "aHVudGVyMg", "none of the file's keys");
        // A private key, an environment file: a string, a list, no YAML at all.
        check("PASSWORD=hunter2\n", "hunter2", "not YAML keys and values: the file reads as a single value (its text is not shown)\n --> hosts.yaml:1:1\nhint:");
        check("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n", "b3Blbn", "reads as a single value");
        check("- hunter2\n- b\n", "hunter2", "reads as a list");
        check("TOKEN=hunter2\n  bad: [\n", "hunter2", "not valid YAML: ");
        // Keys and values: the user's own file, quoted as it always was.
        let source = "hosts: 1\nbundle: hunter2\n";
        let error = serde_yaml::from_str::<Inventory>(source).unwrap_err();
        let text = yaml_diagnostic(file, source, &error, "h", keys).to_string();
        assert!(text.contains("2 | bundle: hunter2"), "{text}");
    }
}
