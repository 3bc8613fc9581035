package snapshot_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
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
	"parry.dev/parry/sensor/api"
)

// secretKey writes an ed25519 key as a Secret's evidence.key: made by
// openssl genpkey (as docs/design.md says to) when openssl is there, else
// the same PKCS#8 PEM from Go.
func secretKey(t *testing.T, dir string) {
	t.Helper()
	path := filepath.Join(dir, snapshot.KeyFile)
	if openssl, err := exec.LookPath("openssl"); err == nil {
		if out, err := exec.Command(openssl, "genpkey", "-algorithm", "ed25519", "-out", path).CombinedOutput(); err != nil {
			t.Fatalf("openssl genpkey: %v\n%s", err, out)
		}
		return
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	must(t, err)
	must(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
}

// TestSecretKeySigns: with Deps.SecretDir holding evidence.key (the
// cluster's mounted Secret), the bundle is signed with that key, not with
// the state directory's own.
func TestSecretKeySigns(t *testing.T) {
	state, secret := t.TempDir(), t.TempDir()
	secretKey(t, secret)
	// a key already in the state directory must not be the one used
	_, err := step.Build(t.Context(), snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Playbooks: playbooks{}, StateDir: state, Log: zerolog.Nop()})
	must(t, err)
	statePub, err := snapshot.ReadPublicKey(filepath.Join(state, snapshot.PublicKeyFile))
	must(t, err)
	secretPub, err := snapshot.ReadPublicKey(filepath.Join(secret, snapshot.KeyFile))
	must(t, err)

	uid := "1d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6"
	hist := api.PodHistory{PodUID: uid, Node: "n1", Cgroups: []api.CgroupRecord{{ID: 7, PodUID: uid,
		Processes: []api.RecordedProcess{{PID: 1 << 30, Exe: "/usr/bin/app", Args: []string{"app"}}}}}}
	h, err := step.Build(t.Context(), snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Sensors: fakeSensor(t, hist), Playbooks: playbooks{},
		StateDir: state, SecretDir: secret, Log: zerolog.Nop()})
	must(t, err)
	reply, res := snap(t, steptest.Sealed(h), "inc-secret", uid)
	if reply.Type() != events.StepDone(snapshot.Name) {
		t.Fatalf("%s %s", reply.Type(), reply.Data())
	}
	if res.PublicKey != base64.StdEncoding.EncodeToString(secretPub) {
		t.Fatalf("reply names key %s, the Secret's is %s", res.PublicKey, snapshot.Fingerprint(secretPub))
	}
	if c, err := snapshot.VerifySigned(res.Bundle, secretPub); err != nil || !c.Trusted {
		t.Fatalf("with the Secret's key: %+v %v", c, err)
	}
	if c, err := snapshot.VerifySigned(res.Bundle, statePub); err == nil && c.Trusted {
		t.Fatalf("the bundle verifies with the state directory's key: %+v", c)
	}
}

// TestSecretDirWithoutKey: a SecretDir without evidence.key (the optional
// Secret not created) falls back to the state directory's key; one whose
// evidence.key is no ed25519 key refuses to start, naming it.
func TestSecretDirWithoutKey(t *testing.T) {
	state, secret := t.TempDir(), t.TempDir()
	_, err := step.Build(t.Context(), snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Playbooks: playbooks{}, StateDir: state, SecretDir: secret, Log: zerolog.Nop()})
	must(t, err)
	if _, err := os.Stat(filepath.Join(state, snapshot.KeyFile)); err != nil {
		t.Fatalf("no key created in the state directory: %v", err)
	}
	must(t, os.WriteFile(filepath.Join(secret, snapshot.KeyFile), []byte("not a key\n"), 0o600))
	_, err = step.Build(t.Context(), snapshot.Definition(), step.Deps{IncidentKey: steptest.Key, Playbooks: playbooks{}, StateDir: state, SecretDir: secret, Log: zerolog.Nop()})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(secret, snapshot.KeyFile)) {
		t.Fatalf("an invalid Secret key: %v, want an error naming it", err)
	}
}
