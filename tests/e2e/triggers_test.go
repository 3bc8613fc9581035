package e2e

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/tests/embedded"
)

// Another tool subscribes to parry's events with a Trigger of its own
// beside config/ (docs/integrations.md): the paging Trigger of the guide,
// added to a copy of the shipped config/, receives the incident a Falco
// alert opens, and nothing else.
func TestAnotherToolsTriggerReceivesIncidents(t *testing.T) {
	got := make(chan cloudevents.Event, 16)
	pager := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		got <- *e
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(pager.Close)

	dir := t.TempDir()
	files, err := filepath.Glob(filepath.Join(configDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The guide's Trigger, pointed at this test's pager.
	trigger := `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: pager-incidents
  namespace: parry-system
spec:
  broker: parry
  filters:
    - exact: {type: dev.parry.incident.opened.v1}
    - not: {exact: {response: dryrun}}
  subscriber:
    uri: ` + pager.URL + `
`
	if err := os.WriteFile(filepath.Join(dir, "900-pager.yaml"), []byte(trigger), 0o644); err != nil {
		t.Fatal(err)
	}
	s := embedded.Start(t, embedded.Options{ConfigDir: dir, Node: "trigger-node"})

	alert := func(id, priority string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, s.BrokerURL(stack.DefaultBroker), strings.NewReader(`{"rule":"Terminal shell in container"}`))
		for k, v := range map[string]string{"Ce-Specversion": "1.0", "Ce-Id": id, "Ce-Source": "parry://falco/trigger-node", "Ce-Type": events.TypeFalcoAlert,
			"Ce-Time": time.Now().UTC().Format(time.RFC3339Nano), "Ce-Priority": priority, "Ce-Falcorule": "Terminal shell in container",
			"Ce-Node": "trigger-node", "Ce-Poduid": "pod-" + id, "Ce-Podns": "shop", "Ce-Podname": "web-" + id, "Content-Type": "application/json",
			"Authorization": "Bearer " + s.Tokens[stack.FalcoAdapter()]} {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("the Falco adapter's alert %s: %d %s", id, resp.StatusCode, body)
		}
	}
	alert("warning-1", "warning")
	alert("critical-1", "critical")
	select {
	case e := <-got:
		if e.Type() != events.TypeIncidentOpened || events.String(e, events.ExtPlaybook) != "falco-critical" || events.String(e, events.ExtPodUID) != "pod-critical-1" {
			t.Fatalf("the pager got %s for playbook %q, pod %q", e.Type(), events.String(e, events.ExtPlaybook), events.String(e, events.ExtPodUID))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the pager's Trigger received no incident")
	}
	// Everything else the stack did by now (the warning, the steps'
	// replies) passed it by.
	time.Sleep(500 * time.Millisecond)
	if len(got) != 0 {
		e := <-got
		t.Fatalf("the pager also got %s", e.Type())
	}
}
