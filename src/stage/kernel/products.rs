//! A kernel stage's products as the stage records them: the kernel's name and
//! release, its config digest, its packages and how the build went. The store
//! keeps this account as it is ([`crate::cache::Products`]); the files are in
//! the layout's products directory it names.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cache::{Layout, Products, StageRecord};

/// A kernel built (or taken from a package) by a kernel stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelProducts {
    /// The stage's name: the KERNEL in `NAME-VERSION-KERNEL-vmlinuz`.
    pub name: String,
    /// `uname -r` of the kernel.
    pub release: String,
    pub config_sha256: String,
    /// The directory in the layout's products area holding vmlinuz, config, System.map and the debs.
    pub products: String,
    pub debs: Vec<String>,
    /// How many device trees `dtbs.tar` in the products holds (0: none, no file).
    #[serde(default)]
    pub device_trees: usize,
    /// Whether this build compiled (false: the products were already cached).
    pub compiled: bool,
    pub ccache_hits: u64,
    pub ccache_misses: u64,
    /// Bytes in the ccache directory after the build.
    #[serde(default)]
    pub ccache_size: u64,
    pub seconds: f64,
}

impl KernelProducts {
    /// The account the store keeps in the stage record.
    pub fn to_products(&self) -> Products {
        let serde_json::Value::Object(mut details) = serde_json::to_value(self).expect("kernel products serialize")
        else {
            unreachable!("a struct serializes to an object")
        };
        details.remove("products");
        Products { dir: self.products.clone(), details }
    }

    /// The kernel a stage record's products describe.
    pub fn from_products(products: &Products) -> Result<KernelProducts> {
        let mut details = products.details.clone();
        details.insert("products".into(), serde_json::Value::String(products.dir.clone()));
        serde_json::from_value(serde_json::Value::Object(details))
            .context("a stage record's kernel products are not a kernel's")
    }

    /// The directory holding this kernel's files.
    pub fn dir(&self, layout: &Layout) -> PathBuf {
        layout.products_dir(&self.products)
    }
}

/// The kernels of a build's stages, in stage order.
pub fn kernels_of(records: &[StageRecord]) -> Result<Vec<KernelProducts>> {
    records.iter().filter_map(|record| record.products.as_ref()).map(KernelProducts::from_products).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_round_trip_through_the_store_record_as_before() {
        let kernel = KernelProducts {
            name: "lts".into(),
            release: "6.1.0".into(),
            config_sha256: "c".repeat(64),
            products: "d".repeat(64),
            debs: vec!["linux-image-6.1.0_1_amd64.deb".into()],
            device_trees: 5,
            compiled: true,
            ccache_hits: 1,
            ccache_misses: 2,
            ccache_size: 3,
            seconds: 4.0,
        };
        let products = kernel.to_products();
        // On disk it is the same object as the kernel's own fields.
        assert_eq!(serde_json::to_value(&products).unwrap(), serde_json::to_value(&kernel).unwrap());
        let back = KernelProducts::from_products(&products).unwrap();
        assert_eq!(serde_json::to_value(back).unwrap(), serde_json::to_value(&kernel).unwrap());
    }
}
