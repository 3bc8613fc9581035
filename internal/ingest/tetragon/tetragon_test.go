package tetragon_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/ingest/tetragon"
	"parry.dev/parry/internal/publish"
	"parry.dev/parry/sensor/api"
)

const containerHex = "3e2a1f0c9b8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"

// execLine is a process_exec line in Tetragon's export format (protobuf
// JSON of GetEventsResponse, snake_case field names), written for these
// tests.
func execLine(at time.Time, execID, binary, args string) string {
	return fmt.Sprintf(`{"process_exec":{"process":{"exec_id":%q,"pid":4242,"uid":1000,"cwd":"/app","binary":%q,"arguments":%q,`+
		`"flags":"execve clone","start_time":%q,"auid":4294967295,`+
		`"pod":{"namespace":"shop","name":"web-5d8c9f7b6-x2x9q","uid":"0b7c3a52-7d4e-4c1e-9f6a-2f1e0d9c8b7a",`+
		`"container":{"id":"containerd://%s","name":"web","image":{"id":"docker.io/library/nginx@sha256:abcd","name":"docker.io/library/nginx:1.27"},`+
		`"start_time":"2024-05-01T10:00:00Z","pid":7},"pod_labels":{"app":"web"},"workload":"web","workload_kind":"Deployment"},`+
		`"docker":"3e2a1f0c9b8d7e6","parent_exec_id":"a2luZC1jb250cm9sLXBsYW5lOjEyMzQ6NDI=","tid":4242},`+
		`"parent":{"exec_id":"a2luZC1jb250cm9sLXBsYW5lOjEyMzQ6NDI=","pid":4200,"uid":1000,"binary":"/bin/sh","arguments":"-c run"}},`+
		`"node_name":"kind-worker","time":%q}`,
		execID, binary, args, at.Add(-time.Millisecond).Format(time.RFC3339Nano), containerHex, at.Format(time.RFC3339Nano))
}

