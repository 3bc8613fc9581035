# Builds the Vault server into $OUT. Run by tools/build.sh from this directory.
# usually: 10-15 minutes (cold; the link step needs about 4.6 GB of memory)
#
# Vault v1.21.4 needs a vault/sdk that was never published: its in-tree sdk
# sits between the published v0.21.0 and v0.25.1. We build against a copy of
# the published sdk v0.21.0 with two changes (documented in tools/README.md):
#   1. helper/keysutil/lock_manager.go is taken from sdk v0.25.1
#      (RestorePolicy returns the restored key's name);
#   2. framework.Backend.ActivationFunc gets the two-argument signature of
#      sdk v0.20.0, which is what Vault v1.21.4 calls and assigns.
# The copy lives in a temporary directory next to a copy of this module, so
# nothing third-party is ever written into the repository.
set -euo pipefail
sdk=github.com/hashicorp/vault/sdk
work=$(mktemp -d "${TMPDIR:-/tmp}/parry-vault-build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

dir() { go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }
base=$(dir $sdk@v0.21.0)
newer=$(dir $sdk@v0.25.1)
[ -d "$base" ] && [ -d "$newer" ] || { echo "vault: cannot fetch $sdk v0.21.0/v0.25.1 from the module proxy" >&2; exit 1; }

cp go.mod go.sum "$work/"
cp -r "$base" "$work/sdk"
chmod -R u+w "$work/sdk" # the module cache is read-only
cp "$newer/helper/keysutil/lock_manager.go" "$work/sdk/helper/keysutil/lock_manager.go"
be="$work/sdk/framework/backend.go"
old='ActivationFunc func(context.Context, *logical.Request, string) error'
new='ActivationFunc func(context.Context, *logical.Request) error'
grep -qF "$old" "$be" || { echo "vault: patch target not found in $be: $old" >&2; exit 1; }
sed -i "s/ActivationFunc func(context.Context, \*logical.Request, string) error/$new/" "$be"
grep -qF "$new" "$be"

cd "$work"
go build -trimpath -ldflags "-s -w -X github.com/hashicorp/vault/version.BuildDate=2026-01-01T00:00:00Z" \
	-o "$OUT/vault" github.com/hashicorp/vault
