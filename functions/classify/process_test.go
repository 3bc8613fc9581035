package classify

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"go.yaml.in/yaml/v3"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/step/steptest"
)

// buildClassify builds cmd/classify, the binary of classify's Knative
// Service.
func buildClassify(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "classify")
	if out, err := osexec.Command("go", "build", "-o", bin, "parry.dev/parry/cmd/classify").CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/classify: %v\n%s", err, out)
	}
	return bin
}

// classifyEnv is the environment of a classify replica as config/ sets it
// in a cluster, but with no cluster (PARRY_CALLERS=any): the compiled
// playbooks pbs, the incident key and the database at dsn.
func classifyEnv(t *testing.T, dsn string, pbs ...playbook.Compiled) []string {
	t.Helper()
	dir := t.TempDir()
	b, err := yaml.Marshal(playbook.Bundle{APIVersion: playbook.APIVersion, Kind: "PlaybookBundle", Playbooks: pbs})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, playbook.BundleKey), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "incident.key"), steptest.Key, 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{
		clients.PostgresDSNEnv + "=" + dsn, // first: tests replace it

		"PARRY_CALLERS=any",
		"PARRY_PLAYBOOKS=" + filepath.Join(dir, playbook.BundleKey),
		"PARRY_INCIDENT_KEY=" + filepath.Join(dir, "incident.key"),
		"PARRY_STATE_DIR=" + filepath.Join(dir, "state"),
		"PORT=0",
		"LOG_FORMAT=json",
	}
}

// replicaProc is a classify process.
type replicaProc struct {
	cmd  *osexec.Cmd
	url  string
	done chan struct{} // closed when it exited
	err  error         // its exit, once done
	log  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runClassify starts bin with env and returns once it serves, or once it
// exited (url "").
func runClassify(t *testing.T, bin string, env []string) *replicaProc {
	t.Helper()
	p := &replicaProc{cmd: osexec.Command(bin), done: make(chan struct{}), log: &syncBuffer{}}
	p.cmd.Env = env
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stderr)
		s.Buffer(nil, 1<<20)
		for s.Scan() {
			fmt.Fprintln(p.log, s.Text())
			var line struct{ Message, Addr string }
			if json.Unmarshal(s.Bytes(), &line) == nil && line.Message == "serving CloudEvents" {
				addr <- line.Addr
			}
		}
		io.Copy(p.log, stderr)
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	select {
	case a := <-addr:
		_, port, err := net.SplitHostPort(a)
		if err != nil {
			t.Fatalf("classify serves on %q: %v", a, err)
		}
		p.url = "http://127.0.0.1:" + port + "/"
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("classify did not start in 30s:\n%s", p.log)
	}
	return p
}

// deliver posts e to a replica as the broker does and returns its reply
// (nil for none); an error is a delivery the broker would retry.
func deliver(ctx context.Context, to string, e cloudevents.Event) (*cloudevents.Event, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, to, nil)
	if err != nil {
		return nil, err
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(&e), req); err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusAccepted:
		return nil, nil
	case http.StatusOK:
		return binding.ToEvent(ctx, cehttp.NewMessageFromHttpResponse(resp))
	}
	body, _ := io.ReadAll(resp.Body)
	return nil, fmt.Errorf("%s answered %d: %s", to, resp.StatusCode, body)
}