func TestExecBecomesParrysExecEvent(t *testing.T) {
	at := time.Date(2024, 5, 1, 10, 0, 1, 123456789, time.UTC)
	raw := execLine(at, "a2luZC13b3JrZXI6MTIzNDU2Nzg5OjQyNDI=", "/tmp/xmrig", `--url pool:3333 --password=hunter2 "a b"`)
	e, kind, err := tetragon.Mapper{}.Map([]byte(raw))
	if err != nil || e == nil {
		t.Fatalf("Map: %v %v (kind %q)", e, err, kind)
	}
	if e.Type() != events.TypeProcessExec || e.Source() != "parry://tetragon/kind-worker" || e.Subject() != "pod/shop/web-5d8c9f7b6-x2x9q" || !e.Time().Equal(at) {
		t.Fatalf("type %s source %s subject %s time %s", e.Type(), e.Source(), e.Subject(), e.Time())
	}
	want := map[string]string{
		events.ExtNode: "kind-worker", events.ExtPodNamespace: "shop", events.ExtPodName: "web-5d8c9f7b6-x2x9q",
		events.ExtPodUID: "0b7c3a52-7d4e-4c1e-9f6a-2f1e0d9c8b7a", events.ExtContainer: "web", events.ExtContainerID: containerHex,
		events.ExtImage: "docker.io/library/nginx:1.27", events.ExtOwner: "Deployment/web", events.ExtExe: "/tmp/xmrig",
		events.ExtComm: "xmrig", events.ExtUID: "1000",
	}
	for k, v := range want {
		if got := events.String(*e, k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	var d api.EventData
	if err := json.Unmarshal(e.Data(), &d); err != nil {
		t.Fatal(err)
	}
	if d.Process.PID != 4242 || d.Process.PPID != 4200 || d.Process.Exe != "/tmp/xmrig" || d.Pod == nil || d.Pod.ContainerID != containerHex || d.Pod.Runtime != "containerd" {
		t.Fatalf("data: %+v pod %+v", d.Process, d.Pod)
	}
	if !slices.Equal(d.Args, []string{"--url", "pool:3333", d.Args[2], "a b"}) || !strings.HasPrefix(d.Args[2], "--password=[redacted sha256:") {
		t.Fatalf("args %q: want the password redacted and the quoted argument kept whole", d.Args)
	}
	if strings.Contains(string(e.Data()), "hunter2") {
		t.Fatal("the secret reached the event's data")
	}
	// A re-read line is the same event: the broker dedups it.
	again, _, _ := tetragon.Mapper{}.Map([]byte(raw))
	if again.ID() != e.ID() {
		t.Fatalf("the same line got ids %s and %s", e.ID(), again.ID())
	}
	other, _, _ := tetragon.Mapper{}.Map([]byte(execLine(at, "b3RoZXI=", "/tmp/xmrig", "")))
	if other.ID() == e.ID() {
		t.Fatal("two execs got one id")
	}
}

// The containerid attribute has the form parry's sensor gives it (the
// cgroup's 64 hex, the pod status's id without its scheme), so events of
// the sensor, Tetragon and Falco about one container join.
func TestSplitArguments(t *testing.T) {
	for in, want := range map[string][]string{
		"":                               nil,
		"-la /tmp":                       {"-la", "/tmp"},
		`-c "echo hi && curl x" --flag`:  {"-c", "echo hi && curl x", "--flag"},
		`-H "Authorization: Bearer abc"`: {"-H", "Authorization: Bearer abc"},
		`a  b`:                           {"a", "b"},
		`""`:                             {""},
		`"unterminated arg`:              {"unterminated arg"},
	} {
		if got := tetragon.SplitArguments(in); !slices.Equal(got, want) {
			t.Errorf("SplitArguments(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOtherLinesAreCountedNotFatal(t *testing.T) {
	m := tetragon.Mapper{}
	e, kind, err := m.Map([]byte(`{"process_exit":{"process":{"exec_id":"eA==","binary":"/bin/ls"},"status":0},"node_name":"n","time":"2024-05-01T10:00:00Z"}`))
	if e != nil || err != nil || kind != "process_exit" {
		t.Fatalf("process_exit: %v %q %v, want skipped as process_exit", e, kind, err)
	}
	for _, bad := range []string{`not json`, `{"process_exec":{},"node_name":"n","time":"2024-05-01T10:00:00Z"}`,
		`{"process_exec":{"process":{"exec_id":"eA==","binary":"/bin/ls"}},"node_name":"n"}`} {
		if _, _, err := m.Map([]byte(bad)); !errors.Is(err, tetragon.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", bad, err)
		}
	}
}

// broker records what it receives; status decides its answer per attempt.
type broker struct {
	mu       sync.Mutex
	got      []cloudevents.Event
	attempts int
	auth     []string
	status   func(attempt int, e cloudevents.Event) int
}

func (b *broker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	b.mu.Lock()
	b.attempts++
	code := http.StatusAccepted
	if b.status != nil {
		code = b.status(b.attempts, *e)
	}
	b.auth = append(b.auth, r.Header.Get("Authorization"))
	if code == http.StatusAccepted {
		b.got = append(b.got, *e)
	}
	b.mu.Unlock()
	if code != http.StatusAccepted {
		http.Error(w, "policy says no", code)
		return
	}
	w.WriteHeader(code)
}

func (b *broker) received() []cloudevents.Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.got)
}

func sender(t *testing.T, b *broker) *publish.Sender {
	srv := httptest.NewServer(b)
	t.Cleanup(srv.Close)
	return &publish.Sender{URL: srv.URL + "/parry-system/parry", HTTP: srv.Client(), Log: zerolog.Nop(), MaxBackoff: 20 * time.Millisecond}
}

func TestSendRetries5xxAndGivesUpOn4xx(t *testing.T) {
	e, _, _ := tetragon.Mapper{}.Map([]byte(execLine(time.Now(), "eA==", "/tmp/x", "")))
	b := &broker{status: func(n int, _ cloudevents.Event) int {
		if n < 3 {
			return http.StatusServiceUnavailable
		}
		return http.StatusAccepted
	}}
	if err := sender(t, b).Send(context.Background(), *e); err != nil || len(b.received()) != 1 || b.attempts != 3 {
		t.Fatalf("after two 503s: %v, %d received in %d attempts; want taken on the third", err, len(b.received()), b.attempts)
	}
	b = &broker{status: func(int, cloudevents.Event) int { return http.StatusForbidden }}
	err := sender(t, b).Send(context.Background(), *e)
	var refused *publish.RefusedError
	if !errors.As(err, &refused) || refused.Status != http.StatusForbidden || !strings.Contains(refused.Reason, "policy says no") || b.attempts != 1 {
		t.Fatalf("403: %v after %d attempts; want one attempt refused with the broker's reason", err, b.attempts)
	}
}

// Run on stdin: execs sent, other kinds, bad lines and stale execs
// counted; nothing stops it.
func TestRunSendsExecsAndCountsTheRest(t *testing.T) {
	now := time.Now()
	in := strings.Join([]string{
		execLine(now, "MQ==", "/tmp/xmrig", "-o pool"),
		`{"process_exit":{"process":{"exec_id":"MQ==","binary":"/tmp/xmrig"}},"node_name":"kind-worker","time":"` + now.Format(time.RFC3339Nano) + `"}`,
		`garbage`,
		execLine(now.Add(-time.Hour), "Mg==", "/usr/bin/ls", ""),
		execLine(now, "Mw==", "/usr/bin/ls", "-la"),
	}, "\n") + "\n"
	b := &broker{}
	st, err := tetragon.Run(context.Background(), tetragon.Options{Path: "-", Stdin: strings.NewReader(in), Sender: sender(t, b), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if st.Lines != 5 || st.Sent != 2 || st.Malformed != 1 || st.Stale != 1 || st.Skipped["process_exit"] != 1 {
		t.Fatalf("stats %+v", st)
	}
	got := b.received()
	if len(got) != 2 || events.String(got[0], events.ExtExe) != "/tmp/xmrig" || events.String(got[1], events.ExtExe) != "/usr/bin/ls" {
		t.Fatalf("received %v", got)
	}
}

// Tail follows appends, a rotation (rename and a new file, as Tetragon
// rotates its export) and a truncation, and starts at the end by default.
func TestTailFollowsAppendsRotationAndTruncation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tetragon.log")
	write := func(p, s string, flag int) {
		t.Helper()
		f, err := os.OpenFile(p, flag|os.O_WRONLY|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	write(path, "old\n", os.O_APPEND)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var lines []string
	done := make(chan error, 1)
	go func() {
		done <- tetragon.Tail(ctx, path, false, 5*time.Millisecond, func(l []byte, err error) {
			mu.Lock()
			lines = append(lines, string(l))
			mu.Unlock()
		})
	}()
	waitFor := func(want ...string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			mu.Lock()
			ok := slices.Equal(lines, want)
			mu.Unlock()
			if ok {
				return
			}
		}
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("lines %q, want %q", lines, want)
	}
	time.Sleep(50 * time.Millisecond) // Tail has opened the file and seeked to its end
	write(path, "one\ntw", os.O_APPEND)
	waitFor("one")
	write(path, "o\n", os.O_APPEND) // the rest of a line written in two parts
	waitFor("one", "two")
	write(path, "three\n", os.O_APPEND)
	if err := os.Rename(path, filepath.Join(dir, "tetragon-2024.log")); err != nil {
		t.Fatal(err)
	}
	write(path, "five\n", os.O_APPEND)
	waitFor("one", "two", "three", "five")
	time.Sleep(50 * time.Millisecond)
	write(path, "s\n", os.O_TRUNC)
	waitFor("one", "two", "three", "five", "s")
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Tail returned %v", err)
	}
}
