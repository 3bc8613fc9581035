package main_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/rs/zerolog"

	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/internal/step/steptest"
	"parry.dev/parry/tests/devenv"
)

type snapshotPlaybooks struct{}

func (snapshotPlaybooks) StepConfig(_, _ string) (step.StepConfig, error) {
	p, err := snapshot.Definition().Spec.Validate(nil)
	return step.StepConfig{Params: p}, err
}

// snapshotPods runs the snapshot step (state as its state directory, a
// sensor that answers for every pod, its settings from getenv) for each
// pod of the incident and returns its replies.
func snapshotPods(t *testing.T, state, incident string, uids []string, getenv func(string) string) []snapshot.Result {
	t.Helper()
	sensor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uid := filepath.Base(r.URL.Path)
		w.Write([]byte(`{"podUID": "` + uid + `", "cgroups": [{"id": 7, "processes": [{"pid": 1073741824, "exe": "/usr/bin/app"}]}]}`))
	}))
	defer sensor.Close()
	h, err := step.Build(t.Context(), snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Playbooks: snapshotPlaybooks{}, StateDir: state, Log: zerolog.Nop(),
		Sensors: step.SensorAt(strings.TrimPrefix(sensor.URL, "http://"), sensor.Client()), Getenv: getenv})
	if err != nil {
		t.Fatal(err)
	}
	var out []snapshot.Result
	for _, uid := range uids {
		ev, err := events.New(events.Spec{Type: events.StepDone("isolate"), Source: "parry://function/isolate", Key: "k-" + uid,
			Extensions: map[string]string{events.ExtPodNamespace: "shop", events.ExtPodName: "web-" + uid, events.ExtPodUID: uid,
				events.ExtIncident: incident, events.ExtPlaybook: "miner"}})
		if err != nil {
			t.Fatal(err)
		}
		reply, err := steptest.Sealed(h)(context.Background(), ev)
		if err != nil {
			t.Fatal(err)
		}
		var res snapshot.Result
		if err := json.Unmarshal(reply.Data(), &res); err != nil || res.PublicKey == "" {
			t.Fatalf("reply %s: %v", reply.Data(), err)
		}
		out = append(out, res)
	}
	return out
}

// parryIn runs the parry binary in dir ("" for this one) with env added
// to this process's environment, and returns its combined output and exit
// code.
func parryIn(t *testing.T, dir string, env []string, args ...string) (string, int) {
	t.Helper()
	bin, err := parryBinary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Env = dir, append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	}
	t.Fatal(err)
	return "", -1
}

