//! A recipe error with its place in the file, rendered the way compilers do:
//! `recipe.yaml:12:5`, the source line, a caret under the spot and a `hint:`.

mod report;
pub mod spans;
mod structural;

pub use report::{keys_of, yaml_diagnostic, Diagnostic, Diagnostics};
pub use spans::{Position, SpanIndex};
pub use structural::parse_all;
