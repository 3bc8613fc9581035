package main_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
)

// TestTraceShowsTheChainAndWhy builds a small incident in a real journal and
// reads it back with the real binary, as on-call would.
func TestTraceShowsTheChainAndWhy(t *testing.T) {
	bin, err := parryBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "journal.db")
	j, err := journal.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	root, err := events.New(events.Spec{Type: events.TypeNetworkConnect, Source: "parry://sensor/n1", Key: "k",
		Extensions: map[string]string{events.ExtPodName: "web-1", events.ExtDestPort: "3333"}})
	if err != nil {
		t.Fatal(err)
	}
	opened, err := events.Reply(root, events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: "c",
		Extensions: map[string]string{events.ExtIncident: "inc-t"}, Data: map[string]any{"reasons": []string{"+70: playbook crypto-miner (high)"}}})
	if err != nil {
		t.Fatal(err)
	}
	failed, err := events.Reply(opened, events.Spec{Type: events.StepFailed("isolate"), Source: "parry://function/isolate", Key: "i",
		Data: map[string]string{"reason": "refused: namespace kube-system is protected"}})
	if err != nil {
		t.Fatal(err)
	}
	saved, err := events.Reply(opened, events.Spec{Type: events.StepDone("snapshot"), Source: "parry://function/snapshot", Key: "s",
		Data: map[string]any{"bundle": "/x", "applied": []string{"evidence bundle /x: 5 files"}}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := j.Append(ctx, record(t, root))
	if err != nil {
		t.Fatal(err)
	}
	openedRecord, err := journal.NewRecord("parry-system/parry", "system:serviceaccount:parry-sensor:parry-sensor", opened, []string{"parry-system/next", "parry-system/snap"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := j.Complete(ctx, journal.Key{Seq: a.Seq, Trigger: "parry-system/next", Target: journal.ToSubscriber}, 1, &openedRecord)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Complete(ctx, journal.Key{Seq: b.Seq, Trigger: "parry-system/snap", Target: journal.ToSubscriber}, 1, ptr(record(t, saved))); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Complete(ctx, journal.Key{Seq: b.Seq, Trigger: "parry-system/next", Target: journal.ToSubscriber}, 1, ptr(record(t, failed))); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command(bin, "trace", "--journal", path, "inc-t").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"4 events", events.TypeNetworkConnect, events.StepDone("snapshot"), "= evidence bundle /x: 5 files", "└─ " + events.TypeIncidentOpened, "! +70: playbook crypto-miner (high)",
		events.StepFailed("isolate"), "! refused: namespace kube-system is protected", "dport=3333",
		"from system:serviceaccount:parry-sensor:parry-sensor"} {
		if !strings.Contains(text, want) {
			t.Errorf("trace output lacks %q:\n%s", want, text)
		}
	}
	out, err = exec.Command(bin, "trace", "--journal", path, "--json", "inc-t").Output()
	if err != nil {
		t.Fatal(err)
	}
	var trees []struct {
		ID       string
		Sender   string
		Children []struct{ Type string }
	}
	if err := json.Unmarshal(out, &trees); err != nil || len(trees) != 1 || trees[0].ID != root.ID() || trees[0].Children[0].Type != events.TypeIncidentOpened ||
		trees[0].Sender != "system:serviceaccount:parry-sensor:parry-sensor" {
		t.Fatalf("--json: %v %s", err, out)
	}
	if out, err := exec.Command(bin, "trace", "--journal", path, "nope").CombinedOutput(); err == nil || !strings.Contains(string(out), "--last 20") {
		t.Fatalf("unknown incident: %v %s", err, out)
	}
}

func record(t *testing.T, e cloudevents.Event) journal.Record {
	t.Helper()
	r, err := journal.NewRecord("parry-system/parry", "system:serviceaccount:parry-sensor:parry-sensor", e, []string{"parry-system/next"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ptr[T any](v T) *T { return &v }

// TestTraceEscapesControlCharacters: attribute values come from the
// workload (a process's name, a path) or from whoever can post to the
// ingress. Printed raw, "\x1b[2J" clears on-call's screen and "\r" or a
// bidi override hides what precedes it; trace prints them escaped, and
// --json stays valid JSON.
func TestTraceEscapesControlCharacters(t *testing.T) {
	bin, err := parryBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "journal.db")
	j, err := journal.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	hostile := map[string]string{
		events.ExtExe:       "/tmp/\x1b[2J\x1b]0;owned\x07x",
		events.ExtPodName:   "web-1\r\bfake",
		events.ExtContainer: "c\xff\xfe",
		events.ExtIncident:  "inc-x",
		"note":              "a\u009b31mb\u202egnp.exe\x7f",
	}
	e, err := events.New(events.Spec{Type: events.TypeNetworkConnect, Source: "parry://sensor/n1", Key: "k",
		Subject: "\x1b[2J", Extensions: hostile, Data: map[string]any{"reasons": []string{"\x1b[31mred\x1b[0m"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(ctx, record(t, e)); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--last", "5"}, {"inc-x"}, {"--event", e.ID()}} {
		out, err := exec.Command(bin, append([]string{"trace", "--journal", path}, args...)...).Output()
		if err != nil {
			t.Fatalf("trace %v: %v\n%s", args, err, out)
		}
		text := string(out)
		if !utf8.ValidString(text) {
			t.Errorf("trace %v: output is not valid UTF-8:\n%q", args, text)
		}
		for i, r := range text {
			if (r < 0x20 && r != '\n') || (r >= 0x7f && r <= 0x9f) || r == '\u202e' {
				t.Errorf("trace %v: raw control %U at byte %d:\n%q", args, r, i, text)
				break
			}
		}
		for _, want := range []string{`exe=/tmp/\x1b[2J\x1b]0;owned\ax`, `podname=web-1\r\bfake`, `container=c\xff\xfe`,
			`note=a\u009b31mb\u202egnp.exe\x7f`, `! \x1b[31mred\x1b[0m`} {
			if !strings.Contains(text, want) {
				t.Errorf("trace %v: output lacks %s:\n%s", args, want, text)
			}
		}
	}
	out, err := exec.Command(bin, "trace", "--journal", path, "--json", "inc-x").Output()
	if err != nil {
		t.Fatal(err)
	}
	var trees []struct {
		Subject    string
		Extensions map[string]string
	}
	if err := json.Unmarshal(out, &trees); err != nil || len(trees) != 1 {
		t.Fatalf("--json: %v %s", err, out)
	}
	if trees[0].Subject != "\x1b[2J" || trees[0].Extensions[events.ExtExe] != hostile[events.ExtExe] {
		t.Errorf("--json changed the values: %+v", trees[0])
	}
}
