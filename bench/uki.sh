#!/usr/bin/env bash
# UKI benchmark: recipes/debian-netboot.yaml with `outputs.uki` signed with
# Debian's snakeoil Secure Boot test key, booted to its marker in QEMU (TCG)
# four ways, side by side: the kernel and initramfs given to QEMU directly,
# the NIC's iPXE ROM fetching them over HTTP (legacy BIOS), OVMF + iPXE
# fetching the UKI over HTTP, and the same with Secure Boot enforced. In every
# case the init fetches and verifies the rootfs over HTTP.
# Prints its section of docs/benchmarks.md. Needs root, the archive, QEMU, OVMF.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

variant=$root/recipes/.bench-uki.yaml
sed 's|^outputs:|outputs:\n  uki: { sign: { key: /usr/share/ovmf/PkKek-1-snakeoil.key, cert: /usr/share/ovmf/PkKek-1-snakeoil.pem } }|' \
  "$root/recipes/debian-netboot.yaml" > "$variant"
trap 'rm -f "$variant"; rm -rf "$work"' EXIT
echo "build" >&2
build_s=$(timed env ROOTSMITH_UKI_KEY_PASSPHRASE=snakeoil "$bin" build --fast --cache "$work/cache" --out "$work/out" "$variant")
bundle=$work/out/debian-netboot/0.1.0
uki_bytes=$(stat -c %s "$bundle/debian-netboot-0.1.0-debian.efi")
parts_bytes=$(( $(stat -c %s "$bundle/debian-netboot-0.1.0-debian-vmlinuz") + $(stat -c %s "$bundle/debian-netboot-0.1.0-initramfs.img") ))

# boot_seconds VIA [ARGS…]: the best of two boots to the marker, in seconds.
boot_seconds() {
  local via=$1 best=
  shift
  for run in 1 2; do
    local s
    s=$("$bin" boot-test "$bundle" --via "$via" --accel tcg --json --log "$work/boot-$via-$run.log" "$@" | sed -n 's/.*"seconds":\([0-9.]*\).*/\1/p')
    [ -n "$s" ] || { echo "boot-test --via $via $* failed; see $work/boot-$via-$run.log" >&2; tail -20 "$work/boot-$via-$run.log" >&2; exit 1; }
    best=$(awk -v a="$s" -v b="${best:-$s}" 'BEGIN{printf "%.1f", (a<b)?a:b}')
  done
  echo "$best"
}
echo "boots" >&2
direct=$(boot_seconds http)
pxe=$(boot_seconds pxe)
uki=$(boot_seconds uki --secure-boot off)
secure=$(boot_seconds uki --secure-boot on)
grep -q "Secure boot enabled" "$work/boot-uki-1.log" || { echo "the Secure Boot run did not say Secure boot enabled" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b/1048576}'; }

cat <<DOC
## UKI and Secure Boot

\`recipes/debian-netboot.yaml\` with \`outputs.uki\` signed with Debian's
snakeoil test key, built with \`--fast\` (${build_s} s on an empty cache). The
UKI is $(mib "$uki_bytes") (kernel + thin initramfs: $(mib "$parts_bytes")).
Seconds from QEMU's start to the recipe's marker (systemd up), the best of
two boots each, TCG (no KVM: OVMF guests crash under this machine's nested
KVM). The init fetches and verifies the rootfs over HTTP in every row.

| how the kernel and initramfs arrive | firmware | seconds to the marker |
|---|---|---:|
| given to QEMU (\`boot-test --via http\`) | SeaBIOS, \`-kernel\` | ${direct} |
| iPXE ROM, kernel + initramfs over HTTP (\`--via pxe\`) | SeaBIOS | ${pxe} |
| iPXE EFI, the UKI over HTTP (\`--via uki --secure-boot off\`) | OVMF | ${uki} |
| the same, Secure Boot enforced: iPXE and the UKI checked (\`--via uki\`) | OVMF, snakeoil keys | ${secure} |

Enforcing Secure Boot changes the UKI boot by $(awk -v a="$secure" -v b="$uki" 'BEGIN{printf "%+.1f", a-b}') s (the firmware
hashes iPXE and the $(mib "$uki_bytes") UKI and checks their signatures); the UKI
over OVMF against kernel + initramfs through the BIOS iPXE ROM: $(awk -v a="$uki" -v b="$pxe" 'BEGIN{printf "%+.1f", a-b}') s.
DOC
