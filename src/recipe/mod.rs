//! Recipes: the YAML a user writes, parsed with positions and checked before
//! anything runs. `schema.rs` holds the raw serde types, `load.rs` turns them
//! into the [`Recipe`] of `model.rs`, `crate::diagnostic` renders errors with file:line:col.

mod load;
mod model;
mod schema;
mod vars;

pub use crate::diagnostic::{Diagnostic, Diagnostics};
pub use load::{load, load_str, LoadOptions};
pub use model::*;

#[cfg(test)]
mod tests;
