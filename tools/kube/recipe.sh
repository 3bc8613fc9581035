# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and,
# for the real node (tests/devenv RealNode), kubelet and kube-proxy into $OUT.
# Run by tools/build.sh from this directory.
# usually: 12-20 minutes (cold)
set -euo pipefail
v=v1.35.6
pkg=k8s.io/kubernetes/cmd
# The same version stamps Kubernetes' hack/lib/version.sh sets, so that
# /version and `kubectl version` report the real release instead of v0.0.0.
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=35"
	ld+=" -X $p.gitTreeState=clean -X $p.buildDate=2026-06-12T11:51:18Z"
done
go build -trimpath -ldflags "$ld" -o "$OUT/" \
	$pkg/kube-apiserver $pkg/kube-controller-manager $pkg/kube-scheduler $pkg/kubectl \
	$pkg/kubelet $pkg/kube-proxy
# The pod sandbox's process for the real node's pause image: Kubernetes'
# own build/pause/linux/pause.c from the same module, compiled the way its
# Makefile does (static, so the image needs no libc).
command -v gcc >/dev/null || { echo "kube: gcc is missing (for pause.c); run: apt-get install -y gcc libc6-dev" >&2; exit 1; }
gcc -Os -Wall -Werror -static -DVERSION=v3.10.1 -o "$OUT/pause" \
	"$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
