//! The contract between a rootsmith bundle and the init program of its thin
//! initramfs. The bundle writer and the init both use these definitions, so the
//! two sides cannot drift apart. The init program itself comes with the netboot
//! work; this crate already fixes the rootfs image format it will read.

pub mod contract;
