package journalservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/logging"
)

// The read API. Every route is a GET answered with JSON (journal's types),
// or {"error": "..."} with 400 (a bad query), 401, 403, 404 (no such event
// or incident: journal.ErrNotFound), 422 (an answer over the limits), 500
// (the store failed) or 503 (a review could not be made).
const (
	RouteEvent     = "/v1/event"     // ?id=ID: journal.Entry
	RouteLast      = "/v1/events"    // ?last=N: []journal.Entry, oldest first
	RouteTree      = "/v1/tree"      // ?id=ID: *journal.Node
	RouteIncident  = "/v1/incident"  // ?id=INCIDENT: []*journal.Node
	RouteIncidents = "/v1/incidents" // ?state=&playbook=&namespace=&since=RFC3339&limit=: []journal.IncidentSummary
	routeMetrics   = "/metrics"
)

// Limits of the read API.
const (
	// MaxLast bounds N of the last N events.
	MaxLast = 1000
	// MaxIncidents bounds an incident list: a limit above it is refused,
	// and a list without a limit that would be longer is refused (422)
	// rather than cut short.
	MaxIncidents = 1000
	// MaxResponseBytes bounds one answer (a causal tree of a huge
	// incident): a longer one is refused with 422.
	MaxResponseBytes = 64 << 20
	// MaxParamBytes bounds an id or a filter value.
	MaxParamBytes = 1024
	// queryTimeout bounds the store's work for one request.
	queryTimeout = 25 * time.Second
)

// Group is the API group of the journal's virtual resources: RBAC grants
// get and list on events and incidents (ClusterRole parry-journal-reader)
// and get on metrics.
const Group = "journal.parry.dev"

var (
	accessEvent     = auth.Attributes{Verb: "get", Group: Group, Resource: "events"}
	accessLast      = auth.Attributes{Verb: "list", Group: Group, Resource: "events"}
	accessIncident  = auth.Attributes{Verb: "get", Group: Group, Resource: "incidents"}
	accessIncidents = auth.Attributes{Verb: "list", Group: Group, Resource: "incidents"}
	accessMetrics   = auth.Attributes{Verb: "get", Group: Group, Resource: "metrics"}
)

// badRequest is a query the API refuses with 400.
type badRequest struct{ msg string }

func (b *badRequest) Error() string { return b.msg }

func badf(format string, args ...any) error { return &badRequest{msg: fmt.Sprintf(format, args...)} }

// tooLarge is an answer over the limits, refused with 422.
type tooLarge struct{ msg string }

func (t *tooLarge) Error() string { return t.msg }

func (s *Service) routes(mux *http.ServeMux) {
	rd := s.cfg.Reader
	mux.HandleFunc("GET "+RouteEvent, s.authorized(accessEvent, s.answer(RouteEvent, func(ctx context.Context, q url.Values) (any, error) {
		id, err := param(q, "id", true)
		if err != nil {
			return nil, err
		}
		return rd.Event(ctx, id)
	}, "id")))
	mux.HandleFunc("GET "+RouteLast, s.authorized(accessLast, s.answer(RouteLast, func(ctx context.Context, q url.Values) (any, error) {
		n, err := count(q, "last", MaxLast)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, badf("last: want the number of events, 1 to %d", MaxLast)
		}
		es, err := rd.Last(ctx, n)
		if es == nil {
			es = []journal.Entry{}
		}
		return es, err
	}, "last")))
	mux.HandleFunc("GET "+RouteTree, s.authorized(accessEvent, s.answer(RouteTree, func(ctx context.Context, q url.Values) (any, error) {
		id, err := param(q, "id", true)
		if err != nil {
			return nil, err
		}
		return rd.Tree(ctx, id)
	}, "id")))
	mux.HandleFunc("GET "+RouteIncident, s.authorized(accessIncident, s.answer(RouteIncident, func(ctx context.Context, q url.Values) (any, error) {
		id, err := param(q, "id", true)
		if err != nil {
			return nil, err
		}
		return rd.Incident(ctx, id)
	}, "id")))
	mux.HandleFunc("GET "+RouteIncidents, s.authorized(accessIncidents, s.answer(RouteIncidents, func(ctx context.Context, q url.Values) (any, error) {
		f, err := filterOf(q)
		if err != nil {
			return nil, err
		}
		asked := f.Limit
		if asked == 0 {
			f.Limit = MaxIncidents + 1
		}
		list, err := rd.Incidents(ctx, f)
		if err != nil {
			return nil, err
		}
		if asked == 0 && len(list) > MaxIncidents {
			return nil, &tooLarge{msg: fmt.Sprintf("more than %d incidents match: narrow the list with since, state, playbook or namespace, or set limit", MaxIncidents)}
		}
		if list == nil {
			list = []journal.IncidentSummary{}
		}
		return list, nil
	}, "state", "playbook", "namespace", "since", "limit")))
}

