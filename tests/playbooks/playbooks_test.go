package playbooks

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/functions/classify"
	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/publish"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/tests/embedded"
	"parry.dev/parry/tests/podcgroup"
)

const configDir = "../../config"

// replies records what classify answered, as the broker saw it.
type replies struct {
	mu     sync.Mutex
	evs    []cloudevents.Event
	inputs map[string]int // events classify received, by poduid
}

func (r *replies) input(e cloudevents.Event) {
	r.mu.Lock()
	r.inputs[events.String(e, events.ExtPodUID)]++
	r.mu.Unlock()
}

func (r *replies) received(poduid string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inputs[poduid]
}

// count returns how many replies of type typ classify gave for the pod.
func (r *replies) count(poduid, typ string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.evs {
		if e.Type() == typ && events.String(e, events.ExtPodUID) == poduid {
			n++
		}
	}
	return n
}

func (r *replies) add(e cloudevents.Event) { r.mu.Lock(); r.evs = append(r.evs, e); r.mu.Unlock() }

// incidents returns the incident.opened events of one pod.
func (r *replies) incidents(poduid string) []cloudevents.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []cloudevents.Event
	seen := map[string]bool{}
	for _, e := range r.evs {
		if e.Type() != events.TypeIncidentOpened || events.String(e, events.ExtPodUID) != poduid {
			continue
		}
		// The same first event delivered by two Triggers yields the same
		// reply id: one incident, recorded once.
		if !seen[e.ID()] {
			seen[e.ID()] = true
			out = append(out, e)
		}
	}
	return out
}

// startStack runs the embedded default as `parry run` does, without a
// cluster; classify's replies are recorded on their way back to the broker.
func startStack(t *testing.T) (*replies, *stack.Stack) {
	t.Helper()
	rec := &replies{inputs: map[string]int{}}
	s := embedded.Start(t, embedded.Options{
		ConfigDir: configDir, Node: "test-node",
		// Coalescing off: every repetition of a burst reaches classify, so
		// the tests prove its dedup, not only the sensor's.
		CoalesceWindow: -1,
		Wrap: func(fns map[string]events.Handler) error {
			c := fns[classify.Name]
			if c == nil {
				return fmt.Errorf("the stack registered no %s", classify.Name)
			}
			fns[classify.Name] = func(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
				rec.input(e)
				r, err := c(ctx, e)
				if r != nil {
					rec.add(*r)
				}
				return r, err
			}
			return nil
		},
	})
	return rec, s
}

// burst is how often each attack is repeated: a burst is still one incident.
const burst = 4

