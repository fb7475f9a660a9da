#!/usr/bin/env bash
# OCI benchmark, against Debian's docker-registry started on loopback here:
# - pull and unpack a multi-layer image of a Debian rootfs: rootsmith's `oci`
#   base stage against `skopeo copy` + `umoci raw unpack`, side by side;
# - a warm build from the remote stage cache (an empty local cache) against a
#   warm build from the local cache.
# The image is recipes/debian-minimal.yaml built by rootsmith with
# `outputs.oci.push` (one layer per stage), its layers also written with gzip
# by umoci (umoci 0.4 reads no zstd). Prints its section of docs/benchmarks.md. Needs root,
# the Debian archive, docker-registry, skopeo and umoci.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
registry_pid=
trap '[ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null; rm -rf "$work"' EXIT
median() { sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
runs3() { for _ in 1 2 3; do "$@"; done | median; }

port=18951
mkdir -p "$work/registry"
cat > "$work/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 & registry_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
repo=127.0.0.1:$port/bench

echo "image" >&2
cp -a recipes "$work/recipes"
recipe=$work/recipes/debian-minimal.yaml
# debian-minimal ends with its outputs: block; the image joins it.
printf '  oci: { push: "%s/debian-minimal:zstd" }\n' "$repo" >> "$recipe"
"$bin" build --cache "$work/cache-a" --out "$work/out-a" --cache-remote "$repo/cache" "$recipe" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; exit 1; }
# The same layers with gzip, for umoci 0.4 (which reads no zstd): each stage's
# layer decompressed and added verbatim by umoci, then pushed by skopeo.
umoci init --layout "$work/gzip-layout"
umoci new --image "$work/gzip-layout:img"
for layer in $(python3 -c 'import json,sys; print(" ".join(s["layer"] for s in json.load(open(sys.argv[1]))["stages"]))' "$work/out-a/debian-minimal/0.1.0/manifest.json"); do
  zstd -dcq "$work/cache-a/v1/blobs/sha256/$layer" > "$work/layer.tar"
  umoci raw add-layer --image "$work/gzip-layout:img" "$work/layer.tar"
done
rm -f "$work/layer.tar"
skopeo copy -q --dest-tls-verify=false --insecure-policy "oci:$work/gzip-layout:img" "docker://$repo/debian-minimal:gzip"
raw=$(skopeo inspect --raw --tls-verify=false "docker://$repo/debian-minimal:gzip")
layers=$(echo "$raw" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["layers"]))')
image_bytes=$(echo "$raw" | python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))')

echo "pull and unpack" >&2
printf 'rootsmith: 1\nname: pulled\nversion: 1.0.0\nstages:\n  - oci: { image: "%s/debian-minimal:gzip" }\n' "$repo" > "$work/pull.yaml"
# The oci stage on an empty cache: download, verify, apply the layers, and
# store the stage's own layer; `shell -- true` stops there (no outputs).
rootsmith_pull() {
  rm -rf "$work/cache-p"
  local start; start=$(now)
  "$bin" shell --cache "$work/cache-p" "$work/pull.yaml" -- true >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; exit 1; }
  seconds "$start" "$(now)"; echo
}
skopeo_umoci() {
  rm -rf "$work/layout" "$work/unpacked"
  local start; start=$(now)
  skopeo copy -q --src-tls-verify=false --insecure-policy "docker://$repo/debian-minimal:gzip" "oci:$work/layout:gzip"
  umoci raw unpack --image "$work/layout:gzip" "$work/unpacked" 2>"$work/umoci.log" || { cat "$work/umoci.log" >&2; exit 1; }
  [ -x "$work/unpacked/bin/sh" ] || { echo "umoci unpacked no tree" >&2; exit 1; }
  seconds "$start" "$(now)"; echo
}
t_rootsmith=$(runs3 rootsmith_pull)
t_skopeo=$(runs3 skopeo_umoci)

echo "remote cache" >&2
build_secs() {
  local cache=$1; shift
  "$bin" build --json --cache "$cache" --out "$work/out-$RANDOM" "$@" "$recipe" >"$work/last.json" 2>"$work/last.log" || { cat "$work/last.log" >&2; exit 1; }
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("%.1f %s; outputs %s" % (s["seconds"], ",".join(x["state"] for x in s["stages"]), s["outputs"]["state"]))' "$work/last.json"
}
local_warm=$(build_secs "$work/cache-a")
remote_warm=$(build_secs "$work/cache-b" --cache-remote "$repo/cache")
remote_warm_fast=$(build_secs "$work/cache-c" --cache-remote "$repo/cache" --fast)
remote_bytes=$(du -sb "$work/cache-b/v1/blobs" "$work/cache-b/v1/outputs" | awk '{t+=$1} END{print t}')

ratio=$(awk -v a="$t_rootsmith" -v b="$t_skopeo" 'BEGIN{printf "%.2f", a/b}')
verdict=$(awk -v r="$ratio" 'BEGIN{print (r<=1.0) ? "met" : "missed"}')
cat <<DOC
## OCI images and the remote cache

Debian's docker-registry on loopback; skopeo $(skopeo --version | awk '{print $3}'), umoci $(umoci --version | awk '{print $3}').
The image is \`recipes/debian-minimal.yaml\` built by rootsmith and pushed
with \`outputs.oci\` (one layer per stage, ${layers} layers); both tools pull the
same layers written with gzip by \`umoci raw add-layer\` (umoci 0.4 reads no
zstd): $(awk -v b="$image_bytes" 'BEGIN{printf "%.1f MB", b/1e6}') to download.

**Pull and unpack** (median of 3, empty caches):

| | seconds |
|---|---:|
| rootsmith \`oci\` stage (download, verify, apply, store the stage's layer) | ${t_rootsmith} |
| \`skopeo copy\` to a layout + \`umoci raw unpack\` | ${t_skopeo} |

Target rootsmith <= 1.0x: ${ratio}x, ${verdict}.

**Remote cache.** The same recipe built again, nothing changed: from the
local cache where it was built, and on an empty cache with
\`--cache-remote\` (every stage and the outputs pulled, nothing built; the
time is mostly the download of $(awk -v b="$remote_bytes" 'BEGIN{printf "%.0f MB", b/1e6}') of layers and outputs). With \`--fast\`
the outputs differ (other compression), so the second machine makes those
from the pulled tree.

| build | seconds | stages |
|---|---:|---|
| local cache, warm | ${local_warm% *} | ${local_warm#* } |
| empty cache, --cache-remote | ${remote_warm% *} | ${remote_warm#* } |
| empty cache, --cache-remote --fast | ${remote_warm_fast% *} | ${remote_warm_fast#* } |
DOC
