package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"parry.dev/parry/functions/isolate"
	"parry.dev/parry/functions/snapshot"
	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/sensor"
	"parry.dev/parry/sensor/client"
	"parry.dev/parry/tests/podcgroup"
)

// openedEvent is the incident.opened classify journals for a pod.
func openedEvent(t *testing.T, incident, podUID string) journal.Record {
	t.Helper()
	e, err := events.New(events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: incident,
		Extensions: map[string]string{events.ExtIncident: incident, events.ExtPodUID: podUID, events.ExtNode: "test-node",
			events.ExtPodNamespace: "default", events.ExtPodName: "web", events.ExtPlaybook: "crypto-miner"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := journal.NewRecord(stack.DefaultBroker, "system:serviceaccount:parry-system:classify-oidc", e, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// connects reports whether a process in the pod's cgroup can connect to
// a loopback listener (the in-kernel block refuses it with EPERM).
func connects(t *testing.T, p *podcgroup.Pod, port int) bool {
	t.Helper()
	_, err := p.Run(t, "bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/127.0.0.1/%d", port))
	return err == nil
}

// TestIncidentCloseLifts runs the real embedded default (config/ as
// shipped, the real sensor and steps): isolate's token blocks a pod-like
// cgroup in the kernel, then `parry incident close` with a token that may
// not unblock changes nothing and says why, and the operator's close lifts
// the block and journals who closed it, through the ingress and its
// EventPolicies.
func TestIncidentCloseLifts(t *testing.T) {
	if err := sensor.Probe(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: this test must run: %v", err)
		}
		t.Skipf("needs a privileged process on a BTF kernel: %v", err)
	}
	if err := podcgroup.EnsureRoot(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	journalPath := filepath.Join(dir, "journal.db")
	cfg := sensor.Config{RecorderAddr: "127.0.0.1:0", SpoolDir: "-", Node: "test-node"}
	s, err := stack.Start(ctx, stack.Options{ConfigDir: "../../config", JournalPath: journalPath,
		Listen: "127.0.0.1:0", Log: zerolog.Nop(), Sensor: &cfg, Steps: stack.Steps(), StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	if s.Sensor == nil {
		t.Fatalf("the sensor did not start: %v", s.SensorDisabled)
	}
	sensorAddr, brokerURL := s.Sensor.RecorderAddr(), s.BrokerURL(stack.DefaultBroker)

	p := podcgroup.New(t)
	port := podcgroup.Listen(t, "127.0.0.1:0").Port
	if !connects(t, p, port) {
		t.Fatal("the pod cannot connect before any block")
	}
	isolator := client.New("http://"+sensorAddr, auth.WithToken(http.DefaultClient, auth.StaticToken(s.Tokens[stack.StepUser(isolate.Definition().Spec)])))
	if err := isolator.BlockPod(ctx, p.UID); err != nil {
		t.Fatal(err)
	}
	if connects(t, p, port) {
		t.Fatal("the pod connects while blocked")
	}
	const id = "inc-close-1"
	opened := openedEvent(t, id, p.UID)
	if _, err := s.Journal.Append(ctx, opened); err != nil {
		t.Fatal(err)
	}

	t.Run("a token without the unblock grant", func(t *testing.T) {
		// Another state directory whose token file gives the operator's
		// name to snapshot's token: the sensor and the broker know it as
		// snapshot, which may neither unblock nor send the close.
		other := t.TempDir()
		j, err := journal.Open(ctx, filepath.Join(other, "journal.db"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := j.Append(ctx, openedEvent(t, id, p.UID)); err != nil {
			t.Fatal(err)
		}
		j.Close()
		line := s.Tokens[stack.StepUser(snapshot.Definition().Spec)] + " " + stack.Operator + "\n"
		if err := os.WriteFile(filepath.Join(other, stack.TokenFile), []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, code := runParry(t, "incident", "close", id, "--journal", filepath.Join(other, "journal.db"), "--sensor", sensorAddr, "--broker", brokerURL)
		if code != 1 || !strings.Contains(stdout, "STILL BLOCKED pod "+p.UID) || !strings.Contains(stdout, "403") ||
			!strings.Contains(stdout, "may not update sensors.parry.dev/unblock") || !strings.Contains(stderr, "1 of 1 pods of incident "+id+" are still blocked") {
			t.Errorf("exit %d, want 1 with the sensor's 403 naming the grant:\n%s%s", code, stdout, stderr)
		}
		if !strings.Contains(stdout, "the close is not recorded") || !strings.Contains(stdout, "answered 403") {
			t.Errorf("the broker's refusal is not shown:\n%s", stdout)
		}
		if connects(t, p, port) {
			t.Error("the pod connects: a token without the grant lifted the block")
		}
	})

	t.Run("the operator closes", func(t *testing.T) {
		stdout, stderr, code := runParry(t, "incident", "close", id, "--journal", journalPath, "--sensor", sensorAddr, "--broker", brokerURL, "--reason", "a load test, not a miner")
		if code != 0 || !strings.Contains(stdout, "unblocked pod "+p.UID+" (default/web) on node test-node") || !strings.Contains(stdout, "recorded as "+events.TypeIncidentClosed) {
			t.Fatalf("exit %d:\n%s%s", code, stdout, stderr)
		}
		if !connects(t, p, port) {
			t.Error("the pod still cannot connect after the close")
		}
		if ids, err := s.Sensor.Blocked(); err != nil || len(ids) != 0 {
			t.Errorf("still blocked: %v %v", ids, err)
		}
		closed := closedEntry(t, s.Journal, id)
		if closed.Sender != stack.Operator || closed.Causation != opened.Event.ID() {
			t.Errorf("closed event sent by %q caused by %q, want %q and the incident.opened %s", closed.Sender, closed.Causation, stack.Operator, opened.Event.ID())
		}
		var data events.IncidentClosed
		if err := json.Unmarshal(closed.Event.Data(), &data); err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(data.ClosedBy, "("+stack.Operator+")") || data.Reason != "a load test, not a miner" ||
			len(data.Unblocked) != 1 || data.Unblocked[0].UID != p.UID || len(data.Failed) != 0 {
			t.Errorf("closed data: %+v", data)
		}
		stdout, _, code = runParry(t, "trace", "--journal", journalPath, id)
		if code != 0 || !strings.Contains(stdout, events.TypeIncidentClosed) {
			t.Errorf("parry trace does not show the close (exit %d):\n%s", code, stdout)
		}
	})
}

// closedEntry waits for the incident's closed event in the journal.
func closedEntry(t *testing.T, j *journal.Journal, incident string) journal.Entry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		trees, err := j.Incident(context.Background(), incident)
		if err != nil {
			t.Fatal(err)
		}
		var found *journal.Entry
		var walk func(n *journal.Node)
		walk = func(n *journal.Node) {
			if n.Type == events.TypeIncidentClosed {
				found = &n.Entry
			}
			for _, c := range n.Children {
				walk(c)
			}
		}
		for _, tr := range trees {
			walk(tr)
		}
		if found != nil {
			return *found
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s of incident %s in the journal", events.TypeIncidentClosed, incident)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The local error paths name the incident, the file and where to look.
func TestIncidentCloseRefusesClearly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	journalPath := filepath.Join(dir, "journal.db")
	j, err := journal.Open(ctx, journalPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(ctx, openedEvent(t, "inc-known", "0b1c2d3e-0000-4000-8000-000000000001")); err != nil {
		t.Fatal(err)
	}
	j.Close()
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"unknown incident", []string{"nope"}, []string{`unknown incident "nope"`, "in the journal " + journalPath}},
		{"no token file", []string{"inc-known"}, []string{"no token file " + filepath.Join(dir, stack.TokenFile), "parry run writes it"}},
		{"no journal", []string{"inc-known", "--journal", filepath.Join(dir, "none.db")}, []string{"no journal at " + filepath.Join(dir, "none.db")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"incident", "close"}, c.args...)
			if !strings.Contains(strings.Join(c.args, " "), "--journal") {
				args = append(args, "--journal", journalPath)
			}
			stdout, stderr, code := runParry(t, args...)
			if code != 1 {
				t.Errorf("exit %d, want 1:\n%s%s", code, stdout, stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stdout, "unblocked") {
				t.Errorf("it unblocked something:\n%s", stdout)
			}
		})
	}
	// The positive control of "no token file": with one that lacks the
	// operator, the same incident gets past the journal to the token.
	if err := os.WriteFile(filepath.Join(dir, stack.TokenFile), []byte(strings.Repeat("a", 32)+" someone\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runParry(t, "incident", "close", "inc-known", "--journal", journalPath)
	if code != 1 || !strings.Contains(stderr, "holds no token of "+stack.Operator) {
		t.Errorf("exit %d, want 1 naming the missing operator token:\n%s", code, stderr)
	}
	stdout, _, code := runParry(t, "incident", "--help")
	if code != 0 || !strings.Contains(stdout, "parry incident close INCIDENT") {
		t.Errorf("parry incident --help: exit %d:\n%s", code, stdout)
	}
}
