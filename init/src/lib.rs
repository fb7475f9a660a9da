//! The contract between a rootsmith bundle and the init program of its thin
//! initramfs, and the init's pieces that need no kernel to test: command-line
//! parsing, chunk verification, the streaming cpio reader, DHCP messages and
//! the HTTP client's framing. The bundle writer and the init both use
//! [`contract`], so the two sides cannot drift apart.

pub mod cmdline;
pub mod contract;
pub mod cpio;
pub mod dhcp;
pub mod http;
pub mod verify;
