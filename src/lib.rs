//! rootsmith: build Linux root filesystems and netboot release bundles from
//! declarative YAML recipes, with every stage cached by the digest of its inputs.

pub mod artifact;
pub mod boot;
pub mod build;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod host;
pub mod layer;
pub mod lock;
pub mod mirror;
pub mod netboot;
pub mod oci;
pub mod plan;
pub mod progress;
pub mod stage;
pub mod time;
pub mod tools;
pub mod recipe;
pub mod release;
