package classify

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

// freshDatabase is a database of the test's own, dropped when it ends.
func freshDatabase(t *testing.T) string {
	t.Helper()
	return devenv.Require(t).Database(t, "classify")
}

// pgPool is one replica's own pool.
func pgPool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	pool, err := clients.Postgres(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// pgClassifier is one replica of classify on the database at dsn.
func pgClassifier(t *testing.T, dsn string, clk *clock, pbs ...playbook.Compiled) *Classifier {
	t.Helper()
	opts := options(clk, pbs)
	opts.Postgres = pgPool(t, dsn)
	c, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// delivery is one event delivered to one replica, and what it answered.
type delivery struct {
	to    *Classifier
	event cloudevents.Event
	reply *cloudevents.Event
	err   error
}

// deliverAtOnce delivers every delivery concurrently, released together.
func deliverAtOnce(ds []*delivery) {
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, d := range ds {
		h := step.Handler(Definition(), d.to.act, step.Deps{Log: zerolog.Nop()})
		wg.Go(func() {
			<-start
			d.reply, d.err = h(context.Background(), d.event)
		})
	}
	close(start)
	wg.Wait()
}

// sameReply reports whether two replies are the same event: id, type,
// extensions and data (the time attribute is when it was built).
func sameReply(a, b *cloudevents.Event) bool {
	return a.ID() == b.ID() && a.Type() == b.Type() && reflect.DeepEqual(a.Extensions(), b.Extensions()) && string(a.Data()) == string(b.Data())
}

type pair struct{ pod, playbook string }

// outcome is what the replies of one pod and playbook were.
type outcome struct {
	opened, joined []*delivery
	other          []string
	openedIDs      map[string]bool
	incidents      map[string]bool
}

// tally groups the deliveries' replies by the pod and playbook of their
// event (the playbook from the event's comm: playbook N matches comm N).
func tally(t *testing.T, ds []*delivery) map[pair]*outcome {
	t.Helper()
	out := map[pair]*outcome{}
	for _, d := range ds {
		if d.err != nil {
			t.Fatalf("event %s: %v", d.event.ID(), d.err)
		}
		k := pair{events.String(d.event, events.ExtPodUID), events.String(d.event, events.ExtComm)}
		o := out[k]
		if o == nil {
			o = &outcome{openedIDs: map[string]bool{}, incidents: map[string]bool{}}
			out[k] = o
		}
		switch {
		case d.reply == nil:
			o.other = append(o.other, "no reply")
			continue
		case d.reply.Type() == events.TypeIncidentOpened:
			o.opened = append(o.opened, d)
			o.openedIDs[d.reply.ID()] = true
		case d.reply.Type() == events.TypeIncidentJoined:
			o.joined = append(o.joined, d)
		default:
			o.other = append(o.other, d.reply.Type())
		}
		o.incidents[events.String(*d.reply, events.ExtIncident)] = true
	}
	return out
}

// burst is, for each of pods and each playbook (named as the comm it
// matches), events of the pod: the first of them delivered dups more
// times, to both replicas. The deliveries of one pod and playbook are
// shuffled and go to replicas a and b in turn; they stay together, so that
// deliverAtOnce starts them together and they race for the incident.
func burst(t *testing.T, a, b *Classifier, pods int, playbooks []string, each, dups int) []*delivery {
	var ds []*delivery
	for p := range pods {
		for _, pb := range playbooks {
			var evs []cloudevents.Event
			first := exec(t, fmt.Sprintf("pod-%d", p), pb, "/usr/bin/"+pb)
			for range 1 + dups {
				evs = append(evs, first)
			}
			for range each - 1 {
				evs = append(evs, exec(t, fmt.Sprintf("pod-%d", p), pb, "/usr/bin/"+pb))
			}
			rand.Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
			for i, e := range evs {
				to := a
				if i%2 == 1 {
					to = b
				}
				ds = append(ds, &delivery{to: to, event: e})
			}
		}
	}
	return ds
}

// Two replicas on one database get one burst at once: six pods, two
// playbooks, eight events of each pod and playbook with the first of them
// delivered three more times. Each pod and playbook gets one
// incident.opened, its incident named after the event that opened it; that
// event's every delivery is answered with the very same reply, every other
// event joins. The control: the same burst on two replicas that share no
// state (two file stores) opens more than one.
func TestReplicasOpenEachIncidentOnce(t *testing.T) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	pbs := []playbook.Compiled{compiled("xmrig", "high", execOf("xmrig"), nil, guard.Rules{}), compiled("nc", "high", execOf("nc"), nil, guard.Rules{})}
	const pods, each, dups = 6, 8, 3

	// Pools of 16 connections, so that many deliveries are in flight at
	// once on each replica.
	dsn := freshDatabase(t) + "&pool_max_conns=16"
	ds := burst(t, pgClassifier(t, dsn, clk, pbs...), pgClassifier(t, dsn, clk, pbs...), pods, []string{"xmrig", "nc"}, each, dups)
	deliverAtOnce(ds)
	outcomes := tally(t, ds)
	if len(outcomes) != pods*2 {
		t.Fatalf("%d pods and playbooks answered, want %d", len(outcomes), pods*2)
	}
	all := map[string]bool{}
	for k, o := range outcomes {
		if len(o.openedIDs) != 1 || len(o.incidents) != 1 || len(o.other) > 0 {
			t.Errorf("%v: %d distinct incident.opened, %d incidents, other replies %q; want one of each, none other", k, len(o.openedIDs), len(o.incidents), o.other)
			continue
		}
		opener := o.opened[0]
		for _, d := range o.opened[1:] {
			if d.event.ID() != opener.event.ID() || !sameReply(d.reply, opener.reply) {
				t.Errorf("%v: incident.opened for events %s and %s, or two different replies to one event", k, opener.event.ID(), d.event.ID())
			}
		}
		for _, d := range o.joined {
			if d.event.ID() == opener.event.ID() {
				t.Errorf("%v: a redelivery of the opening event %s was answered joined", k, d.event.ID())
			}
		}
		inc := events.String(*opener.reply, events.ExtIncident)
		if want := incidentID(opener.event, k.playbook); inc != want {
			t.Errorf("%v: incident %s, want %s (derived from the opening event)", k, inc, want)
		}
		if len(o.opened)+len(o.joined) != each+dups {
			t.Errorf("%v: %d opened and %d joined, want %d replies", k, len(o.opened), len(o.joined), each+dups)
		}
		all[inc] = true
	}
	if len(all) != pods*2 {
		t.Errorf("%d distinct incidents over %d pods and playbooks", len(all), pods*2)
	}
	var rows int
	if err := pgPool(t, dsn).QueryRow(context.Background(), `SELECT count(*) FROM classify_incidents`).Scan(&rows); err != nil || rows != pods*2 {
		t.Errorf("classify_incidents holds %d rows (%v), want %d", rows, err, pods*2)
	}

	t.Run("control: replicas sharing no state", func(t *testing.T) {
		ds := burst(t, newClassifier(t, "", clk, pbs...), newClassifier(t, "", clk, pbs...), pods, []string{"xmrig", "nc"}, each, dups)
		deliverAtOnce(ds)
		twice := 0
		for _, o := range tally(t, ds) {
			if len(o.openedIDs) > 1 {
				twice++
			}
		}
		if twice == 0 {
			t.Fatal("two replicas without shared state opened each incident once: the test above cannot tell shared state from luck")
		}
	})
}

// The state is the database's, not a replica's: a baseline learned through
// replica A scores on replica B; a breaker tripped through A refuses on B
// and on a replica started later; a sensor loss reported to B escalates on
// A. Each with its control: what acts before the shared change.
func TestReplicasShareBaselinesBreakersAndLoss(t *testing.T) {
	dsn := freshDatabase(t)
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	pbs := []playbook.Compiled{
		compiled("curl", "low", execOf("curl"), nil, guard.Rules{}),
		compiled("limited", "high", execOf("nc"), nil, guard.Rules{RateIncidents: 2, RatePer: "1m"}),
		compiled("other", "high", execOf("dd"), nil, guard.Rules{RateIncidents: 2, RatePer: "1m"}),
		compiled("healthy", "high", execOf("hh"), nil, guard.Rules{RequireHealthySensor: true}),
	}
	a, b := pgClassifier(t, dsn, clk, pbs...), pgClassifier(t, dsn, clk, pbs...)
	opened := func(r *cloudevents.Event) *cloudevents.Event {
		t.Helper()
		if r == nil || r.Type() != events.TypeIncidentOpened {
			t.Fatalf("got %v, want incident.opened", r)
		}
		return r
	}
	response := func(r *cloudevents.Event) string { t.Helper(); return events.String(*opened(r), events.ExtResponse) }

	// Baseline: curl learned through A is known on B after the window.
	if r := handle(t, a, exec(t, "pod-w", "curl", "/usr/bin/curl")); r == nil || r.Type() != events.TypeIncidentSuppressed {
		t.Fatalf("learning: %v, want suppressed", r)
	}
	clk.advance(2 * time.Hour)
	if r := handle(t, b, exec(t, "pod-w", "curl", "/usr/bin/curl")); r == nil || r.Type() != events.TypeIncidentSuppressed {
		t.Fatalf("known executable on B: %v, want suppressed", r)
	}
	if d := data(t, opened(handle(t, b, exec(t, "pod-w", "curl", "/tmp/curl", "curl", "stratum+tcp://x9qk2m7vzp4lw8.pool.example.com:3333")))); !strings.Contains(strings.Join(d.Reasons, "\n"), "/tmp/curl is not in workload pod/pod-w's baseline (1 executables)") {
		t.Errorf("B scored against another baseline: %q", d.Reasons)
	}

	// Breaker: two pods through A and B act, the third (A) trips it, the
	// fourth (B) and a later replica's fifth find it open.
	for i, c := range []*Classifier{a, b} {
		if got := response(handle(t, c, exec(t, fmt.Sprint("pod-", i), "nc", "/bin/nc"))); got != events.ResponseAct {
			t.Fatalf("pod %d: %s, want act", i, got)
		}
	}
	if d := data(t, opened(handle(t, a, exec(t, "pod-2", "nc", "/bin/nc")))); d.Response != events.ResponseEscalate || !strings.Contains(strings.Join(d.Reasons, "\n"), "would be the 3th pod") {
		t.Fatalf("third pod: %s %q, want the breaker to open", d.Response, d.Reasons)
	}
	late := pgClassifier(t, dsn, clk, pbs...)
	for i, c := range []*Classifier{b, late} {
		if d := data(t, opened(handle(t, c, exec(t, fmt.Sprint("pod-", 3+i), "nc", "/bin/nc")))); d.Response != events.ResponseEscalate || !strings.Contains(strings.Join(d.Reasons, "\n"), "circuit breaker of playbook limited is open until") {
			t.Errorf("replica %d after the breaker opened: %s %q, want it open", i, d.Response, d.Reasons)
		}
	}
	if got := response(handle(t, b, exec(t, "pod-9", "dd", "/bin/dd"))); got != events.ResponseAct {
		t.Errorf("another playbook's breaker: %s, want act", got)
	}
	clk.advance(2 * time.Minute)
	if got := response(handle(t, b, exec(t, "pod-10", "nc", "/bin/nc"))); got != events.ResponseAct {
		t.Errorf("after the cooldown: %s, want act", got)
	}

	// Sensor loss: reported to B, escalates on A.
	if got := response(handle(t, a, exec(t, "pod-h1", "hh", "/bin/hh"))); got != events.ResponseAct {
		t.Fatalf("healthy sensor: %s, want act", got)
	}
	handle(t, b, sensorEvent(t, events.TypeSensorHealth, map[string]string{"severity": "warning"}, nil))
	if got := response(handle(t, a, exec(t, "pod-h2", "hh", "/bin/hh"))); got != events.ResponseEscalate {
		t.Errorf("loss reported to the other replica: %s, want escalate", got)
	}
}

// Hostile keys: pods and nodes named in SQL, with NUL bytes, invalid UTF-8
// or a quarter of a megabyte, and a playbook named in SQL, break no store
// and share no entry with a look-alike: each pod gets its own incident and
// joins it, and a loss on a look-alike of node n1 leaves n1 healthy.
func TestHostileKeys(t *testing.T) { onEachStore(t, testHostileKeys) }

func testHostileKeys(t *testing.T, replica replicaOf) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	sqlName := "x'); DELETE FROM classify_breakers; DROP TABLE classify_incidents; --"
	pbs := []playbook.Compiled{
		compiled(sqlName, "high", execOf("nc"), nil, guard.Rules{RateIncidents: 20, RatePer: "1h"}),
		compiled("healthy", "high", execOf("hh"), nil, guard.Rules{RequireHealthySensor: true}),
	}
	c := replica(clk, pbs...)
	huge := strings.Repeat("x", 256<<10)
	pods := []string{"pod-a", "pod-a' OR '1'='1", "pod-a'); DROP TABLE classify_incidents; --", "pod-a\x00", "pod-a\x00b", "pod-a\xff", "pod-a\\", huge, huge + "y", "pod-a|" + sqlName}
	incidents := map[string]string{}
	for _, p := range pods {
		r := handle(t, c, sensorEvent(t, events.TypeProcessExec, map[string]string{"poduid": p, "comm": "nc", "exe": "/bin/nc", "playbook": sqlName}, nil))
		if r == nil || r.Type() != events.TypeIncidentOpened || events.String(*r, events.ExtResponse) != events.ResponseAct {
			t.Fatalf("pod %.40q: %v, want incident.opened and act", p, r)
		}
		inc := events.String(*r, events.ExtIncident)
		for other, seen := range incidents {
			if seen == inc {
				t.Fatalf("pods %.40q and %.40q share incident %s", p, other, inc)
			}
		}
		incidents[p] = inc
	}
	for _, p := range pods {
		r := handle(t, c, sensorEvent(t, events.TypeProcessExec, map[string]string{"poduid": p, "comm": "nc", "exe": "/bin/nc"}, nil))
		if r == nil || r.Type() != events.TypeIncidentJoined || events.String(*r, events.ExtIncident) != incidents[p] {
			t.Errorf("pod %.40q again: %v, want joined to %s", p, r, incidents[p])
		}
	}
	for _, node := range []string{"n1' OR '1'='1", "n1\x00", huge} {
		handle(t, c, sensorEvent(t, events.TypeSensorHealth, map[string]string{"severity": "warning", "node": node}, nil))
	}
	hh := func(pod, node string) string {
		r := handle(t, c, sensorEvent(t, events.TypeProcessExec, map[string]string{"poduid": pod, "comm": "hh", "exe": "/bin/hh", "node": node}, nil))
		if r == nil || r.Type() != events.TypeIncidentOpened {
			t.Fatalf("pod %s on %.40q: %v", pod, node, r)
		}
		return events.String(*r, events.ExtResponse)
	}
	if got := hh("pod-h1", "n1"); got != events.ResponseAct {
		t.Errorf("n1 after losses on look-alikes: %s, want act", got)
	}
	if got := hh("pod-h2", "n1' OR '1'='1"); got != events.ResponseEscalate {
		t.Errorf("the look-alike itself: %s, want escalate", got)
	}
}

