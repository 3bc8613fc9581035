package emit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/httpclient"
)

// sink is a CloudEvents receiver on loopback that can go down (listener
// closed: connection refused) and come back on the same address.
type sink struct {
	t      *testing.T
	addr   string
	mu     sync.Mutex
	srv    *http.Server
	got    []cloudevents.Event
	binary int
	status int // answer with this instead of 202 when set
}

func newSink(t *testing.T) *sink {
	s := &sink{t: t}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = l.Addr().String()
	s.serve(l)
	t.Cleanup(s.down)
	return s
}

func (s *sink) url() string { return "http://" + s.addr + "/" }

func (s *sink) serve(l net.Listener) {
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := cehttp.NewEventFromHTTPRequest(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.status != 0 {
			w.WriteHeader(s.status)
			return
		}
		if r.Header.Get("ce-id") != "" {
			s.binary++
		}
		s.got = append(s.got, *ev)
		w.WriteHeader(http.StatusAccepted)
	})}
	go s.srv.Serve(l)
}

func (s *sink) down() {
	if s.srv != nil {
		s.srv.Close()
		s.srv = nil
	}
}

// up listens on the old address again. While the sink was down, the
// emitter's reconnects took ephemeral ports, and the sink's port is one of
// them: Linux may pick it as a connect's local port (a TCP self-connect),
// holding it until the emitter gives that attempt up. So retry a moment.
func (s *sink) up() {
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := net.Listen("tcp", s.addr)
		if err == nil {
			s.serve(l)
			return
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			s.t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *sink) events() []cloudevents.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]cloudevents.Event(nil), s.got...)
}

func event(i int) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID(fmt.Sprintf("id-%06d", i))
	e.SetType("dev.parry.test.v1")
	e.SetSource("parry://test")
	if err := e.SetData(cloudevents.ApplicationJSON, map[string]int{"seq": i}); err != nil {
		panic(err) // a map of ints always encodes
	}
	return e
}

func waitCount(t *testing.T, s *sink, n int, within time.Duration) []cloudevents.Event {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := s.events()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func start(t *testing.T, o Options) (*Emitter, context.CancelFunc, chan struct{}) {
	t.Helper()
	if o.Client == nil {
		o.Client = httpclient.New(2 * time.Second)
	}
	o.RetryMin, o.RetryMax = 10*time.Millisecond, 50*time.Millisecond
	o.Log = zerolog.Nop()
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx, time.Second); close(done) }()
	return e, cancel, done
}

func TestBinaryModeAndOverrides(t *testing.T) {
	s := newSink(t)
	ov, err := ParseOverrides(`{"extensions":{"cluster":"prod-eu"}}`)
	if err != nil {
		t.Fatal(err)
	}
	e, cancel, done := start(t, Options{Sink: s.url(), Overrides: ov})
	defer func() { cancel(); <-done }()
	e.Emit(event(1))
	got := waitCount(t, s, 1, 5*time.Second)
	if len(got) != 1 || got[0].ID() != "id-000001" || got[0].Extensions()["cluster"] != "prod-eu" || s.binary != 1 {
		t.Fatalf("got %v (binary %d)", got, s.binary)
	}
	if _, err := ParseOverrides(`{"extensions":`); err == nil {
		t.Fatal("malformed K_CE_OVERRIDES accepted")
	}
}

// TestSpoolInOrder is the spool test: the sink is down during a
// burst, then up; every event arrives exactly once, in order.
func TestSpoolInOrder(t *testing.T) {
	s := newSink(t)
	s.down()
	e, cancel, done := start(t, Options{Sink: s.url(), SpoolDir: t.TempDir(), SpoolMaxBytes: 64 << 20, QueueLen: 64})
	defer func() { cancel(); <-done }()
	const n = 3000
	for i := range n {
		e.Emit(event(i))
	}
	time.Sleep(200 * time.Millisecond)
	if st := e.Stats(); st.Spooled == 0 || st.SinkUp {
		t.Fatalf("expected spooling while the sink is down: %+v", st)
	}
	s.up()
	got := waitCount(t, s, n, 30*time.Second)
	checkInOrder(t, got, 0, n)
	if st := e.Stats(); st.Spooled != 0 || st.SpoolOverflow != 0 || st.Sent != n {
		t.Fatalf("after drain: %+v", st)
	}
}