// TestEvidenceVerify: parry evidence verify passes a bundle signed by the
// trusted key and exits 1 naming the problem when a file was changed or
// the key is another.
func TestEvidenceVerify(t *testing.T) {
	state := t.TempDir()
	res := snapshotPods(t, state, "inc-verify", []string{"0000-a"}, nil)[0]
	pubFile := filepath.Join(state, snapshot.PublicKeyFile)

	verify := func(args ...string) (string, int) {
		t.Helper()
		return parryIn(t, "", []string{"XDG_STATE_HOME=" + t.TempDir()}, append([]string{"evidence", "verify"}, args...)...) // no local key
	}

	for _, args := range [][]string{{res.Bundle, "--key", pubFile}, {"--key", res.PublicKey, res.Bundle}, {res.Bundle, "--key", filepath.Join(state, snapshot.KeyFile)}} {
		if out, code := verify(args...); code != 0 || !strings.Contains(out, "OK") || !strings.Contains(out, res.KeyFingerprint) {
			t.Fatalf("valid bundle, %q: exit %d\n%s", args, code, out)
		}
	}
	if out, code := verify(res.Bundle); code != 1 || !strings.Contains(out, "UNTRUSTED") {
		t.Fatalf("no trusted key: exit %d\n%s", code, out)
	}

	_, other, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(other.Public())
	if err != nil {
		t.Fatal(err)
	}
	otherFile := filepath.Join(t.TempDir(), "other.pub")
	if err := os.WriteFile(otherFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := verify(res.Bundle, "--key", otherFile); code != 1 || !strings.Contains(out, "FAILED    manifest.sig: signed by key") {
		t.Fatalf("wrong key: exit %d\n%s", code, out)
	}

	recorder := filepath.Join(res.Bundle, "flight-recorder.json")
	if err := os.Chmod(recorder, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(recorder, []byte(`{"cgroups": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := verify(res.Bundle, "--key", pubFile); code != 1 || !strings.Contains(out, "FAILED    flight-recorder.json: SHA-256") {
		t.Fatalf("changed file: exit %d\n%s", code, out)
	}
	manifest := filepath.Join(res.Bundle, snapshot.ManifestFile)
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(manifest, 0o600); err != nil {
		t.Fatal(err)
	}
	var m snapshot.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	m.Files["flight-recorder.json"] = fmt.Sprintf("%x", sha256.Sum256([]byte(`{"cgroups": []}`)))
	forged, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(manifest, forged, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := verify(res.Bundle, "--key", pubFile); code != 1 || !strings.Contains(out, "FAILED    manifest.sig: the signature does not match manifest.json") {
		t.Fatalf("changed manifest: exit %d\n%s", code, out)
	}
	if err := os.WriteFile(filepath.Join(res.Bundle, "planted.log"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := verify(res.Bundle, "--key", pubFile); code != 1 || !strings.Contains(out, "FAILED    planted.log: not in the manifest") {
		t.Fatalf("added file: exit %d\n%s", code, out)
	}
}

// TestEvidenceGet: parry evidence get fetches an incident's bundles from
// the store (by --store, $PARRY_EVIDENCE_STORE, or parry run's own) and
// verifies them; a changed file, a file the manifest lists but the bundle
// lacks, a file it does not list, and another key each exit 1 naming the
// file; hostile ids are refused before the store is touched.
func TestEvidenceGet(t *testing.T) {
	xdg := t.TempDir()
	state := filepath.Join(xdg, "parry") // parry run's state directory under XDG_STATE_HOME
	store := filepath.Join(state, "evidence")
	res := snapshotPods(t, state, "inc-get", []string{"0000-a", "0000-b"}, nil)
	pubFile := filepath.Join(state, snapshot.PublicKeyFile)
	noLocal := []string{"XDG_STATE_HOME=" + t.TempDir()}

	out := filepath.Join(t.TempDir(), "got")
	text, code := parryIn(t, "", noLocal, "evidence", "get", "inc-get", "--store", store, "--out", out, "--key", pubFile)
	if code != 0 || strings.Count(text, "OK ") != 2 {
		t.Fatalf("get: exit %d\n%s", code, text)
	}
	for _, r := range res {
		pod := filepath.Base(r.Bundle)
		c, err := snapshot.VerifySigned(filepath.Join(out, pod), nil)
		if err != nil || c.ManifestSHA256 != r.ManifestSHA256 || !strings.Contains(text, r.Bundle) {
			t.Fatalf("%s: fetched %+v %v, want manifest %s\n%s", pod, c, err, r.ManifestSHA256, text)
		}
	}

	// parry run's store and key by default; --pod takes one; flags before
	// or after the incident
	wd := t.TempDir()
	text, code = parryIn(t, wd, []string{"XDG_STATE_HOME=" + xdg, snapshot.EnvStore + "="}, "evidence", "get", "--pod", "0000-b", "inc-get")
	if code != 0 || strings.Count(text, "OK ") != 1 || !strings.Contains(text, pubFile) {
		t.Fatalf("get --pod with the local defaults: exit %d\n%s", code, text)
	}
	if entries, err := os.ReadDir(filepath.Join(wd, "evidence-inc-get")); err != nil || len(entries) != 1 || entries[0].Name() != "0000-b" {
		t.Fatalf("./evidence-inc-get holds %v (%v), want 0000-b only", entries, err)
	}
	// $PARRY_EVIDENCE_STORE names the store
	text, code = parryIn(t, "", append(noLocal, snapshot.EnvStore+"="+store), "evidence", "get", "inc-get", "--out", filepath.Join(t.TempDir(), "env"), "--key", pubFile)
	if code != 0 || strings.Count(text, "OK ") != 2 {
		t.Fatalf("get from $%s: exit %d\n%s", snapshot.EnvStore, code, text)
	}

	// no trusted key: fetched, but not OK
	text, code = parryIn(t, "", noLocal, "evidence", "get", "inc-get", "--store", store, "--out", filepath.Join(t.TempDir(), "u"))
	if code != 1 || !strings.Contains(text, "UNTRUSTED") || !strings.Contains(text, "no trusted key") {
		t.Fatalf("no trusted key: exit %d\n%s", code, text)
	}
	// another key
	otherFile := filepath.Join(t.TempDir(), "other.key")
	if _, err := snapshot.LoadOrCreateKey(otherFile); err != nil {
		t.Fatal(err)
	}
	text, code = parryIn(t, "", noLocal, "evidence", "get", "inc-get", "--store", store, "--out", filepath.Join(t.TempDir(), "o"), "--key", otherFile)
	if code != 1 || !strings.Contains(text, "FAILED    manifest.sig: signed by key") || !strings.Contains(text, "2 of 2 bundles") {
		t.Fatalf("another key: exit %d\n%s", code, text)
	}

	// bundles signed by the step's key whose manifest lists a missing
	// file, or that hold a file it does not list
	key, err := snapshot.LoadOrCreateKey(filepath.Join(state, snapshot.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	ds := snapshot.NewDirStore(store)
	files := map[string][]byte{"pod.json": []byte("{}")}
	if err := ds.Put(t.Context(), "inc-bad", "0000-ghost", signed(t, key, files, map[string][]byte{"pod.json": []byte("{}"), "ghost.json": []byte("{}")})); err != nil {
		t.Fatal(err)
	}
	if err := ds.Put(t.Context(), "inc-bad", "0000-extra", signed(t, key, map[string][]byte{"pod.json": []byte("{}"), "logs/planted.sh": []byte("x")}, files)); err != nil {
		t.Fatal(err)
	}
	if err := ds.Put(t.Context(), "inc-bad", "0000-good", signed(t, key, files, files)); err != nil {
		t.Fatal(err)
	}
	text, code = parryIn(t, "", noLocal, "evidence", "get", "inc-bad", "--store", store, "--out", filepath.Join(t.TempDir(), "b"), "--key", pubFile)
	for _, want := range []string{"FAILED    ghost.json:", "FAILED    logs/planted.sh: not in the manifest", "OK ", "2 of 3 bundles of incident inc-bad do not verify"} {
		if code != 1 || !strings.Contains(text, want) {
			t.Fatalf("missing and extra files: exit %d, want %q\n%s", code, want, text)
		}
	}

	// a file changed in the store
	recorder := filepath.Join(res[0].Bundle, "flight-recorder.json")
	if err := os.Chmod(recorder, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(recorder, []byte(`{"cgroups": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	text, code = parryIn(t, "", noLocal, "evidence", "get", "inc-get", "--pod", "0000-a", "--store", store, "--out", filepath.Join(t.TempDir(), "c"), "--key", pubFile)
	if code != 1 || !strings.Contains(text, "FAILED    flight-recorder.json: SHA-256") {
		t.Fatalf("changed file: exit %d\n%s", code, text)
	}

	// into a directory that already has files: refused, naming it
	if err := os.MkdirAll(filepath.Join(out, "0000-x"), 0o700); err != nil {
		t.Fatal(err)
	}
	text, code = parryIn(t, "", noLocal, "evidence", "get", "inc-get", "--pod", "0000-b", "--store", store, "--out", out, "--key", pubFile)
	if code != 1 || !strings.Contains(text, "not empty") {
		t.Fatalf("fetch over files: exit %d\n%s", code, text)
	}

	// hostile ids, and an incident without bundles
	for _, args := range [][]string{{"../inc-get"}, {"inc-get/../../x"}, {"/etc"}, {".."}, {strings.Repeat("a", 5000)}, {"inc-get", "--pod", "../../evidence"}, {"inc-get", "--pod", "/0000-a"}} {
		text, code := parryIn(t, "", noLocal, append([]string{"evidence", "get", "--store", store, "--key", pubFile, "--out", filepath.Join(t.TempDir(), "h")}, args...)...)
		if code != 1 || !strings.Contains(text, "invalid") || strings.Contains(text, "fetched") {
			t.Errorf("get %q: exit %d\n%s", args, code, text)
		}
	}
	if text, code := parryIn(t, "", noLocal, "evidence", "get", "inc-none", "--store", store, "--key", pubFile); code != 1 || !strings.Contains(text, "no evidence bundle of incident inc-none") {
		t.Fatalf("no bundles: exit %d\n%s", code, text)
	}
	if text, code := parryIn(t, "", noLocal, "evidence", "get", "inc-get", "--store", "ftp://host/x", "--key", pubFile); code != 1 || !strings.Contains(text, "s3://bucket") {
		t.Fatalf("an unknown store: exit %d\n%s", code, text)
	}
}

// TestEvidenceHelp: the group's and each subcommand's help exit 0 and
// say what they do; a missing incident is a usage error.
func TestEvidenceHelp(t *testing.T) {
	for args, want := range map[string][]string{
		"evidence --help":        {"parry evidence get INCIDENT", "parry evidence verify BUNDLE-DIR", "Exit status"},
		"evidence get --help":    {"--pod", "--out", "--store", "--key", snapshot.EnvStore, snapshot.EnvS3Endpoint, snapshot.EnvS3AccessKey},
		"evidence verify --help": {"--key", "BUNDLE-DIR"},
	} {
		text, code := parryIn(t, "", nil, strings.Fields(args)...)
		for _, w := range want {
			if code != 0 || !strings.Contains(text, w) {
				t.Errorf("parry %s: exit %d, want %q in\n%s", args, code, w, text)
			}
		}
	}
	if text, code := parryIn(t, "", nil, "evidence", "get"); code != 2 || !strings.Contains(text, "Usage: parry evidence get") {
		t.Errorf("parry evidence get: exit %d\n%s", code, text)
	}
	if text, code := parryIn(t, "", nil, "evidence", "fetch"); code != 2 || !strings.Contains(text, `unknown subcommand "fetch"`) {
		t.Errorf("parry evidence fetch: exit %d\n%s", code, text)
	}
}

// signed is a bundle's files with a manifest listing listed, signed by key.
func signed(t *testing.T, key ed25519.PrivateKey, files, listed map[string][]byte) map[string][]byte {
	t.Helper()
	m := snapshot.Manifest{Files: map[string]string{}}
	for n, data := range listed {
		m.Files[n] = fmt.Sprintf("%x", sha256.Sum256(data))
	}
	manifest, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := json.Marshal(snapshot.Signature{Algorithm: "ed25519", PublicKey: base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)),
		Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(key, manifest))})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{snapshot.ManifestFile: manifest, snapshot.SignatureFile: sig}
	for n, data := range files {
		out[n] = data
	}
	return out
}

// TestEvidenceGetS3: parry evidence get --store s3://... fetches and
// verifies the bundles the step stored in a real S3-compatible server
// (SeaweedFS), names a bundle replaced in the bucket, and says what to fix
// for wrong credentials.
func TestEvidenceGetS3(t *testing.T) {
	env := devenv.RequireS3(t)
	raw, err := minio.New(strings.TrimPrefix(env.S3Endpoint, "http://"), &minio.Options{Creds: credentials.NewStaticV4(env.S3AccessKey, env.S3SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	bucket := "parry-cli-" + fmt.Sprint(time.Now().UnixNano())
	if err := raw.MakeBucket(t.Context(), bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	settings := []string{
		snapshot.EnvStore + "=s3://" + bucket + "/evidence",
		snapshot.EnvS3Endpoint + "=" + env.S3Endpoint,
		snapshot.EnvS3AccessKey + "=" + env.S3AccessKey,
		snapshot.EnvS3SecretKey + "=" + env.S3SecretKey,
	}
	for _, kv := range settings {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v) // the step reads them through Getenv below
	}
	state := t.TempDir()
	snapshotPods(t, state, "inc-s3", []string{"0000-a", "0000-b"}, os.Getenv)
	pubFile := filepath.Join(state, snapshot.PublicKeyFile)
	noLocal := []string{"XDG_STATE_HOME=" + t.TempDir()}

	text, code := parryIn(t, "", noLocal, "evidence", "get", "inc-s3", "--out", filepath.Join(t.TempDir(), "o"), "--key", pubFile)
	if code != 0 || strings.Count(text, "OK ") != 2 || !strings.Contains(text, "s3://"+bucket+"/evidence/inc-s3/0000-a.tar.gz") {
		t.Fatalf("get from S3: exit %d\n%s", code, text)
	}

	if err := raw.RemoveObject(t.Context(), bucket, "evidence/inc-s3/0000-b.tar.gz", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.PutObject(t.Context(), bucket, "evidence/inc-s3/0000-b.tar.gz", strings.NewReader("forged"), 6, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	text, code = parryIn(t, "", noLocal, "evidence", "get", "inc-s3", "--out", filepath.Join(t.TempDir(), "r"), "--key", pubFile)
	if code != 1 || !strings.Contains(text, "FAILED    s3://"+bucket+"/evidence/inc-s3/0000-b.tar.gz: not a gzipped bundle") || strings.Count(text, "OK ") != 1 {
		t.Fatalf("a replaced object: exit %d\n%s", code, text)
	}

	text, code = parryIn(t, "", append(noLocal, snapshot.EnvS3SecretKey+"=wrong"), "evidence", "get", "inc-s3", "--out", filepath.Join(t.TempDir(), "w"), "--key", pubFile)
	if code != 1 || !strings.Contains(text, "refused the credentials") || !strings.Contains(text, snapshot.EnvS3SecretKey) {
		t.Fatalf("wrong credentials: exit %d\n%s", code, text)
	}
}
