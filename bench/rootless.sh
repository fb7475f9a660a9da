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

as_root() { local c=$1; shift; "$work/bin/rootsmith" build --json --cache "$work/root/$c" --out "$work/root/out-$c" "$@" "$recipe"; }
as_user() { local c=$1; shift; runuser -u "$user" -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$work/user" \
  "$work/bin/rootsmith" build --json --cache "$work/user/$c" --out "$work/user/out-$c" "$@" "$recipe"; }

# Cold builds in the order root, user, user, root (each on an empty cache of
# its own), so neither side always goes first to the mirror; the mean of each.
echo "root: cold 1" >&2;   root_cold1=$(timed as_root a)
echo "user: cold 1" >&2;   user_cold1=$(timed as_user a)
echo "user: cold 2" >&2;   user_cold2=$(timed as_user b)
echo "root: cold 2" >&2;   root_cold2=$(timed as_root b)
echo "root: no change" >&2; root_same=$(timed as_root a --version 1.0.1)
echo "user: no change" >&2; user_same=$(timed as_user a --version 1.0.1)
mean() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", (a+b)/2}'; }
root_cold=$(mean "$root_cold1" "$root_cold2")
user_cold=$(mean "$user_cold1" "$user_cold2")
same=differ
cmp -s "$work/root/out-a/debian-minimal/0.1.0/SHA256SUMS" "$work/user/out-a/debian-minimal/0.1.0/SHA256SUMS" && same="the same bytes"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
cold_ratio=$(ratio "$user_cold" "$root_cold")
same_ratio=$(ratio "$user_same" "$root_same")
verdict() { awk -v v="$1" -v t="$2" 'BEGIN{print (v<=t) ? "met" : "missed"}'; }

cat <<DOC
## Builds without root

\`recipes/debian-minimal.yaml\` (release compression) built by root and by an
ordinary user, side by side in one run, each cold build on an empty cache
of its own, in the order root, user, user, root (the package downloads
vary by several seconds between runs, whoever goes first). The user's build
runs in a user namespace of its \`/etc/subuid\` range (docs/commands.md,
"Running without root"). The two bundles are ${same} (SHA256SUMS compared).

| scenario | root | ordinary user | target | |
|---|---:|---:|---|---|
| cold build (mean of two) | ${root_cold} s (${root_cold1}, ${root_cold2}) | ${user_cold} s (${user_cold1}, ${user_cold2}) | ≤ 1.1 × root (${cold_ratio} ×) | $(verdict "$cold_ratio" 1.1) |
| no-change rebuild | ${root_same} s | ${user_same} s | ≤ 1.1 × root (${same_ratio} ×) | $(verdict "$same_ratio" 1.1) |
DOC
