#!/usr/bin/env bash
# Builds parry's third-party test servers from pinned module versions and puts
# them into bin/ of the repository.
#
#   tools/build.sh [kube|etcd|kwok|vault|seaweedfs|crane|ko|coredns|eventing|cluster ...]
#
# Default: kube etcd kwok vault, in that order (what `make tools` and the
# kwok-based tests need). seaweedfs is opt-in (make tools-s3). "cluster"
# stands for what the real-node cluster adds (kube with kubelet/kube-proxy,
# crane, ko, coredns, eventing).
#
# Each tool is described by the directory tools/<tool>/: a go.mod/go.sum that
# pins every version and a recipe.sh that builds into "$OUT". The binaries are
# built once into a cache OUTSIDE the repository, keyed by a hash of that
# directory plus the Go toolchain, so a fresh clone on a machine that already
# built them only links them (seconds). Tools are built one after the other,
# never in parallel: the machines have two cores.
#
# Environment:
#   PARRY_TOOLS_CACHE  cache root (default ~/.cache/parry/tools)
#   PARRY_TOOLS_BIN    where to link the binaries (default <repo>/bin)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${PARRY_TOOLS_CACHE:-${HOME:-/root}/.cache/parry/tools}
bindir=${PARRY_TOOLS_BIN:-$repo/bin}
export CGO_ENABLED=0 GOTOOLCHAIN=local

all=(kube etcd kwok vault)
# Built only for the real-node cluster (`make cluster`, tests/devenv RealNode).
cluster=(crane ko coredns eventing)
tools=()
for a in "$@"; do
	if [ "$a" = cluster ]; then tools+=(kube "${cluster[@]}"); else tools+=("$a"); fi
done
[ ${#tools[@]} -gt 0 ] || tools=("${all[@]}")

command -v go >/dev/null || { echo "tools: 'go' is not on PATH; install Go 1.26 first" >&2; exit 1; }
command -v flock >/dev/null || { echo "tools: 'flock' is missing; run: apt-get install -y util-linux" >&2; exit 1; }
mkdir -p "$cache" "$bindir"

# One build at a time per machine, whichever checkout asks: a second caller
# waits and then finds the cache filled.
exec 9>"$cache/.lock"
if ! flock -n 9; then
	echo "tools: another build holds $cache/.lock; waiting for it"
	flock 9
fi

# stamp <tool>: hash of everything that decides the binaries.
stamp() {
	{
		go env GOVERSION GOOS GOARCH CGO_ENABLED
		(cd "$here/$1" && find . -type f ! -name '*~' | LC_ALL=C sort | xargs sha256sum)
	} | sha256sum | cut -c1-16
}

link() { # link <cache dir>: hard-link (or copy) every built file into bin/
	local f
	for f in "$1"/*; do
		[ -f "$f" ] || continue
		ln -f "$f" "$bindir/" 2>/dev/null || cp -f "$f" "$bindir/"
	done
}

for t in "${tools[@]}"; do
	[ -f "$here/$t/recipe.sh" ] || { echo "tools: unknown tool '$t' (known: ${all[*]} ${cluster[*]} cluster)" >&2; exit 2; }
	dir="$cache/$t-$(stamp "$t")"
	if [ -f "$dir/.complete" ]; then
		link "$dir"
		echo "tools: $t up to date ($(cd "$dir" && ls | tr '\n' ' '))"
		continue
	fi
	usual=$(sed -n 's/^# usually: //p' "$here/$t/recipe.sh")
	echo "tools: building $t into $dir"
	echo "tools:   this usually takes ${usual:-a few minutes} on two cores; later runs reuse the cache"
	rm -rf "$dir.tmp"
	mkdir -p "$dir.tmp"
	start=$SECONDS
	(cd "$here/$t" && OUT="$dir.tmp" nice -n 5 bash ./recipe.sh)
	touch "$dir.tmp/.complete"
	rm -rf "$dir"
	mv "$dir.tmp" "$dir"
	link "$dir"
	echo "tools: built $t in $((SECONDS - start))s: $(cd "$dir" && ls | tr '\n' ' ')"
done
