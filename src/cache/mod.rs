//! The content-addressed stage cache.
//!
//! On-disk layout, under the cache directory (`v1` is [`key::CACHE_FORMAT`]):
//!
//! ```text
//! v1/blobs/sha256/HEX      layer blobs (zstd tar), named by the SHA-256 of their bytes
//! v1/stages/KEY.json       stage key → layer digest, tree id and the key's inputs
//! v1/outputs/KEY/          assembled outputs (squashfs, rootfs.img, tarball) by output key
//! v1/history/RECIPE/STAGE.json  the inputs of the last build of a stage (`plan --explain`)
//! v1/locks/KEY.lock        one build of a key at a time, across processes
//! v1/apt/archives/         the apt package cache shared by every build
//! v1/remote/               the last InRelease digest seen per mirror and suite
//! v1/kernels/KEY/          kernel products (vmlinuz, debs, config, System.map)
//! v1/kernel/src/ID/        unpacked kernel sources; v1/kernel/build/ their builds
//! v1/ccache/               the compiler cache of kernel builds
//! v1/tmp/                  work trees and partial writes; stale ones are swept
//! ```
//!
//! Every file is written to `tmp/` and renamed into place, so a reader sees a
//! whole file or none; blobs are hashed again when read.

pub mod key;
mod maintenance;
pub mod remote;
pub mod store;

pub use key::{sha256_hex, tree_id, FileDigest, KeyInputs, CACHE_FORMAT};
pub use maintenance::{CacheEntry, GcOptions, GcReport, VerifyReport};
pub use store::{now_seconds as store_now, BuildLock, KernelProducts, OutputRecord, StageRecord, Store, WorkDir};
