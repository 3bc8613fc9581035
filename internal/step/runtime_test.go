package step_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/step"
)

type playbooks map[string]step.StepConfig

func (p playbooks) StepConfig(playbook, _ string) (step.StepConfig, error) {
	c, ok := p[playbook]
	if !ok {
		return c, fmt.Errorf("no playbook %q", playbook)
	}
	return c, nil
}

var testKey = []byte("0123456789abcdef0123456789abcdef")

// incident is the event classify opens an incident with, sealed.
func incident(t *testing.T, ns, playbook string) cloudevents.Event {
	t.Helper()
	e, err := events.New(events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: ns + playbook,
		Extensions: map[string]string{events.ExtIncident: "inc-1", events.ExtPlaybook: playbook, events.ExtPodNamespace: ns,
			events.ExtPodName: "web-1", events.ExtPodUID: "uid-1"}})
	if err != nil {
		t.Fatal(err)
	}
	step.SealEvent(testKey, &e)
	return e
}

// run builds a step whose action records its calls and returns what act
// says.
func run(t *testing.T, spec step.Spec, act step.Action, e cloudevents.Event) (*cloudevents.Event, error, int) {
	t.Helper()
	calls := 0
	def := step.Definition{Spec: spec, New: func(context.Context, step.Deps) (step.Action, error) {
		return func(ctx context.Context, r *step.Request) (any, error) { calls++; return act(ctx, r) }, nil
	}}
	pbs := playbooks{
		"miner": {Params: step.Params{"x": "1"}},
		"dry":   {Guard: guard.Rules{DryRun: true}},
		"extra": {Guard: guard.Rules{ProtectedNamespaces: []string{"payments"}}},
	}
	h, err := step.Build(t.Context(), def, step.Deps{Playbooks: pbs, IncidentKey: testKey, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	reply, err := h(context.Background(), e)
	return reply, err, calls
}

func reason(t *testing.T, reply *cloudevents.Event) string {
	t.Helper()
	var d struct{ Reason string }
	if err := reply.DataAs(&d); err != nil {
		t.Fatal(err)
	}
	return d.Reason
}

var isolateLike = step.Spec{Name: "isolate", Target: step.TargetPod, Playbook: true, DryRun: true}

func done(context.Context, *step.Request) (any, error) { return map[string]string{"ok": "yes"}, nil }

func TestDoneReplyCarriesStepAndCause(t *testing.T) {
	e := incident(t, "shop", "miner")
	var seen *step.Request
	reply, err, _ := run(t, isolateLike, func(_ context.Context, r *step.Request) (any, error) { seen = r; return done(nil, r) }, e)
	if err != nil || reply.Type() != events.StepDone("isolate") || reply.Source() != "parry://function/isolate" ||
		events.String(*reply, events.ExtStep) != "isolate" || events.String(*reply, events.ExtCausation) != e.ID() ||
		events.String(*reply, events.ExtIncident) != "inc-1" {
		t.Fatalf("reply %v, %v", reply, err)
	}
	if seen.Pod != (step.Pod{Namespace: "shop", Name: "web-1", UID: "uid-1"}) || seen.Params().String("x") != "1" || seen.Incident != "inc-1" {
		t.Fatalf("request %+v", seen)
	}
	again, _, _ := run(t, isolateLike, done, e)
	if again.ID() != reply.ID() {
		t.Fatal("a redelivered cause got a reply with another id")
	}
}

// Every refusal happens before the action runs, as a failed reply that
// names the reason; the positive control above proves the action runs.
func TestRefusalsNeverReachTheAction(t *testing.T) {
	noPod, err := events.New(events.Spec{Type: events.TypeIncidentOpened, Source: "s", Key: "k",
		Extensions: map[string]string{events.ExtIncident: "inc-1", events.ExtPlaybook: "miner"}})
	if err != nil {
		t.Fatal(err)
	}
	unsealed := incident(t, "shop", "miner")
	unsealed.SetExtension(events.ExtIncidentSeal, nil)
	otherPod := incident(t, "shop", "miner") // the incident id reused for another pod
	otherPod.SetExtension(events.ExtPodUID, "uid-2")
	otherPlaybook := incident(t, "shop", "miner")
	otherPlaybook.SetExtension(events.ExtPlaybook, "extra")
	spoofedNamespace := incident(t, "kube-system", "miner") // sealed for kube-system, claims default
	spoofedNamespace.SetExtension(events.ExtPodNamespace, "default")
	forged := incident(t, "shop", "miner")
	forged.SetExtension(events.ExtIncidentSeal, step.Seal([]byte("not-parrys-key-not-parrys-key-00"), "inc-1", "miner", "uid-1", "shop", "web-1"))
	for name, c := range map[string]struct {
		e    cloudevents.Event
		want string
	}{
		"no pod":                  {noPod, "names no pod"},
		"no seal":                 {unsealed, "no valid incident seal"},
		"incident of another pod": {otherPod, "seal does not match"},
		"another playbook":        {otherPlaybook, "seal does not match"},
		"spoofed namespace":       {spoofedNamespace, "seal does not match"},
		"sealed with another key": {forged, "seal does not match"},
		"unknown playbook":        {incident(t, "shop", "nope"), `playbook "nope"`},
		"always protected":        {incident(t, "kube-system", "miner"), "namespace kube-system is protected"},
		"protected by a playbook": {incident(t, "payments", "extra"), "namespace payments is protected"},
	} {
		reply, err, calls := run(t, isolateLike, done, c.e)
		if err != nil || calls != 0 || reply.Type() != events.StepFailed("isolate") || !strings.Contains(reason(t, reply), c.want) {
			t.Errorf("%s: reply %v, error %v, %d calls; want failed with %q and no call", name, reply, err, calls, c.want)
		}
	}
}

func TestDryRunOnlyReachesStepsThatDescribeTheirChanges(t *testing.T) {
	e := incident(t, "shop", "dry")
	var dry bool
	_, err, calls := run(t, isolateLike, func(_ context.Context, r *step.Request) (any, error) { dry = r.DryRun; return "ok", nil }, e)
	if err != nil || calls != 1 || !dry {
		t.Fatalf("a dry-run-aware step: %d calls, DryRun %v, %v", calls, dry, err)
	}
	blunt := isolateLike
	blunt.Name, blunt.DryRun = "revoke", false
	reply, err, calls := run(t, blunt, done, e)
	if err != nil || calls != 0 || reply.Type() != events.StepDone("revoke") || !strings.Contains(string(reply.Data()), `"dryRun":true`) {
		t.Fatalf("a step that cannot describe its changes ran in a dry run: %d calls, %v, %v", calls, reply, err)
	}
}

func TestFailuresAndRetries(t *testing.T) {
	e := incident(t, "shop", "miner")
	reply, err, _ := run(t, isolateLike, func(context.Context, *step.Request) (any, error) { return nil, step.Fail("RBAC: %s", "forbidden") }, e)
	if err != nil || reply.Type() != events.StepFailed("isolate") || reason(t, reply) != "RBAC: forbidden" || events.String(*reply, events.ExtStep) != "isolate" {
		t.Fatalf("permanent failure: %v, %v", reply, err)
	}
	data := map[string]any{"reason": "partial", "accessorsRevoked": []string{"a"}}
	reply, err, _ = run(t, isolateLike, func(context.Context, *step.Request) (any, error) {
		return nil, &step.Failure{Reason: "partial", Data: data}
	}, e)
	if err != nil || !strings.Contains(string(reply.Data()), "accessorsRevoked") {
		t.Fatalf("failure with data: %v, %v", reply, err)
	}
	reply, err, _ = run(t, isolateLike, func(context.Context, *step.Request) (any, error) { return nil, errors.New("api server down") }, e)
	if err == nil || reply != nil {
		t.Fatalf("transient error: reply %v, error %v; want the error, for the broker to retry", reply, err)
	}
}

func TestStepsWithTheirOwnReplies(t *testing.T) {
	root := step.Spec{Name: "classify", Playbook: true, Root: true, Replies: true}
	sensor, err := events.New(events.Spec{Type: events.TypeProcessExec, Source: "parry://sensor/n1", Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	reply, err, calls := run(t, root, func(context.Context, *step.Request) (any, error) {
		return step.Reply{Type: events.TypeIncidentOpened, Key: "miner", Extensions: map[string]string{events.ExtIncident: "inc-2"}}, nil
	}, sensor)
	if err != nil || calls != 1 || reply.Type() != events.TypeIncidentOpened || events.String(*reply, events.ExtIncident) != "inc-2" ||
		reply.Source() != "parry://function/classify" {
		t.Fatalf("own reply: %v, %v (%d calls)", reply, err, calls)
	}
	reply, err, calls = run(t, root, func(context.Context, *step.Request) (any, error) { return nil, nil }, sensor)
	if err != nil || reply != nil || calls != 1 {
		t.Fatalf("no reply: %v, %v (%d calls)", reply, err, calls)
	}
}

// Without an incident key nothing can be verified, so nothing is acted on.
func TestNoIncidentKeyRefusesEverything(t *testing.T) {
	calls := 0
	def := step.Definition{Spec: isolateLike, New: func(context.Context, step.Deps) (step.Action, error) {
		return func(context.Context, *step.Request) (any, error) { calls++; return nil, nil }, nil
	}}
	h, err := step.Build(t.Context(), def, step.Deps{Playbooks: playbooks{"miner": {}}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	reply, err := h(t.Context(), incident(t, "shop", "miner"))
	if err != nil || calls != 0 || reply.Type() != events.StepFailed("isolate") || !strings.Contains(reason(t, reply), "no incident key") {
		t.Fatalf("reply %v, error %v, %d calls", reply, err, calls)
	}
}

func TestIncidentKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/incident.key"
	if _, err := step.LoadIncidentKey(path, false); err == nil || !strings.Contains(err.Error(), "kubectl -n parry-system create secret generic parry-incident-key") {
		t.Fatalf("a missing key in a cluster: %v, want the command that creates it", err)
	}
	made, err := step.LoadIncidentKey(path, true)
	if err != nil || len(made) != 2*step.IncidentKeyBytes {
		t.Fatalf("made %q, %v", made, err)
	}
	again, err := step.LoadIncidentKey(path, true)
	if err != nil || string(again) != string(made) {
		t.Fatal("the key changed on the second start: sealed incidents would no longer verify")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	os.WriteFile(path, []byte("short\n"), 0o600)
	if _, err := step.LoadIncidentKey(path, true); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Fatalf("a short key: %v", err)
	}
}

type appliedResult struct {
	Label string `json:"label"`
}

func (r appliedResult) Applied() []string { return []string{"label " + r.Label} }

// A result that says what it applied gets it into the done reply's data as
// "applied", beside its own fields; parry trace prints it.
func TestDoneReplySaysWhatWasApplied(t *testing.T) {
	reply, err, _ := run(t, isolateLike, func(context.Context, *step.Request) (any, error) { return appliedResult{Label: "q=inc-1"}, nil }, incident(t, "shop", "miner"))
	if err != nil {
		t.Fatal(err)
	}
	var data struct {
		Label   string   `json:"label"`
		Applied []string `json:"applied"`
	}
	if err := reply.DataAs(&data); err != nil || data.Label != "q=inc-1" || len(data.Applied) != 1 || data.Applied[0] != "label q=inc-1" {
		t.Fatalf("data %s: %v", reply.Data(), err)
	}
}
