package broker_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/manifest"
)

const brokerYAML = `apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: parry, namespace: parry-system}
`

// harness is a broker served over real loopback HTTP with a real journal.
type harness struct {
	url     string
	journal *journal.Journal
	broker  *broker.Broker
}

func start(t testing.TB, triggers string, fns map[string]events.Handler, options ...func(*broker.Options)) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	set, err := manifest.Parse(ctx, "test.yaml", []byte(brokerYAML+triggers))
	if err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(ctx, filepath.Join(t.TempDir(), "journal.db"))
	if err != nil {
		t.Fatal(err)
	}
	// Tests about other things than authentication run the ingress insecure
	// (auth_test.go tests it); in-process replies still meet the policies.
	opts := broker.Options{Manifests: set, Journal: j, Functions: fns, Client: httpclient.New(0), Log: zerolog.Nop(), MaxEventBytes: 64 << 10, Insecure: true}
	for _, o := range options {
		o(&opts)
	}
	b, err := broker.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b)
	t.Cleanup(func() {
		srv.Close()
		cancel()
		b.Wait()
		j.Close()
	})
	return &harness{url: srv.URL + "/parry-system/parry", journal: j, broker: b}
}

func newEvent(id, typ string, ext map[string]any) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("test")
	e.SetType(typ)
	e.SetTime(time.Now())
	for k, v := range ext {
		e.SetExtension(k, v)
	}
	return e
}