// authorized serves h to callers whose token for Audience the
// authenticator accepts and whose RBAC allows attrs, and refuses the
// others: 401, 403, and 503 when a decision could not be made (fail
// closed), as the sensor's API does.
func (s *Service) authorized(attrs auth.Attributes, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.ReadAuthn == nil || s.cfg.ReadAuthz == nil {
			s.metrics.read(http.StatusServiceUnavailable)
			auth.Refuse(w, http.StatusServiceUnavailable, "this journal service cannot authenticate readers: it runs without a cluster to review tokens, so it serves only deliveries and /healthz")
			return
		}
		id, status, reason := auth.Check(r.Context(), r, s.cfg.ReadAuthn, s.cfg.ReadAuthz, attrs)
		s.metrics.read(status)
		if status != 0 {
			s.log.Warn().Int(logging.FieldStatus, status).Str(logging.FieldPath, r.Method+" "+r.URL.Path).
				Str(logging.FieldUser, id.Username).Str(logging.FieldReason, reason).Msg("journal API request refused")
			auth.Refuse(w, status, reason)
			return
		}
		h(w, r.WithContext(auth.WithIdentity(r.Context(), id)))
	}
}

// answer runs query with the request's parameters (only those named are
// allowed) and writes its answer as JSON, or the error with its status.
func (s *Service) answer(route string, query func(context.Context, url.Values) (any, error), allowed ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			err = badf("a malformed query: %v", err)
		} else {
			err = onlyParams(q, allowed)
		}
		var v any
		if err == nil {
			ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
			v, err = query(ctx, q)
			cancel()
		}
		var body []byte
		if err == nil {
			body, err = encode(v)
		}
		var bad *badRequest
		var large *tooLarge
		switch {
		case err == nil:
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.Write(body)
		case errors.As(err, &bad):
			auth.Refuse(w, http.StatusBadRequest, bad.msg)
		case errors.Is(err, journal.ErrNotFound):
			auth.Refuse(w, http.StatusNotFound, err.Error())
		case errors.As(err, &large):
			auth.Refuse(w, http.StatusUnprocessableEntity, large.msg)
		default:
			id, _ := auth.FromContext(r.Context())
			s.log.Error().Err(err).Str(logging.FieldPath, route).Str(logging.FieldUser, id.Username).Msg("the journal could not answer")
			auth.Refuse(w, http.StatusInternalServerError, "the journal could not answer: "+err.Error())
		}
	}
}

// encode is v's JSON, at most MaxResponseBytes of it.
func encode(v any) ([]byte, error) {
	var buf bytes.Buffer
	if err := json.NewEncoder(&capped{w: &buf, left: MaxResponseBytes}).Encode(v); err != nil {
		if errors.Is(err, errCapped) {
			return nil, &tooLarge{msg: fmt.Sprintf("the answer is larger than the limit of %d bytes: ask for fewer events", MaxResponseBytes)}
		}
		return nil, err
	}
	return buf.Bytes(), nil
}

var errCapped = errors.New("answer over the limit")

type capped struct {
	w    *bytes.Buffer
	left int
}

func (c *capped) Write(p []byte) (int, error) {
	if len(p) > c.left {
		return 0, errCapped
	}
	c.left -= len(p)
	return c.w.Write(p)
}

func onlyParams(q url.Values, allowed []string) error {
	for k := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok {
			return badf("unknown parameter %q: this route takes %v", k, allowed)
		}
	}
	return nil
}

// param is the one value of name in q.
func param(q url.Values, name string, required bool) (string, error) {
	vs := q[name]
	switch {
	case len(vs) > 1:
		return "", badf("%s: given %d times, want once", name, len(vs))
	case len(vs) == 0 || vs[0] == "":
		if required {
			return "", badf("%s: required", name)
		}
		return "", nil
	case len(vs[0]) > MaxParamBytes:
		return "", badf("%s: longer than %d bytes", name, MaxParamBytes)
	}
	return vs[0], nil
}

// count is name's value as a number from 0 to max (0 when absent).
func count(q url.Values, name string, max int) (int, error) {
	v, err := param(q, name, false)
	if err != nil || v == "" {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > max {
		return 0, badf("%s: want a number from 1 to %d", name, max)
	}
	return n, nil
}

// filterOf is the incident filter the query names.
func filterOf(q url.Values) (journal.IncidentFilter, error) {
	var f journal.IncidentFilter
	var err error
	if f.State, err = param(q, "state", false); err != nil {
		return f, err
	}
	if f.State != "" && !strings.EqualFold(f.State, journal.IncidentOpen) && !strings.EqualFold(f.State, journal.IncidentClosed) {
		return f, badf("state: want %s or %s", journal.IncidentOpen, journal.IncidentClosed)
	}
	if f.Playbook, err = param(q, "playbook", false); err != nil {
		return f, err
	}
	if f.Namespace, err = param(q, "namespace", false); err != nil {
		return f, err
	}
	since, err := param(q, "since", false)
	if err != nil {
		return f, err
	}
	if since != "" {
		if f.Since, err = time.Parse(time.RFC3339Nano, since); err != nil {
			return f, badf("since: want a time in RFC 3339 form, e.g. 2006-01-02T15:04:05Z")
		}
	}
	f.Limit, err = count(q, "limit", MaxIncidents)
	return f, err
}