func checkInOrder(t *testing.T, got []cloudevents.Event, from, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("received %d events, want %d", len(got), n)
	}
	for i, ev := range got {
		if want := fmt.Sprintf("id-%06d", from+i); ev.ID() != want {
			t.Fatalf("event %d is %s, want %s (out of order or duplicated)", i, ev.ID(), want)
		}
	}
}

// TestSpoolOverflowCounted: what neither queue nor spool can hold is
// counted, and received + lost = emitted.
func TestSpoolOverflowCounted(t *testing.T) {
	s := newSink(t)
	s.down()
	e, cancel, done := start(t, Options{Sink: s.url(), SpoolDir: t.TempDir(), SpoolMaxBytes: 16 << 10, QueueLen: 8})
	defer func() { cancel(); <-done }()
	const n = 500
	for i := range n {
		e.Emit(event(i))
	}
	st := e.Stats()
	if st.SpoolOverflow == 0 || st.SpoolBytes > 16<<10 {
		t.Fatalf("spool not bounded or overflow not counted: %+v", st)
	}
	s.up()
	deadline := time.Now().Add(10 * time.Second)
	for e.Stats().Spooled > 0 || e.Stats().Queued > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("not drained: %+v", e.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := s.events()
	if uint64(len(got))+e.Stats().SpoolOverflow != n {
		t.Fatalf("received %d + lost %d != emitted %d", len(got), e.Stats().SpoolOverflow, n)
	}
	checkInOrder(t, got, 0, len(got)) // the oldest are kept, in order
}

// TestSpoolSurvivesRestart: events spooled by one run are delivered, in
// order, by the next.
func TestSpoolSurvivesRestart(t *testing.T) {
	s := newSink(t)
	s.down()
	dir := t.TempDir()
	e, cancel, done := start(t, Options{Sink: s.url(), SpoolDir: dir, SpoolMaxBytes: 64 << 20, QueueLen: 16})
	for i := range 200 {
		e.Emit(event(i))
	}
	cancel()
	<-done
	s.up()
	e2, cancel2, done2 := start(t, Options{Sink: s.url(), SpoolDir: dir, SpoolMaxBytes: 64 << 20, QueueLen: 16})
	defer func() { cancel2(); <-done2 }()
	e2.Emit(event(200))
	checkInOrder(t, waitCount(t, s, 201, 10*time.Second), 0, 201)
}

func TestRejectedIsCountedAndSkipped(t *testing.T) {
	s := newSink(t)
	s.mu.Lock()
	s.status = http.StatusBadRequest
	s.mu.Unlock()
	e, cancel, done := start(t, Options{Sink: s.url()})
	defer func() { cancel(); <-done }()
	e.Emit(event(0))
	deadline := time.Now().Add(5 * time.Second)
	for e.Stats().Rejected != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%+v", e.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.mu.Lock()
	s.status = 0
	s.mu.Unlock()
	e.Emit(event(1))
	if got := waitCount(t, s, 1, 5*time.Second); len(got) != 1 || got[0].ID() != "id-000001" {
		t.Fatalf("queue stuck after a rejection: %v", got)
	}
}

// TestSlowSink: a sink slower than the client timeout is retried; nothing
// is lost and memory stays bounded by the queue and the spool.
func TestSlowSink(t *testing.T) {
	var mu sync.Mutex
	var got []string
	slow := true
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		s := slow
		got = append(got, r.Header.Get("ce-id")) // in order of arrival
		mu.Unlock()
		if s {
			time.Sleep(300 * time.Millisecond)
		}
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	e, cancel, done := start(t, Options{Sink: "http://" + l.Addr().String(), SpoolDir: t.TempDir(), SpoolMaxBytes: 1 << 20, QueueLen: 4,
		Client: httpclient.New(100 * time.Millisecond)})
	defer func() { cancel(); <-done }()
	for i := range 50 {
		e.Emit(event(i))
	}
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	slow = false
	mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for e.Stats().Sent < 50 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := e.Stats(); st.Sent != 50 || st.Failures == 0 || st.SpoolOverflow != 0 {
		t.Fatalf("%+v", st)
	}
	// timed-out attempts may have reached the sink: at-least-once, with
	// deterministic ids; but the delivered sequence ends in order
	mu.Lock()
	defer mu.Unlock()
	last := -1
	for _, id := range got {
		n, err := strconv.Atoi(id[3:])
		if err != nil {
			t.Fatalf("event id %q: %v", id, err)
		}
		if n < last {
			t.Fatalf("out of order: %v", got)
		}
		last = n
	}
}
