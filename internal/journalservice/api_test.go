package journalservice_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/journalservice"
	"parry.dev/parry/internal/journalservice/journaltest"
)

// readers makes a reader account (bound to the shipped
// parry-journal-reader), a stranger (bound to nothing) and a scraper
// (bound to parry-journal-metrics), and returns their tokens for the read
// API's audience.
func readers(t *testing.T, cs kubernetes.Interface) (reader, stranger, scraper string) {
	t.Helper()
	shippedRoles(t, cs)
	ns := uniqueNamespace("oncall")
	journaltest.Account(t, cs, ns, "reader")
	journaltest.Account(t, cs, ns, "scraper")
	grant(t, cs, "parry-journal-reader", ns, "reader")
	grant(t, cs, "parry-journal-metrics", ns, "scraper")
	return journaltest.Token(t, cs, ns, "reader", journalservice.Audience),
		journaltest.Token(t, cs, ns, "stranger", journalservice.Audience),
		journaltest.Token(t, cs, ns, "scraper", journalservice.Audience)
}

// record delivers es to the service as the journal's Trigger.
func (f *fixture) record(t *testing.T, lists ...[]cloudevents.Event) {
	t.Helper()
	for _, e := range slices.Concat(lists...) {
		if code, body, err := journaltest.Deliver(t.Context(), http.DefaultClient, f.url, f.trigger, e, false); code != http.StatusAccepted {
			t.Fatalf("delivering %s: %d %s %v", e.ID(), code, body, err)
		}
	}
}

// The read API serves only ServiceAccounts whose token is for its audience
// and whose RBAC grants the query, on every route; a decision that cannot
// be made is a refusal (503), never a pass.
func TestReadAPIServesOnlyGrantedAccounts(t *testing.T) {
	f := start(t)
	f.record(t, journaltest.Incident(t, "rbac", "crypto-miner", "shop", time.Now()))
	reader, stranger, scraper := readers(t, f.cs)
	otherAudience := journaltest.Token(t, f.cs, uniqueNamespace("oncall"), "reader", "parry-sensor")
	routes := []string{
		journalservice.RouteEvent + "?id=x", journalservice.RouteLast + "?last=5", journalservice.RouteTree + "?id=x",
		journalservice.RouteIncident + "?id=inc-rbac", journalservice.RouteIncidents,
	}
	for _, route := range routes {
		for name, c := range map[string]struct {
			token string
			code  int
			want  string
		}{
			"no token":                   {"", http.StatusUnauthorized, "no bearer token"},
			"not a token":                {"garbage", http.StatusUnauthorized, "token rejected"},
			"a token for another use":    {otherAudience, http.StatusUnauthorized, "token rejected"},
			"an account granted nothing": {stranger, http.StatusForbidden, "may not"},
			"the metrics scraper":        {scraper, http.StatusForbidden, "may not"},
		} {
			code, body, h := get(t, f.url+route, c.token)
			if code != c.code || !strings.Contains(body, c.want) {
				t.Errorf("%s, %s: %d %s, want %d with %q", route, name, code, body, c.code, c.want)
			}
			if code == http.StatusUnauthorized && h.Get("WWW-Authenticate") == "" {
				t.Errorf("%s, %s: a 401 without a challenge", route, name)
			}
		}
		code, body, _ := get(t, f.url+route, reader)
		if route == journalservice.RouteEvent+"?id=x" || route == journalservice.RouteTree+"?id=x" {
			if code != http.StatusNotFound {
				t.Errorf("%s, the reader: %d %s, want 404 (allowed, no such event)", route, code, body)
			}
			continue
		}
		if code != http.StatusOK {
			t.Errorf("%s, the reader: %d %s, want 200", route, code, body)
		}
	}
	// /metrics: the scraper, not the reader; /healthz: anyone.
	if code, body, _ := get(t, f.url+"/metrics", reader); code != http.StatusForbidden {
		t.Errorf("/metrics, the reader: %d %s, want 403", code, body)
	}
	code, body, _ := get(t, f.url+"/metrics", scraper)
	if code != http.StatusOK || !strings.Contains(body, `parry_journal_events_total{result="recorded"} 7`) || !strings.Contains(body, "parry_journal_batch_size_count") ||
		!strings.Contains(body, `parry_journal_api_requests_total{result="forbidden"}`) {
		t.Errorf("/metrics, the scraper: %d %s", code, body)
	}
	if code, _, _ := get(t, f.url+"/healthz", ""); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}

	// Fail closed: the API server unreachable for either review.
	down := kubernetes.NewForConfigOrDie(&rest.Config{Host: "https://127.0.0.1:1", Timeout: time.Second})
	for name, cfg := range map[string]journalservice.Config{
		"TokenReview unreachable":         {ReadAuthn: auth.NewTokenReview(down, journalservice.Audience, time.Minute), ReadAuthz: auth.NewSubjectAccessReview(f.cs, 0, 0)},
		"SubjectAccessReview unreachable": {ReadAuthn: auth.NewTokenReview(f.cs, journalservice.Audience, time.Minute), ReadAuthz: auth.NewSubjectAccessReview(down, 0, 0)},
		"no cluster to ask":               {},
	} {
		cfg.Recorder, cfg.Reader, cfg.Log = f.store, f.store, zerolog.Nop()
		_, u := serve(t, cfg)
		if code, body, h := get(t, u+journalservice.RouteIncidents, reader); code != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
			t.Errorf("%s: %d %s, want 503 with Retry-After", name, code, body)
		}
	}
}

