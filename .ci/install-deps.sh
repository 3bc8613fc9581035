#!/usr/bin/env bash
# Installs the Debian packages a fresh machine lacks for `make tools`,
# `make test` and `make cluster`: clang-19/llvm-19 for the BPF code check,
# Chromium for the web timeline's browser test, PostgreSQL (for Vault's database secrets engine in the test
# environment; its server must run as the postgres user the package creates)
# and flock (util-linux) for the tools build lock. Idempotent: a machine that
# has them skips apt entirely.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && id postgres >/dev/null 2>&1 || need+=(postgresql)
command -v pg_isready >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_isready >/dev/null 2>&1 || need+=(postgresql-client)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
command -v git >/dev/null 2>&1 || need+=(git)
# clang-19 and llvm-19 (llvm-strip) prove that the committed BPF objects match
# bpf/ (make generate-check).
command -v clang-19 >/dev/null 2>&1 || need+=(clang-19)
command -v llvm-strip-19 >/dev/null 2>&1 || need+=(llvm-19)
# libbpf's BPF-side headers (bpf_helpers.h, ...) come from Debian, not from
# a copy in the repository.
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
# A real headless Chromium renders the web timeline in tests/e2e; a font so
# its screenshot shows text.
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
# The real single-node cluster of tests/devenv (make cluster): Debian's
# containerd 1.6 and runc, the CNI plugins (bridge, host-local, loopback),
# nftables for kube-proxy, iptables and conntrack for the kubelet, busybox
# for the test image; gcc compiles Kubernetes' pause.c (tools/kube).
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)

if [ ${#need[@]} -eq 0 ]; then
	echo "install-deps: nothing to install"
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: need root to install: ${need[*]} (run: sudo apt-get install -y ${need[*]})" >&2
	exit 1
fi
echo "install-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The package starts a cluster of its own on port 5432 where a service
# manager runs; the tests start their own clusters and do not need it.
echo "install-deps: done"
