#!/usr/bin/env bash
# Iteration benchmark: a developer changes one file of the `overlay` files
# stage of recipes/debian-netboot.yaml and builds again. Measured side by
# side in one run: the work tree overlaid on a kept tree (the default as
# root) and extracted from the layers (ROOTSMITH_OVERLAY=0), with release
# compression and with --fast; per stage from `build --json`; and mksquashfs
# alone on the same tree at the release's zstd 15, the floor of a release
# build that recompresses the whole tree. Prints its section of
# docs/benchmarks.md. Needs root and the archive.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
recipes=$work/recipes
cp -a recipes "$recipes"
recipe=$recipes/debian-netboot.yaml
changed=$recipes/debian-netboot/overlay/etc/rootsmith-iteration
n=0

# The newest outputs log's squashfs line "SECONDS BYTES COPIED COMPRESSED", then its
# tarball line "FRAMES-COPIED FRAMES-COMPRESSED", then the seconds of the step that
# writes both side by side, then those of the newest thin initramfs.
squashfs_line() {
  local log
  log=$(ls -t $(grep -l "^rootsmith-squashfs" "$work"/cache/v1/logs/*.log) | head -n1)
  sed -n 's/^rootsmith-squashfs [0-9]*: [0-9]* inodes, \([0-9]*\) bytes, [0-9]* threads, \([0-9.]*\) s; block cache: \([0-9]*\) blocks copied, \([0-9]*\) compressed.*/\2 \1 \3 \4/p' "$log" | tail -n1
  sed -n 's/^rootsmith-tar-frames [0-9]*: frame cache: \([0-9]*\) frames copied, \([0-9]*\) compressed.*/\1 \2/p' "$log" | tail -n1
  sed -n 's/^step squashfs-and-tarball \([0-9.]*\)$/\1/p' "$log" | tail -n1
  log=$(ls -t $(grep -l "^step initramfs" "$work"/cache/v1/logs/*.log) | head -n1)
  sed -n 's/^step initramfs \([0-9.]*\)$/\1/p' "$log" | tail -n1
}

# build [ENV…] -- [ARGS…]: one build after one more changed file; sets
# $result to "whole files-stage configure outputs" seconds (no subshell, so
# the count of changes goes on).
build() {
  local env=()
  while [ "$1" != "--" ]; do env+=("$1"); shift; done
  shift
  n=$((n + 1))
  echo "iteration $n" > "$changed"
  # What the last build wrote reaches the disk first (a developer takes
  # seconds to edit; a build timed during the last one's writeback is not).
  sync
  local start; start=$(now)
  env "${env[@]}" "$bin" build --json --cache "$work/cache" --out "$work/out" --version "0.1.$n" "$@" "$recipe" > "$work/last.json" 2> "$work/last.log" || { cat "$work/last.log" >&2; exit 1; }
  local whole; whole=$(seconds "$start" "$(now)")
  result=$(python3 - "$work/last.json" "$whole" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
stage = {x["name"]: x for x in s["stages"]}
assert stage["overlay"]["state"] == "built" and stage["base"]["state"] == "cached", s
print(sys.argv[2], "%.1f %.1f %.1f" % (stage["overlay"]["seconds"], stage["configure"]["seconds"], s["outputs"]["seconds"]))
PY
)
  result="$result $(squashfs_line | tr '\n' ' ' | sed 's/ *$//')"
}

echo "cold build" >&2
cold=$(timed "$bin" build --cache "$work/cache" --out "$work/out" --version 0.0.0 "$recipe")
cold_squashfs=$(squashfs_line | sed -n 1p)
cold_both=$(squashfs_line | sed -n 3p)
echo "first change: the kept tree is made" >&2
build ROOTSMITH_OVERLAY=1 --; first=$result
echo "second change: the memos learn the files the kept tree had only just made" >&2
build ROOTSMITH_OVERLAY=1 --; second=$result
echo "one file changed: overlay / extracted, release compression" >&2
build ROOTSMITH_OVERLAY=1 --; o_rel=$result
build ROOTSMITH_OVERLAY=0 --; x_rel=$result
echo "one file changed: overlay / extracted, --fast" >&2
# The first --fast build fills the caches of its compression levels.
build ROOTSMITH_OVERLAY=1 -- --fast; first_fast=$result
build ROOTSMITH_OVERLAY=1 -- --fast; o_fast=$result
build ROOTSMITH_OVERLAY=0 -- --fast; x_fast=$result

echo "mksquashfs alone" >&2
tree=$work/tree
mkdir -p "$tree"
tar -C "$tree" --zstd -xf "$work/out/debian-netboot/0.1.$n/debian-netboot-0.1.$n-rootfs.tar.zst"
mksq=$(timed mksquashfs "$tree" "$work/alone.squashfs" -noappend -reproducible -xattrs -no-progress -quiet -comp zstd -Xcompression-level 15 -mkfs-time 1700000000)
# What a user would otherwise run for the tarball: tar piped into zstd on every core.
tarzst=$(timed sh -c "tar -C '$tree' --sort=name --numeric-owner -cf - . | zstd -9 -T0 -q -o '$work/alone.tar.zst'")
entries=$(find "$tree" | wc -l)
size=$(du -sm --apparent-size "$tree" | cut -f1)

field() { echo "$1" | cut -d' ' -f"$2"; }
row() { echo "| $1 | $(field "$2" 1) s | $(field "$2" 2) s | $(field "$2" 3) s | $(field "$2" 4) s | $(field "$2" 11) s | $(field "$2" 7) copied, $(field "$2" 8) compressed | $(field "$2" 9) copied, $(field "$2" 10) compressed | $(field "$2" 12) s |"; }
mksq_size=$(stat -c %s "$work/alone.squashfs")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a/b}'; }

cat <<DOC
## Changing one file

\`recipes/debian-netboot.yaml\` (${size} MB, ${entries} entries; cold build
${cold} s), then one file of its \`overlay\` files stage changed before each
build: the \`overlay\` and \`configure\` stages run again and the outputs are
made again. The work tree either overlays the kept tree of the stages
before \`overlay\` (the default as root, [cache.md](cache.md#kept-trees)) or
is extracted from their layers (\`ROOTSMITH_OVERLAY=0\`), side by side in
one run, each build after a \`sync\` (the last build's writes on disk, as
after the seconds a developer takes to edit). The first build after the
cold one makes the kept tree; its
newest files are too new for the writers' memos to remember (a file is
remembered once its ctime is two seconds old), so the second change still
reads them, and from the third on only what changed is read.

| one file changed | whole build | \`overlay\` stage | \`configure\` stage | outputs | of which squashfs and tarball (side by side) | squashfs blocks | tarball frames | thin initramfs |
|---|---:|---:|---:|---:|---:|---|---|---:|
$(row "first change (kept tree made)" "$first")
$(row "second change (the memos learn the rest)" "$second")
$(row "overlay, release compression" "$o_rel")
$(row "extracted, release compression" "$x_rel")
$(row "first \`--fast\` change (its levels' caches filled)" "$first_fast")
$(row "overlay, \`--fast\`" "$o_fast")
$(row "extracted, \`--fast\`" "$x_fast")

**The squashfs, cold** (the cold build's, empty block cache) against
mksquashfs alone on the same tree at zstd 15 (\`-processors\` all cores):

| writer | seconds | bytes |
|---|---:|---:|
| rootsmith-squashfs (in the cold build, the tarball written beside it) | $(field "$cold_squashfs" 1) | $(field "$cold_squashfs" 2) |
| mksquashfs 4.5 alone | ${mksq} | ${mksq_size} |
| ratio | $(ratio "$(field "$cold_squashfs" 1)" "$mksq") × | $(ratio "$(field "$cold_squashfs" 2)" "$mksq_size") × |

The cold build's squashfs and tarball together (written side by side) against
mksquashfs followed by \`tar --sort=name | zstd -9 -T0\` on the same tree:
${cold_both} s against $(awk -v a="$mksq" -v b="$tarzst" 'BEGIN{printf "%.1f", a+b}') s
(${mksq} s + ${tarzst} s), $(ratio "$cold_both" "$(awk -v a="$mksq" -v b="$tarzst" 'BEGIN{print a+b}')") ×.

After one changed file the squashfs copies all but a few blocks from its
block cache and the tarball all but one or two frames from its frame
cache, and with their memos ([cache.md](cache.md#the-squashfs-and-tarball-memos))
neither reads a file whose inode, size, mtime and ctime are those of the
last write: on the kept tree's overlay that is every file the stages did
not touch. An extracted tree has new inodes every time, so there every
file is read, hashed and checked against the caches (and the memos are
left to the kept tree's builds). The squashfs is written straight into the
rootfs image, whose digest, chunk list and cookie are taken by three
threads reading it at once; the thin initramfs copies its fixed part (init
and modules) from the frame cache and compresses only the build id and
chunk list. Each stage walks its tree once (it starts from the snapshot the
stage before ended with). The rest of the whole build is preparing the work
tree and publishing the bundle, whose rootfs image and tarball are hard
links to the cache's files ([releases.md](releases.md#a-bundle-is-never-changed-in-place)). Both caches are keyed
by the compression level, so the first \`--fast\` build after release
builds compresses everything once at its levels.
DOC
