package journal_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
)

// contractStore is a journal under the contract: its Reader, and a way to
// record events into it (the SQLite file through Append, one event at a
// time as the broker does; PostgreSQL through Record, in a batch as the
// journal service does). record returns how many were new.
type contractStore struct {
	journal.Reader
	record func(ctx context.Context, recs ...journal.Record) (int, error)
}

func (st contractStore) mustRecord(t testing.TB, recs ...journal.Record) int {
	t.Helper()
	n, err := st.record(context.Background(), recs...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func contractStores() map[string]func(t *testing.T) contractStore {
	return map[string]func(t *testing.T) contractStore{
		"sqlite": func(t *testing.T) contractStore {
			j := open(t, filepath.Join(t.TempDir(), "j.db"))
			t.Cleanup(func() { j.Close() })
			return contractStore{Reader: j, record: func(ctx context.Context, recs ...journal.Record) (int, error) {
				n := 0
				for _, r := range recs {
					a, err := j.Append(ctx, r)
					if err != nil {
						return n, err
					}
					if !a.Duplicate {
						n++
					}
				}
				return n, nil
			}}
		},
		"postgres": func(t *testing.T) contractStore {
			p := openPostgres(t)
			return contractStore{Reader: p, record: func(ctx context.Context, recs ...journal.Record) (int, error) {
				return p.Record(ctx, recs)
			}}
		},
	}
}

const attacker = "system:serviceaccount:default:attacker"

// scenario is what every store journals, in this order: a realistic
// incident (sensor event, incident.opened, a step done and one failed, a
// joined event, closed), then two more incidents (after a pause, so Since
// can split them), then what a hostile sender would send.
type scenario struct {
	first, second, hostile []journal.Record
	// names are the events by role, for the queries.
	ids map[string]string
}

func buildScenario(t *testing.T) scenario {
	s := scenario{ids: map[string]string{}}
	add := func(stage *[]journal.Record, name, sender string, e cloudevents.Event) cloudevents.Event {
		t.Helper()
		*stage = append(*stage, recordFrom(t, sender, e))
		s.ids[name] = e.ID()
		return e
	}
	must := func(e cloudevents.Event, err error) cloudevents.Event {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	sensor := func(key, ns, pod string) cloudevents.Event {
		return must(events.New(events.Spec{Type: events.TypeProcessExec, Source: "parry://sensor/n1", Key: key,
			Extensions: map[string]string{events.ExtPodUID: "uid-" + pod, events.ExtPodNamespace: ns, events.ExtPodName: pod, events.ExtNode: "n1"}}))
	}
	open := func(cause cloudevents.Event, incident, playbook string, score int) cloudevents.Event {
		return must(events.Reply(cause, events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: "open",
			Extensions: map[string]string{events.ExtIncident: incident, events.ExtPlaybook: playbook, events.ExtScore: fmt.Sprint(score),
				events.ExtSeverity: "high", events.ExtResponse: events.ResponseAct},
			Data: map[string]any{"reasons": []string{"exec of a miner", "known pool"}, "description": playbook + " in a pod"}}))
	}
	step := func(cause cloudevents.Event, name string, ok bool) cloudevents.Event {
		spec := events.Spec{Type: events.StepDone(name), Source: "parry://function/" + name, Key: name,
			Extensions: map[string]string{events.ExtStep: name}, Data: map[string]any{"applied": []string{"NetworkPolicy/deny-" + name}}}
		if !ok {
			spec.Type, spec.Data = events.StepFailed(name), map[string]any{"reason": "the runtime refused: it's gone"}
		}
		return must(events.Reply(cause, spec))
	}
	const classify = "system:serviceaccount:parry-system:classify"

	s1 := add(&s.first, "s1", sensorSender, sensor("s1", "shop", "web-1"))
	opened := add(&s.first, "openedA", classify, open(s1, "inc-a", "cryptominer", 90))
	add(&s.first, "isolateA", "parry-system/isolate", step(opened, "isolate", true))
	add(&s.first, "snapshotA", "parry-system/snapshot", step(opened, "snapshot", false))
	s2 := add(&s.first, "s2", sensorSender, sensor("s2", "shop", "web-1"))
	add(&s.first, "joinedA", classify, must(events.Reply(s2, events.Spec{Type: events.TypeIncidentJoined, Source: "parry://function/classify", Key: "join",
		Extensions: map[string]string{events.ExtIncident: "inc-a", events.ExtPlaybook: "cryptominer"}})))
	closed := must(events.New(events.Spec{Type: events.TypeIncidentClosed, Source: "parry://cli/incident", Subject: "inc-a", Key: "close-a",
		Extensions: map[string]string{events.ExtIncident: "inc-a"}, Data: events.IncidentClosed{Incident: "inc-a", ClosedBy: "alice"}}))
	events.SetCause(&closed, opened)
	add(&s.first, "closedA", "alice", closed)

	s3 := add(&s.second, "s3", sensorSender, sensor("s3", "bank", "api-1"))
	openedB := add(&s.second, "openedB", classify, open(s3, "inc-b", "exfiltration", 70))
	add(&s.second, "revokeB", "parry-system/revoke", step(openedB, "revoke", true))
	s4 := add(&s.second, "s4", sensorSender, sensor("s4", "bank", "db-1"))
	add(&s.second, "openedC", classify, open(s4, "inc-c", "cryptominer", 60))

	// Hostile: SQL in an id and an incident, quotes, unicode, 10 KB ids,
	// causation cycles, and a step's reply claiming incident inc-a that
	// no event of inc-a caused.
	hostile := func(name, id string, ext map[string]string, typ string) {
		e := sensorEvent(t, name)
		e.SetID(id)
		e.SetType(typ)
		for k, v := range ext {
			e.SetExtension(k, v)
		}
		add(&s.hostile, name, attacker, e)
	}
	hostile("sql", `'; DROP TABLE events; DROP TABLE journal_events; --`, map[string]string{events.ExtIncident: `x' OR '1'='1`}, events.TypeIncidentOpened)
	hostile("quotes", `"\"'\\%_*?`, map[string]string{events.ExtIncident: `%`, events.ExtCausation: `' OR causation IS NOT NULL --`}, events.TypeProcessExec)
	hostile("unicode", "事件-🚨-\u202eevil\u202c-e\u0301-\uFFFD", map[string]string{events.ExtIncident: "инцидент-🔥"}, events.TypeIncidentOpened)
	hostile("long", strings.Repeat("λ", 5*1024), map[string]string{events.ExtIncident: strings.Repeat("i", 10*1024), events.ExtCausation: strings.Repeat("c", 10*1024)}, events.TypeIncidentOpened)
	hostile("cycle1", "cycle-1", map[string]string{events.ExtIncident: "inc-cycle", events.ExtCausation: "cycle-2"}, events.TypeProcessExec)
	hostile("cycle2", "cycle-2", map[string]string{events.ExtIncident: "inc-cycle", events.ExtCausation: "cycle-1"}, events.TypeProcessExec)
	hostile("self", "self-caused", map[string]string{events.ExtCausation: "self-caused"}, events.TypeProcessExec)
	hostile("impostor", "impostor", map[string]string{events.ExtIncident: "inc-a", events.ExtStep: "isolate"}, events.StepDone("isolate"))
	return s
}

// play journals the scenario into st and returns the time between the
// first incident and the others.
func (s scenario) play(t *testing.T, st contractStore) (mid time.Time) {
	if n := st.mustRecord(t, s.first...); n != len(s.first) {
		t.Fatalf("recorded %d of %d", n, len(s.first))
	}
	time.Sleep(5 * time.Millisecond)
	mid = time.Now()
	time.Sleep(5 * time.Millisecond)
	for _, stage := range [][]journal.Record{s.second, s.hostile} {
		if n := st.mustRecord(t, stage...); n != len(stage) {
			t.Fatalf("recorded %d of %d", n, len(stage))
		}
	}
	// At-least-once: everything again, redelivered.
	if n := st.mustRecord(t, append(append(append([]journal.Record{}, s.first...), s.second...), s.hostile...)...); n != 0 {
		t.Fatalf("a redelivery recorded %d events again", n)
	}
	return mid
}

// entryView is what must be equal across stores: all of an entry but the
// store's own seq and clock (checked separately).
type entryView struct {
	ID, Source, Type, Subject, Incident, Causation, TraceID, Broker, Sender, Event string
	Deliveries                                                                     int
}

func view(t *testing.T, e journal.Entry, from, to time.Time) entryView {
	t.Helper()
	if e.Received.Before(from.Truncate(time.Microsecond)) || e.Received.After(to) {
		t.Errorf("event %.40q received %v, outside the test's %v..%v", e.ID, e.Received, from, to)
	}
	body, err := json.Marshal(e.Event)
	if err != nil {
		t.Fatal(err)
	}
	return entryView{e.ID, e.Source, e.Type, e.Subject, e.Incident, e.Causation, e.TraceID, e.Broker, e.Sender, string(body), len(e.Deliveries)}
}

// shape draws a tree as ids: root(child(...),child).
func shape(n *journal.Node, names map[string]string) string {
	name := names[n.ID]
	if name == "" {
		name = fmt.Sprintf("%.12q", n.ID)
	}
	if len(n.Children) == 0 {
		return name
	}
	parts := make([]string, len(n.Children))
	for i, c := range n.Children {
		parts[i] = shape(c, names)
	}
	return name + "(" + strings.Join(parts, ",") + ")"
}

// TestReaderContract journals the same events into both stores and asks
// both the same questions: the answers must be what on-call expects, and
// the same.
func TestReaderContract(t *testing.T) {
	s := buildScenario(t)
	names := map[string]string{}
	for name, id := range s.ids {
		names[id] = name
	}
	results := map[string]map[string]any{}
	for _, name := range []string{"sqlite", "postgres"} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := contractStores()[name](t)
			start := time.Now()
			mid := s.play(t, st)
			end := time.Now()
			got := map[string]any{}
			results[name] = got
			expect := func(key string, v any, want any) {
				t.Helper()
				got[key] = v
				if want != nil && !reflect.DeepEqual(v, want) {
					t.Errorf("%s = %#v\nwant %#v", key, v, want)
				}
			}

			for role, id := range s.ids {
				e, err := st.Event(ctx, id)
				if err != nil {
					t.Fatalf("Event(%s): %v", role, err)
				}
				if e.ID != id {
					t.Fatalf("Event(%s) returned %.40q", role, e.ID)
				}
				got["event "+role] = view(t, e, start, end)
			}
			for _, id := range []string{"nope", `' OR '1'='1`, "%", strings.Repeat("λ", 5*1024-1), ""} {
				if _, err := st.Event(ctx, id); !errors.Is(err, journal.ErrNotFound) {
					t.Errorf("Event(%.20q) = %v, want ErrNotFound", id, err)
				}
			}

			total := len(s.first) + len(s.second) + len(s.hostile)
			for _, n := range []int{0, 1, 3, total, total + 100} {
				last, err := st.Last(ctx, n)
				if err != nil {
					t.Fatal(err)
				}
				var roles []string
				for _, e := range last {
					roles = append(roles, names[e.ID])
				}
				expect(fmt.Sprintf("last %d", n), len(roles), min(n, total))
				got[fmt.Sprintf("last %d roles", n)] = roles
			}
			if last, _ := st.Last(ctx, 2); len(last) == 2 && (names[last[0].ID] != "self" || names[last[1].ID] != "impostor") {
				t.Errorf("Last(2) = %s, %s; want the last two journaled", names[last[0].ID], names[last[1].ID])
			}

			trees := func(key string, incident string, want []string) {
				t.Helper()
				ts, err := st.Incident(ctx, incident)
				if err != nil {
					t.Fatalf("Incident(%.20q): %v", incident, err)
				}
				var shapes []string
				for _, tr := range ts {
					shapes = append(shapes, shape(tr, names))
				}
				expect(key, shapes, want)
			}
			// The impostor carries inc-a but nothing of inc-a caused it: it
			// is a tree of its own, not a branch of the real one.
			trees("incident inc-a", "inc-a", []string{"s1(openedA(isolateA,snapshotA,closedA))", "s2(joinedA)", "impostor"})
			trees("incident inc-b", "inc-b", []string{"s3(openedB(revokeB))"})
			trees("incident sql", `x' OR '1'='1`, []string{"sql"})
			trees("incident unicode", "инцидент-🔥", []string{"unicode"})
			trees("incident long", strings.Repeat("i", 10*1024), []string{"long"})
			// A cycle has no root: the walk up stops where it would
			// repeat, and the cycle is shown once.
			trees("incident cycle", "inc-cycle", []string{"cycle2(cycle1)"})
			trees("incident %", "%", []string{"quotes"})
			for _, inc := range []string{"_", "inc-%", "' OR 1=1 --", "INC-A", ""} {
				if _, err := st.Incident(ctx, inc); !errors.Is(err, journal.ErrNotFound) {
					t.Errorf("Incident(%q) = %v, want ErrNotFound", inc, err)
				}
			}
			for role, want := range map[string]string{
				"isolateA": "s1(openedA(isolateA,snapshotA,closedA))", "s1": "s1(openedA(isolateA,snapshotA,closedA))",
				"self": "self", "cycle1": "cycle2(cycle1)", "quotes": "quotes",
			} {
				tr, err := st.Tree(ctx, s.ids[role])
				if err != nil {
					t.Fatalf("Tree(%s): %v", role, err)
				}
				expect("tree "+role, shape(tr, names), want)
			}
			if tr, err := st.Tree(ctx, s.ids["openedA"]); err == nil {
				got["tree openedA views"] = view(t, tr.Children[0].Children[1].Entry, start, end)
			}

			list := func(key string, f journal.IncidentFilter, want []string) {
				t.Helper()
				sums, err := st.Incidents(ctx, f)
				if err != nil {
					t.Fatal(err)
				}
				ids := []string{}
				for i := range sums {
					ids = append(ids, sums[i].ID)
					if sums[i].Opened.IsZero() || sums[i].Last.Before(sums[i].Opened) {
						t.Errorf("%s: %s opened %v, last %v", key, sums[i].ID, sums[i].Opened, sums[i].Last)
					}
					// Clocks are each store's own; the rest must agree.
					sums[i].Opened, sums[i].Last, sums[i].Closed = time.Time{}, time.Time{}, time.Time{}
					for k := range sums[i].Steps {
						sums[i].Steps[k].After = 0
					}
				}
				expect(key, ids, want)
				got[key+" summaries"] = sums
			}
			long := strings.Repeat("i", 10*1024)
			list("incidents", journal.IncidentFilter{}, []string{long, "инцидент-🔥", `x' OR '1'='1`, "inc-c", "inc-b", "inc-a"})
			list("incidents closed", journal.IncidentFilter{State: journal.IncidentClosed}, []string{"inc-a"})
			list("incidents open, limit 2", journal.IncidentFilter{State: journal.IncidentOpen, Limit: 2}, []string{long, "инцидент-🔥"})
			list("incidents cryptominer", journal.IncidentFilter{Playbook: "cryptominer"}, []string{"inc-c", "inc-a"})
			list("incidents bank", journal.IncidentFilter{Namespace: "bank"}, []string{"inc-c", "inc-b"})
			list("incidents bank cryptominer", journal.IncidentFilter{Namespace: "bank", Playbook: "cryptominer"}, []string{"inc-c"})
			list("incidents since", journal.IncidentFilter{Since: mid, Playbook: "cryptominer"}, []string{"inc-c"})
			list("incidents since, closed", journal.IncidentFilter{Since: mid, State: journal.IncidentClosed}, []string{})
			list("incidents SQL in a filter", journal.IncidentFilter{Playbook: `' OR '1'='1`}, []string{})
			list("incidents in the future", journal.IncidentFilter{Since: time.Now().Add(time.Hour)}, []string{})
			list("incidents after 2262", journal.IncidentFilter{Since: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}, []string{})
			list("incidents after 300000", journal.IncidentFilter{Since: time.Date(300000, 1, 1, 0, 0, 0, 0, time.UTC)}, []string{})
			list("incidents since 1000 BC", journal.IncidentFilter{Since: time.Date(-1000, 1, 1, 0, 0, 0, 0, time.UTC), Playbook: "exfiltration"}, []string{"inc-b"})

			sums, _ := st.Incidents(ctx, journal.IncidentFilter{Playbook: "cryptominer", State: journal.IncidentClosed})
			if len(sums) != 1 {
				t.Fatalf("closed cryptominer incidents: %d", len(sums))
			}
			a := sums[0]
			if a.First != s.ids["openedA"] || a.ClosedBy != "alice" || a.Score != 90 || a.Namespace != "shop" || a.Pod != "web-1" ||
				a.Joined != 1 || len(a.Reasons) != 2 || a.Closed.Before(a.Opened) {
				t.Errorf("summary of inc-a: %+v", a)
			}
			// The impostor's claim shows as a step of inc-a: only its
			// sender (journaled, shown by parry trace) tells it apart.
			var steps []string
			for _, o := range a.Steps {
				steps = append(steps, o.Step+" "+o.Outcome)
			}
			expect("inc-a steps", steps, []string{"isolate done", "snapshot failed", "isolate done"})
			if imp, err := st.Event(ctx, "impostor"); err != nil || imp.Sender != attacker {
				t.Errorf("the impostor's sender: %q %v", imp.Sender, err)
			}
		})
	}
	sq, pg := results["sqlite"], results["postgres"]
	if sq == nil || pg == nil {
		t.Fatal("a store did not run")
	}
	for key, v := range sq {
		if !reflect.DeepEqual(v, pg[key]) {
			t.Errorf("%s differs:\nsqlite   %#v\npostgres %#v", key, v, pg[key])
		}
	}
	if len(sq) != len(pg) {
		t.Errorf("sqlite answered %d questions, postgres %d", len(sq), len(pg))
	}
}