// The row keys of different kinds, and of different splits of one string
// into pod and playbook, differ.
func TestRowKeysDoNotCollide(t *testing.T) {
	keys := map[string]string{}
	for name, k := range map[string][]byte{
		"incident a|b,c":  rowKey("incident", "a|b", "c"),
		"incident a,b|c":  rowKey("incident", "a", "b|c"),
		"incident ab,c":   rowKey("incident", "ab", "c"),
		"incident a,bc":   rowKey("incident", "a", "bc"),
		"workload x":      rowKey("workload", "x"),
		"loss x":          rowKey("loss", "x"),
		"breaker x":       rowKey("breaker", "x"),
		"incident x,''":   rowKey("incident", "x", ""),
		"incident '',x":   rowKey("incident", "", "x"),
		"workload x\\x00": rowKey("workload", "x\x00"),
	} {
		if other, ok := keys[string(k)]; ok {
			t.Errorf("%s and %s share a key", name, other)
		}
		keys[string(k)] = name
	}
}

// The store's JSON is the file store's: an incident read back from the
// database is the one written, to the nanosecond.
func TestPostgresKeepsEntriesExactly(t *testing.T) {
	dsn := freshDatabase(t)
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 123456789, time.UTC)}
	c := pgClassifier(t, dsn, clk, compiled("pm", "medium", execOf("dpkg"), nil, guard.Rules{}))
	handle(t, c, exec(t, "pod-a", "dpkg", "/usr/bin/dpkg"))
	var doc []byte
	if err := pgPool(t, dsn).QueryRow(context.Background(), `SELECT doc FROM classify_incidents`).Scan(&doc); err != nil {
		t.Fatal(err)
	}
	var inc incident
	if err := json.Unmarshal(doc, &inc); err != nil {
		t.Fatal(err)
	}
	if !inc.Opened.Equal(clk.t) || inc.Pod != "pod-a" || inc.Playbook != "pm" || inc.Events != 1 {
		t.Errorf("stored incident %+v", inc)
	}
}

