package snapshot

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// SecretName is the Secret whose KeyFile snapshot signs with in a cluster
// (mounted read-only at Deps.SecretDir; optional, so the step starts
// without it and falls back to its state directory's key).
const SecretName = "parry-evidence-key"

// loadKey returns the signing key: <secretDir>/evidence.key when secretDir
// is set and the file exists (an error when it is no ed25519 key: a
// Secret that is there but wrong must not silently give a fresh key), else
// the key in the state directory, created there when missing.
func loadKey(secretDir, stateDir string) (ed25519.PrivateKey, error) {
	if secretDir != "" {
		path := filepath.Join(secretDir, KeyFile)
		data, err := os.ReadFile(path)
		switch {
		case err == nil:
			key, err := parsePrivateKey(data)
			if err != nil {
				return nil, fmt.Errorf("the Secret's key %s: %w", path, err)
			}
			return key, nil
		case !errors.Is(err, fs.ErrNotExist):
			return nil, err
		}
	}
	return LoadOrCreateKey(filepath.Join(stateDir, KeyFile))
}
