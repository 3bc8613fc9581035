package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/tests/devenv"
)

// incidentFixture journals two incidents as parry run would: a miner in
// default (isolate done, snapshot failed, then closed by a person) and a
// shell in shop whose pod name an attacker chose (escape sequences).
func incidentFixture(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "journal.db")
	j, err := journal.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	for _, e := range incidentEvents(t) {
		if _, err := j.Append(ctx, record(t, e)); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// incidentEvents are the fixture's events in journal order.
func incidentEvents(t *testing.T) []cloudevents.Event {
	t.Helper()
	var all []cloudevents.Event
	appendAll := func(es ...cloudevents.Event) { all = append(all, es...) }
	mk := func(parent *cloudevents.Event, spec events.Spec) cloudevents.Event {
		t.Helper()
		var e cloudevents.Event
		var err error
		if parent == nil {
			e, err = events.New(spec)
		} else {
			e, err = events.Reply(*parent, spec)
		}
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	pod := func(ns, name string) map[string]string {
		return map[string]string{events.ExtPodNamespace: ns, events.ExtPodName: name, events.ExtPodUID: "uid-" + name, events.ExtNode: "n1"}
	}
	opened := func(cause cloudevents.Event, inc, pb, score, sev string) cloudevents.Event {
		return mk(&cause, events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: inc,
			Extensions: map[string]string{events.ExtIncident: inc, events.ExtPlaybook: pb, events.ExtScore: score, events.ExtSeverity: sev, events.ExtResponse: events.ResponseAct},
			Data:       map[string]any{"reasons": []string{"+90: playbook " + pb}}})
	}

	miner := mk(nil, events.Spec{Type: events.TypeNetworkConnect, Source: "parry://sensor/n1", Key: "m", Extensions: pod("default", "web-1")})
	minerInc := opened(miner, "inc-miner", "crypto-miner", "95", "critical")
	isolated := mk(&minerInc, events.Spec{Type: events.StepDone("isolate"), Source: "parry://function/isolate", Key: "i",
		Extensions: map[string]string{events.ExtStep: "isolate"}, Data: map[string]any{"applied": []string{"NetworkPolicy parry-quarantine-x"}}})
	snapFailed := mk(&minerInc, events.Spec{Type: events.StepFailed("snapshot"), Source: "parry://function/snapshot", Key: "s",
		Extensions: map[string]string{events.ExtStep: "snapshot"}, Data: map[string]string{"reason": "pod gone"}})
	closed := mk(nil, events.Spec{Type: events.TypeIncidentClosed, Source: "parry://cli", Key: "c",
		Extensions: map[string]string{events.ExtIncident: "inc-miner"}, Data: events.IncidentClosed{Incident: "inc-miner", ClosedBy: "alice"}})
	appendAll(miner, minerInc, isolated, snapFailed, closed)

	shell := mk(nil, events.Spec{Type: events.TypeProcessExec, Source: "parry://sensor/n1", Key: "x", Extensions: pod("shop", "cart\x1b[2J")})
	shellInc := opened(shell, "inc-shell", "shell-in-container", "70", "high")
	joined := mk(&shell, events.Spec{Type: events.TypeIncidentJoined, Source: "parry://function/classify", Key: "j",
		Extensions: map[string]string{events.ExtIncident: "inc-shell", events.ExtPlaybook: "shell-in-container"}})
	appendAll(shell, shellInc, joined)
	return all
}

func TestIncidentsListsFiltersAndEscapes(t *testing.T) {
	bin, err := parryBinary()
	if err != nil {
		t.Fatal(err)
	}
	path := incidentFixture(t)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"incidents", "--journal", path}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("parry incidents %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	all := run()
	for _, want := range []string{"inc-miner", "closed", "crypto-miner", "default/web-1", "95 critical", "isolate ok", "snapshot FAILED", "closed by alice",
		"inc-shell", "open", `shop/cart\x1b[2J`} {
		if !strings.Contains(all, want) {
			t.Errorf("the list lacks %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, "\x1b") {
		t.Errorf("an escape sequence from a pod name reached the terminal:\n%q", all)
	}
	// Most recently opened first.
	if strings.Index(all, "inc-shell") > strings.Index(all, "inc-miner") {
		t.Errorf("not most recent first:\n%s", all)
	}

	for name, tc := range map[string]struct {
		args []string
		want []string
	}{
		"open":      {[]string{"--state", "open"}, []string{"inc-shell"}},
		"closed":    {[]string{"--state", "closed"}, []string{"inc-miner"}},
		"playbook":  {[]string{"--playbook", "crypto-miner"}, []string{"inc-miner"}},
		"namespace": {[]string{"--namespace", "shop"}, []string{"inc-shell"}},
		"limit":     {[]string{"--limit", "1"}, []string{"inc-shell"}},
		"since":     {[]string{"--since", "1h"}, []string{"inc-shell", "inc-miner"}},
		"future":    {[]string{"--since", "2999-01-01T00:00:00Z"}, nil},
	} {
		t.Run(name, func(t *testing.T) {
			var got []journal.IncidentSummary
			if err := json.Unmarshal([]byte(run(append(tc.args, "--json")...)), &got); err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, s := range got {
				ids = append(ids, s.ID)
			}
			if strings.Join(ids, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("got %v, want %v", ids, tc.want)
			}
		})
	}

	var miner []journal.IncidentSummary
	if err := json.Unmarshal([]byte(run("--playbook", "crypto-miner", "--json")), &miner); err != nil {
		t.Fatal(err)
	}
	m := miner[0]
	if m.State != journal.IncidentClosed || m.ClosedBy != "alice" || m.Score != 95 || m.PodUID != "uid-web-1" || len(m.Steps) != 2 ||
		m.Steps[0].Applied[0] != "NetworkPolicy parry-quarantine-x" || m.Steps[1].Reason != "pod gone" || m.First == "" {
		t.Fatalf("summary: %+v", m)
	}

	// OCSF for a SIEM: one JSON object per line, the finding first, with
	// the pod name's escape sequence JSON-escaped.
	lines := strings.Split(strings.TrimSpace(run("--format", "ocsf")), "\n")
	var classes []string
	for _, l := range lines {
		var e struct {
			ClassUID int    `json:"class_uid"`
			Activity string `json:"activity_name"`
		}
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("not a JSON line: %v\n%s", err, l)
		}
		classes = append(classes, fmt.Sprintf("%d %s", e.ClassUID, e.Activity))
	}
	if want := "2004 Create,2004 Create,7001 Isolate"; strings.Join(classes, ",") != want {
		t.Errorf("OCSF events %v, want %s", classes, want)
	}

	for _, bad := range [][]string{{"--format", "xml"}, {"--state", "sideways"}, {"--since", "yesterday"}, {"--limit", "-1"}, {"inc-miner"}} {
		out, err := exec.Command(bin, append([]string{"incidents", "--journal", path}, bad...)...).CombinedOutput()
		if code := exitCode(err); code != 2 {
			t.Errorf("parry incidents %v: exit %d, want 2 (usage)\n%s", bad, code, out)
		}
	}
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestIncidentsAndTraceReadAClustersPostgresJournal: --journal takes a
// postgres:// URL, and the answers are the SQLite file's.
func TestIncidentsAndTraceReadAClustersPostgresJournal(t *testing.T) {
	bin, err := parryBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dsn := devenv.Require(t).Database(t, "cmdparry")
	pool, err := clients.Postgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// Before anything wrote to it, a reader says so instead of creating tables.
	out, err := exec.Command(bin, "incidents", "--journal", dsn).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "holds no journal yet") {
		t.Fatalf("empty database: %v\n%s", err, out)
	}
	pg, err := journal.OpenPostgres(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	var recs []journal.Record
	for _, e := range incidentEvents(t) {
		recs = append(recs, record(t, e))
	}
	if _, err := pg.Record(ctx, recs); err != nil {
		t.Fatal(err)
	}
	summaries := func(where string) []journal.IncidentSummary {
		t.Helper()
		out, err := exec.Command(bin, "incidents", "--journal", where, "--json").CombinedOutput()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		var got []journal.IncidentSummary
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	fromPG, fromFile := summaries(dsn), summaries(incidentFixture(t))
	if len(fromPG) != 2 || len(fromFile) != 2 {
		t.Fatalf("PostgreSQL %d incidents, the file %d; want 2 each", len(fromPG), len(fromFile))
	}
	for i := range fromPG {
		a, b := fromPG[i], fromFile[i]
		if a.ID != b.ID || a.State != b.State || a.Pod != b.Pod || a.Score != b.Score || a.ClosedBy != b.ClosedBy || len(a.Steps) != len(b.Steps) {
			t.Errorf("incident %d: PostgreSQL %+v, the file %+v", i, a, b)
		}
	}
	out, err = exec.Command(bin, "trace", "--journal", dsn, "inc-miner").CombinedOutput()
	if err != nil || !strings.Contains(string(out), events.StepDone("isolate")) || !strings.Contains(string(out), "! pod gone") {
		t.Fatalf("trace from PostgreSQL: %v\n%s", err, out)
	}
	// The password never reaches the terminal, whatever fails.
	bad := strings.Replace(dsn, "127.0.0.1", "127.0.0.1:1", 1)
	out, _ = exec.Command(bin, "incidents", "--journal", bad).CombinedOutput()
	if u, _ := url.Parse(dsn); strings.Contains(string(out), func() string { p, _ := u.User.Password(); return p }()) {
		t.Fatalf("the password is in the error:\n%s", out)
	}
}

// A journal service answers only with a token: the CLI says how to get one
// instead of sending an anonymous request, and refuses a token for a file.
func TestJournalServiceNeedsATokenFile(t *testing.T) {
	bin, err := parryBinary()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"incidents", "--journal", "http://127.0.0.1:1"}, "--token-file"},
		{[]string{"trace", "--journal", "https://journal.example", "inc-1"}, "kubectl create token"},
		{[]string{"incidents", "--journal", filepath.Join(t.TempDir(), "j.db"), "--token-file", "/dev/null"}, "goes with a journal service URL"},
	} {
		out, err := exec.Command(bin, tc.args...).CombinedOutput()
		if exitCode(err) != 1 || !strings.Contains(string(out), tc.want) {
			t.Errorf("parry %v: %v\n%s\nwant an error saying %q", tc.args, err, out, tc.want)
		}
	}
}