// Redelivered events reach the journal from several callers at once: each
// is recorded once in both stores.
func TestConcurrentRecordOfTheSameEventsRecordsOnce(t *testing.T) {
	for name, openStore := range contractStores() {
		t.Run(name, func(t *testing.T) {
			st := openStore(t)
			var recs []journal.Record
			for i := range 100 {
				recs = append(recs, record(t, sensorEvent(t, fmt.Sprint("dup-", i))))
			}
			var mu sync.Mutex
			var wg sync.WaitGroup
			total := 0
			for c := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					mine := make([]journal.Record, len(recs))
					for i := range recs {
						mine[(i+c*13)%len(recs)] = recs[i]
					}
					n, err := st.record(context.Background(), mine...)
					if err != nil {
						t.Error(err)
					}
					mu.Lock()
					total += n
					mu.Unlock()
				}()
			}
			wg.Wait()
			last, err := st.Last(context.Background(), 1000)
			if err != nil {
				t.Fatal(err)
			}
			if total != len(recs) || len(last) != len(recs) {
				t.Fatalf("%d recorded as new, %d journaled; want %d and %d", total, len(last), len(recs), len(recs))
			}
		})
	}
}

// The incident list reads the newest incidents a page at a time: a filter
// that only the oldest few pass still finds them, in order, on both stores.
func TestIncidentListPagesThroughManyIncidents(t *testing.T) {
	for name, openStore := range contractStores() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t)
			const n, closed = 300, 5
			var recs []journal.Record
			for i := range n {
				opened, err := events.New(events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: fmt.Sprint(i),
					Extensions: map[string]string{events.ExtIncident: fmt.Sprintf("inc-%03d", i), events.ExtPlaybook: "p"}})
				if err != nil {
					t.Fatal(err)
				}
				recs = append(recs, record(t, opened))
				if i < closed {
					c, err := events.Reply(opened, events.Spec{Type: events.TypeIncidentClosed, Source: "parry://cli/incident", Key: "close"})
					if err != nil {
						t.Fatal(err)
					}
					recs = append(recs, record(t, c))
				}
			}
			st.mustRecord(t, recs...)
			sums, err := st.Incidents(ctx, journal.IncidentFilter{State: journal.IncidentClosed, Limit: 3})
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, s := range sums {
				ids = append(ids, s.ID)
			}
			if want := []string{"inc-004", "inc-003", "inc-002"}; !reflect.DeepEqual(ids, want) {
				t.Fatalf("closed, limit 3: %v, want %v", ids, want)
			}
			// Positive control: without a filter the newest come first.
			sums, err = st.Incidents(ctx, journal.IncidentFilter{Limit: 2})
			if err != nil || len(sums) != 2 || sums[0].ID != "inc-299" || sums[1].ID != "inc-298" {
				t.Fatalf("limit 2: %+v %v", sums, err)
			}
			all, err := st.Incidents(ctx, journal.IncidentFilter{})
			if err != nil || len(all) != n {
				t.Fatalf("no limit: %d incidents, %v", len(all), err)
			}
		})
	}
}

// Last and the incident list may return more events than SQLite takes
// parameters in one query (32,766) when their deliveries are read.
func TestLastReadsTheDeliveriesOfManyEvents(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j := open(t, path)
	j.Close()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := sensorEvent(t, "many").MarshalJSON()
	const n = 33000
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		if _, err := tx.Exec(`INSERT INTO events (seq, id, source, type, broker, received, body) VALUES (?, ?, 's', 't', 'b', 1, ?)`, i, fmt.Sprint(i), body); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO deliveries (event_seq, trigger, target, state, updated) VALUES (?, 'ns/t', 'subscriber', 'done', 1)`, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	db.Close()
	j = open(t, path)
	defer j.Close()
	last, err := j.Last(ctx, n)
	if err != nil || len(last) != n {
		t.Fatalf("Last(%d) = %d entries, %v", n, len(last), err)
	}
	for _, e := range last {
		if len(e.Deliveries) != 1 {
			t.Fatalf("event %d has %d deliveries", e.Seq, len(e.Deliveries))
		}
	}
}
