package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"parry.dev/parry/functions/isolate"
	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/ingest/falco"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/tests/devenv"
)

// falcosidekick sends one alert exactly as Falcosidekick's CloudEvents
// output does (outputs/cloudevents.go: the SDK's HTTP client, binary mode,
// a random id, source https://falco.org, the priority capitalised, and the
// extensions its config adds), to target. It returns the HTTP status.
// Falcosidekick itself cannot be built here: the Go module proxy serves
// none of its versions (403 for every tag, pseudo-version and the list).
func falcosidekick(t *testing.T, target string, p falco.Payload, extensions map[string]string) int {
	t.Helper()
	c, err := cloudevents.NewClientHTTP()
	if err != nil {
		t.Fatal(err)
	}
	e := cloudevents.NewEvent()
	e.SetTime(p.Time)
	e.SetSource("https://falco.org")
	e.SetType(falco.Type)
	e.SetExtension("priority", p.Priority)
	e.SetExtension("rule", p.Rule)
	e.SetExtension("eventsource", p.Source)
	e.SetExtension("hostname", p.Hostname)
	for k, v := range extensions {
		e.SetExtension(k, v)
	}
	if err := e.SetData(cloudevents.ApplicationJSON, p); err != nil {
		t.Fatal(err)
	}
	result := c.Send(cloudevents.ContextWithTarget(context.Background(), target), e)
	var res *cehttp.Result
	if cloudevents.ResultAs(result, &res) {
		return res.StatusCode
	}
	t.Fatalf("sending to the adapter: %v", result)
	return 0
}

// A Falco alert opens an incident through the shipped playbook
// falco-critical (issue 20): Falcosidekick's events, through the Falco
// adapter, with the pod resolved from Falco's namespace and name, or from
// its 12-character container id. A Warning opens nothing (its alert is
// journaled: the positive control), and an alert without the shared key
// never reaches the Broker.
func TestFalcoAlertsDrivePlaybooks(t *testing.T) {
	w := start(t)
	ctx := t.Context()
	pods := devenv.WebDeployment(t, w.kube, "falco", 2)
	victim, other := pods[0], pods[1]
	// The other pod's container as the runtime reports it: a full id,
	// which Falco prints as its first 12 characters.
	raw := make([]byte, 32)
	rand.Read(raw)
	cid := hex.EncodeToString(raw)
	other.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", ContainerID: "containerd://" + cid, Ready: true, Image: "registry.example/web:1"}}
	if _, err := w.kube.CoreV1().Pods("falco").UpdateStatus(ctx, &other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	index, err := step.WatchPods(ctx, w.kube)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, _, ok := index.ByContainer(cid[:12]); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pod's container id never reached the watch (did kwok overwrite the status?)")
		}
	}
	key := "falco-shared-key-" + cid[:16]
	adapter := httptest.NewServer(&falco.Adapter{Broker: w.stack.BrokerURL(stack.DefaultBroker),
		HTTP: auth.WithToken(http.DefaultClient, auth.StaticToken(w.stack.Tokens[stack.FalcoAdapter()])),
		Key:  []byte(key), Pods: index})
	t.Cleanup(adapter.Close)
	alert := func(priority string, fields map[string]any) falco.Payload {
		return falco.Payload{UUID: "falco-" + priority + "-" + cid[:8] + time.Now().Format("150405.000000"), Output: "A shell was spawned in a container", Priority: priority,
			Rule: "Terminal shell in container", Time: time.Now(), Source: "syscall", Hostname: w.env.NodeName,
			Tags: []string{"container", "mitre_execution", "shell"}, OutputFields: fields}
	}
	withKey := map[string]string{falco.KeyExtension: key}

	for name, ext := range map[string]map[string]string{"no key": nil, "a wrong key": {falco.KeyExtension: "guess"}} {
		if code := falcosidekick(t, adapter.URL, alert("Critical", map[string]any{"k8s.ns.name": "falco", "k8s.pod.name": victim.Name}), ext); code != http.StatusUnauthorized {
			t.Fatalf("%s: %d, want 401", name, code)
		}
	}

	if code := falcosidekick(t, adapter.URL, alert("Critical", map[string]any{"k8s.ns.name": "falco", "k8s.pod.name": victim.Name, "proc.name": "bash"}), withKey); code != http.StatusAccepted {
		t.Fatalf("a Critical alert: %d, want 202", code)
	}
	opened := w.reply(t, string(victim.UID), events.TypeIncidentOpened, 10*time.Second)
	if events.String(opened.Event, events.ExtPlaybook) != "falco-critical" || events.String(opened.Event, events.ExtResponse) != events.ResponseAct {
		t.Fatalf("incident %s: playbook %s, response %s", opened.ID, events.String(opened.Event, events.ExtPlaybook), events.String(opened.Event, events.ExtResponse))
	}
	w.reply(t, string(victim.UID), events.StepDone(isolate.Name), 10*time.Second)
	root, err := w.stack.Journal.Tree(ctx, opened.ID)
	if err != nil {
		t.Fatal(err)
	}
	if a := root.Event; a.Type() != events.TypeFalcoAlert || a.Source() != "parry://falco/"+w.env.NodeName || root.Sender != stack.FalcoAdapter() ||
		events.String(a, events.ExtFalcoRule) != "Terminal shell in container" || events.String(a, events.ExtPriority) != "critical" ||
		!strings.Contains(events.String(a, events.ExtTags), ",mitre_execution,") {
		t.Fatalf("the journaled alert: %s from %s by %q, extensions %v", a.Type(), a.Source(), root.Sender, a.Extensions())
	}

	// A Warning is recorded and opens nothing; then a Critical alert that
	// names the pod by Falco's 12-character container id only.
	if code := falcosidekick(t, adapter.URL, alert("Warning", map[string]any{"container.id": cid[:12]}), withKey); code != http.StatusAccepted {
		t.Fatalf("a Warning alert: %d, want 202", code)
	}
	warning := w.reply(t, string(other.UID), events.TypeFalcoAlert, 10*time.Second)
	if got := events.String(warning.Event, events.ExtContainerID); got != cid {
		t.Fatalf("container id %q, want the whole id %q so Falco's and parry's events join", got, cid)
	}
	if code := falcosidekick(t, adapter.URL, alert("Critical", map[string]any{"container.id": cid[:12]}), withKey); code != http.StatusAccepted {
		t.Fatalf("a Critical alert by container id: %d, want 202", code)
	}
	second := w.reply(t, string(other.UID), events.TypeIncidentOpened, 10*time.Second)
	for _, n := range w.settled(t, events.String(second.Event, events.ExtIncident), 10*time.Second) {
		if n.ID == warning.ID {
			t.Fatal("the Warning alert belongs to an incident")
		}
	}

	// The adapter's identity may send Falco alerts and nothing else.
	if code, body := w.post(t, w.stack.Tokens[stack.FalcoAdapter()], events.StepDone("snapshot"), "falco-forges-a-step", time.Now(), nil); code != http.StatusForbidden {
		t.Fatalf("the adapter's token sending a step's type: %d %s, want 403", code, body)
	}
}