// One classify replica killed mid-incident (issue 17's fault): two classify
// processes share one database and take turns on a stream of events of
// three pods; replica A is killed with SIGKILL once it has answered ten, in
// the middle of the stream. What A never answered is redelivered to B, as
// the broker would, with the rest of the stream; then the event that opened
// the first incident is delivered to B once more. Each pod gets one
// incident.opened among all the answers (so its playbook's steps run once),
// every other event joins it, and the extra delivery is answered with the
// very same reply. The controls: A answered before it died, died of the
// kill, and left deliveries to redeliver.
func TestOneReplicaKilledMidIncident(t *testing.T) {
	dsn := freshDatabase(t)
	bin := buildClassify(t)
	env := classifyEnv(t, dsn, compiled("xmrig", "high", execOf("xmrig"), nil, guard.Rules{}))
	a, b := runClassify(t, bin, env), runClassify(t, bin, env)
	if a.url == "" || b.url == "" {
		t.Fatalf("a replica did not start:\n%s\n%s", a.log, b.log)
	}
	const pods = 3
	var stream []cloudevents.Event
	for i := range 90 {
		stream = append(stream, exec(t, fmt.Sprint("pod-", i%pods), "xmrig", "/usr/bin/xmrig"))
	}
	ctx := context.Background()
	var (
		mu         sync.Mutex
		answers    = map[string]*cloudevents.Event{} // event id → the one answer it got
		redeliver  []cloudevents.Event
		inFlight   int // deliveries to A cut by the kill rather than refused
		answeredA  atomic.Int32
		killOnce   sync.Once
		answeredBy = map[string]string{}
	)
	answer := func(e cloudevents.Event, reply *cloudevents.Event, by string) {
		mu.Lock()
		defer mu.Unlock()
		if _, ok := answers[e.ID()]; ok {
			t.Errorf("event %s answered twice", e.ID())
		}
		answers[e.ID()], answeredBy[e.ID()] = reply, by
	}
	send := func(evs []cloudevents.Event, target func(i int) *replicaProc) {
		work := make(chan int)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for i := range work {
					p := target(i)
					reply, err := deliver(ctx, p.url, evs[i])
					switch {
					case err == nil && p == a:
						answer(evs[i], reply, "a")
						if answeredA.Add(1) == 10 {
							killOnce.Do(func() { a.cmd.Process.Signal(syscall.SIGKILL) })
						}
					case err == nil:
						answer(evs[i], reply, "b")
					case p == a:
						mu.Lock()
						redeliver = append(redeliver, evs[i])
						if !errors.Is(err, syscall.ECONNREFUSED) {
							inFlight++
						}
						mu.Unlock()
					default:
						t.Errorf("replica B: %v", err)
					}
				}
			})
		}
		for i := range evs {
			work <- i
		}
		close(work)
		wg.Wait()
	}
	// Two thirds of the stream, in turns between A and B; A dies.
	send(stream[:60], func(i int) *replicaProc { return []*replicaProc{a, b}[i%2] })
	<-a.done
	// The broker redelivers what A did not answer, and the stream goes on.
	rest := append(redeliver, stream[60:]...)
	send(rest, func(int) *replicaProc { return b })

	if answeredA.Load() < 10 || len(redeliver) == 0 {
		t.Fatalf("A answered %d events and left %d to redeliver: the kill was not mid-stream", answeredA.Load(), len(redeliver))
	}
	var status *osexec.ExitError
	if !errors.As(a.err, &status) || status.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("replica A ended with %v, want killed by SIGKILL", a.err)
	}
	t.Logf("A answered %d events before the kill; %d deliveries to redeliver, %d of them cut in flight", answeredA.Load(), len(redeliver), inFlight)

	if len(answers) != len(stream) {
		t.Fatalf("%d of %d events answered", len(answers), len(stream))
	}
	opened := map[string][]cloudevents.Event{} // pod → the events answered opened
	incidents := map[string]map[string]bool{}  // pod → incidents named
	var opening cloudevents.Event
	for _, e := range stream {
		r, pod := answers[e.ID()], events.String(e, events.ExtPodUID)
		if r == nil {
			t.Fatalf("event %s of %s: no reply", e.ID(), pod)
		}
		switch r.Type() {
		case events.TypeIncidentOpened:
			opened[pod] = append(opened[pod], e)
			if opening.ID() == "" {
				opening = e
			}
		case events.TypeIncidentJoined:
		default:
			t.Errorf("event %s of %s: %s, want opened or joined", e.ID(), pod, r.Type())
		}
		if incidents[pod] == nil {
			incidents[pod] = map[string]bool{}
		}
		incidents[pod][events.String(*r, events.ExtIncident)] = true
	}
	for i := range pods {
		pod := fmt.Sprint("pod-", i)
		if len(opened[pod]) != 1 || len(incidents[pod]) != 1 {
			t.Errorf("%s: %d events answered incident.opened, %d incidents; want one", pod, len(opened[pod]), len(incidents[pod]))
		}
	}
	again, err := deliver(ctx, b.url, opening)
	if err != nil || again == nil || !sameReply(again, answers[opening.ID()]) {
		t.Errorf("the opening event again: %v %v, want the reply %s it got from %s", again, err, answers[opening.ID()].ID(), answeredBy[opening.ID()])
	}
	var rows int
	if err := pgPool(t, dsn).QueryRow(ctx, `SELECT count(*) FROM classify_incidents`).Scan(&rows); err != nil || rows != pods {
		t.Errorf("classify_incidents holds %d rows (%v), want %d", rows, err, pods)
	}
}

// In a cluster classify does not start without its database: no connection
// string names the Secret to create, a wrong one says what failed and never
// shows the password. The control: the same environment with the right
// string serves.
func TestClassifyRefusesToStartWithoutItsDatabase(t *testing.T) {
	dsn := freshDatabase(t)
	bin := buildClassify(t)
	good := classifyEnv(t, dsn, compiled("xmrig", "high", execOf("xmrig"), nil, guard.Rules{}))
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "sekrit")
	for name, c := range map[string]struct{ dsn, want string }{
		"missing":        {"", "create the Secret parry-postgres with key dsn"},
		"wrong password": {u.String(), "password authentication failed"},
		"nothing there":  {"postgres://parry:sekrit@127.0.0.1:1/parry?sslmode=disable&connect_timeout=2", "does not answer"},
		"not a URL":      {"postgres://parry:sekrit@[::1", "not valid"},
	} {
		t.Run(name, func(t *testing.T) {
			env := append(good[1:], clients.PostgresDSNEnv+"="+c.dsn)
			p := runClassify(t, bin, env)
			if p.url != "" {
				t.Fatal("classify started")
			}
			log := p.log.String()
			if !strings.Contains(log, "keeps its state in PostgreSQL") || !strings.Contains(log, c.want) || strings.Contains(log, "sekrit") {
				t.Errorf("classify's log:\n%s\nwant the cause %q, and no password", log, c.want)
			}
			if p.cmd.ProcessState.ExitCode() != 1 {
				t.Errorf("exit code %d, want 1", p.cmd.ProcessState.ExitCode())
			}
		})
	}
	if p := runClassify(t, bin, good); p.url == "" {
		t.Fatalf("with the right connection string classify did not start:\n%s", p.log)
	}
}