// attacks perform each shipped playbook's behaviour in a pod.
var attacks = map[string]func(t *testing.T, p *podcgroup.Pod, s *stack.Stack){
	"reverse-shell": func(t *testing.T, p *podcgroup.Pod, _ *stack.Stack) {
		port := podcgroup.Listen(t, "127.0.0.1:0").Port
		for range burst {
			// bash's /dev/tcp: the shell itself dials out. Once isolate has
			// blocked the pod in the kernel the connect fails: still an attempt.
			p.Run(t, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/"+itoa(port)+"; exec 3>&-")
		}
	},
	"crypto-miner": func(t *testing.T, p *podcgroup.Pod, _ *stack.Stack) {
		for range burst {
			mustHelper(t, p, "connect", "127.0.0.1:3333")
		}
	},
	"package-manager": func(t *testing.T, p *podcgroup.Pod, _ *stack.Stack) {
		for range burst {
			mustRun(t, p, "dpkg", "--version")
		}
	},
	"dropped-binary": func(t *testing.T, p *podcgroup.Pod, _ *stack.Stack) {
		bin := filepath.Join(t.TempDir(), "dropper") // below /tmp
		copyFile(t, "/bin/true", bin)
		for range burst {
			mustRun(t, p, bin)
		}
	},
	"fileless-exec": func(t *testing.T, p *podcgroup.Pod, _ *stack.Stack) {
		for range burst {
			mustHelper(t, p, "memfd-exec")
		}
	},
	"sensitive-file": func(t *testing.T, p *podcgroup.Pod, _ *stack.Stack) {
		for range burst {
			mustRun(t, p, "cat", "/etc/shadow")
		}
	},
	"cloud-metadata": func(t *testing.T, p *podcgroup.Pod, _ *stack.Stack) {
		for range burst {
			mustHelper(t, p, "connect", "169.254.169.254:80")
		}
	},
	"k8s-client": func(t *testing.T, p *podcgroup.Pod, _ *stack.Stack) {
		// Not below /tmp, which would be a dropped binary as well.
		dir, err := os.MkdirTemp("/run", "parry-test-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		kubectl := filepath.Join(dir, "kubectl")
		copyFile(t, "/bin/true", kubectl)
		for range burst {
			mustRun(t, p, kubectl, "get", "secrets", "-A")
		}
	},
	"privilege-change": func(t *testing.T, p *podcgroup.Pod, _ *stack.Stack) {
		for range burst {
			mustHelper(t, p, "setuid")
		}
	},
	"ptrace": func(t *testing.T, p *podcgroup.Pod, _ *stack.Stack) {
		for range burst {
			mustHelper(t, p, "ptrace")
		}
	},
	// Falco's verdict, as the Falco adapter sends it once it has resolved
	// the pod (tests/e2e's TestFalcoAlertsDrivePlaybooks runs the adapter
	// itself, with a cluster to resolve in): a burst of Critical alerts.
	"falco-critical": func(t *testing.T, p *podcgroup.Pod, s *stack.Stack) {
		for i := range burst {
			e, err := events.New(events.Spec{Type: events.TypeFalcoAlert, Source: "parry://falco/test-node", Key: fmt.Sprint(p.UID, "-", i), Time: time.Now(),
				Extensions: map[string]string{events.ExtNode: "test-node", events.ExtPodUID: p.UID, events.ExtPodNamespace: "shop", events.ExtPodName: "web-" + p.UID[:8],
					events.ExtFalcoRule: "Terminal shell in container", events.ExtPriority: "critical", events.ExtTags: ",container,mitre_execution,"},
				Data: map[string]any{"rule": "Terminal shell in container", "priority": "Critical"}})
			if err != nil {
				t.Fatal(err)
			}
			hc := auth.WithToken(http.DefaultClient, auth.StaticToken(s.Tokens[stack.FalcoAdapter()]))
			if a, err := publish.Post(t.Context(), hc, s.BrokerURL(stack.DefaultBroker), e); err != nil || !a.Accepted() {
				t.Fatalf("Falco alert %d: %+v %v", i, a, err)
			}
		}
	},
}

func TestShippedPlaybooks(t *testing.T) {
	srcs, err := playbook.Load("../../playbooks")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range srcs {
		names = append(names, s.Metadata.Name)
		if attacks[s.Metadata.Name] == nil {
			t.Errorf("playbook %s has no end-to-end test: add its attack to attacks", s.Metadata.Name)
		}
	}
	rec, st := startStack(t)
	bundle, err := playbook.LoadBundle(configDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		attack := attacks[name]
		if attack == nil {
			continue
		}
		t.Run(name, func(t *testing.T) {
			p := podcgroup.New(t)
			start := time.Now()
			attack(t, p, st)
			got := waitIncidents(t, rec, p.UID, 15*time.Second)
			if len(got) == 0 {
				t.Fatalf("no incident opened for pod %s within 15s of the attack", p.UID)
			}
			t.Logf("incident %s after %s", events.String(got[0], events.ExtIncident), time.Since(start).Round(time.Millisecond))
			// The rest of the burst must join, not open: wait until classify
			// has joined every later repetition and the pod's events have
			// settled, so the count below is of a burst that arrived.
			joined := waitJoined(t, rec, p.UID, burst-1, 10*time.Second)
			settle(t, st, p.UID, 30*time.Second)
			got = rec.incidents(p.UID)
			var desc []string
			for _, e := range got {
				desc = append(desc, events.String(e, events.ExtPlaybook)+"/"+events.String(e, events.ExtIncident))
			}
			if len(got) != 1 || events.String(got[0], events.ExtPlaybook) != name {
				t.Fatalf("want exactly one incident of playbook %s for the pod, got %d: %v", name, len(got), desc)
			}
			if sev := events.String(got[0], events.ExtSeverity); sev == "" {
				t.Errorf("incident without severity")
			}
			t.Logf("classify received %d events of the pod, joined %d to the incident", rec.received(p.UID), joined)
			if joined < burst-1 {
				t.Errorf("classify joined %d of the burst's %d later events: the dedup was not exercised", joined, burst-1)
			}
			// The compiled chain ran: every step after classify answered
			// (done, or failed with its reason: there is no cluster here).
			pb, ok := bundle.Playbook(name)
			if !ok {
				t.Fatalf("the compiled bundle in %s lacks playbook %s", configDir, name)
			}
			inc := events.String(got[0], events.ExtIncident)
			for _, step := range pb.Steps {
				if step.After != classify.Name {
					continue
				}
				if typ := waitStep(t, st, inc, step.Function, 20*time.Second); typ == "" {
					t.Errorf("step %s of incident %s never replied", step.Function, inc)
				} else {
					t.Logf("step %s: %s", step.Function, typ)
				}
			}
		})
	}
}

// TestBenignBuild builds and tests a package of this project inside a pod
// under the sensor: no playbook may open an incident for it.
func TestBenignBuild(t *testing.T) {
	rec, st := startStack(t)
	p := podcgroup.New(t)
	cmd := p.Command(t, "go", "test", "-count=1", "./internal/events/")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go test in the pod: %v\n%s", err, out)
	}
	// The sensor must have watched the build, and classify must have
	// answered all of it, or this test proves nothing.
	journaled := settle(t, st, p.UID, 30*time.Second)
	t.Logf("the journal holds %d events of the build's pod, every delivery finished", journaled)
	if n := rec.received(p.UID); n < 3 {
		t.Fatalf("classify received only %d events of the build's pod: the sensor did not watch it", n)
	}
	t.Logf("classify learned from %d events of the build", rec.received(p.UID))
	if got := rec.incidents(p.UID); len(got) != 0 {
		var desc []string
		for _, e := range got {
			desc = append(desc, events.String(e, events.ExtPlaybook)+": "+string(e.Data()))
		}
		t.Fatalf("a benign build opened %d incidents:\n%s", len(got), strings.Join(desc, "\n"))
	}
}

// waitStep waits for the reply of fn in the incident's trace and returns
// its type.
func waitStep(t *testing.T, st *stack.Stack, incident, fn string, within time.Duration) string {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		trees, err := st.Journal.Incident(context.Background(), incident)
		if err != nil && !errors.Is(err, journal.ErrNotFound) { // not found: not journaled yet
			t.Fatal(err)
		}
		var found string
		var walk func(n *journal.Node)
		walk = func(n *journal.Node) {
			if n.Type == events.StepDone(fn) || n.Type == events.StepFailed(fn) {
				found = n.Type
			}
			for _, c := range n.Children {
				walk(c)
			}
		}
		for _, tr := range trees {
			walk(tr)
		}
		if found != "" {
			return found
		}
		time.Sleep(100 * time.Millisecond)
	}
	return ""
}

