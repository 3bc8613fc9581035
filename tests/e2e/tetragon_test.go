package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"parry.dev/parry/functions/isolate"
	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/ingest/tetragon"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/publish"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/tests/devenv"
	"parry.dev/parry/tests/podcgroup"
)

// tetragonExec is a process_exec line in Tetragon's export format
// (GetEventsResponse as protobuf JSON), written for this test.
func tetragonExec(node, ns, name, uid, containerID, execID, binary, args string, at time.Time) string {
	return fmt.Sprintf(`{"process_exec":{"process":{"exec_id":%q,"pid":31337,"uid":0,"cwd":"/","binary":%q,"arguments":%q,`+
		`"flags":"execve clone","start_time":%q,"auid":4294967295,"pod":{"namespace":%q,"name":%q,"uid":%q,`+
		`"container":{"id":"containerd://%s","name":"app","image":{"id":"registry.example/web@sha256:00","name":"registry.example/web:1"},"pid":9},`+
		`"pod_labels":{"app":"web"},"workload":"web","workload_kind":"Deployment"},"docker":%q,"tid":31337},`+
		`"parent":{"exec_id":"cGFyZW50","pid":31300,"uid":0,"binary":"/bin/sh"}},"node_name":%q,"time":%q}`+"\n",
		execID, binary, args, at.Format(time.RFC3339Nano), ns, name, uid, containerID, containerID[:15], node, at.Format(time.RFC3339Nano))
}

