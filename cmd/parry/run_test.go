package main_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/metrics/metricstest"
)

// parryBinary builds cmd/parry once per test binary.
var parryBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "parry-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "parry")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// parryProcess is a running `parry run`.
type parryProcess struct {
	cmd    *exec.Cmd
	url    string
	ui     string // the web timeline's URL
	stderr *strings.Builder
	mu     *sync.Mutex
}

func startParry(t *testing.T, configDir, journalPath, addr string, extra ...string) *parryProcess {
	t.Helper()
	bin, err := parryBinary()
	if err != nil {
		t.Fatal(err)
	}
	// This test is about the journal, not senders: the ingress runs
	// insecure (on loopback, as the flag requires).
	cmd := exec.Command(bin, append([]string{"run", "--no-sensor", "--insecure-ingress", "--config", configDir, "--journal", journalPath, "--listen", addr, "--ui-listen", "127.0.0.1:0", "--log-format", "json"}, extra...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &parryProcess{cmd: cmd, url: "http://" + addr + "/parry-system/parry", stderr: &strings.Builder{}, mu: &sync.Mutex{}}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			var line struct {
				Message string `json:"message"`
				URL     string `json:"url"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && strings.HasPrefix(line.Message, "web timeline") {
				p.ui = line.URL
			}
			if strings.Contains(sc.Text(), "parry is running") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		p.mu.Lock()
		defer p.mu.Unlock()
		t.Fatalf("parry run did not start:\n%s", p.stderr)
	}
	return p
}

func postEvent(t *testing.T, url, id string) int {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("crash-test")
	e.SetType("dev.parry.test.v1")
	e.SetTime(time.Now())
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
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

// TestCrashLosesNothingAndRepeatsNoCompletedDelivery kills parry with
// SIGKILL after it accepted events it had not yet delivered, restarts it on
// the same journal, and checks that every event reaches the subscriber
// exactly once as far as completed deliveries go.
func TestCrashLosesNothingAndRepeatsNoCompletedDelivery(t *testing.T) {
	const n = 90
	// Phase 1: ids ≡ 0 (mod 3) are accepted, ≡ 1 answered 503 (retried
	// later), ≡ 2 hang until parry dies (in flight at the crash).
	var mu sync.Mutex
	completed := map[string]int{}
	phase2 := make(chan struct{})
	sub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("ce-id")
		var i int
		if _, err := fmt.Sscanf(id, "ev-%d", &i); err != nil {
			t.Errorf("the subscriber got an event id %q not of the test's: %v", id, err)
			http.Error(w, "unknown id", http.StatusBadRequest)
			return
		}
		select {
		case <-phase2:
		default:
			switch i % 3 {
			case 1:
				http.Error(w, "not now", http.StatusServiceUnavailable)
				return
			case 2:
				// In flight when parry dies: never answered.
				<-r.Context().Done()
				return
			}
		}
		mu.Lock()
		completed[id]++
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer sub.Close()

	dir := t.TempDir()
	config := filepath.Join(dir, "config")
	mkdir(t, config)
	writeFile(t, filepath.Join(config, "broker.yaml"), []byte(fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: parry, namespace: parry-system}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: recorder, namespace: parry-system}
spec:
  broker: parry
  subscriber: {uri: %q}
  delivery: {retry: 50, backoffPolicy: linear, backoffDelay: PT2S, timeout: PT60S}
`, sub.URL)))
	journalPath := filepath.Join(dir, "journal.db")
	addr := freeAddr(t)

	p := startParry(t, config, journalPath, addr)
	// parry run serves the web timeline beside the ingress.
	if resp, err := http.Get(p.ui); err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("web timeline at %q: %v %v", p.ui, resp, err)
	}
	for i := range n {
		if code := postEvent(t, p.url, fmt.Sprintf("ev-%d", i)); code != http.StatusAccepted {
			t.Fatalf("event %d: ingress answered %d", i, code)
		}
	}
	// Wait until the journal says the first third is done.
	j, err := journal.OpenReadOnly(context.Background(), journalPath)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		done := 0
		entries, err := j.Last(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			for _, d := range e.Deliveries {
				if d.State == journal.Done {
					done++
				}
			}
		}
		if done == n/3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d deliveries done before the crash", done, n/3)
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait() // "signal: killed", as intended
	close(phase2)

	p = startParry(t, config, journalPath, addr)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		got := len(completed)
		mu.Unlock()
		if got == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the restart only %d of %d events reached the subscriber", got, n)
		}
	}
	// Every delivery the restarted broker owns is done, as its journal
	// says: nothing is left that may legitimately be delivered again.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		entries, err := j.Last(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		done := 0
		for _, e := range entries {
			for _, d := range e.Deliveries {
				if d.State == journal.Done {
					done++
				}
			}
		}
		if len(entries) == n && done == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the restart the journal holds %d events with %d of %d deliveries done", len(entries), done, n)
		}
	}
	time.Sleep(300 * time.Millisecond) // let any wrongful redelivery show up
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		id := fmt.Sprintf("ev-%d", i)
		if completed[id] != 1 {
			t.Errorf("%s completed %d times, want exactly once", id, completed[id])
		}
	}
}

