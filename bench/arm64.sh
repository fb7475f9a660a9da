#!/usr/bin/env bash
# arm64 benchmark: what building for arm64 on this amd64 host costs. One
# recipe (minbase, a package, Debian's packaged kernel, a run stage) built
# cold for amd64 and, with --arch arm64, under QEMU user-mode emulation, each
# on an empty cache; the arm64 bundle booted in qemu-system-aarch64; and a
# tinyconfig arm64 kernel cross-compiled cold, then after a config change
# with a warm ccache. Prints its section of docs/benchmarks.md. Needs root,
# the Debian archive and `make deps` (qemu-user-static, binfmt-support,
# arch-test, qemu-system-arm, gcc-aarch64-linux-gnu).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

cat > "$work/small.yaml" <<'YAML'
rootsmith: 1
name: small
version: 1.0.0
source_date_epoch: 1700000000
stages:
  - debootstrap: { suite: bookworm, variant: minbase }
  - packages: { install: [iproute2] }
  - kernel: { name: debian, package: "linux-image-${arch}" }
  - run: { sh: "echo small > /etc/hostname && ln -s /bin/sh /sbin/init" }
YAML
build_small() { "$bin" build --json --fast --cache "$work/cache-$1" --out "$work/out" --arch "$1" "$work/small.yaml" > "$work/small-$1.json"; }
# Seconds of each stage kind in a build's --json summary: debootstrap packages kernel run.
stage_seconds() {
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(" ".join("%.1f" % st["seconds"] for st in s["stages"]))' "$1"
}

echo "rootsmith: amd64 cold" >&2;  a_cold=$(timed build_small amd64)
echo "rootsmith: arm64 cold (emulated)" >&2; e_cold=$(timed build_small arm64)
read -r a_base a_pkg a_kernel a_run < <(stage_seconds "$work/small-amd64.json")
read -r e_base e_pkg e_kernel e_run < <(stage_seconds "$work/small-arm64.json")
ratio() { awk -v e="$1" -v a="$2" 'BEGIN{printf "%.1f", e/a}'; }

boot() { "$bin" boot-test --json --via "$1" --log "$work/boot-$1.log" "$work/out/small-arm64/1.0.0" --expect "rootsmith-init: switching root" > "$work/boot-$1.json"; }
boot_seconds() { python3 -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))["seconds"])' "$work/boot-$1.json"; }
echo "boot-test arm64: appended" >&2; timed boot appended > /dev/null; b_appended=$(boot_seconds appended)
echo "boot-test arm64: http" >&2;     timed boot http > /dev/null; b_http=$(boot_seconds http)

mkdir -p "$work/base/etc" "$work/fragments"
echo bench > "$work/base/etc/motd"
tar -C "$work/base" -cf "$work/base.tar" .
cp fixtures/kernel/arm64-virt.config fixtures/kernel/ikconfig.config "$work/fragments/"
build_kernel() { "$bin" build --json --fast --cache "$work/kcache" --out "$work/kout" --version "$1" "$work/kernel.yaml"; }
tiny_kernel_recipe karm arm64 "fragments/arm64-virt.config"
echo "rootsmith: arm64 kernel cold (cross)" >&2; k_cold=$(timed build_kernel 1.0.0)
tiny_kernel_recipe karm arm64 "fragments/arm64-virt.config, fragments/ikconfig.config"
echo "rootsmith: arm64 kernel config change" >&2; k_change=$(timed build_kernel 1.1.0)

cat <<DOC
## arm64 on an amd64 host

One recipe (bookworm minbase, \`iproute2\`, Debian's packaged kernel
\`linux-image-\${arch}\`, a one-line run stage), \`build --fast\` on an empty
cache, for amd64 and with \`--arch arm64\`, where every program of the tree
(maintainer scripts, apt, the run stage, which links \`/sbin/init\` to
\`/bin/sh\`) runs under QEMU user-mode
emulation ($(qemu-aarch64-static --version | head -n1)). Both download
their packages from the host's mirror.

| stage | amd64 | arm64 (emulated) | × |
|---|---:|---:|---:|
| debootstrap (mmdebstrap) | ${a_base} s | ${e_base} s | $(ratio "$e_base" "$a_base") |
| packages | ${a_pkg} s | ${e_pkg} s | $(ratio "$e_pkg" "$a_pkg") |
| packaged kernel (no initramfs built in the tree) | ${a_kernel} s | ${e_kernel} s | $(ratio "$e_kernel" "$a_kernel") |
| run | ${a_run} s | ${e_run} s | |
| whole build | ${a_cold} s | ${e_cold} s | $(ratio "$e_cold" "$a_cold") |

The arm64 bundle in \`qemu-system-aarch64 -machine virt -cpu max\` (TCG),
from QEMU's start to \`rootsmith-init: switching root\`: ${b_appended} s with
the rootfs appended, ${b_http} s fetched over HTTP.

A tinyconfig arm64 kernel with \`fixtures/kernel/arm64-virt.config\` from
linux-source-6.1, cross-compiled (\`CROSS_COMPILE=aarch64-linux-gnu-\`,
$(aarch64-linux-gnu-gcc --version | head -n1), ccache, \`make bindeb-pkg\`):
${k_cold} s cold (download, unpack, config, compile, package, empty ccache),
${k_change} s after a config change (\`fixtures/kernel/ikconfig.config\`
added) in the stage's kept build directory with a warm ccache.
DOC
