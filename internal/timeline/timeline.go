package timeline

import (
	"bytes"
	"cmp"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"parry.dev/parry/internal/display"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
)

//go:embed templates/*.html
var templateFS embed.FS

// Server renders the timeline pages from Journal.
type Server struct {
	Journal journal.Reader
	Log     zerolog.Logger
	// Now is the clock ages are measured against; nil means time.Now.
	Now func() time.Time
}

// maxListed bounds the incident list one page shows.
const maxListed = 200

// Handler routes the pages:
//
//	GET /                     the incident list (?state=&playbook=&namespace=)
//	GET /incidents/{id}       one incident's timeline
//	GET /events/{id}          one raw CloudEvent, as JSON
func (s *Server) Handler() http.Handler {
	pages := template.Must(template.New("").Funcs(template.FuncMap{
		"show": display.Printable,
		"ms":   formatMS,
		"utc":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000Z") },
		"path": url.PathEscape,
	}).ParseFS(templateFS, "templates/*.html"))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { s.list(w, r, pages) })
	mux.HandleFunc("GET /incidents/{id}", func(w http.ResponseWriter, r *http.Request) { s.incident(w, r, pages) })
	mux.HandleFunc("GET /events/{id}", s.rawEvent)
	return secureHeaders(mux)
}

// secureHeaders forbid what the pages never need, so that a value that
// slipped through escaping still could not run or load anything.
func secureHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

type listPage struct {
	Filter    journal.IncidentFilter
	Incidents []listRow
	More      bool
}

type listRow struct {
	journal.IncidentSummary
	Age string
}

