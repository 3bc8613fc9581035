package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"parry.dev/parry/functions/snapshot"
)

func evidenceCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprint(stderr, `Usage: parry evidence verify <bundle-dir> [--key <public key>]

Checks an evidence bundle of the snapshot step: manifest.sig against the
trusted key, every file against its digest in manifest.json, and that no
file was added. Exits 1 when anything does not verify.
`)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return nil
		}
		return errUsage
	}
	return evidenceVerify(ctx, args[1:], stdout, stderr)
}

func evidenceVerify(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("evidence verify", "<bundle-dir> [--key <public key>]", stderr)
	keyFlag := fs.String("key", "", "the trusted public key: a file (evidence.pub, or evidence.key, whose public half is used) or the base64 key of the snapshot reply's publicKey; default: the local state directory's "+snapshot.PublicKeyFile+" or "+snapshot.KeyFile)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	// flags may follow the directory too
	rest := fs.Args()
	if len(rest) > 0 {
		if err := parseFlags(fs, rest[1:]); err != nil {
			return err
		}
		rest = append(rest[:1], fs.Args()...)
	}
	if len(rest) != 1 {
		fs.Usage()
		return errUsage
	}
	dir := rest[0]
	pub, from, err := trustedKey(*keyFlag, filepath.Dir(defaultJournal()))
	if err != nil {
		return err
	}
	c, verr := snapshot.VerifySigned(dir, pub)
	fmt.Fprintf(stdout, "bundle    %s\n", dir)
	if c.ManifestSHA256 != "" {
		fmt.Fprintf(stdout, "manifest  sha256:%s (%d files)\n", c.ManifestSHA256, c.Files)
	}
	if c.SignedBy != "" {
		fmt.Fprintf(stdout, "signed by %s\n", c.SignedBy)
	}
	if pub != nil {
		fmt.Fprintf(stdout, "trusted   %s (%s)\n", snapshot.Fingerprint(pub), from)
	}
	if verr != nil {
		for _, line := range strings.Split(verr.Error(), "\n") {
			fmt.Fprintf(stdout, "FAILED    %s\n", line)
		}
		return errors.New("the bundle does not verify: it was changed, or not signed by the trusted key")
	}
	if pub == nil {
		fmt.Fprintf(stdout, "UNTRUSTED every digest matches and the signature is valid for the key in %s, but no trusted key was given (--key), so anyone could have made it\n", snapshot.SignatureFile)
		return errors.New("no trusted key: pass --key with the snapshot step's public key")
	}
	fmt.Fprintln(stdout, "OK        the signature is the trusted key's and every file matches its digest")
	return nil
}

// trustedKey is the key named by --key (a file, or the base64 raw key),
// else the local state directory's.
func trustedKey(flagValue, stateDir string) (ed25519.PublicKey, string, error) {
	if flagValue != "" {
		pub, err := snapshot.ReadPublicKey(flagValue)
		if errors.Is(err, fs.ErrNotExist) {
			if raw, derr := base64.StdEncoding.DecodeString(flagValue); derr == nil && len(raw) == ed25519.PublicKeySize {
				return ed25519.PublicKey(raw), "--key", nil
			}
		}
		if err != nil {
			return nil, "", fmt.Errorf("--key: %w", err)
		}
		return pub, flagValue, nil
	}
	for _, name := range []string{snapshot.PublicKeyFile, snapshot.KeyFile} {
		path := filepath.Join(stateDir, name)
		if _, err := os.Stat(path); err != nil {
			continue
		}
		pub, err := snapshot.ReadPublicKey(path)
		if err != nil {
			return nil, "", err
		}
		return pub, path, nil
	}
	return nil, "", nil
}
