//! Booting bundles in QEMU: the command line as pure code (`qemu.rs`) and a
//! runner that watches the serial console for an expected line.

pub mod qemu;
