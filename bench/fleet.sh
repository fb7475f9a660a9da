#!/usr/bin/env bash
# Fleet benchmark:
# - TFTP throughput of `rootsmith serve --tftp` against in.tftpd (tftpd-hpa)
#   serving the same 16 MiB file on loopback, curl as the client, blksize 512
#   and 1468;
# - the provisioning agent's script imaging a 1 GiB disk (a file on the
#   scratch disk) from `rootsmith serve`, against `curl | dd` of the same image.
# Prints its section of docs/benchmarks.md. Needs root (the agent holds the
# download in a tmpfs) and tftpd-hpa.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
agent=$root/recipes/provision-agent/overlay/usr/local/sbin/rootsmith-agent
median() { sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
seconds3() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
# runs N CMD…: the median wall time of N runs
runs() { local n=$1; shift; for _ in $(seq "$n"); do local start; start=$(now); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; seconds3 "$start" "$(now)"; echo; done | median; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN{printf "%.1f", b/s/1e6}'; }
servers=()
trap 'kill "${servers[@]}" 2>/dev/null; rm -rf "$work"' EXIT

echo "tftp" >&2
srv=$work/tftp
mkdir -p "$srv" && chmod 755 "$srv"
head -c 16M /dev/urandom > "$srv/file.bin" && chmod 644 "$srv/file.bin"
file_bytes=$(stat -c %s "$srv/file.bin")
"$bin" serve "$srv" --addr 127.0.0.1:18941 --tftp 127.0.0.1:18942 2>/dev/null & servers+=($!)
in.tftpd --foreground --address 127.0.0.1:18943 --secure --user root "$srv" & servers+=($!)
sleep 0.5
fetch() { curl -sf --tftp-blksize "$2" -o "$work/got.bin" "tftp://127.0.0.1:$1/file.bin" && cmp -s "$work/got.bin" "$srv/file.bin"; }
declare -A tftp
for blksize in 512 1468; do
  tftp[rootsmith-$blksize]=$(runs 3 fetch 18942 "$blksize")
  tftp[tftpd-$blksize]=$(runs 3 fetch 18943 "$blksize")
done

echo "imaging" >&2
img=$work/images
mkdir -p "$img"
head -c 1G /dev/urandom > "$img/disk.img"
image_bytes=$(stat -c %s "$img/disk.img")
sha=$(sha256sum "$img/disk.img" | cut -d' ' -f1)
"$bin" serve "$img" --addr 127.0.0.1:18944 2>/dev/null & servers+=($!)
sleep 0.5
url=http://127.0.0.1:18944/disk.img
disk=$work/disk.raw
truncate -s 1200M "$disk"
agent_run() { ROOTSMITH_AGENT_WORK=$work/agent bash "$agent" --image "$url" --sha256 "$sha" --disk "$disk" --stage "$1"; }
curl_dd() { curl -sf "$url" | dd of="$disk" bs=4M iflag=fullblock conv=notrunc,fsync status=none; }
t_curl=$(runs 3 curl_dd)
t_agent=$(runs 3 agent_run auto)
t_agent_never=$(runs 3 agent_run never)
cmp -s -n "$image_bytes" "$img/disk.img" "$disk" || { echo "the disk does not hold the image" >&2; exit 1; }

cat <<DOC
## Fleet

**TFTP.** A 16 MiB file on loopback, \`curl tftp://\` as the client
(\`--tftp-blksize\`), median of 3 runs each; \`rootsmith serve --tftp\` and
in.tftpd $(in.tftpd -V 2>&1 | head -n1 | awk '{print $2}' | tr -d ,) (\`--secure\`) serve the same directory in one run.

| blksize | rootsmith serve --tftp | in.tftpd |
|---:|---:|---:|
| 512 | ${tftp[rootsmith-512]} s ($(rate "$file_bytes" "${tftp[rootsmith-512]}") MB/s) | ${tftp[tftpd-512]} s ($(rate "$file_bytes" "${tftp[tftpd-512]}") MB/s) |
| 1468 | ${tftp[rootsmith-1468]} s ($(rate "$file_bytes" "${tftp[rootsmith-1468]}") MB/s) | ${tftp[tftpd-1468]} s ($(rate "$file_bytes" "${tftp[tftpd-1468]}") MB/s) |

TFTP is one block in flight per acknowledgement, so both are bound by the
round trip, not the server; the point of TFTP in a lab is the first stage
(iPXE or PXELINUX, well under 1 MiB), the rest comes over HTTP.

**Imaging a 1 GiB disk.** A 1 GiB raw image served by \`rootsmith serve\` on
loopback, written to a 1.2 GiB file on the scratch disk with \`fsync\`, median
of 3 runs. The agent's script runs on the host here (the same script the
agent's service runs; in a VM under TCG every step would be emulated).

| | seconds | vs curl \| dd |
|---|---:|---:|
| \`curl \| dd conv=fsync\` (writes whatever arrives) | ${t_curl} | 1.00x |
| rootsmith-agent, download held in RAM (download, verify, write, read back) | ${t_agent} | $(awk -v a="$t_agent" -v c="$t_curl" 'BEGIN{printf "%.2fx", a/c}') |
| rootsmith-agent, \`--stage never\` (download twice: verify, then write; read back) | ${t_agent_never} | $(awk -v a="$t_agent_never" -v c="$t_curl" 'BEGIN{printf "%.2fx", a/c}') |

The agent costs more than \`curl | dd\` because it does more: nothing touches
the disk until the whole image matched its SHA-256, and the disk is read back
afterwards. \`curl | dd\` of a corrupted image writes it.
DOC
