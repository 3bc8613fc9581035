package falco_test

import (
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/ingest/falco"
)

func sidekickEvent(t *testing.T, typ string, p falco.Payload) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID("4b5c2f1e-0000-4000-8000-000000000001")
	e.SetSource("https://falco.org")
	e.SetType(typ)
	e.SetTime(p.Time)
	e.SetExtension("priority", p.Priority)
	e.SetExtension("rule", p.Rule)
	if err := e.SetData(cloudevents.ApplicationJSON, p); err != nil {
		t.Fatal(err)
	}
	return e
}

// Without a cluster the adapter keeps what Falco says of the pod and maps
// the rest; the same alert translated twice gets the same id (Falco's
// uuid), so a Falcosidekick retry is journaled once.
func TestTranslateWithoutACluster(t *testing.T) {
	a := &falco.Adapter{}
	p := falco.Payload{UUID: "u-1", Rule: "Write below etc", Priority: "Error", Time: time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC),
		Hostname: "node-1", Source: "syscall", Tags: []string{"filesystem", "mitre_persistence"},
		OutputFields: map[string]any{"k8s.ns.name": "shop", "k8s.pod.name": "web-1", "container.id": "0123456789ab", "proc.name": "sh", "proc.exepath": "<NA>"}}
	e, err := a.Translate(sidekickEvent(t, falco.Type, p))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{events.ExtFalcoRule: "Write below etc", events.ExtPriority: "error", events.ExtSeverity: "high",
		events.ExtTags: ",filesystem,mitre_persistence,", events.ExtNode: "node-1", events.ExtPodNamespace: "shop", events.ExtPodName: "web-1",
		events.ExtContainerID: "0123456789ab", events.ExtComm: "sh", events.ExtPodUID: "", events.ExtExe: ""}
	for k, v := range want {
		if got := events.String(e, k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if e.Type() != events.TypeFalcoAlert || e.Source() != "parry://falco/node-1" || !e.Time().Equal(p.Time) || !strings.Contains(string(e.Data()), `"uuid":"u-1"`) {
		t.Fatalf("event %v", e)
	}
	again, _ := a.Translate(sidekickEvent(t, falco.Type, p))
	if again.ID() != e.ID() {
		t.Fatal("the same alert got another id")
	}
	if _, err := a.Translate(sidekickEvent(t, "falco.something.else", p)); err == nil {
		t.Fatal("an event of another type was translated")
	}
	p.Rule, p.Priority = "", ""
	if _, err := a.Translate(sidekickEvent(t, falco.Type, p)); err == nil {
		t.Fatal("an alert without rule or priority was translated")
	}
}
