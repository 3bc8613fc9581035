package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"parry.dev/parry/functions/snapshot"
)

const evidenceUsage = `Usage:
  parry evidence get INCIDENT [--pod UID] [--out DIR] [--store STORE] [--key KEY]
      fetch the incident's evidence bundles from the store into DIR and
      verify each one
  parry evidence verify BUNDLE-DIR [--key KEY]
      verify a bundle already on disk

Both check what the snapshot step signed: manifest.sig against the trusted
key, every file against its SHA-256 in manifest.json, and that no file was
added or is missing. Each problem is printed with the file it concerns.

Exit status: 0 when every bundle verifies against the trusted key; 1 when one
does not, cannot be fetched, or no trusted key was found; 2 for bad usage.

Run 'parry evidence get --help' or 'parry evidence verify --help' for flags.
`

func evidenceCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return subcommand("evidence", "subcommand", evidenceUsage, args, stdout, stderr, map[string]func([]string) error{
		"get":    func(args []string) error { return evidenceGet(ctx, args, stdout, stderr) },
		"verify": func(args []string) error { return evidenceVerify(ctx, args, stdout, stderr) },
	})
}

// oneArgument parses flags before and after the one positional argument
// the synopsis names (parry evidence get INCIDENT --pod x).
func oneArgument(fs *flag.FlagSet, args []string) (string, error) {
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return "", err
	}
	if len(rest) != 1 {
		fs.Usage()
		return "", errUsage
	}
	return rest[0], nil
}

func keyFlag(fs *flag.FlagSet) *string {
	return fs.String("key", "", "the trusted public key: a file (evidence.pub, or evidence.key, whose public half is used) or the base64 key of the snapshot reply's publicKey; default: the local state directory's "+snapshot.PublicKeyFile+" or "+snapshot.KeyFile)
}

func evidenceGet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("evidence get", "INCIDENT [flags]", stderr)
	stateDir := filepath.Dir(defaultJournal())
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: parry evidence get INCIDENT [--pod UID] [--out DIR] [--store STORE] [--key KEY]

Fetches the evidence bundles the snapshot step stored for INCIDENT (one per
pod; --pod for one) into DIR/<pod UID>, and verifies each: the signature
against the trusted key, every file against the manifest, no file missing
or added. Bundles in the store are never changed.

The store is --store, else $%[1]s, else parry run's own
(%[2]s). An s3://bucket/prefix store is reached with
$%[3]s (host:port, or an http:// or https:// URL; default
AWS), $%[4]s and $%[5]s (and $%[6]s,
$%[7]s when needed).

Flags:
`, snapshot.EnvStore, filepath.Join(stateDir, "evidence"), snapshot.EnvS3Endpoint, snapshot.EnvS3AccessKey, snapshot.EnvS3SecretKey, snapshot.EnvS3SessionToken, snapshot.EnvS3Region)
		fs.PrintDefaults()
	}
	pod := fs.String("pod", "", "fetch only this pod's bundle (a pod UID); default: every pod of the incident")
	out := fs.String("out", "", "directory to fetch into, which gets one directory per pod (each must be new or empty); default: ./evidence-INCIDENT")
	storeFlag := fs.String("store", os.Getenv(snapshot.EnvStore), "the evidence store: a directory, or s3://bucket[/prefix]; default: $"+snapshot.EnvStore+", else the local state directory's evidence/")
	key := keyFlag(fs)
	incident, err := oneArgument(fs, args)
	if err != nil {
		return err
	}
	if err := snapshot.CheckID("incident id", incident); err != nil {
		return err
	}
	if *pod != "" {
		if err := snapshot.CheckID("pod UID", *pod); err != nil {
			return err
		}
	}
	if *out == "" {
		*out = "evidence-" + incident
	}
	pub, from, err := trustedKey(*key, stateDir)
	if err != nil {
		return err
	}
	store, err := snapshot.OpenStore(*storeFlag, stateDir, os.Getenv)
	if err != nil {
		return err
	}
	pods := []string{*pod}
	if *pod == "" {
		if pods, err = store.Pods(ctx, incident); err != nil {
			return err
		}
		if len(pods) == 0 {
			return fmt.Errorf("no evidence bundle of incident %s in %s", incident, store.Location(incident, ""))
		}
	}
	failed := 0
	for i, p := range pods {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		dir := filepath.Join(*out, p)
		fmt.Fprintf(stdout, "bundle    %s\n", store.Location(incident, p))
		fmt.Fprintf(stdout, "fetched   %s\n", dir)
		if err := store.Fetch(ctx, incident, p, dir); err != nil {
			fmt.Fprintf(stdout, "FAILED    %v\n", err)
			failed++
			continue
		}
		c, verr := snapshot.VerifySigned(dir, pub)
		if !printCheck(stdout, c, verr, pub, from) {
			failed++
		}
	}
	switch {
	case failed > 0:
		return fmt.Errorf("%d of %d bundles of incident %s do not verify: they were changed, are incomplete, or are not signed by the trusted key", failed, len(pods), incident)
	case pub == nil:
		return errors.New("no trusted key: pass --key with the snapshot step's public key")
	}
	return nil
}

func evidenceVerify(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("evidence verify", "BUNDLE-DIR [--key KEY]", stderr)
	key := keyFlag(fs)
	dir, err := oneArgument(fs, args)
	if err != nil {
		return err
	}
	pub, from, err := trustedKey(*key, filepath.Dir(defaultJournal()))
	if err != nil {
		return err
	}
	c, verr := snapshot.VerifySigned(dir, pub)
	fmt.Fprintf(stdout, "bundle    %s\n", dir)
	switch {
	case !printCheck(stdout, c, verr, pub, from):
		return errors.New("the bundle does not verify: it was changed, or not signed by the trusted key")
	case pub == nil:
		return errors.New("no trusted key: pass --key with the snapshot step's public key")
	}
	return nil
}

// printCheck prints what VerifySigned found, one FAILED line per problem,
// and says whether the bundle verified (without a trusted key, it is
// UNTRUSTED however well it hashes).
func printCheck(stdout io.Writer, c snapshot.Check, verr error, pub ed25519.PublicKey, from string) bool {
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
		return false
	}
	if pub == nil {
		fmt.Fprintf(stdout, "UNTRUSTED every digest matches and the signature is valid for the key in %s, but no trusted key was given (--key), so anyone could have made it\n", snapshot.SignatureFile)
		return true
	}
	fmt.Fprintln(stdout, "OK        the signature is the trusted key's and every file matches its digest")
	return true
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
