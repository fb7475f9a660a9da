//! `rootsmith init NAME`: a starter recipe NAME.yaml and the files it uses
//! (NAME/overlay/etc/motd, a marker service, NAME/configure.sh), in the
//! current directory: a recipe that builds a bundle that netboots.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::UsageError;

/// The recipe: a small Debian from the host's mirror with Debian's kernel,
/// an overlay and a script, and what a netboot needs (the initramfs's
/// drivers, a command line, a marker `boot-test` waits for), so each kind of
/// stage a first recipe needs is there to edit and the bundle boots.
/// `@NAME@` stands for the recipe's name (a plain `NAME` would also match
/// inside `HOSTNAME`).
const RECIPE: &str = r#"# A starter recipe from `rootsmith init`; docs/recipe.md lists every key.
# Check it with `rootsmith check @NAME@.yaml`, build it with
# `rootsmith build @NAME@.yaml` (the bundle is written to out/@NAME@/0.1.0/),
# boot it in QEMU with `rootsmith boot-test out/@NAME@/0.1.0`.
rootsmith: 1
name: @NAME@
version: 0.1.0
arch: amd64
# Every mtime in the outputs is clamped to this; `SOURCE_DATE_EPOCH` overrides it.
source_date_epoch: 1700000000
vars:
  suite: bookworm
stages:
  # Debian from the mirror the host's apt sources name (or set `mirror:`).
  - name: base
    debootstrap:
      suite: "${suite}"
      variant: minbase
      include: [systemd-sysv]
  - name: tools
    packages:
      install: [iproute2, procps, less]
  # Debian's packaged kernel: its vmlinuz goes in the bundle beside the rootfs.
  - kernel: { name: debian, package: "linux-image-${arch}" }
  # Files copied into the tree as they are under @NAME@/overlay/.
  - name: overlay
    files:
      src: @NAME@/overlay
      dest: /
  # A script run chrooted in the tree (sh -e).
  - name: configure
    run:
      script: @NAME@/configure.sh
      env: { HOSTNAME: @NAME@ }
outputs:
  initramfs:
    # What the thin initramfs loads to reach the network and mount the rootfs.
    modules: [virtio_pci, virtio_net, virtio_blk, e1000]
boot:
  cmdline: "console=ttyS0"
  # Printed on the console by rootsmith-marker.service once systemd is up.
  marker: "@NAME@: rootfs is up"
"#;

const MOTD: &str = "This system was built by rootsmith from @NAME@.yaml.\n";

const MARKER_SERVICE: &str = r#"# Tells the console (and `rootsmith boot-test`) that the rootfs booted.
[Unit]
Description=Print the boot marker on the console
After=basic.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "$(hostname): rootfs is up" > /dev/console'

[Install]
WantedBy=multi-user.target
"#;

const CONFIGURE: &str = r#"# Runs chrooted in the tree after the overlay stage (sh -e).
echo "$HOSTNAME" > /etc/hostname
systemctl enable rootsmith-marker.service
# A machine id is made at first boot, not baked into every copy of the image.
: > /etc/machine-id
"#;

pub fn run(name: &str) -> Result<()> {
    if !rootsmith::names::valid_name(name) {
        return Err(UsageError(format!("`{name}` is not a recipe name: lower-case letters, digits, `.`, `_` and `-`, starting with a letter or digit")).into());
    }
    let files: Vec<(PathBuf, String)> = [
        (format!("{name}.yaml"), RECIPE),
        (format!("{name}/overlay/etc/motd"), MOTD),
        (format!("{name}/overlay/etc/systemd/system/rootsmith-marker.service"), MARKER_SERVICE),
        (format!("{name}/configure.sh"), CONFIGURE),
    ]
    .into_iter()
    .map(|(path, text)| (PathBuf::from(path), text.replace("@NAME@", name)))
    .collect();
    // Nothing is written when any of them is there: no half-made starter.
    for (path, _) in &files {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(
                UsageError(format!("{} already exists; rootsmith init overwrites nothing", path.display())).into()
            );
        }
    }
    for (path, text) in &files {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            fs_err::create_dir_all(parent)?;
        }
        create_new(path, text)?;
    }
    outln!("wrote {}", files.iter().map(|(path, _)| path.display().to_string()).collect::<Vec<_>>().join(", "));
    outln!("next: rootsmith check {name}.yaml, rootsmith build {name}.yaml, rootsmith boot-test out/{name}/0.1.0");
    Ok(())
}

/// Write a file that must not exist yet (one made meanwhile is not replaced).
fn create_new(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut file = fs_err::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
