# Shared by the benchmark sections, sourced from the repository's root after
# `set -euo pipefail`: paths, a scratch dir removed on exit, wall-clock timing.
root=$(pwd)
bin=$root/target/release/rootsmith
work=$(mktemp -d /var/tmp/rootsmith-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
# timed CMD…: run it with output to $work/last.log, print its seconds; on
# failure show the log and stop.
timed() { local start; start=$(now); "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; exit 1; }; seconds "$start" "$(now)"; }

# tiny_kernel_recipe NAME ARCH FRAGMENTS: $work/kernel.yaml, a tarball base and
# a tinyconfig kernel from linux-source-6.1 with FRAGMENTS (under $work).
tiny_kernel_recipe() {
  cat > "$work/kernel.yaml" <<YAML
rootsmith: 1
name: $1
version: 1.0.0
arch: $2
source_date_epoch: 1700000000
stages:
  - tarball: { path: base.tar }
  - kernel:
      name: tiny
      source: { package: linux-source-6.1 }
      config: { base: tinyconfig, fragments: [$3] }
      localversion: -bench
YAML
}