// waitJoined waits until classify has joined at least n events of the pod
// to an open incident and returns how many it joined.
func waitJoined(t *testing.T, rec *replies, poduid string, n int, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		joined := rec.count(poduid, events.TypeIncidentJoined)
		if joined >= n || time.Now().After(deadline) {
			return joined
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// settle waits until the journal's events of the pod stop growing (for
// half a second) with every delivery of them finished, and returns how many
// there are; it fails the test when there are none.
func settle(t *testing.T, st *stack.Stack, poduid string, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	last, pending := -1, 0
	for {
		es, err := st.Journal.Last(context.Background(), 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		pending = 0
		for _, e := range es {
			if events.String(e.Event, events.ExtPodUID) != poduid {
				continue
			}
			n++
			for _, d := range e.Deliveries {
				if d.State == journal.Pending {
					pending++
				}
			}
		}
		if n > 0 && n == last && pending == 0 {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("the journal's events of pod %s did not settle within %s: %d events, %d deliveries pending", poduid, within, n, pending)
		}
		last = n
		time.Sleep(500 * time.Millisecond)
	}
}

func waitIncidents(t *testing.T, rec *replies, poduid string, within time.Duration) []cloudevents.Event {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if got := rec.incidents(poduid); len(got) > 0 {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func mustRun(t *testing.T, p *podcgroup.Pod, name string, args ...string) {
	t.Helper()
	if out, err := p.Run(t, name, args...); err != nil {
		t.Fatalf("%s %v in the pod: %v\n%s", name, args, err, out)
	}
}

func mustHelper(t *testing.T, p *podcgroup.Pod, mode string, args ...string) {
	t.Helper()
	cmd := p.Command(t, os.Args[0], args...)
	cmd.Env = append(os.Environ(), "PARRY_PLAYBOOK_HELPER="+mode)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper %s in the pod: %v\n%s", mode, err, out)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
