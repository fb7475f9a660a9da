//! What runs in a lab, not in a build: serving bundles over HTTP (`http` the
//! protocol, `serve` the routes) and TFTP, the hosts inventory and agents'
//! reports, and booting bundles in QEMU (`qemu`, `boottest`, and `efi` for a UKI
//! under UEFI firmware with or without Secure Boot).

pub mod boottest;
pub mod efi;
pub mod hosts;
pub mod http;
pub mod qemu;
pub mod serve;
pub mod tftp;
