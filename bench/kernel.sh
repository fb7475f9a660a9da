#!/usr/bin/env bash
# Kernel benchmark: a tinyconfig + fragment kernel from linux-source-6.1 built
# by rootsmith (ccache, cached products) and by hand (apt-get download, unpack,
# make tinyconfig, merge_config.sh, olddefconfig, make bindeb-pkg), side by
# side. Prints its section of docs/benchmarks.md. Needs root and the archive.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
jobs=$(nproc)


# By hand, as the kernel's own documentation does it.
by_hand() {
  local dir=$work/hand
  rm -rf "$dir" && mkdir -p "$dir/src" "$dir/build/obj"
  (cd "$dir" && apt-get download -q linux-source-6.1)
  dpkg-deb --fsys-tarfile "$dir"/linux-source-6.1_*.deb | tar -x -C "$dir" --wildcards './usr/src/*.tar.*'
  tar -xf "$dir"/usr/src/linux-source-*.tar.* -C "$dir/src" --strip-components=1
  hand_config "$root/fixtures/kernel/boot.config"
  hand_make
}
hand_config() {
  make -C "$work/hand/src" O="$work/hand/build/obj" ARCH=x86_64 tinyconfig
  "$work/hand/src/scripts/kconfig/merge_config.sh" -m -O "$work/hand/build/obj" "$work/hand/build/obj/.config" "$@"
  make -C "$work/hand/src" O="$work/hand/build/obj" ARCH=x86_64 olddefconfig
}
# The make command rootsmith runs, by hand: ccache with an empty cache of its own.
hand_make() {
  CCACHE_DIR="$work/hand-ccache" CCACHE_NOHASHDIR=true CCACHE_NOCPP2=true \
  make -C "$work/hand/src" O="$work/hand/build/obj" ARCH=x86_64 -j"$jobs" bindeb-pkg "CC=ccache gcc" \
    LOCALVERSION=-bench KBUILD_BUILD_TIMESTAMP="2023-11-14 22:13:20 UTC" KBUILD_BUILD_USER=rootsmith \
    KBUILD_BUILD_HOST=rootsmith KBUILD_BUILD_VERSION=1
}
# The same compile with plain gcc, to show what a cold ccache costs by itself.
plain_gcc() {
  rm -rf "$work/hand/build/plain" && mkdir -p "$work/hand/build/plain"
  cp "$work/hand/build/obj/.config" "$work/hand/build/plain/.config"
  make -C "$work/hand/src" O="$work/hand/build/plain" ARCH=x86_64 olddefconfig
  make -C "$work/hand/src" O="$work/hand/build/plain" ARCH=x86_64 -j"$jobs" bzImage LOCALVERSION=-bench KBUILD_BUILD_VERSION=1
}
hand_change() {
  hand_config "$root/fixtures/kernel/boot.config" "$root/fixtures/kernel/ikconfig.config"
  hand_make
}

mkdir -p "$work/base/etc" "$work/fragments"
echo bench > "$work/base/etc/motd"
tar -C "$work/base" -cf "$work/base.tar" .
cp fixtures/kernel/*.config "$work/fragments/"
build() { "$bin" build --json --fast --cache "$work/cache" --out "$work/out" --version "$1" "$work/kernel.yaml"; }

echo "by hand: cold" >&2;                     h_cold=$(timed by_hand)
echo "by hand: plain gcc compile" >&2;        h_plain=$(timed plain_gcc)
echo "by hand: config change (incremental make)" >&2; h_change=$(timed hand_change)
tiny_kernel_recipe kbench amd64 "fragments/boot.config"
echo "rootsmith: cold" >&2;                   r_cold=$(timed build 1.0.0)
tiny_kernel_recipe kbench amd64 "fragments/boot.config, fragments/ikconfig.config"
echo "rootsmith: config change (ccache)" >&2; r_change=$(timed build 1.1.0)
echo "rootsmith: no change" >&2;              r_same=$(timed build 1.1.1)

overhead=$(awk -v r="$r_cold" -v h="$h_cold" 'BEGIN{printf "%.1f", (r/h-1)*100}')
speedup=$(awk -v c="$r_cold" -v w="$r_change" 'BEGIN{printf "%.1f", c/w}')
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN{ok=(op=="le")?(v<=t):(v>=t); print ok ? "met" : "missed"}'; }

cat <<DOC
## Kernel builds

A tinyconfig kernel plus \`fixtures/kernel/boot.config\` from Debian's
linux-source-6.1. By hand: the commands rootsmith runs, typed out:
\`apt-get download\`, unpack, \`make tinyconfig\`, \`merge_config.sh\`,
\`olddefconfig\`, \`make -j$jobs bindeb-pkg CC="ccache gcc"\` with an empty
ccache; the config change then re-runs make in the same build directory. rootsmith: the same steps from an empty cache (ccache included),
then the config change (\`fixtures/kernel/ikconfig.config\` added) in the
stage's kept build directory, with ccache. $(gcc --version | head -n1), $(ccache --version | head -n1).

| scenario | by hand | rootsmith | target | |
|---|---:|---:|---|---|
| cold build (download, unpack, config, compile, package) | ${h_cold} s | ${r_cold} s | ≤ 5 % over by hand (${overhead} %) | $(verdict "$overhead" 5 le) |
| rebuild after a config change | ${h_change} s (incremental make) | ${r_change} s (ccache) | ≥ 4 × faster than cold (${speedup} ×) | $(verdict "$speedup" 4 ge) |
| no-change rebuild | — | ${r_same} s | ≤ 1 s | $(verdict "$r_same" 1 le) |

A cold ccache has its own cost: the same compile with plain gcc (\`make
bzImage\`, no packaging) took ${h_plain} s by hand. Every later build gets it
back: a config change recompiles only what uses the changed options, and a
new build directory of the same configuration compiles almost nothing.
DOC
