# Builds crane and registry into $OUT. Run by tools/build.sh from this directory.
# usually: 1-2 minutes (cold)
set -euo pipefail
go build -trimpath -ldflags "-s -w" -o "$OUT/" \
	github.com/google/go-containerregistry/cmd/crane \
	github.com/google/go-containerregistry/cmd/registry
