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
    /// The text of the offending line, kept so the error renders without the file.
    pub source_line: String,
}

impl Diagnostic {
    pub fn new(file: &std::path::Path, source: &str, position: Position, message: impl Into<String>) -> Self {
        let source_line = source.lines().nth(position.line.saturating_sub(1)).unwrap_or("").to_string();
        Diagnostic { file: file.to_path_buf(), position, message: message.into(), hint: None, source_line }
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
        if self.source_line.is_empty() && self.position == (Position { line: 1, column: 1 }) {
            // Nothing of the file to show (it could not be read, or is empty).
            write!(f, "{:gutter$}--> {}", "", self.file.display())?;
            if let Some(hint) = &self.hint {
                write!(f, "\nhint: {hint}")?;
            }
            return Ok(());
        }
        writeln!(f, "{:gutter$}--> {}:{line}:{column}", "", self.file.display())?;
        writeln!(f, "{:gutter$} |", "")?;
        writeln!(f, "{line} | {}", self.source_line)?;
        // Keep tabs so the caret lines up under tab-indented text.
        let pad: String = self.source_line.chars().take(column.saturating_sub(1)).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        write!(f, "{:gutter$} | {pad}^", "")?;
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

/// A serde_yaml error of any YAML file rootsmith reads, at its line and column.
pub fn yaml_diagnostic(file: &std::path::Path, source: &str, error: &serde_yaml::Error, hint: &str) -> Diagnostic {
    let position = error.location().map(|location| Position { line: location.line(), column: location.column() }).unwrap_or(Position { line: 1, column: 1 });
    // serde_yaml appends " at line L column C"; the diagnostic shows that itself.
    let mut message = error.to_string();
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    Diagnostic::new(file, source, position, message).with_hint(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_caret_and_hint() {
        let source = "name: x\nstages:\n  - packagez: {}\n";
        let diagnostic = Diagnostic::new(std::path::Path::new("r.yaml"), source, Position { line: 3, column: 5 }, "unknown stage kind `packagez`")
            .with_hint("a stage is one of: packages, run");
        let text = diagnostic.to_string();
        assert_eq!(
            text,
            "unknown stage kind `packagez`\n --> r.yaml:3:5\n  |\n3 |   - packagez: {}\n  |     ^\nhint: a stage is one of: packages, run"
        );
    }
}