// newRequest builds a request or fails the test.
func newRequest(t testing.TB, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func post(t testing.TB, url string, e cloudevents.Event) int {
	t.Helper()
	req := newRequest(t, http.MethodPost, url, nil)
	if err := cehttp.WriteRequest(context.Background(), binding.ToMessage(&e), req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// accept posts e and fails the test unless the broker accepted it.
func accept(t testing.TB, url string, e cloudevents.Event) {
	t.Helper()
	if got := post(t, url, e); got != http.StatusAccepted {
		t.Fatalf("ingress answered %d to event %s, want 202", got, e.ID())
	}
}

// recorder is an in-process function that records what it receives.
type recorder struct {
	mu   sync.Mutex
	got  []cloudevents.Event
	seen chan string
}

func newRecorder() *recorder { return &recorder{seen: make(chan string, 1000)} }

func (r *recorder) handle(_ context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
	r.mu.Lock()
	r.got = append(r.got, e)
	r.mu.Unlock()
	r.seen <- e.ID()
	return nil, nil
}

func (r *recorder) wait(t testing.TB, n int) []string {
	t.Helper()
	var ids []string
	timeout := time.After(10 * time.Second)
	for len(ids) < n {
		select {
		case id := <-r.seen:
			ids = append(ids, id)
		case <-timeout:
			t.Fatalf("got %d of %d deliveries: %v", len(ids), n, ids)
		}
	}
	return ids
}

func (r *recorder) none(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case id := <-r.seen:
		t.Fatalf("unexpected delivery of %s", id)
	case <-time.After(d):
	}
}

func TestIngressStatusCodes(t *testing.T) {
	h := start(t, "", nil)
	good := newEvent("1", "t", nil)
	if got := post(t, h.url, good); got != http.StatusAccepted {
		t.Fatalf("valid event: %d", got)
	}
	if got := post(t, strings.Replace(h.url, "/parry-system/parry", "/parry-system/other", 1), good); got != http.StatusNotFound {
		t.Fatalf("unknown broker: %d", got)
	}

	send := func(req *http.Request) (int, string) {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	req := newRequest(t, http.MethodPost, h.url, strings.NewReader(`{"specversion":"1.0","source":"s","type":"t"}`))
	req.Header.Set("Content-Type", "application/cloudevents+json")
	if code, body := send(req); code != http.StatusBadRequest || !strings.Contains(body, "id") {
		t.Fatalf("structured event without id: %d %q", code, body)
	}
	req = newRequest(t, http.MethodPost, h.url, nil)
	for k, v := range map[string]string{"ce-specversion": "1.0", "ce-id": "2", "ce-source": "s", "ce-type": "t", "ce-traceparent": "bogus"} {
		req.Header.Set(k, v)
	}
	if code, body := send(req); code != http.StatusBadRequest || !strings.Contains(body, "traceparent") {
		t.Fatalf("bad traceparent: %d %q", code, body)
	}
	req = newRequest(t, http.MethodPost, h.url, strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "application/json")
	if code, body := send(req); code != http.StatusBadRequest || !strings.Contains(body, "not a CloudEvent") {
		t.Fatalf("plain JSON: %d %q", code, body)
	}
	big := newEvent("3", "t", nil)
	big.SetData("application/octet-stream", bytes.Repeat([]byte("x"), 100<<10))
	if got := post(t, h.url, big); got != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized event: %d", got)
	}
	req = newRequest(t, http.MethodGet, h.url, nil)
	if code, _ := send(req); code != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", code)
	}
	if _, err := h.journal.Event(context.Background(), "1"); err != nil {
		t.Fatalf("accepted event not journaled: %v", err)
	}
}

// The filter examples are those of Knative's documentation for Trigger
// filters (eventing/features/broker-trigger and the filters reference).
func TestFilterDialects(t *testing.T) {
	trigger := func(name, spec string) string {
		return fmt.Sprintf(`---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: %s, namespace: parry-system}
spec:
  broker: parry
%s
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: %s}
`, name, spec, name)
	}
	cases := []struct {
		name, spec string
		match      []cloudevents.Event
		miss       []cloudevents.Event
	}{
		{"attributes", `  filter:
    attributes:
      type: dev.knative.foo.bar
      myextension: my-extension-value`,
			[]cloudevents.Event{newEvent("a1", "dev.knative.foo.bar", map[string]any{"myextension": "my-extension-value"})},
			[]cloudevents.Event{newEvent("a2", "dev.knative.foo.bar", nil), newEvent("a3", "other", map[string]any{"myextension": "my-extension-value"})}},
		{"exact", `  filters:
  - exact: {type: com.github.push}`,
			[]cloudevents.Event{newEvent("e1", "com.github.push", nil)},
			[]cloudevents.Event{newEvent("e2", "com.github.push.v2", nil)}},
		{"prefix", `  filters:
  - prefix: {type: com.github.}`,
			[]cloudevents.Event{newEvent("p1", "com.github.pull_request", nil)},
			[]cloudevents.Event{newEvent("p2", "org.github.push", nil)}},
		{"suffix", `  filters:
  - suffix: {type: .created}`,
			[]cloudevents.Event{newEvent("s1", "com.github.issue.created", nil)},
			[]cloudevents.Event{newEvent("s2", "com.github.issue.closed", nil)}},
		{"all", `  filters:
  - all:
    - exact: {type: com.github.push}
    - exact: {subject: https://github.com/knative/eventing}`,
			[]cloudevents.Event{withSubject(newEvent("l1", "com.github.push", nil), "https://github.com/knative/eventing")},
			[]cloudevents.Event{newEvent("l2", "com.github.push", nil)}},
		{"any", `  filters:
  - any:
    - exact: {type: com.github.push}
    - exact: {subject: https://github.com/knative/eventing}`,
			[]cloudevents.Event{newEvent("y1", "com.github.push", nil), withSubject(newEvent("y2", "x", nil), "https://github.com/knative/eventing")},
			[]cloudevents.Event{newEvent("y3", "x", nil)}},
		{"not", `  filters:
  - not:
      exact: {type: com.github.push}`,
			[]cloudevents.Event{newEvent("n1", "com.github.pull", nil)},
			[]cloudevents.Event{newEvent("n2", "com.github.push", nil)}},
		{"cesql", `  filters:
  - cesql: "source LIKE '%commerce%' AND type IN ('order.created', 'order.updated')"`,
			[]cloudevents.Event{withSource(newEvent("c1", "order.created", nil), "ecommerce")},
			[]cloudevents.Event{withSource(newEvent("c2", "order.deleted", nil), "ecommerce"), newEvent("c3", "order.created", nil)}},
		{"several filters are ANDed", `  filters:
  - prefix: {type: dev.parry.sensor.}
  - cesql: "dport IN ('3333', '4444')"`,
			[]cloudevents.Event{newEvent("m1", events.TypeNetworkConnect, map[string]any{"dport": "3333"})},
			[]cloudevents.Event{newEvent("m2", events.TypeNetworkConnect, map[string]any{"dport": "443"}), newEvent("m3", "x", map[string]any{"dport": "3333"})}},
		{"filters win over filter.attributes", `  filter:
    attributes: {type: never}
  filters:
  - exact: {type: always}`,
			[]cloudevents.Event{newEvent("w1", "always", nil)},
			[]cloudevents.Event{newEvent("w2", "never", nil)}},
		{"no filter matches everything", ``,
			[]cloudevents.Event{newEvent("z1", "anything", nil)}, nil},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := newRecorder()
			name := fmt.Sprintf("f%d", i)
			h := start(t, trigger(name, c.spec), map[string]events.Handler{name: rec.handle})
			for _, e := range c.miss {
				accept(t, h.url, e)
			}
			for _, e := range c.match {
				accept(t, h.url, e)
			}
			got := rec.wait(t, len(c.match))
			for i, e := range c.match {
				if got[i] != e.ID() && !contains(got, e.ID()) {
					t.Errorf("matching event %s not delivered (got %v)", e.ID(), got)
				}
				if ds := routed(t, h, e.ID()); len(ds) != 1 || ds[0] != "parry-system/"+name {
					t.Errorf("matching event %s journaled with deliveries to %v, want [parry-system/%s]", e.ID(), ds, name)
				}
			}
			// The misses reached the broker and its filter: each is
			// journaled, with no delivery to the Trigger.
			for _, e := range c.miss {
				if ds := routed(t, h, e.ID()); len(ds) != 0 {
					t.Errorf("event %s must not match, but was routed to %v", e.ID(), ds)
				}
			}
			rec.none(t, 100*time.Millisecond)
		})
	}
}

