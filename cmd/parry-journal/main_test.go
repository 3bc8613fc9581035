package main_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/journalservice/journaltest"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

// The command as a process, built once (linking it takes a while): faults
// in the middle of a stream, and how it starts.
func TestProcess(t *testing.T) {
	bin := build(t)
	for _, c := range []struct {
		name string
		test func(*testing.T, string)
	}{
		{"SIGKILLMidStreamLosesNothingAndRecordsOnce", sigkillMidStreamLosesNothingAndRecordsOnce},
		{"PostgresRestartMidStreamLosesNothing", postgresRestartMidStreamLosesNothing},
		{"BadOrMissingDatabaseStopsTheStart", badOrMissingDatabaseStopsTheStart},
		{"StartsWithoutAClusterWhenToldToTakeAnyCaller", startsWithoutAClusterWhenToldToTakeAnyCaller},
	} {
		t.Run(c.name, func(t *testing.T) { c.test(t, bin) })
	}
}

// build compiles this command into the test's directory.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "parry-journal")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// journalProc is a running parry-journal.
type journalProc struct {
	cmd *exec.Cmd
	out *bytes.Buffer
	// done is closed when the process has exited, with err its Wait's.
	done chan struct{}
	err  error
}

// run starts bin with env (added to a minimal environment).
func run(t *testing.T, bin string, env ...string) *journalProc {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin", "LOG_FORMAT=json"}, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &journalProc{cmd: cmd, out: &out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("parry-journal (pid %d) said:\n%s", cmd.Process.Pid, out.String())
		}
	})
	return p
}

// exit waits for p to exit by itself and returns its exit code and output.
func (p *journalProc) exit(t *testing.T, within time.Duration) (int, string) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("parry-journal still runs after %s:\n%s", within, p.out.String())
	}
	return p.cmd.ProcessState.ExitCode(), p.out.String()
}

