#!/usr/bin/env bash
# Foundation benchmark: rootsmith against the plain shell pipeline
# (bench/pipeline.sh) on recipes/debian-minimal.yaml, side by side in one run.
# Prints its section of docs/benchmarks.md. Needs root and the Debian archive.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
recipes=$work/recipes
cp -a recipes "$recipes"
recipe=$recipes/debian-minimal.yaml
# The host's first deb822 or one-line source, as rootsmith itself defaults to.
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $1}')
[ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)

build() { "$bin" build --json --cache "$work/cache" --out "$work/out" "$@" "$recipe"; }

echo "pipeline: cold" >&2;               p_cold=$(timed bench/pipeline.sh "$work/pipeline" "$mirror")
echo "rootsmith: cold" >&2;              r_cold=$(timed build --version 1.0.0)
echo "pipeline: no change" >&2;          p_same=$(timed bench/pipeline.sh "$work/pipeline" "$mirror")
echo "rootsmith: no change" >&2;         r_same=$(timed build --version 1.0.1)
echo "# bench" >> "$recipes/debian-minimal/configure.sh"
echo "pipeline: last stage changed" >&2; p_last=$(timed bench/pipeline.sh "$work/pipeline" "$mirror")
echo "rootsmith: last stage changed" >&2
start=$(now); build --version 1.0.2 > "$work/last.json"; r_last=$(seconds "$start" "$(now)")
stage_time=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("%.1f %.1f" % (s["stages"][-1]["seconds"], s["outputs"]["seconds"]))' "$work/last.json")
r_stage=${stage_time% *}; r_outputs=${stage_time#* }
echo "rootsmith: --fast after the same change" >&2
echo "# bench 2" >> "$recipes/debian-minimal/configure.sh"
r_fast=$(timed build --version 1.0.3 --fast)

ratio=$(awk -v r="$r_cold" -v p="$p_cold" 'BEGIN{printf "%.2f", r/p}')
budget=$(awk -v s="$r_stage" -v o="$r_outputs" 'BEGIN{printf "%.1f", s+o+3}')
verdict() { awk -v v="$1" -v t="$2" 'BEGIN{print (v<=t) ? "met" : "missed"}'; }

cat <<DOC
## Root filesystem builds

\`recipes/debian-minimal.yaml\` built with rootsmith, and the same work done by
a plain shell pipeline (bench/pipeline.sh: mmdebstrap, chroot apt-get, overlay
copy, script, mksquashfs zstd 15, cpio), side by side in one run, on empty
caches. Both download packages from the host's mirror. rootsmith also writes
the tarball (zstd 9), the thin initramfs, the package list, the SBOM, the
manifest, and stores every stage
as a layer. Tools: $(mmdebstrap --version 2>/dev/null | head -n1), $(mksquashfs -version 2>/dev/null | head -n1 | cut -d' ' -f1-3).

| scenario | shell pipeline | rootsmith | target | |
|---|---:|---:|---|---|
| cold build | ${p_cold} s | ${r_cold} s | ≤ 1.1 × pipeline (${ratio} ×) | $(verdict "$ratio" 1.1) |
| no-change rebuild | ${p_same} s | ${r_same} s | ≤ 2 s | $(verdict "$r_same" 2) |
| last stage changed | ${p_last} s | ${r_last} s | ≤ stage ${r_stage} s + outputs ${r_outputs} s + 3 s = ${budget} s | $(verdict "$r_last" "$budget") |
| last stage changed, \`--fast\` | — | ${r_fast} s | | |

The pipeline has no cache: every run costs a cold build. rootsmith's
no-change rebuild plans (one request for the mirror's \`InRelease\`), finds
every stage and the outputs cached, and copies the bundle into place.
DOC