// parry run bounds its journal by --journal-max-age and --journal-max-size:
// a journal holding events older than the bound loses them (and only them)
// at start, with a log line saying so.
func TestRunPrunesTheJournal(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	config := filepath.Join(dir, "config")
	mkdir(t, config)
	writeFile(t, filepath.Join(config, "broker.yaml"), []byte("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: parry, namespace: parry-system}\n"))
	journalPath := filepath.Join(dir, "journal.db")
	j, err := journal.Open(ctx, journalPath)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 20 {
		e := cloudevents.NewEvent()
		e.SetID(fmt.Sprint("old-", i))
		e.SetSource("prune-test")
		e.SetType("dev.parry.test.v1")
		r, err := journal.NewRecord("parry-system/parry", "", e, nil)
		if err == nil {
			_, err = j.Append(ctx, r)
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID())
	}
	j.Close()
	// The first half was journaled two hours ago.
	db, err := sql.Open("sqlite", "file:"+journalPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE events SET received = received - ? WHERE seq <= 10`, int64(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	db.Close()

	p := startParry(t, config, journalPath, freeAddr(t), "--journal-max-age", "1h", "--journal-max-size", "1Gi")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		p.mu.Lock()
		out := p.stderr.String()
		p.mu.Unlock()
		if strings.Contains(out, `"message":"journal pruned"`) {
			if !strings.Contains(out, `"events":10,`) || !strings.Contains(out, `"reason":"age"`) {
				t.Fatalf("the pruning log line:\n%s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("parry run did not prune its journal:\n%s", out)
		}
	}
	ro, err := journal.OpenReadOnly(ctx, journalPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	last, err := ro.Last(ctx, 100)
	if err != nil || len(last) != 10 || last[0].ID != ids[10] {
		t.Fatalf("the journal holds %d events (%v); want the 10 younger ones", len(last), err)
	}

	// /metrics beside the web timeline counts the pruning and the broker's
	// ingress.
	if p.ui == "" {
		t.Fatal("parry run logged no web timeline URL")
	}
	scrape := p.ui + "metrics"
	before := metricstest.Get(t, scrape)
	if got := before.Value("parry_journal_pruned_events_total", nil); got != 10 {
		t.Errorf("parry_journal_pruned_events_total = %v, want the 10 pruned\n%s", got, before.Text)
	}
	if got := postEvent(t, p.url, "counted"); got != http.StatusAccepted {
		t.Fatalf("posting an event: %d", got)
	}
	accepted := map[string]string{"outcome": "accepted"}
	if got := metricstest.Get(t, scrape).Value("parry_broker_events_received_total", accepted) - before.Value("parry_broker_events_received_total", accepted); got != 1 {
		t.Errorf("parry_broker_events_received_total{outcome=accepted} moved by %v after one event, want 1", got)
	}
}

func TestRunFailsClearly(t *testing.T) {
	bin, err := parryBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	blocker := filepath.Join(dir, "file")
	writeFile(t, blocker, nil)
	badConfig := filepath.Join(dir, "bad")
	mkdir(t, badConfig)
	writeFile(t, filepath.Join(badConfig, "t.yaml"), []byte(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: parry-system}
spec:
  broker: parry
  filters: [{cesql: "type = "}]
  subscriber: {uri: "http://127.0.0.1:9/"}
`))
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"port in use", []string{"--listen", busy.Addr().String()}, []string{"already in use", "--listen"}},
		{"insecure ingress off loopback", []string{"--insecure-ingress", "--listen", "0.0.0.0:0"}, []string{"loopback only", "--listen 127.0.0.1"}},
		{"unwritable journal", []string{"--journal", filepath.Join(blocker, "j.db")}, []string{"--journal"}},
		{"invalid trigger", []string{"--config", badConfig}, []string{"t.yaml:6:21", "spec.filters[0].cesql"}},
		{"missing config", []string{"--config", filepath.Join(dir, "nope")}, []string{"--config"}},
		{"bad flag", []string{"--frobnicate"}, []string{"flag provided but not defined", "Usage: parry run"}},
		{"bad journal size", []string{"--journal-max-size", "lots"}, []string{"-journal-max-size", "2Gi", `"lots"`}},
		{"negative journal size", []string{"--journal-max-size", "-1Gi"}, []string{"-journal-max-size", "2Gi"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"run", "--no-sensor", "--config", "../../config", "--journal", filepath.Join(t.TempDir(), "j.db")}, c.args...)
			out, err := exec.Command(bin, args...).CombinedOutput()
			if err == nil {
				t.Fatalf("parry run succeeded:\n%s", out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output does not contain %q:\n%s", w, out)
				}
			}
		})
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func mkdir(t *testing.T, path string) {
	t.Helper()
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
}