// Concurrent updates of one breaker and one baseline lose nothing: twenty
// pods detected at once through two replicas, with a limit of five pods,
// give exactly five act; twenty executables of one workload's pods learned
// at once through two replicas (events of no playbook, as the
// classify-baseline Trigger delivers them) are all in its baseline.
func TestConcurrentBreakerAndBaselineUpdatesAreNotLost(t *testing.T) {
	dsn := freshDatabase(t) + "&pool_max_conns=16"
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	pbs := []playbook.Compiled{compiled("limited", "high", execOf("nc"), nil, guard.Rules{RateIncidents: 5, RatePer: "1h"})}
	a, b := pgClassifier(t, dsn, clk, pbs...), pgClassifier(t, dsn, clk, pbs...)
	web := func(comm, exe string) cloudevents.Event {
		return sensorEvent(t, events.TypeProcessExec, map[string]string{"poduid": "web-" + exe, "podns": "shop", "owner": "Deployment/web", "comm": comm, "exe": exe}, nil)
	}
	var ds []*delivery
	for i := range 40 {
		to := []*Classifier{a, b}[i%2]
		if i < 20 {
			ds = append(ds, &delivery{to: to, event: exec(t, fmt.Sprint("pod-", i), "nc", "/bin/nc")})
		} else {
			ds = append(ds, &delivery{to: to, event: web("ls", fmt.Sprint("/bin/tool-", i))})
		}
	}
	deliverAtOnce(ds)
	acted := 0
	for i, d := range ds {
		if d.err != nil || (i < 20) != (d.reply != nil) {
			t.Fatalf("event %d: %v %v", i, d.reply, d.err)
		}
		if i < 20 && d.reply.Type() == events.TypeIncidentOpened && events.String(*d.reply, events.ExtResponse) == events.ResponseAct {
			acted++
		}
	}
	if acted != 5 {
		t.Errorf("%d of 20 pods acted on, want the limit of 5", acted)
	}
	clk.advance(2 * time.Hour)
	reasons := func(c *Classifier, e cloudevents.Event) string {
		t.Helper()
		r := handle(t, c, e)
		if r == nil {
			t.Fatalf("event %s: no reply", e.ID())
		}
		return strings.Join(data(t, r).Reasons, "\n")
	}
	if got := reasons(b, web("nc", "/bin/tool-20")); strings.Contains(got, "executable /bin/tool-20 is not") {
		t.Errorf("a learned executable is not in the baseline:\n%s", got)
	}
	want := "executable /bin/nc is not in workload shop/Deployment/web's baseline (20 executables)"
	if got := reasons(a, web("nc", "/bin/nc")); !strings.Contains(got, want) {
		t.Errorf("reasons:\n%s\nwant %q", got, want)
	}
}
