//! Netboot: the thin initramfs of a bundle, its boot menus, the HTTP server
//! that serves bundles, and boot tests in QEMU.

pub mod initramfs;
pub mod boottest;
pub mod hosts;
pub mod menus;
pub mod serve;
pub mod tftp;
