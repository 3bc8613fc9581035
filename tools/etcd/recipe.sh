# Builds etcd and etcdctl into $OUT. Run by tools/build.sh from this directory.
# usually: 2-4 minutes (cold)
set -euo pipefail
go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
go build -trimpath -ldflags "-s -w" -o "$OUT/etcdctl" go.etcd.io/etcd/etcdctl/v3