// sameJSON fails t unless want and got encode alike: what the client
// decoded is what the store answered, field for field.
func sameJSON(t *testing.T, what string, want, got any) {
	t.Helper()
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if string(w) != string(g) {
		t.Errorf("%s differs:\n store:  %s\n client: %s", what, w, g)
	}
}

// The client is journal.Reader over the API: for every query it answers
// what the store itself answers, not-found included, with ids of any
// characters.
func TestClientAnswersAsTheStore(t *testing.T) {
	f := start(t)
	base := time.Now().Add(-time.Hour)
	a := journaltest.Incident(t, "a", "crypto-miner", "shop", base)
	b := journaltest.Incident(t, "b", "reverse-shell", "bank", base.Add(time.Minute))
	c := journaltest.Incident(t, "c", "crypto-miner", "bank", base.Add(2*time.Minute))
	f.record(t, a, b[:5], c[:2]) // a closed, b and c open; c's steps never ran
	// An id and an incident of every character a path or a query could
	// trip over.
	odd := sensorEvent(t, "odd")
	odd.SetID(`../x/"y'<z>%2F?&#;` + "\u00e9 \t")
	odd.SetExtension(events.ExtIncident, `inc/../"q"?&=#`)
	f.record(t, []cloudevents.Event{odd})

	reader, _, _ := readers(t, f.cs)
	cl, err := journalservice.Dial(f.url+"/", auth.WithToken(httpclient.New(time.Minute), auth.StaticToken(reader)))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := t.Context()
	var _ journal.Reader = cl

	for _, id := range []string{a[0].ID(), a[4].ID(), b[1].ID(), odd.ID()} {
		want, err := f.store.Event(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		got, err := cl.Event(ctx, id)
		if err != nil {
			t.Fatalf("Event(%q): %v", id, err)
		}
		sameJSON(t, "Event "+id, want, got)
		wantTree, err := f.store.Tree(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		gotTree, err := cl.Tree(ctx, id)
		if err != nil {
			t.Fatalf("Tree(%q): %v", id, err)
		}
		sameJSON(t, "Tree "+id, wantTree, gotTree)
	}
	for _, inc := range []string{"inc-a", "inc-b", "inc-c", `inc/../"q"?&=#`} {
		want, err := f.store.Incident(ctx, inc)
		if err != nil {
			t.Fatal(err)
		}
		got, err := cl.Incident(ctx, inc)
		if err != nil {
			t.Fatalf("Incident(%q): %v", inc, err)
		}
		sameJSON(t, "Incident "+inc, want, got)
	}
	if trees, _ := cl.Incident(ctx, "inc-a"); len(trees) != 2 || len(trees[0].Children) == 0 {
		t.Fatalf("incident a: %d trees; want the two detections' trees, grown", len(trees))
	}
	for _, n := range []int{1, 3, 100, journalservice.MaxLast} {
		want, err := f.store.Last(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		got, err := cl.Last(ctx, n)
		if err != nil {
			t.Fatalf("Last(%d): %v", n, err)
		}
		sameJSON(t, fmt.Sprintf("Last(%d)", n), want, got)
	}
	for _, flt := range []journal.IncidentFilter{
		{}, {State: journal.IncidentOpen}, {State: "CLOSED"}, {Playbook: "crypto-miner"}, {Namespace: "bank"},
		{Since: base.Add(30 * time.Second)}, {Limit: 1}, {Playbook: "crypto-miner", Namespace: "bank", State: journal.IncidentOpen},
		{Playbook: "none"},
	} {
		want, err := f.store.Incidents(ctx, flt)
		if err != nil {
			t.Fatal(err)
		}
		got, err := cl.Incidents(ctx, flt)
		if err != nil {
			t.Fatalf("Incidents(%+v): %v", flt, err)
		}
		sameJSON(t, fmt.Sprintf("Incidents(%+v)", flt), want, got)
	}
	if list, _ := cl.Incidents(ctx, journal.IncidentFilter{}); len(list) != 3 || list[0].ID != "inc-c" || list[2].State != journal.IncidentClosed {
		t.Fatalf("the incident list: %d incidents", len(list))
	}

	// Not found is journal.ErrNotFound, as from the store.
	for what, err := range map[string]error{
		"event":    func() error { _, err := cl.Event(ctx, "nope"); return err }(),
		"tree":     func() error { _, err := cl.Tree(ctx, "nope"); return err }(),
		"incident": func() error { _, err := cl.Incident(ctx, "nope"); return err }(),
	} {
		if !errors.Is(err, journal.ErrNotFound) {
			t.Errorf("%s of an unknown id: %v, want journal.ErrNotFound", what, err)
		}
	}
	// A client without a grant hears why.
	stranger, err := journalservice.Dial(f.url, auth.WithToken(httpclient.New(time.Minute), auth.StaticToken("garbage")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.Last(ctx, 1); err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "--audience "+journalservice.Audience) {
		t.Errorf("a bad token: %v", err)
	}
}

// Dial refuses URLs it would send a token to by mistake.
func TestDialRefusesURLsThatAreNotAService(t *testing.T) {
	for _, u := range []string{"", "parry-journal:8080", "ftp://x", "postgres://u:p@db/x", "https://user:secret@x", "http://x/?a=b", "http://x/#f", "http://"} {
		_, err := journalservice.Dial(u, http.DefaultClient)
		if err == nil {
			t.Errorf("Dial(%q) accepted it", u)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("Dial(%q): the error shows the password: %v", u, err)
		}
	}
	if _, err := journalservice.Dial("https://journal.example.com/base/", http.DefaultClient); err != nil {
		t.Errorf("a good URL: %v", err)
	}
}

// Hostile queries from a granted reader: sizes over the limits, repeated
// and unknown parameters, path tricks, and markup in ids. Each is refused
// with 4xx and a JSON reason that reflects nothing unescaped; nothing
// answers more than the limits.
func TestHostileQueriesAreRefused(t *testing.T) {
	f := start(t)
	reader, _, _ := readers(t, f.cs)
	long := strings.Repeat("a", journalservice.MaxParamBytes+1)
	for _, c := range []struct {
		path string
		code int
	}{
		{journalservice.RouteLast + "?last=" + fmt.Sprint(journalservice.MaxLast+1), http.StatusBadRequest},
		{journalservice.RouteLast + "?last=99999999999999999999999999", http.StatusBadRequest},
		{journalservice.RouteLast + "?last=-1", http.StatusBadRequest},
		{journalservice.RouteLast + "?last=0x10", http.StatusBadRequest},
		{journalservice.RouteLast, http.StatusBadRequest},
		{journalservice.RouteLast + "?last=1&last=2", http.StatusBadRequest},
		{journalservice.RouteEvent, http.StatusBadRequest},
		{journalservice.RouteEvent + "?id=a&id=b", http.StatusBadRequest},
		{journalservice.RouteEvent + "?id=" + long, http.StatusBadRequest},
		{journalservice.RouteEvent + "?id=a&admin=true", http.StatusBadRequest},
		{journalservice.RouteEvent + "?id=%zz", http.StatusBadRequest},
		{journalservice.RouteEvent + "?id=" + url.QueryEscape("<script>alert(1)</script>"), http.StatusNotFound},
		{journalservice.RouteTree + "?id=" + url.QueryEscape(`"><img src=x onerror=alert(1)>`), http.StatusNotFound},
		{journalservice.RouteIncidents + "?limit=" + fmt.Sprint(journalservice.MaxIncidents+1), http.StatusBadRequest},
		{journalservice.RouteIncidents + "?state=<b>bogus</b>", http.StatusBadRequest},
		{journalservice.RouteIncidents + "?since=yesterday", http.StatusBadRequest},
		{journalservice.RouteIncidents + "?" + url.QueryEscape("<script>") + "=1", http.StatusBadRequest},
		{journalservice.RouteEvent + "/x", http.StatusNotFound},
		{journalservice.RouteEvent + "%2F..%2F..%2Fmetrics", http.StatusNotFound},
	} {
		code, body, h := get(t, f.url+c.path, reader)
		if code != c.code {
			t.Errorf("%s: %d %s, want %d", c.path, code, body, c.code)
		}
		if code < 500 && code != http.StatusNotFound || strings.HasPrefix(body, "{") {
			var refusal struct{ Error string }
			if err := json.Unmarshal([]byte(body), &refusal); err != nil || refusal.Error == "" || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
				t.Errorf("%s: the refusal is not a JSON reason: %q (%s)", c.path, body, h.Get("Content-Type"))
			}
		}
		for _, raw := range []string{"<script", "<img", "<b>"} {
			if strings.Contains(body, raw) {
				t.Errorf("%s: the answer reflects %s unescaped: %s", c.path, raw, body)
			}
		}
	}
	// ../ cleaned by the router leads to /metrics, which needs its own
	// grant: the reader is refused there too.
	if code, body, _ := get(t, f.url+"/v1/../metrics", reader); code == http.StatusOK {
		t.Errorf("/v1/../metrics answered the reader: %s", body)
	}
	// Writes are not part of the read API.
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		req, _ := http.NewRequestWithContext(t.Context(), method, f.url+journalservice.RouteIncidents, nil)
		req.Header.Set("Authorization", "Bearer "+reader)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s %s: %d, want 405", method, journalservice.RouteIncidents, resp.StatusCode)
		}
	}
}

// More incidents than one answer may hold are refused, not cut short:
// without a limit past MaxIncidents the list is a 422 naming the way out,
// and with a limit it is served.
func TestALongIncidentListIsRefusedNotCut(t *testing.T) {
	f := start(t)
	var recs []journal.Record
	for i := range journalservice.MaxIncidents + 1 {
		e, err := events.New(events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: fmt.Sprint(i), Time: time.Now(),
			Extensions: map[string]string{events.ExtIncident: fmt.Sprintf("many-%d", i), events.ExtPlaybook: "p"}})
		if err != nil {
			t.Fatal(err)
		}
		r, err := journal.NewRecord("parry-system/parry", "", e, nil)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	if n, err := f.store.Record(t.Context(), recs); err != nil || n != len(recs) {
		t.Fatalf("recorded %d: %v", n, err)
	}
	reader, _, _ := readers(t, f.cs)
	if code, body, _ := get(t, f.url+journalservice.RouteIncidents, reader); code != http.StatusUnprocessableEntity || !strings.Contains(body, "narrow") {
		t.Errorf("all incidents: %d %.200s, want 422 naming the filters", code, body)
	}
	cl, err := journalservice.Dial(f.url, auth.WithToken(httpclient.New(time.Minute), auth.StaticToken(reader)))
	if err != nil {
		t.Fatal(err)
	}
	if list, err := cl.Incidents(t.Context(), journal.IncidentFilter{Limit: 7}); err != nil || len(list) != 7 || list[0].ID != fmt.Sprintf("many-%d", journalservice.MaxIncidents) {
		t.Errorf("with a limit: %d incidents, %v", len(list), err)
	}
	if _, err := cl.Incidents(t.Context(), journal.IncidentFilter{}); err == nil || !strings.Contains(err.Error(), "422") {
		t.Errorf("the client, all incidents: %v", err)
	}
	if _, err := cl.Last(t.Context(), journalservice.MaxLast+1); err == nil {
		t.Error("the client asked for more than MaxLast events")
	}
}
