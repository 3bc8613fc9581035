package journalservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"parry.dev/parry/internal/journal"
)

// Client reads a journal service's API: journal.Reader over HTTP, so
// `parry trace` and `parry incidents` answer from a cluster's journal as
// from a local one. It is safe for concurrent use.
type Client struct {
	base *url.URL
	http *http.Client
}

var _ journal.Reader = (*Client)(nil)

// Dial returns a client of the journal service at baseURL (an http or
// https URL: `kubectl -n parry-system port-forward svc/parry-journal
// 8080:80` serves it at http://127.0.0.1:8080). hc sends the caller's
// bearer token for Audience:
//
//	hc := auth.WithToken(httpclient.New(time.Minute), auth.StaticToken(token))
//
// Nothing is sent until the first query. Over plain http the token crosses
// the network in the clear: use it on loopback or inside the cluster.
func Dial(baseURL string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(baseURL)
	switch {
	case err != nil:
		return nil, fmt.Errorf("journal service URL %q: %w", baseURL, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("journal service URL %q: want http:// or https://", baseURL)
	case u.Host == "":
		return nil, fmt.Errorf("journal service URL %q names no host", baseURL)
	case u.User != nil:
		return nil, fmt.Errorf("journal service URL %q carries credentials: the service takes a bearer token, not a password in the URL", u.Redacted())
	case u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("journal service URL %q: want no query or fragment", baseURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return &Client{base: u, http: hc}, nil
}

// Event returns the event with id; an error wrapping journal.ErrNotFound
// when there is none.
func (c *Client) Event(ctx context.Context, id string) (journal.Entry, error) {
	var e journal.Entry
	err := c.get(ctx, RouteEvent, url.Values{"id": {id}}, &e)
	return e, err
}

// Last returns the n most recent events, oldest first; n is at most
// MaxLast.
func (c *Client) Last(ctx context.Context, n int) ([]journal.Entry, error) {
	if n <= 0 {
		return nil, nil
	}
	if n > MaxLast {
		return nil, fmt.Errorf("the journal service answers at most the last %d events, not %d", MaxLast, n)
	}
	var es []journal.Entry
	err := c.get(ctx, RouteLast, url.Values{"last": {strconv.Itoa(n)}}, &es)
	if len(es) == 0 {
		es = nil
	}
	return es, err
}

// Tree returns the causal tree that contains the event with id.
func (c *Client) Tree(ctx context.Context, id string) (*journal.Node, error) {
	var n *journal.Node
	if err := c.get(ctx, RouteTree, url.Values{"id": {id}}, &n); err != nil {
		return nil, err
	}
	if n == nil {
		return nil, errors.New("journal service: an empty tree")
	}
	return n, nil
}

// Incident returns the causal trees of an incident.
func (c *Client) Incident(ctx context.Context, incident string) ([]*journal.Node, error) {
	var ns []*journal.Node
	err := c.get(ctx, RouteIncident, url.Values{"id": {incident}}, &ns)
	return ns, err
}

// Incidents lists incidents, most recently opened first. Without a limit
// the service answers at most MaxIncidents and refuses a longer list.
func (c *Client) Incidents(ctx context.Context, f journal.IncidentFilter) ([]journal.IncidentSummary, error) {
	q := url.Values{}
	for k, v := range map[string]string{"state": f.State, "playbook": f.Playbook, "namespace": f.Namespace} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.Format(time.RFC3339Nano))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var list []journal.IncidentSummary
	err := c.get(ctx, RouteIncidents, q, &list)
	if len(list) == 0 {
		list = nil
	}
	return list, err
}

// Close releases the client's idle connections.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

// Error is an answer of the service other than 200.
type Error struct {
	Status int
	// Reason is the service's {"error"} (quoted when printed: it comes
	// from the network).
	Reason string
}

func (e *Error) Error() string {
	hint := ""
	switch e.Status {
	case http.StatusUnauthorized:
		hint = " (send a token for audience " + Audience + ", e.g. from `kubectl create token <account> --audience " + Audience + "`)"
	case http.StatusForbidden:
		hint = " (bind the ClusterRole parry-journal-reader to the account)"
	}
	return fmt.Sprintf("journal service answered %d: %q%s", e.Status, e.Reason, hint)
}

// Unwrap makes a 404 journal.ErrNotFound, as the stores answer.
func (e *Error) Unwrap() error {
	if e.Status == http.StatusNotFound {
		return journal.ErrNotFound
	}
	return nil
}

func (c *Client) get(ctx context.Context, route string, q url.Values, out any) error {
	u := *c.base
	u.Path += route
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("journal service: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return fmt.Errorf("journal service: reading its answer: %w", err)
	}
	if len(body) > MaxResponseBytes {
		return fmt.Errorf("journal service: an answer larger than %d bytes", MaxResponseBytes)
	}
	if resp.StatusCode != http.StatusOK {
		var refusal struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &refusal) != nil || refusal.Error == "" {
			refusal.Error = http.StatusText(resp.StatusCode)
		}
		return &Error{Status: resp.StatusCode, Reason: refusal.Error}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("journal service: a malformed answer to %s: %w", route, err)
	}
	return nil
}
