#!/usr/bin/env bash
# Rootless benchmark: recipes/debian-minimal.yaml built by root and by an
# ordinary user (in a user namespace of its /etc/subuid range), side by side
# in one run on empty caches: cold build and no-change rebuild, and whether
# the two bundles are the same bytes. Prints its section of
# docs/benchmarks.md. Needs root (it makes the user) and the Debian archive.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
user=rootsmith-bench
id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
grep -q "^$user:" /etc/subuid && grep -q "^$user:" /etc/subgid || usermod --add-subuids 500000-565535 --add-subgids 500000-565535 "$user"
# The binary and its init where the user can run them (bin/../lib/rootsmith/).
chmod 755 "$work"
install -D -m 0755 "$bin" "$work/bin/rootsmith"
install -D -m 0755 "$root/target/x86_64-unknown-linux-gnu/init/rootsmith-init" "$work/lib/rootsmith/rootsmith-init"
cp -a recipes "$work/recipes"
mkdir -p "$work/user" "$work/root"
chown -R "$user:" "$work/recipes" "$work/user"
recipe=$work/recipes/debian-minimal.yaml

as_root() { "$work/bin/rootsmith" build --json --cache "$work/root/cache" --out "$work/root/out" "$@" "$recipe"; }
as_user() { runuser -u "$user" -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$work/user" \
  "$work/bin/rootsmith" build --json --cache "$work/user/cache" --out "$work/user/out" "$@" "$recipe"; }

echo "root: cold" >&2;      root_cold=$(timed as_root --version 1.0.0)
echo "user: cold" >&2;      user_cold=$(timed as_user --version 1.0.0)
echo "root: no change" >&2; root_same=$(timed as_root --version 1.0.1)
echo "user: no change" >&2; user_same=$(timed as_user --version 1.0.1)
same=differ
cmp -s "$work/root/out/debian-minimal/1.0.0/SHA256SUMS" "$work/user/out/debian-minimal/1.0.0/SHA256SUMS" && same="the same bytes"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
cold_ratio=$(ratio "$user_cold" "$root_cold")
same_ratio=$(ratio "$user_same" "$root_same")
verdict() { awk -v v="$1" -v t="$2" 'BEGIN{print (v<=t) ? "met" : "missed"}'; }

cat <<DOC
## Builds without root

\`recipes/debian-minimal.yaml\` (release compression) built by root and by an
ordinary user, side by side in one run on two empty caches. The user's build
runs in a user namespace of its \`/etc/subuid\` range (docs/commands.md,
"Running without root"). The two bundles are ${same} (SHA256SUMS compared).

| scenario | root | ordinary user | target | |
|---|---:|---:|---|---|
| cold build | ${root_cold} s | ${user_cold} s | ≤ 1.1 × root (${cold_ratio} ×) | $(verdict "$cold_ratio" 1.1) |
| no-change rebuild | ${root_same} s | ${user_same} s | ≤ 1.1 × root (${same_ratio} ×) | $(verdict "$same_ratio" 1.1) |
DOC
