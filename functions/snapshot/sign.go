package snapshot

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// SignatureFile holds the ed25519 signature of manifest.json's bytes and
// the public key that made it.
const SignatureFile = "manifest.sig"

// KeyFile is the signing key's name in the step's state directory
// (Deps.StateDir): a PKCS#8 PEM ed25519 private key. Where it is missing,
// the step creates one (0600) and writes its public key beside it as
// PublicKeyFile; in a cluster, mount a Secret holding the key there.
const (
	KeyFile       = "evidence.key"
	PublicKeyFile = "evidence.pub"
)

// Signature is manifest.sig.
type Signature struct {
	Algorithm string `json:"algorithm"` // ed25519
	PublicKey string `json:"publicKey"` // base64, the raw 32 bytes
	Signature string `json:"signature"` // base64, over manifest.json's bytes
}

// Fingerprint names a public key: sha256: and the first 16 bytes of the
// SHA-256 of its raw bytes, in hex.
func Fingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "sha256:" + hex.EncodeToString(sum[:16])
}

// LoadOrCreateKey reads the PEM ed25519 private key at path, or creates
// one there (0600, in a 0700 directory) with its public key beside it
// (PublicKeyFile) when none exists.
func LoadOrCreateKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createKey(path)
	}
	if err != nil {
		return nil, err
	}
	key, err := parsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

func createKey(path string) (ed25519.PrivateKey, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	// O_EXCL: of two processes creating the key at once, one wins and the
	// other reads the winner's.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return LoadOrCreateKey(path)
	}
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	pubPath := filepath.Join(filepath.Dir(path), PublicKeyFile)
	if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, err
	}
	return key, nil
}

func parsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("not a PEM file")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, err
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("a %T, not an ed25519 key", k)
	}
	return key, nil
}

// ReadPublicKey reads a public key to verify with: a PEM public key
// (evidence.pub), a PEM private key (evidence.key, whose public half is
// used), or the base64 of the raw 32 bytes (as in a reply's publicKey).
func ReadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if b, _ := pem.Decode(data); b != nil {
		switch b.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			pub, ok := k.(ed25519.PublicKey)
			if !ok {
				return nil, fmt.Errorf("%s: a %T, not an ed25519 key", path, k)
			}
			return pub, nil
		case "PRIVATE KEY":
			key, err := parsePrivateKey(data)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			return key.Public().(ed25519.PublicKey), nil
		}
		return nil, fmt.Errorf("%s: a PEM %s, not an ed25519 key", path, b.Type)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%s: neither PEM nor the base64 of a 32-byte ed25519 public key", path)
	}
	return ed25519.PublicKey(raw), nil
}

// sign is manifest.sig for the manifest's bytes.
func sign(key ed25519.PrivateKey, manifest []byte) ([]byte, error) {
	return json.MarshalIndent(Signature{
		Algorithm: "ed25519",
		PublicKey: base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)),
		Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(key, manifest)),
	}, "", "  ")
}

// Check is what VerifySigned found in a bundle.
type Check struct {
	ManifestSHA256 string
	Files          int    // files the manifest lists
	SignedBy       string // the fingerprint of the key in manifest.sig
	SignedKey      string // and that key, base64 of its raw bytes
	// Trusted: the signature was checked against the key the caller
	// trusts, not only the one the bundle carries.
	Trusted bool
}

// VerifySigned checks a bundle: manifest.sig is a valid ed25519 signature
// of manifest.json (by trusted, when given; else by the key manifest.sig
// names, which proves integrity but not origin), every file the manifest
// lists has its digest, and no other file is in the bundle. Every problem
// is reported, each naming its file. Files are read through an os.Root at
// dir, so a manifest naming "../x" cannot make it read outside the bundle.
func VerifySigned(dir string, trusted ed25519.PublicKey) (Check, error) {
	var c Check
	root, err := os.OpenRoot(dir)
	if err != nil {
		return c, err
	}
	defer root.Close()
	data, err := root.ReadFile(ManifestFile)
	if err != nil {
		return c, fmt.Errorf("%s: %w", ManifestFile, err)
	}
	sum := sha256.Sum256(data)
	c.ManifestSHA256 = hex.EncodeToString(sum[:])
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return c, fmt.Errorf("%s: malformed: %w", ManifestFile, err)
	}
	c.Files = len(m.Files)
	var errs []error
	if sig, err := root.ReadFile(SignatureFile); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w: the bundle is not signed", SignatureFile, err))
	} else if err := checkSignature(sig, data, trusted, &c); err != nil {
		errs = append(errs, err)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range m.Files {
			if !yield(n) {
				return
			}
		}
	})
	for _, name := range names {
		content, err := root.ReadFile(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		sum := sha256.Sum256(content)
		if got, want := hex.EncodeToString(sum[:]), m.Files[name]; got != want {
			errs = append(errs, fmt.Errorf("%s: SHA-256 %s, the manifest says %s: the file was changed", name, got, want))
		}
	}
	// a file added to the bundle is not evidence
	walkErr := fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || p == ManifestFile || p == SignatureFile {
			return nil
		}
		if _, listed := m.Files[p]; !listed {
			errs = append(errs, fmt.Errorf("%s: not in the manifest: the file was added", p))
		}
		return nil
	})
	if walkErr != nil {
		errs = append(errs, walkErr)
	}
	return c, errors.Join(errs...)
}

// checkSignature checks manifest.sig's bytes against the manifest's, and
// notes the key that signed it in c.
func checkSignature(data, manifest []byte, trusted ed25519.PublicKey, c *Check) error {
	var s Signature
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("%s: malformed: %w", SignatureFile, err)
	}
	pub, err := base64.StdEncoding.DecodeString(s.PublicKey)
	if s.Algorithm != "ed25519" || err != nil || len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%s: not an ed25519 signature with its public key", SignatureFile)
	}
	sig, err := base64.StdEncoding.DecodeString(s.Signature)
	if err != nil {
		return fmt.Errorf("%s: the signature is not base64: %w", SignatureFile, err)
	}
	c.SignedBy, c.SignedKey = Fingerprint(pub), s.PublicKey
	key := ed25519.PublicKey(pub)
	if trusted != nil {
		if !key.Equal(trusted) {
			return fmt.Errorf("%s: signed by key %s, not by the trusted key %s", SignatureFile, c.SignedBy, Fingerprint(trusted))
		}
		c.Trusted = true
	}
	if !ed25519.Verify(key, manifest, sig) {
		c.Trusted = false
		return fmt.Errorf("%s: the signature does not match %s: the manifest was changed", SignatureFile, ManifestFile)
	}
	return nil
}
