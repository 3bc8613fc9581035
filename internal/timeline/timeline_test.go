package timeline_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/timeline"
)

// hostilePod is a pod name as an attacker who controls a workload might
// choose it: markup, a bidi override that would reorder what follows, and
// an escape sequence.
const hostilePod = `web-<script>alert(1)</script>` + "\u202e" + `gnp.exe` + "\x1b[2J"

// journalWithIncident journals a miner's incident as parry run would:
// the kernel event, classify's opening, isolate and snapshot done, respawn
// failed.
func journalWithIncident(t *testing.T) (*journal.Journal, string) {
	t.Helper()
	ctx := context.Background()
	j, err := journal.Open(ctx, filepath.Join(t.TempDir(), "journal.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	pod := map[string]string{events.ExtPodNamespace: "shop", events.ExtPodName: hostilePod, events.ExtPodUID: "u-1", events.ExtNode: "n1", events.ExtDestPort: "3333"}
	connect, err := events.New(events.Spec{Type: events.TypeNetworkConnect, Source: "parry://sensor/n1", Key: "k", Extensions: pod})
	if err != nil {
		t.Fatal(err)
	}
	reply := func(cause cloudevents.Event, typ, source, key string, ext map[string]string, data any) cloudevents.Event {
		e, err := events.Reply(cause, events.Spec{Type: typ, Source: source, Key: key, Extensions: ext, Data: data})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	opened := reply(connect, events.TypeIncidentOpened, "parry://function/classify", "c",
		map[string]string{events.ExtIncident: "inc-1", events.ExtPlaybook: "crypto-miner", events.ExtSeverity: "critical", events.ExtScore: "95", events.ExtResponse: "act"},
		map[string]any{"reasons": []string{"+90: playbook crypto-miner (critical)"}, "description": "A crypto-miner in a container"})
	isolated := reply(opened, events.StepDone("isolate"), "parry://function/isolate", "i", map[string]string{events.ExtStep: "isolate"},
		map[string]any{"applied": []string{"in-kernel egress block of pod u-1", "NetworkPolicy shop/parry-quarantine-u-1"}})
	snapped := reply(opened, events.StepDone("snapshot"), "parry://function/snapshot", "s", map[string]string{events.ExtStep: "snapshot"},
		map[string]any{"bundle": "/var/lib/parry/evidence/inc-1/u-1", "manifestSHA256": "abc123", "applied": []string{"evidence bundle /var/lib/parry/evidence/inc-1/u-1"}})
	respawnFailed := reply(snapped, events.StepFailed("respawn"), "parry://function/respawn", "r", map[string]string{events.ExtStep: "respawn"},
		map[string]any{"reason": "the Deployment is gone"})
	for _, e := range []cloudevents.Event{connect, opened, isolated, snapped, respawnFailed} {
		r, err := journal.NewRecord("parry-system/parry", "", e, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := j.Append(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	return j, connect.ID()
}

func get(t *testing.T, srv *httptest.Server, path string) (int, http.Header, string) {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func TestPagesShowTheIncidentAndEscapeWhatAttackersChose(t *testing.T) {
	j, connectID := journalWithIncident(t)
	srv := httptest.NewServer((&timeline.Server{Journal: j, Log: zerolog.Nop()}).Handler())
	defer srv.Close()

	code, h, list := get(t, srv, "/")
	if code != 200 || !strings.Contains(list, `href="/incidents/inc-1"`) || !strings.Contains(list, "crypto-miner") || !strings.Contains(list, "isolate done") || !strings.Contains(list, "respawn failed") {
		t.Fatalf("list %d:\n%s", code, list)
	}
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "script-src") {
		t.Fatalf("CSP %q must forbid scripts", csp)
	}

	code, _, page := get(t, srv, "/incidents/inc-1")
	if code != 200 {
		t.Fatalf("incident page %d:\n%s", code, page)
	}
	for _, want := range []string{
		"A crypto-miner in a container", "&#43;90: playbook crypto-miner (critical)", // classify's reasons (html/template writes + as &#43;)
		"isolate done", "snapshot done", "respawn failed", "the Deployment is gone", // each step's outcome
		"= NetworkPolicy shop/parry-quarantine-u-1",          // what it applied
		"/var/lib/parry/evidence/inc-1/u-1", "sha256:abc123", // the evidence
		"network connect", `href="/events/` + connectID + `"`, "raw CloudEvent", // the kernel event and its raw form
		`web-&lt;script&gt;alert(1)&lt;/script&gt;\u202egnp.exe\x1b[2J`, // the hostile name, shown, not acted on
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the incident page lacks %q", want)
		}
	}
	for _, never := range []string{"<script>", "\u202e", "\x1b"} {
		if strings.Contains(page, never) || strings.Contains(list, never) {
			t.Errorf("a page carries %q raw", never)
		}
	}
	// The first row is the kernel event at +0.0 ms.
	if i, k := strings.Index(page, `class="mono offset">+0.0 ms`), strings.Index(page, "network connect"); i < 0 || k < i {
		t.Errorf("the timeline does not start at the kernel event")
	}

	code, h, raw := get(t, srv, "/events/"+connectID)
	if code != 200 || h.Get("Content-Type") != "application/json" || !strings.Contains(raw, `"dport": "3333"`) {
		t.Fatalf("raw event %d %s:\n%s", code, h.Get("Content-Type"), raw)
	}

	for path, want := range map[string]int{
		"/incidents/inc-nope":              404,
		"/events/nope":                     404,
		"/?state=sideways":                 400,
		"/incidents/inc-1%27%20OR%201=1--": 404,
		"/../../etc/passwd":                404,
	} {
		if code, _, body := get(t, srv, path); code != want {
			t.Errorf("GET %s: %d, want %d\n%s", path, code, want, body)
		}
	}
	if code, _, _ := get(t, srv, "/?state=closed"); code != 200 {
		t.Errorf("filter closed: %d", code)
	}
}
