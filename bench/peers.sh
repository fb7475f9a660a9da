#!/usr/bin/env bash
# Peers benchmark: rootsmith against mkosi and debos (Debian's packages), the
# tools a user would otherwise pick, doing the same job side by side in one
# run: Debian bookworm minbase plus the packages of recipes/debian-minimal.yaml,
# out as a compressed tarball; cold, no change, one package added. Prints its
# section of docs/benchmarks.md. Needs root and the Debian archive.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
# mkosi and debos may bring systemd-resolved, which replaces /etc/resolv.conf
# and leaves the machine without names: put it back whatever happens.
cp -a /etc/resolv.conf "$work/resolv.conf"
restore_resolv() {
  cmp -s "$work/resolv.conf" /etc/resolv.conf && [ ! -L /etc/resolv.conf ] && return
  rm -f /etc/resolv.conf 2>/dev/null || true
  cat "$work/resolv.conf" > /etc/resolv.conf
}
trap 'restore_resolv; rm -rf "$work"' EXIT
# The host's first deb822 or one-line source, as rootsmith itself defaults to.
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $1}')
[ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
added=nano

# rootsmith: the recipe's package stages (debootstrap minbase with its
# include, the packages stage), the tarball at mkosi's fixed zstd level 15 and
# the squashfs it always writes at level 1; a second copy with $added.
cp -a recipes "$work/recipes"
python3 - "$work/recipes" "$added" <<'PY'
import sys, yaml
d, added = sys.argv[1], sys.argv[2]
r = yaml.safe_load(open(f"{d}/debian-minimal.yaml"))
r["stages"] = [s for s in r["stages"] if "debootstrap" in s or "packages" in s]
r["outputs"] = {"rootfs": {"squashfs": {"compression": "zstd", "level": 1}},
                "tarball": {"compression": "zstd", "level": 15}}
yaml.safe_dump(r, open(f"{d}/peers.yaml", "w"), sort_keys=False)
pkgs = [p for s in r["stages"] for p in s.get("debootstrap", {}).get("include", []) + s.get("packages", {}).get("install", [])]
open(f"{d}/peers.packages", "w").write(",".join(pkgs))
next(s for s in r["stages"] if "packages" in s)["packages"]["install"].append(added)
yaml.safe_dump(r, open(f"{d}/peers-added.yaml", "w"), sort_keys=False)
PY
packages=$(cat "$work/recipes/peers.packages")
rs() { "$bin" build --json --cache "$work/rs/cache" --out "$work/rs/out" "$@"; }

# mkosi: its settings file; --force replaces the last output, the package
# cache (Cache=) is kept. BasePackages=no: only these packages (mkosi's
# debootstrap adds ca-certificates). WithDocs=yes and the apt lists removed,
# as rootsmith does. NspawnKeepUnit=yes: the build runs in a container.
mkdir -p "$work/mkosi/cache" "$work/mkosi/out"
cat > "$work/mkosi/mkosi.default" <<EOF
[Distribution]
Distribution=debian
Release=bookworm
Mirror=$mirror

[Output]
Format=tar
CompressOutput=zstd
Output=$work/mkosi/out/image.tar.zst

[Content]
BasePackages=no
WithDocs=yes
Packages=$packages
Cache=$work/mkosi/cache
RemoveFiles=/var/lib/apt/lists/*,/var/cache/apt/*.bin

[Host]
NspawnKeepUnit=yes
EOF
mk() { (cd "$work/mkosi" && mkosi --force "$@" build); }

# debos: its recipe (debootstrap, apt, run, pack), the mirror and the added
# package as template variables; it keeps nothing between runs.
mkdir -p "$work/debos"
cat > "$work/debos/peers.yaml" <<EOF
architecture: amd64
actions:
  - action: debootstrap
    suite: bookworm
    components: [main]
    mirror: {{ .mirror }}
    variant: minbase
  - action: apt
    recommends: false
    packages: [${packages//,/, }{{ if .added }}, {{ .added }}{{ end }}]
  - action: run
    chroot: true
    command: find /var/lib/apt/lists -type f ! -name lock -delete; rm -f /var/cache/apt/*.bin
  - action: pack
    file: rootfs.tar.gz
    compression: gz
EOF
db() { (cd "$work/debos" && debos --disable-fakemachine --artifactdir "$work/debos" -t mirror:"$mirror" "$@" peers.yaml); }

# Each tool's output: its size in MB, and the packages dpkg has installed in it.
size() { awk -v b="$(stat -c %s "$1")" 'BEGIN{printf "%.1f", b/1e6}'; }
installed() { tar -xOf "$1" --wildcards '*var/lib/dpkg/status' | awk '/^Package:/{p=$2} /^Status: install ok installed/{print p}' | sort > "$2"; wc -l < "$2"; }
# The packages in one list and not in the other, as `a`, `b`, or "none".
only() { comm -23 "$1" "$2" | sed 's/.*/`&`/' | paste -sd' ' | sed 's/ /, /g; s/^$/none/'; }
# A rootsmith build, timed, its JSON summary kept in $work/NAME.json.
rs_timed() { local name=$1 start; shift; start=$(now); rs "$@" > "$work/$name.json" || { cat "$work/$name.json" >&2; exit 1; }; seconds "$start" "$(now)"; }
outputs_seconds() { python3 -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))["outputs"]["seconds"])' "$work/$1.json"; }
rs_tar() { ls "$work"/rs/out/debian-minimal/"$1"/*-rootfs.tar.zst; }

echo "rootsmith: cold" >&2;          r_cold=$(rs_timed cold --version 1.0.0 "$work/recipes/peers.yaml")
r_size=$(size "$(rs_tar 1.0.0)"); r_pkgs=$(installed "$(rs_tar 1.0.0)" "$work/rs.pkgs")
echo "mkosi: cold" >&2;              m_cold=$(timed mk)
m_size=$(size "$work/mkosi/out/image.tar.zst"); m_pkgs=$(installed "$work/mkosi/out/image.tar.zst" "$work/mkosi.pkgs")
echo "debos: cold" >&2;              d_cold=$(timed db)
d_size=$(size "$work/debos/rootfs.tar.gz"); d_pkgs=$(installed "$work/debos/rootfs.tar.gz" "$work/debos.pkgs")
echo "rootsmith: no change" >&2;     r_same=$(timed rs --version 1.0.1 "$work/recipes/peers.yaml")
echo "mkosi: no change" >&2;         m_same=$(timed mk)
echo "debos: no change" >&2;         d_same=$(timed db)
echo "rootsmith: $added added" >&2;  r_added=$(rs_timed added --version 1.0.2 "$work/recipes/peers-added.yaml")
r_size2=$(size "$(rs_tar 1.0.2)")
echo "mkosi: $added added" >&2;      m_added=$(timed mk --package="$added")
m_size2=$(size "$work/mkosi/out/image.tar.zst")
# mkosi's --incremental: the first run stores the tree it installed, the second
# is the no-change build with it.
echo "mkosi: --incremental, first" >&2;     m_inc1=$(timed mk --incremental)
echo "mkosi: --incremental, no change" >&2; m_inc2=$(timed mk --incremental)
echo "debos: $added added" >&2;      d_added=$(timed db -t added:"$added")
d_size2=$(size "$work/debos/rootfs.tar.gz")
restore_resolv
r_cold_out=$(outputs_seconds cold); r_added_out=$(outputs_seconds added)

cat <<DOC
## mkosi and debos

The job of \`recipes/debian-minimal.yaml\`'s package stages done by
rootsmith and by the two tools a Debian user would otherwise pick (Debian's
own packages of them), side by side in one run: bookworm, variant minbase,
plus \`${packages//,/ }\`, out as a compressed tarball of the tree; then the
same build again with each tool's caches kept; then \`$added\` added. All
three download from the host's mirror. Tarballs, not directories, because a
tarball is the output all three write directly, so each time includes
writing the archive: rootsmith's tarball and mkosi's \`Format=tar\` at zstd
15 (the level mkosi uses and does not let one change), debos's \`pack\` at
gzip (its version has no zstd). rootsmith also writes the squashfs it
always writes (here at zstd 1), the thin initramfs, the package list, the
SBOM and the manifest, and stores each stage as a layer.

mkosi $(mkosi --version | cut -d' ' -f2): \`BasePackages=no\`, \`WithDocs=yes\`, the apt lists
removed (\`RemoveFiles=\`) as rootsmith and the debos recipe do, its package
cache (\`Cache=\`) kept between runs, \`--force\` to replace the last output.
\`NspawnKeepUnit=yes\`: in this container systemd-nspawn without
\`--keep-unit\` stops at "Failed to open system bus" (this build calls it only
when \`WithDocs=no\`). debos $(dpkg-query -W -f='${Version}' debos): \`--disable-fakemachine\`, since KVM is
unusable here, so it builds on the host, its chroot steps in systemd-nspawn.

| scenario | rootsmith | mkosi | debos |
|---|---:|---:|---:|
| cold build | ${r_cold} s (outputs ${r_cold_out} s) | ${m_cold} s | ${d_cold} s |
| no change | ${r_same} s | ${m_same} s | ${d_same} s |
| \`$added\` added | ${r_added} s (outputs ${r_added_out} s) | ${m_added} s | ${d_added} s |
| mkosi \`--incremental\`: first run, no change | | ${m_inc1} s, ${m_inc2} s | |
| output | rootfs.tar.zst, ${r_size} MB | image.tar.zst, ${m_size} MB | rootfs.tar.gz, ${d_size} MB |
| output with \`$added\` | ${r_size2} MB | ${m_size2} MB | ${d_size2} MB |
| packages installed | ${r_pkgs} | ${m_pkgs} | ${d_pkgs} |

On no change, rootsmith finds every stage and the outputs cached and copies
the bundle into place. mkosi runs debootstrap and apt again, from its package
cache instead of the mirror, and compresses again. Its \`--incremental\`
caches the installed tree only for a build script's two phases: without a
\`mkosi.build\` script version 14 installs the tree again on every run to
refresh that cache, then copies it, so it saves nothing. debos keeps
nothing: every run is a cold build. With \`$added\`, rootsmith reuses the
base stage and runs the packages stage again; mkosi and debos build from the
start. The times vary between runs by tens of seconds (the two cores
were not idle, and each cold build is mostly downloads and compression):
compare within one run.

The package sets asked for are the same; what the trees hold differs with
the bootstrap tool. rootsmith's base stage runs mmdebstrap: its tree has
$(only "$work/rs.pkgs" "$work/debos.pkgs") where the debootstrap trees of mkosi and
debos have $(only "$work/debos.pkgs" "$work/rs.pkgs"). mkosi's also has $(only "$work/mkosi.pkgs" "$work/debos.pkgs"): its
debootstrap always adds \`ca-certificates\`.
DOC