// routed returns the Triggers the journal routed the event with id to; it
// fails the test when the event was never journaled.
func routed(t testing.TB, h *harness, id string) []string {
	t.Helper()
	entry, err := h.journal.Event(context.Background(), id)
	if err != nil {
		t.Fatalf("event %s never reached the broker's journal: %v", id, err)
	}
	var triggers []string
	for _, d := range entry.Deliveries {
		triggers = append(triggers, d.Trigger)
	}
	return triggers
}

func withSubject(e cloudevents.Event, s string) cloudevents.Event { e.SetSubject(s); return e }
func withSource(e cloudevents.Event, s string) cloudevents.Event  { e.SetSource(s); return e }

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func TestRetryThenDeadLetter(t *testing.T) {
	var mu sync.Mutex
	attempts := 0
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		attempts++
		mu.Unlock()
		http.Error(w, "subscriber is down", http.StatusServiceUnavailable)
	}))
	defer down.Close()
	dls := newRecorder()
	h := start(t, fmt.Sprintf(`---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: flaky, namespace: parry-system}
spec:
  broker: parry
  subscriber: {uri: %q}
  delivery:
    retry: 2
    backoffPolicy: linear
    backoffDelay: PT0.01S
    deadLetterSink:
      ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: dls}
`, down.URL), map[string]events.Handler{"dls": dls.handle})
	accept(t, h.url, newEvent("doomed", "t", nil))
	dls.wait(t, 1)
	mu.Lock()
	if attempts != 3 {
		t.Errorf("subscriber saw %d attempts, want 1 + 2 retries", attempts)
	}
	mu.Unlock()
	dead := dls.got[0]
	if dead.ID() != "doomed" {
		t.Fatalf("dead letter is %s", dead.ID())
	}
	if got := events.String(dead, "knativeerrorcode"); got != "503" {
		t.Errorf("knativeerrorcode = %q", got)
	}
	if got := events.String(dead, "knativeerrordest"); !strings.HasPrefix(got, down.URL) {
		t.Errorf("knativeerrordest = %q", got)
	}
	data, err := base64.StdEncoding.DecodeString(events.String(dead, "knativeerrordata"))
	if err != nil {
		t.Fatalf("knativeerrordata: %v", err)
	}
	if !strings.Contains(string(data), "subscriber is down") {
		t.Errorf("knativeerrordata = %q", data)
	}
	var entry journal.Entry
	eventually(t, func() bool {
		entry, err = h.journal.Event(context.Background(), "doomed")
		if err != nil {
			return false
		}
		states := map[journal.Target]journal.State{}
		for _, d := range entry.Deliveries {
			states[d.Target] = d.State
		}
		return states[journal.ToSubscriber] == journal.Failed && states[journal.ToDeadLetter] == journal.Done
	}, func() string { return fmt.Sprintf("journaled deliveries: %+v (%v)", entry.Deliveries, err) })
}