// ready waits until url's /healthz answers.
func ready(t *testing.T, p *journalProc, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("parry-journal exited (%v):\n%s", p.err, p.out.String())
		default:
		}
		if resp, err := http.Get(url + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("parry-journal did not answer on %s:\n%s", url, p.out.String())
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// stream is a sender that retries like Knative's broker filter: each event
// is resent, unchanged, until it is answered 2xx.
type stream struct {
	events               []cloudevents.Event
	acked                atomic.Int64
	refused, unreachable atomic.Int64 // 5xx answers; connection errors
}

func newStream(t *testing.T, n int) *stream {
	t.Helper()
	s := &stream{}
	for i := range n {
		e, err := events.New(events.Spec{Type: events.TypeProcessExec, Source: "parry://sensor/fault", Key: strconv.Itoa(i), Time: time.Now(),
			Extensions: map[string]string{events.ExtPodUID: "uid-fault"}})
		if err != nil {
			t.Fatal(err)
		}
		s.events = append(s.events, e)
	}
	return s
}

// send delivers every event with workers concurrent senders and returns
// when all are acknowledged (or ctx ends).
func (s *stream) send(ctx context.Context, t *testing.T, url, token string, workers int) {
	hc := httpclient.New(5 * time.Second)
	next := make(chan cloudevents.Event)
	go func() {
		defer close(next)
		for _, e := range s.events {
			select {
			case next <- e:
			case <-ctx.Done():
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for e := range next {
				for {
					code, body, err := journaltest.Deliver(ctx, hc, url, token, e, false)
					switch {
					case ctx.Err() != nil:
						return
					case err != nil:
						s.unreachable.Add(1)
					case code/100 == 2:
						s.acked.Add(1)
					case code >= 500:
						s.refused.Add(1)
					default:
						t.Errorf("event %s answered %d %s: the sender would give it up", e.ID(), code, body)
						return
					}
					if err == nil && code/100 == 2 {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
}

// exactlyOnce fails t unless the journal holds each of s's events once and
// nothing else.
func (s *stream) exactlyOnce(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ids := make([]string, len(s.events))
	for i, e := range s.events {
		ids[i] = e.ID()
	}
	var all, distinct, ours int
	err := pool.QueryRow(context.Background(), `SELECT COUNT(*), COUNT(DISTINCT (id, source)), COUNT(*) FILTER (WHERE id = ANY($1)) FROM journal_events`, ids).Scan(&all, &distinct, &ours)
	if err != nil {
		t.Fatal(err)
	}
	if all != len(ids) || distinct != len(ids) || ours != len(ids) {
		t.Fatalf("the journal holds %d rows, %d distinct events, %d of the %d sent; want each once", all, distinct, ours, len(ids))
	}
}

// setup is a database, the token the journal's Trigger delivers with, and
// the environment a parry-journal needs on port.
func setup(t *testing.T, port int) (*pgxpool.Pool, string, []string) {
	t.Helper()
	env := devenv.Require(t)
	dsn := env.Database(t, "journalsvc")
	pool, err := clients.Postgres(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	token := journaltest.TriggerToken(t, kubernetes.NewForConfigOrDie(env.RESTConfig()))
	return pool, token, []string{"PARRY_POSTGRES_DSN=" + dsn, "KUBECONFIG=" + env.Kubeconfig, "PORT=" + strconv.Itoa(port)}
}

// faultMidStream starts the journal service, streams n events to it from
// eight senders that resend until 2xx, calls fault a third of the way in
// (fault returns the process serving afterwards), and waits for the stream
// to finish. It returns the stream, the database, the serving process and
// how long the stream took.
func faultMidStream(t *testing.T, bin string, n int, fault func(ctx context.Context, s *stream, p *journalProc, url string, env []string) *journalProc) (*stream, *pgxpool.Pool, *journalProc, time.Duration) {
	t.Helper()
	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	pool, token, env := setup(t, port)
	p := run(t, bin, env...)
	ready(t, p, url)

	s := newStream(t, n)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	sent := make(chan struct{})
	began := time.Now()
	go func() { defer close(sent); s.send(ctx, t, url, token, 8) }()
	for s.acked.Load() < int64(n/3) {
		time.Sleep(time.Millisecond)
	}
	p = fault(ctx, s, p, url, env)
	<-sent
	if ctx.Err() != nil {
		t.Fatalf("the stream did not finish: %d of %d acknowledged", s.acked.Load(), n)
	}
	return s, pool, p, time.Since(began).Round(time.Millisecond)
}

// SIGKILL in the middle of a stream loses nothing and records nothing
// twice: an event answered 202 was committed (the sender never resends
// it), and an event whose answer the kill cut off is resent and recorded
// once.
func sigkillMidStreamLosesNothingAndRecordsOnce(t *testing.T, bin string) {
	const n = 3000
	var atKill int64
	s, pool, second, took := faultMidStream(t, bin, n, func(_ context.Context, s *stream, first *journalProc, url string, env []string) *journalProc {
		if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-first.done
		atKill = s.acked.Load()
		time.Sleep(300 * time.Millisecond) // the sender meets a closed port
		second := run(t, bin, env...)
		ready(t, second, url)
		return second
	})
	t.Logf("killed at %d of %d acknowledged; %d connection errors and %d 5xx answers retried; the stream took %s", atKill, n, s.unreachable.Load(), s.refused.Load(), took)
	if atKill >= n || s.unreachable.Load() == 0 {
		t.Fatalf("the kill did not land mid-stream: %d acknowledged, %d connection errors", atKill, s.unreachable.Load())
	}
	s.exactlyOnce(t, pool)

	// A SIGTERM is a clean stop.
	if err := second.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, out := second.exit(t, 30*time.Second); code != 0 {
		t.Fatalf("after SIGTERM: exit %d\n%s", code, out)
	}
}

// PostgreSQL restarted in the middle of a stream: the journal answers 503
// while it is away, the sender resends, and nothing is lost or doubled.
func postgresRestartMidStreamLosesNothing(t *testing.T, bin string) {
	const n = 3000
	var atRestart int64
	s, pool, p, took := faultMidStream(t, bin, n, func(ctx context.Context, s *stream, p *journalProc, _ string, _ []string) *journalProc {
		atRestart = s.acked.Load()
		if err := devenv.Require(t).RestartPostgres(ctx, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		return p
	})
	t.Logf("PostgreSQL restarted at %d of %d acknowledged; %d 5xx answers and %d connection errors retried; the stream took %s", atRestart, n, s.refused.Load(), s.unreachable.Load(), took)
	if atRestart >= n || s.refused.Load() == 0 {
		t.Fatalf("the restart did not land mid-stream: %d acknowledged, %d 5xx answers", atRestart, s.refused.Load())
	}
	select {
	case <-p.done:
		t.Fatalf("parry-journal exited when PostgreSQL went away (%v)", p.err)
	default:
	}
	s.exactlyOnce(t, pool)
}

// Without a usable database the process exits at start with an error that
// names the Secret, never the password.
func badOrMissingDatabaseStopsTheStart(t *testing.T, bin string) {
	env := devenv.Require(t)
	kube := "KUBECONFIG=" + env.Kubeconfig
	u, err := url.Parse(env.PostgresDSN)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "wrong-s3cret")
	wrongPassword := u.String()
	for name, c := range map[string]struct {
		env  []string
		want []string
	}{
		"no DSN":            {[]string{kube}, []string{"no PostgreSQL connection string", "parry-postgres", "PARRY_POSTGRES_DSN"}},
		"not a DSN":         {[]string{kube, "PARRY_POSTGRES_DSN=postgres://parry:s3cret@[::1"}, []string{"not valid", "parry-postgres"}},
		"nothing listening": {[]string{kube, "PARRY_POSTGRES_DSN=postgres://parry:s3cret@127.0.0.1:1/parry?sslmode=disable&connect_timeout=2"}, []string{"does not answer", "parry-postgres"}},
		"a wrong password":  {[]string{kube, "PARRY_POSTGRES_DSN=" + wrongPassword}, []string{"password authentication failed", "parry-postgres"}},
		"PARRY_CALLERS typo": {[]string{kube, "PARRY_POSTGRES_DSN=" + env.PostgresDSN, "PARRY_CALLERS=anyone", "PORT=" + strconv.Itoa(freePort(t))},
			[]string{`PARRY_CALLERS=\"anyone\"`}},
		"a retention in days": {[]string{kube, "PARRY_POSTGRES_DSN=" + env.PostgresDSN, "PARRY_JOURNAL_MAX_AGE=30d"}, []string{"PARRY_JOURNAL_MAX_AGE", "720h"}},
	} {
		p := run(t, bin, c.env...)
		code, out := p.exit(t, 30*time.Second)
		if code == 0 {
			t.Errorf("%s: exit 0\n%s", name, out)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: the error does not say %q:\n%s", name, w, out)
			}
		}
		if strings.Contains(out, "s3cret") {
			t.Errorf("%s: the output shows the password:\n%s", name, out)
		}
	}
}

// The positive control of the start: PARRY_CALLERS=any starts (with its
// warning) and serves; without a cluster the read API fails closed.
func startsWithoutAClusterWhenToldToTakeAnyCaller(t *testing.T, bin string) {
	env := devenv.Require(t)
	dsn := env.Database(t, "journalsvc")
	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	p := run(t, bin, "PARRY_POSTGRES_DSN="+dsn, "PARRY_CALLERS=any", "PORT="+strconv.Itoa(port))
	ready(t, p, url)
	if !strings.Contains(p.out.String(), "PARRY_CALLERS=any") {
		t.Errorf("no warning for PARRY_CALLERS=any:\n%s", p.out.String())
	}
	s := newStream(t, 1)
	code, body, err := journaltest.Deliver(t.Context(), http.DefaultClient, url, "", s.events[0], false)
	if err != nil || code != http.StatusAccepted {
		t.Fatalf("a delivery without a token under PARRY_CALLERS=any: %d %s %v", code, body, err)
	}
	resp, err := http.Get(url + "/v1/incidents")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("the read API without a cluster: %d, want 503", resp.StatusCode)
	}
}
