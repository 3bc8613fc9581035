package stack_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"parry.dev/parry/functions/isolate"
	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/sensor"
	"parry.dev/parry/sensor/client"
	"parry.dev/parry/tests/podcgroup"
)

// Under parry run the sensor's API is on loopback and takes the tokens of
// the local token file, granted what config/ grants in a cluster: isolate's
// token blocks, snapshot's does not, the operator's unblocks, and a request
// without a token is refused.
func TestLocalSensorAPI(t *testing.T) {
	if err := sensor.Probe(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: this test must run: %v", err)
		}
		t.Skipf("needs a privileged process on a BTF kernel: %v", err)
	}
	if err := podcgroup.EnsureRoot(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	broker := "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: parry, namespace: parry-system}\n"
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(broker), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := sensor.Config{RecorderAddr: "127.0.0.1:0", SpoolDir: "-", Node: "test-node"}
	s, err := stack.Start(context.Background(), stack.Options{ConfigDir: dir, JournalPath: filepath.Join(dir, "j.db"),
		Listen: "127.0.0.1:0", Log: zerolog.Nop(), Sensor: &cfg, Steps: stack.Steps(), StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	if fi, err := os.Stat(filepath.Join(dir, stack.TokenFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	as := func(user string) *client.Client {
		return client.New("http://"+s.Sensor.RecorderAddr(), auth.WithToken(http.DefaultClient, auth.StaticToken(s.Tokens[user])))
	}
	p := podcgroup.New(t)
	ctx := t.Context()
	if err := as(stack.StepUser(snapshot.Definition().Spec)).BlockPod(ctx, p.UID); err == nil {
		t.Error("snapshot's token blocked a pod")
	}
	if err := as(stack.StepUser(isolate.Definition().Spec)).BlockPod(ctx, p.UID); err != nil {
		t.Fatalf("isolate's token: %v", err)
	}
	if ids, err := s.Sensor.Blocked(); err != nil || len(ids) != 1 {
		t.Fatalf("blocked %v %v, want the pod's cgroup", ids, err)
	}
	if err := as(stack.StepUser(isolate.Definition().Spec)).UnblockPod(ctx, p.UID); err == nil {
		t.Error("isolate's token lifted a block")
	}
	if err := as(stack.Operator).UnblockPod(ctx, p.UID); err != nil {
		t.Fatalf("the operator's token: %v", err)
	}
	if ids, _ := s.Sensor.Blocked(); len(ids) != 0 {
		t.Errorf("still blocked: %v", ids)
	}
	resp, err := http.Get("http://" + s.Sensor.RecorderAddr() + "/v1/pods")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/pods without a token: %d, want 401", resp.StatusCode)
	}
}

// The local sensor's API can block and unblock pods, so parry run keeps it
// on loopback: another address is refused at start, naming the flag.
func TestLocalSensorAPIStaysOnLoopback(t *testing.T) {
	if err := sensor.Probe(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: this test must run: %v", err)
		}
		t.Skipf("needs a privileged process on a BTF kernel: %v", err)
	}
	dir := t.TempDir()
	broker := "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: parry, namespace: parry-system}\n"
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(broker), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := sensor.Config{RecorderAddr: "0.0.0.0:0", SpoolDir: "-", Node: "test-node"}
	s, err := stack.Start(context.Background(), stack.Options{ConfigDir: dir, JournalPath: filepath.Join(dir, "j.db"),
		Listen: "127.0.0.1:0", Log: zerolog.Nop(), Sensor: &cfg, StateDir: dir})
	if err == nil {
		s.Stop()
		t.Fatal("the local sensor's API started on 0.0.0.0")
	}
	if !strings.Contains(err.Error(), "loopback only") || !strings.Contains(err.Error(), "--recorder-listen 127.0.0.1") {
		t.Fatalf("error %q does not say why and how to fix it", err)
	}
}
