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
