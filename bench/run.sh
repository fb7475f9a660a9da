#!/usr/bin/env bash
# make bench: run the benchmark sections (all, or those named) and write
# docs/benchmarks.md. A section not run keeps its last results, between its
# markers. Needs root and the Debian archive.
set -euo pipefail
cd "$(dirname "$0")/.."
sections=("$@")
# Every section, in the order docs/benchmarks.md shows them.
all=(foundation rootless kernel netboot iterate uki fleet oci arm64 peers)
[ ${#sections[@]} -gt 0 ] || sections=("${all[@]}")
doc=docs/benchmarks.md
declare -A body
# Keep what the sections not run this time said last.
if [ -f "$doc" ]; then
  for name in "${all[@]}"; do
    body[$name]=$(awk -v n="$name" '$0=="<!-- section:" n " -->"{on=1;next} $0=="<!-- end:" n " -->"{on=0} on' "$doc")
  done
fi
for name in "${sections[@]}"; do
  echo "== $name" >&2
  # A failing section stops the run; docs/benchmarks.md keeps what it said.
  section=$(bench/"$name".sh) || { echo "bench/$name.sh failed; $doc is left as it was" >&2; exit 1; }
  body[$name]="$section

Measured $(date -u +%Y-%m-%d)."
done
cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)
mem=$(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)
{
  echo "# Benchmarks"
  echo
  echo "\`make bench\` runs every section below; \`bench/run.sh NAME\` re-runs one and"
  echo "keeps the others' last results. Each section compares rootsmith with the"
  echo "tool a user would otherwise use, side by side in one run."
  echo
  echo "- Machine: ${cpu}, $(nproc) cores, ${mem}, $(uname -sr)"
  echo "- rootsmith $(target/release/rootsmith --version | cut -d' ' -f2)"
  for name in "${all[@]}"; do
    echo
    echo "<!-- section:$name -->"
    echo "${body[$name]:-_(not measured yet: run \`bench/run.sh $name\`)_}"
    echo "<!-- end:$name -->"
  done
} > "$doc.new"
mv "$doc.new" "$doc"
cat "$doc"