func TestNonRetryableAnswerGoesStraightToDeadLetter(t *testing.T) {
	var mu sync.Mutex
	attempts := 0
	reject := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		attempts++
		mu.Unlock()
		http.Error(w, "bad", http.StatusBadRequest)
	}))
	defer reject.Close()
	dls := newRecorder()
	h := start(t, fmt.Sprintf(`---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: strict, namespace: parry-system}
spec:
  broker: parry
  subscriber: {uri: %q}
  delivery:
    retry: 5
    deadLetterSink: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: dls}}
`, reject.URL), map[string]events.Handler{"dls": dls.handle})
	accept(t, h.url, newEvent("rejected", "t", nil))
	dls.wait(t, 1)
	mu.Lock()
	defer mu.Unlock()
	if attempts != 1 {
		t.Fatalf("a 400 was retried: %d attempts", attempts)
	}
}

func TestReplyReentersWithCausationAndTrace(t *testing.T) {
	step := func(_ context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
		r, err := events.Reply(e, events.Spec{Type: events.StepDone("isolate"), Source: "parry://function/isolate", Key: "isolate"})
		return &r, err
	}
	// A foreign HTTP subscriber that replies without any parry attributes.
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reply := newEvent("foreign-reply", "vendor.reply", nil)
		if err := cehttp.WriteResponseWriter(r.Context(), binding.ToMessage(&reply), http.StatusOK, w); err != nil {
			t.Errorf("the foreign subscriber's reply: %v", err)
		}
	}))
	defer foreign.Close()
	final := newRecorder()
	h := start(t, fmt.Sprintf(`---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: isolate, namespace: parry-system}
spec:
  broker: parry
  filters: [{exact: {type: %s}}]
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: isolate}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: vendor, namespace: parry-system}
spec:
  broker: parry
  filters: [{exact: {type: %s}}]
  subscriber: {uri: %q}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: final, namespace: parry-system}
spec:
  broker: parry
  filters: [{exact: {type: vendor.reply}}]
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: final}}
`, events.TypeIncidentOpened, events.StepDone("isolate"), foreign.URL), map[string]events.Handler{"isolate": step, "final": final.handle})

	root, err := events.New(events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: "k",
		Extensions: map[string]string{events.ExtIncident: "inc-1"}})
	if err != nil {
		t.Fatal(err)
	}
	accept(t, h.url, root)
	final.wait(t, 1)
	got := final.got[0]
	if events.TraceID(got) != events.TraceID(root) {
		t.Fatalf("trace lost across two hops: %s vs %s", events.TraceID(got), events.TraceID(root))
	}
	var tree *journal.Node
	eventually(t, func() bool {
		trees, err := h.journal.Incident(context.Background(), "inc-1")
		if err == nil && len(trees) == 1 && depth(trees[0]) == 3 {
			tree = trees[0]
		}
		return tree != nil
	}, func() string { return "journal never showed the three-event causal chain" })
	if tree.ID != root.ID() || tree.Children[0].Type != events.StepDone("isolate") || tree.Children[0].Children[0].ID != "foreign-reply" {
		t.Fatalf("unexpected tree rooted at %s", tree.ID)
	}
}

// eventually polls cond for up to 5 s: journal completions are committed
// asynchronously after the subscriber has answered.
func eventually(t testing.TB, cond func() bool, msg func() string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal(msg())
}

func depth(n *journal.Node) int {
	d := 1
	for _, c := range n.Children {
		d = max(d, 1+depth(c))
	}
	return d
}

func TestUnknownFunctionIsAnError(t *testing.T) {
	set, err := manifest.Parse(context.Background(), "t.yaml", []byte(brokerYAML+`---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: parry-system}
spec:
  broker: parry
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: missing}}
`))
	if err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(context.Background(), filepath.Join(t.TempDir(), "j.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	_, err = broker.New(broker.Options{Manifests: set, Journal: j, Client: http.DefaultClient, Functions: map[string]events.Handler{"classify": nil}})
	if err == nil || !strings.Contains(err.Error(), `"missing"`) || !strings.Contains(err.Error(), "registered: classify") || !strings.Contains(err.Error(), "t.yaml:") {
		t.Fatalf("error does not name the function, the file and what is registered: %v", err)
	}
}