// TestTetragonExecOpensAnIncident: Tetragon's exec of a dropped binary,
// followed from its export file by the ingester with its own identity,
// opens a dropped-binary incident through the shipped playbook, acted on
// (isolate done) against the real API server. The journaled exec carries
// the container id in the sensor's form, the Tetragon source and the
// ingester's identity. A benign exec of the same pod in the same file is
// journaled (the positive control) and opens nothing; the ingester's
// token cannot send any other type.
func TestTetragonExecOpensAnIncident(t *testing.T) {
	w := start(t)
	ctx := t.Context()
	pod := devenv.WebDeployment(t, w.kube, "tetragon-shop", 1)[0]
	uid := string(pod.UID)
	podcgroup.NewFor(t, uid) // the pod's cgroup, which isolate's in-kernel block applies to
	const containerID = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	token := w.stack.Tokens[stack.TetragonIngest()]
	if token == "" {
		t.Fatalf("the stack's token file has no token of %s", stack.TetragonIngest())
	}

	path := filepath.Join(t.TempDir(), "tetragon.log")
	appendLine := func(l string) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(l); err != nil {
			t.Fatal(err)
		}
	}
	// An exec older than the Broker accepts is skipped, not sent.
	appendLine(tetragonExec(w.env.NodeName, pod.Namespace, pod.Name, uid, containerID, "b2xk", "/tmp/old-dropper", "", time.Now().Add(-time.Hour)))
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan tetragon.Stats, 1)
	go func() {
		st, err := tetragon.Run(runCtx, tetragon.Options{
			Path: path, FromStart: true, Poll: 10 * time.Millisecond, Log: zerolog.Nop(),
			Sender: &publish.Sender{URL: w.stack.BrokerURL(stack.DefaultBroker), Log: zerolog.Nop(),
				HTTP: auth.WithToken(httpclient.New(10*time.Second), auth.StaticToken(token))},
		})
		if err != nil {
			t.Errorf("the ingester stopped: %v", err)
		}
		stopped <- st
	}()

	// The benign exec first: journaled, answered by classify, no incident.
	appendLine(tetragonExec(w.env.NodeName, pod.Namespace, pod.Name, uid, containerID, "bHM=", "/usr/bin/ls", "-la /app", time.Now()))
	benign := w.tetragonExec(t, "/usr/bin/ls", 10*time.Second)
	for _, n := range w.delivered(t, benign.ID, 10*time.Second) {
		if n.Type == events.TypeIncidentOpened || n.Type == events.TypeIncidentSuppressed {
			t.Fatalf("the benign exec /usr/bin/ls opened %s: %s", n.Type, n.Event.Data())
		}
	}

	appendLine(tetragonExec(w.env.NodeName, pod.Namespace, pod.Name, uid, containerID, "cGF5bG9hZA==", "/tmp/payload", `--password=hunter2 -c "sleep 1"`, time.Now()))
	exec := w.tetragonExec(t, "/tmp/payload", 10*time.Second)
	if got := events.String(exec.Event, events.ExtContainerID); got != containerID {
		t.Errorf("containerid %q, want the sensor's form %q (no runtime scheme)", got, containerID)
	}
	if strings.Contains(string(exec.Event.Data()), "hunter2") {
		t.Errorf("the password in the arguments reached the journal: %s", exec.Event.Data())
	}
	if exec.Source != "parry://tetragon/"+w.env.NodeName || exec.Sender != "system:serviceaccount:parry-sensor:parry-ingest-tetragon" {
		t.Errorf("the exec came from %s sent by %s", exec.Source, exec.Sender)
	}
	var opened []journal.Entry
	for _, n := range w.delivered(t, exec.ID, 15*time.Second) {
		if n.Type == events.TypeIncidentOpened {
			opened = append(opened, n.Entry)
		}
	}
	if len(opened) != 1 || events.String(opened[0].Event, events.ExtPlaybook) != "dropped-binary" ||
		events.String(opened[0].Event, events.ExtResponse) != events.ResponseAct || opened[0].Causation != exec.ID {
		t.Fatalf("Tetragon's exec of /tmp/payload opened %d incidents, want one of dropped-binary acted on, caused by the exec %s: %v", len(opened), exec.ID, opened)
	}
	incident := events.String(opened[0].Event, events.ExtIncident)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		trees, err := w.stack.Journal.Incident(ctx, incident)
		if err != nil {
			t.Fatal(err)
		}
		if hasType(trees, events.StepDone(isolate.Name)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("isolate did not reply done for the dropped-binary incident %s", incident)
		}
	}

	stop()
	st := <-stopped
	if st.Sent != 2 || st.Refused != 0 || st.Stale != 1 {
		t.Errorf("the ingester sent %d, had %d refused and skipped %d stale; want the two fresh execs sent, none refused, the old one skipped: %+v", st.Sent, st.Refused, st.Stale, st)
	}

	// The ingester's identity may send exec events only.
	for _, typ := range []string{events.StepDone(isolate.Name), events.TypeIncidentOpened, events.TypeProcessExit} {
		if code, body := w.post(t, token, typ, "forged-"+typ, time.Now(), nil); code != http.StatusForbidden {
			t.Errorf("the Tetragon ingester's token sending %s: %d %s, want 403", typ, code, body)
		}
	}
}

// hasType reports whether an event of type typ is in the trees.
func hasType(trees []*journal.Node, typ string) bool {
	for _, n := range trees {
		if n.Type == typ || hasType(n.Children, typ) {
			return true
		}
	}
	return false
}

// tetragonExec waits for the journal to hold the exec of exe that the
// Tetragon ingester sent.
func (w *world) tetragonExec(t *testing.T, exe string, within time.Duration) journal.Entry {
	t.Helper()
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		es, err := w.stack.Journal.Last(context.Background(), 2000)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Type == events.TypeProcessExec && strings.HasPrefix(e.Source, tetragon.SourcePrefix) && events.String(e.Event, events.ExtExe) == exe {
				return e
			}
		}
	}
	t.Fatalf("no exec of %s from Tetragon's ingester within %s", exe, within)
	return journal.Entry{}
}

// delivered waits until every delivery of the event id and of the events
// it caused is done, and returns them all: by then any incident it opens
// is journaled. At least one delivery: the exec reached classify's Trigger.
func (w *world) delivered(t *testing.T, id string, within time.Duration) []*journal.Node {
	t.Helper()
	return w.settle(t, "event "+id, within, true, func() ([]*journal.Node, error) {
		root, err := w.stack.Journal.Tree(context.Background(), id)
		return []*journal.Node{root}, err
	})
}
