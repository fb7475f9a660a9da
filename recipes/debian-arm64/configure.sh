# Runs chrooted in the arm64 tree (under emulation on other hosts), sh -e.
echo "$HOSTNAME" > /etc/hostname
# minbase has no init system: a short /sbin/init that mounts what `ip` needs,
# shows the links and prints the boot marker with the machine it runs on.
cat > /sbin/init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
ip -br link
echo "$(cat /etc/hostname): rootfs is up on $(uname -m)" > /dev/console
exec /bin/sh
INIT
chmod 0755 /sbin/init
# The script really ran as arm64: uname under emulation says aarch64.
test "$(uname -m)" = aarch64