func (s *Server) list(w http.ResponseWriter, r *http.Request, pages *template.Template) {
	q := r.URL.Query()
	f := journal.IncidentFilter{State: q.Get("state"), Playbook: q.Get("playbook"), Namespace: q.Get("namespace"), Limit: maxListed + 1}
	if f.State != "" && f.State != journal.IncidentOpen && f.State != journal.IncidentClosed {
		http.Error(w, "state must be open or closed", http.StatusBadRequest)
		return
	}
	list, err := s.Journal.Incidents(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	page := listPage{Filter: f}
	if len(list) > maxListed {
		list, page.More = list[:maxListed], true
	}
	now := s.now()
	for _, inc := range list {
		page.Incidents = append(page.Incidents, listRow{IncidentSummary: inc, Age: age(now, inc.Opened)})
	}
	s.render(w, r, pages, "list.html", page)
}

type incidentPage struct {
	journal.IncidentSummary
	Rows     []row
	Total    time.Duration
	Evidence []evidence
}

// row is one event of the timeline.
type row struct {
	ID, Type, Label, Actor string
	// Outcome is done, failed or "" (not a step's reply).
	Outcome string
	At      time.Time
	// Offset is since the first event; Took since the event that caused
	// this one (a step's own time, broker hops included).
	Offset, Took time.Duration
	HasCause     bool
	Attributes   []journal.Attribute
	Why, Applied []string
	Deliveries   []journal.Delivery
	Raw          string
	Depth        int
}

// evidence is where a snapshot put its bundle and what it must hash to.
type evidence struct {
	Bundle, Manifest, Pod string
}

func (s *Server) incident(w http.ResponseWriter, r *http.Request, pages *template.Template) {
	id := r.PathValue("id")
	trees, err := s.Journal.Incident(r.Context(), id)
	if errors.Is(err, journal.ErrNotFound) {
		http.Error(w, "no such incident in the journal", http.StatusNotFound)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var members []journal.Entry
	var rows []row
	received := map[string]time.Time{}
	for _, t := range trees {
		walk(t, 0, func(n *journal.Node, depth int) {
			members = append(members, n.Entry)
			received[n.ID] = n.Received
			rows = append(rows, toRow(n.Entry, depth))
		})
	}
	slices.SortStableFunc(rows, func(a, b row) int { return a.At.Compare(b.At) })
	page := incidentPage{IncidentSummary: journal.Summarize(id, incidentMembers(members, id)), Rows: rows}
	if len(rows) > 0 {
		start := rows[0].At
		for i := range rows {
			rows[i].Offset = rows[i].At.Sub(start)
			page.Total = rows[i].Offset
		}
	}
	rowOf := make(map[string]int, len(rows))
	for i := range rows {
		rowOf[rows[i].ID] = i
	}
	for _, e := range members {
		if cause, ok := received[e.Causation]; ok {
			i := rowOf[e.ID]
			rows[i].Took, rows[i].HasCause = e.Received.Sub(cause), true
		}
		if ev, ok := evidenceOf(e); ok {
			page.Evidence = append(page.Evidence, ev)
		}
	}
	s.render(w, r, pages, "incident.html", page)
}

// incidentMembers are the entries that carry the incident (the trees also
// hold their root causes, which do not).
func incidentMembers(all []journal.Entry, id string) []journal.Entry {
	var out []journal.Entry
	for _, e := range all {
		if e.Incident == id {
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(a, b journal.Entry) int { return cmp.Compare(a.Seq, b.Seq) })
	return out
}

func toRow(e journal.Entry, depth int) row {
	raw, _ := json.MarshalIndent(e.Event, "", "  ")
	r := row{
		ID: e.ID, Type: e.Type, At: e.Received, Depth: depth,
		Attributes: e.KeyAttributes(), Why: e.Why(), Applied: e.Applied(), Deliveries: e.Deliveries,
		Raw: printableLines(string(raw)),
	}
	r.Actor, r.Label, r.Outcome = describe(e)
	return r
}

// describe names who acted and what happened, for people.
func describe(e journal.Entry) (actor, label, outcome string) {
	if step := events.String(e.Event, events.ExtStep); step != "" {
		switch e.Type {
		case events.StepDone(step):
			return step, step + " done", "done"
		case events.StepFailed(step):
			return step, step + " failed", "failed"
		}
	}
	switch e.Type {
	case events.TypeIncidentOpened:
		return "classify", "incident opened", ""
	case events.TypeIncidentJoined:
		return "classify", "joined the incident", ""
	case events.TypeIncidentSuppressed:
		return "classify", "matched, under the threshold", ""
	case events.TypeIncidentClosed:
		return "person", "incident closed", ""
	}
	if rest, ok := strings.CutPrefix(e.Type, events.TypeSensorPrefix); ok {
		return "sensor", strings.TrimSuffix(strings.ReplaceAll(rest, ".", " "), " v1"), ""
	}
	return e.Source, e.Type, ""
}

func evidenceOf(e journal.Entry) (evidence, bool) {
	if e.Type != events.StepDone("snapshot") {
		return evidence{}, false
	}
	var data struct {
		Bundle         string `json:"bundle"`
		ManifestSHA256 string `json:"manifestSHA256"`
	}
	if json.Unmarshal(e.Event.Data(), &data) != nil || data.Bundle == "" {
		return evidence{}, false
	}
	return evidence{Bundle: data.Bundle, Manifest: data.ManifestSHA256, Pod: events.String(e.Event, events.ExtPodName)}, true
}

func (s *Server) rawEvent(w http.ResponseWriter, r *http.Request) {
	e, err := s.Journal.Event(r.Context(), r.PathValue("id"))
	if errors.Is(err, journal.ErrNotFound) {
		http.Error(w, "no such event in the journal", http.StatusNotFound)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	b, err := json.MarshalIndent(e.Event, "", "  ")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

// render executes into a buffer first, so a template error is a clean 500
// rather than half a page.
func (s *Server) render(w http.ResponseWriter, r *http.Request, pages *template.Template, name string, data any) {
	var buf bytes.Buffer
	if err := pages.ExecuteTemplate(&buf, name, data); err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(buf.Bytes())
}

// fail logs the cause and answers without it: journal errors may name
// paths or queries the page's reader has no use for.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	s.Log.Error().Err(err).Str("path", r.URL.Path).Msg("timeline: cannot render")
	http.Error(w, "the journal could not be read; see parry's log", http.StatusInternalServerError)
}

// printableLines is display.Printable line by line, so the indented JSON
// keeps its line breaks.
func printableLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = display.Printable(l)
	}
	return strings.Join(lines, "\n")
}

func walk(n *journal.Node, depth int, f func(*journal.Node, int)) {
	f(n, depth)
	for _, c := range n.Children {
		walk(c, depth+1, f)
	}
}

func formatMS(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + " ms"
}

func age(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + " s ago"
	case d < time.Hour:
		return strconv.Itoa(int(d.Minutes())) + " min ago"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d.Hours())) + " h ago"
	}
	return strconv.Itoa(int(d.Hours()/24)) + " days ago"
}
