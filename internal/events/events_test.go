package events_test

import (
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
)

func sensorSpec() events.Spec {
	return events.Spec{
		Type:    events.TypeProcessExec,
		Source:  "parry://sensor/node-a",
		Subject: "pod/default/web-1",
		Key:     "boot-1/123456789/4242",
		Time:    time.Unix(1700000000, 0),
		Extensions: map[string]string{
			events.ExtNode:   "node-a",
			events.ExtPodUID: "0d1e2f",
			events.ExtExe:    "/usr/bin/xmrig",
		},
		Data: map[string]any{"pid": 4242},
	}
}

func TestNewIsDeterministic(t *testing.T) {
	a, err := events.New(sensorSpec())
	if err != nil {
		t.Fatal(err)
	}
	b, err := events.New(sensorSpec())
	if err != nil {
		t.Fatal(err)
	}
	if a.ID() != b.ID() || events.String(a, events.ExtTraceparent) != events.String(b, events.ExtTraceparent) {
		t.Fatalf("same occurrence gave different identities: %s/%s vs %s/%s", a.ID(), events.String(a, events.ExtTraceparent), b.ID(), events.String(b, events.ExtTraceparent))
	}
	other := sensorSpec()
	other.Key = "boot-1/123456790/4242"
	c, err := events.New(other)
	if err != nil {
		t.Fatal(err)
	}
	if c.ID() == a.ID() {
		t.Fatal("different occurrences share an id")
	}
	if events.TraceID(a) == "" {
		t.Fatalf("no trace id in %q", events.String(a, events.ExtTraceparent))
	}
}

func TestReplyKeepsTraceAndLinksCause(t *testing.T) {
	cause, err := events.New(sensorSpec())
	if err != nil {
		t.Fatal(err)
	}
	cause.SetExtension(events.ExtIncident, "inc-1")
	spec := events.Spec{Type: events.StepDone("isolate"), Source: "parry://function/isolate", Key: "isolate"}
	r1, err := events.Reply(cause, spec)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := events.Reply(cause, spec)
	if err != nil {
		t.Fatal(err)
	}
	if r1.ID() != r2.ID() {
		t.Fatal("a redelivered cause must give the same reply id")
	}
	if got := events.String(r1, events.ExtCausation); got != cause.ID() {
		t.Fatalf("causation = %q, want %q", got, cause.ID())
	}
	if events.TraceID(r1) != events.TraceID(cause) {
		t.Fatal("reply left the trace")
	}
	if events.String(r1, events.ExtTraceparent) == events.String(cause, events.ExtTraceparent) {
		t.Fatal("reply must have its own span id")
	}
	if events.String(r1, events.ExtIncident) != "inc-1" || events.String(r1, events.ExtPodUID) != "0d1e2f" {
		t.Fatalf("routing extensions not inherited: %v", r1.Extensions())
	}
	if r1.Subject() != cause.Subject() {
		t.Fatal("subject not inherited")
	}
}

func TestSetCauseOnForeignEventStartsTrace(t *testing.T) {
	foreign := cloudevents.NewEvent()
	foreign.SetID("falco-1")
	foreign.SetSource("falco")
	foreign.SetType("falco.rule.output.v1")
	reply := cloudevents.NewEvent()
	reply.SetID("r")
	reply.SetSource("x")
	reply.SetType("y")
	events.SetCause(&reply, foreign)
	if events.TraceID(reply) == "" || events.String(reply, events.ExtCausation) != "falco-1" {
		t.Fatalf("got %v", reply.Extensions())
	}
	if err := events.Validate(reply); err != nil {
		t.Fatal(err)
	}
}

func TestValidateNamesTheAttribute(t *testing.T) {
	cases := map[string]func(*cloudevents.Event){
		"id":          func(e *cloudevents.Event) { e.SetID("") },
		"type":        func(e *cloudevents.Event) { e.SetType("") },
		"traceparent": func(e *cloudevents.Event) { e.SetExtension("traceparent", "nonsense") },
		"Bad_Name": func(e *cloudevents.Event) {
			e.Context.(*cloudevents.EventContextV1).Extensions = map[string]any{"Bad_Name": "x"}
		},
	}
	for attr, breakIt := range cases {
		e, err := events.New(sensorSpec())
		if err != nil {
			t.Fatal(err)
		}
		breakIt(&e)
		err = events.Validate(e)
		if err == nil || !strings.Contains(err.Error(), attr) {
			t.Errorf("%s: error %v does not name the attribute", attr, err)
		}
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	s := sensorSpec()
	s.Key = ""
	if _, err := events.New(s); err == nil {
		t.Error("empty key accepted")
	}
	s = sensorSpec()
	s.Extensions = map[string]string{"Pod-Name": "x"}
	if _, err := events.New(s); err == nil || !strings.Contains(err.Error(), "Pod-Name") {
		t.Errorf("bad extension name: %v", err)
	}
	if got := events.StepFailed("revoke"); got != "dev.parry.step.revoke.failed.v1" {
		t.Error(got)
	}
}

func FuzzValidate(f *testing.F) {
	f.Add("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	f.Add("Bad_Name", "x")
	f.Add("podname", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0")
	f.Fuzz(func(t *testing.T, name, value string) {
		e := cloudevents.NewEvent()
		e.SetID("1")
		e.SetSource("s")
		e.SetType("t")
		e.Context.(*cloudevents.EventContextV1).Extensions = map[string]any{name: value}
		err := events.Validate(e)
		nameOK := len(name) > 0 && len(name) <= 20 && strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789") == ""
		if nameOK && name != events.ExtTraceparent && err != nil {
			t.Fatalf("valid extension %q rejected: %v", name, err)
		}
		if !nameOK && err == nil {
			t.Fatalf("invalid extension name %q accepted", name)
		}
	})
}

func TestStringReadsExtensionsOfEveryContextVersion(t *testing.T) {
	for _, version := range []string{cloudevents.VersionV1, cloudevents.VersionV03} {
		e := cloudevents.NewEvent(version)
		e.SetExtension("dport", 3333) // the SDK keeps it as a string
		e.SetExtension("poduid", "7f8e")
		for name, want := range map[string]string{"dport": "3333", "poduid": "7f8e", "podns": ""} {
			if got := events.String(e, name); got != want {
				t.Errorf("%s: String(%s) = %q, want %q", version, name, got, want)
			}
		}
	}
}

// Every source's container ids take the sensor's form, so events about one
// container join; anything else is left out.
func TestContainerIDIsTheSensorsForm(t *testing.T) {
	const containerHex = "3e2a1f0c9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"
	for in, want := range map[string]string{
		"containerd://" + containerHex:             containerHex,
		"cri-o://" + strings.ToUpper(containerHex): containerHex,
		containerHex:                          containerHex,
		"containerd://3e2a1f0c9b8d":           "", // a short id does not join
		"docker://" + strings.Repeat("z", 64): "",
		"":                                    "",
	} {
		if got, _ := events.ContainerID(in); got != want {
			t.Errorf("ContainerID(%q) = %q, want %q", in, got, want)
		}
	}
}
