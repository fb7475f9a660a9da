//! Running commands: chrooted into a tree inside a private mount namespace
//! (so every mount dies with the command, whatever way it ends), or host
//! programs (make, mksquashfs, apt-get, dpkg-deb, depmod…) with their output
//! in a log. Every process rootsmith's builds start goes through a [`Host`]:
//! [`RealHost`] runs it, [`RecordingHost`] records what would run (and can
//! fail a chosen call), for tests without root.

mod command;
pub mod overlay;
mod real;
mod recording;
pub mod userns;

pub use command::{
    chroot_mounts, clean_environment, log_tail, Command, CommandError, Host, Mount, MountKind, NO_INITRD,
};
pub use real::RealHost;
pub use recording::RecordingHost;
