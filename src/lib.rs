//! rootsmith: build Linux root filesystems and netboot release bundles from
//! declarative YAML recipes, with every stage cached by the digest of its inputs.
//!
//! docs/architecture.md is the map: which module owns what, and which may
//! import which (a test keeps it true). The command line (`cli`, `commands`)
//! is the binary's, not the library's.

// Foundations: no rootsmith module below them.
pub mod arch;
pub mod control;
pub mod diagnostic;
pub mod digest;
pub mod fileops;
pub mod host;
pub mod names;
pub mod progress;
pub mod reference;
pub mod time;
pub mod tools;

// What users write.
pub mod config;
pub mod inventory;
pub mod recipe;

// Storage and formats.
pub mod bundle;
pub mod cache;
pub mod layer;
pub mod mirror;
pub mod oci;

// Building.
pub mod artifact;
pub mod build;
pub mod lock;
pub mod plan;
pub mod share;
pub mod stage;

// After a build.
pub mod lab;
pub mod release;
