# Builds CoreDNS (seven plugins, see cmd/coredns) into $OUT. Run by
# tools/build.sh from this directory.
# usually: 2-3 minutes (cold)
set -euo pipefail
go build -trimpath -ldflags "-s -w" -o "$OUT/coredns" ./cmd/coredns
