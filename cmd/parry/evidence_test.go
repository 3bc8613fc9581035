package main_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
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

	"github.com/rs/zerolog"

	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/internal/step/steptest"
)

type snapshotPlaybooks struct{}

func (snapshotPlaybooks) StepConfig(_, _ string) (step.StepConfig, error) {
	p, err := snapshot.Definition().Spec.Validate(nil)
	return step.StepConfig{Params: p}, err
}

// TestEvidenceVerify: parry evidence verify passes a bundle signed by the
// trusted key and exits 1 naming the problem when a file was changed or
// the key is another.
func TestEvidenceVerify(t *testing.T) {
	bin, err := parryBinary()
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	sensor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"podUID": "0000-a", "cgroups": [{"id": 7, "processes": [{"pid": 1073741824, "exe": "/usr/bin/app"}]}]}`))
	}))
	defer sensor.Close()
	h, err := step.Build(t.Context(), snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Playbooks: snapshotPlaybooks{}, StateDir: state, Log: zerolog.Nop(),
		Sensors: step.SensorAt(strings.TrimPrefix(sensor.URL, "http://"), sensor.Client())})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := events.New(events.Spec{Type: events.StepDone("isolate"), Source: "parry://function/isolate", Key: "k",
		Extensions: map[string]string{events.ExtPodNamespace: "shop", events.ExtPodName: "web-1", events.ExtPodUID: "0000-a",
			events.ExtIncident: "inc-verify", events.ExtPlaybook: "miner"}})
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
	pubFile := filepath.Join(state, snapshot.PublicKeyFile)

	verify := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"evidence", "verify"}, args...)...)
		cmd.Env = append(os.Environ(), "XDG_STATE_HOME="+t.TempDir()) // no local key
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
