#!/usr/bin/env bash
# The same work as recipes/debian-minimal.yaml done the way a user would by
# hand: mmdebstrap, chroot apt-get, copy the overlay, run the script,
# mksquashfs, cpio. Usage: pipeline.sh WORKDIR MIRROR
set -euo pipefail
work=$1 mirror=$2
recipes=$(cd "$(dirname "$0")/../recipes" && pwd)
rm -rf "$work" && mkdir -p "$work"
tree=$work/tree
export SOURCE_DATE_EPOCH=1700000000
mmdebstrap --quiet --mode=root --variant=minbase --include=systemd-sysv bookworm "$tree" "$mirror"
unshare --mount --propagation private sh -euc '
  tree=$1
  mount -t proc proc "$tree/proc"; mount --rbind /dev "$tree/dev"; mount -t sysfs -o ro sysfs "$tree/sys"
  cp /etc/resolv.conf "$tree/etc/resolv.conf"
  printf "#!/bin/sh\nexit 101\n" > "$tree/usr/sbin/policy-rc.d"; chmod +x "$tree/usr/sbin/policy-rc.d"
  chroot "$tree" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive sh -ec "
    apt-get -q update >/dev/null
    apt-get -q -y --no-install-recommends install iproute2 procps less >/dev/null
    find /var/lib/apt/lists -type f ! -name lock -delete"
  cp -a "$2/debian-minimal/overlay/." "$tree/"
  chroot "$tree" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOSTNAME=debian-minimal sh -e < "$2/debian-minimal/configure.sh"
  rm -f "$tree/usr/sbin/policy-rc.d" "$tree/etc/resolv.conf"
' sh "$tree" "$recipes"
env -u SOURCE_DATE_EPOCH mksquashfs "$tree" "$work/root.squashfs" -noappend -reproducible -xattrs -no-progress -quiet -mkfs-time "$SOURCE_DATE_EPOCH" -comp zstd -Xcompression-level 15 >/dev/null
(cd "$work" && echo root.squashfs | cpio --quiet -o -H newc > rootfs.img)
