# Builds kwok into $OUT, plus kwok-stages.yaml: the "fast" node and pod
# stages shipped in the same pinned module (kwok refuses to run without
# stages). Run by tools/build.sh from this directory.
# usually: 3-5 minutes (cold)
set -euo pipefail
go build -trimpath -ldflags "-s -w" -o "$OUT/kwok" sigs.k8s.io/kwok/cmd/kwok
src=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
	pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
	echo "---"
	cat "$src/$f"
done > "$OUT/kwok-stages.yaml"
