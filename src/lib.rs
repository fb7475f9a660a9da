//! rootsmith: build Linux root filesystems and netboot release bundles from
//! declarative YAML recipes, with every stage cached by the digest of its inputs.

pub mod layer;
pub mod recipe;
