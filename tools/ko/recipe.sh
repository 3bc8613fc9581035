# Builds ko into $OUT. Run by tools/build.sh from this directory.
# usually: 2-3 minutes (cold)
set -euo pipefail
go build -trimpath -ldflags "-s -w -X github.com/google/ko/pkg/commands.Version=v0.19.1" -o "$OUT/ko" github.com/google/ko
