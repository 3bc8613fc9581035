# Builds SeaweedFS's weed (master, volume, filer and the S3 gateway in one
# binary) into $OUT. Run by tools/build.sh from this directory.
# usually: 10-15 minutes cold on two idle cores (about 15 CPU-minutes), 2 more to download its modules
set -euo pipefail
go build -trimpath -ldflags "-s -w" -o "$OUT/weed" github.com/seaweedfs/seaweedfs/weed
