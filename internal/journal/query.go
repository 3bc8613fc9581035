package journal

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
)

// ErrNotFound is returned when no event matches a query.
var ErrNotFound = errors.New("journal: no such event")

// Entry is one journaled event and what became of its deliveries.
type Entry struct {
	Seq       int64
	ID        string
	Source    string
	Type      string
	Subject   string
	Incident  string
	Causation string
	TraceID   string
	Broker    string
	// Sender is who sent it: an authenticated username ("" when
	// unauthenticated or journaled before senders were recorded).
	Sender     string
	Received   time.Time
	Event      cloudevents.Event
	Deliveries []Delivery
}

// Delivery is the journaled state of one delivery.
type Delivery struct {
	Trigger  string
	Target   Target
	State    State
	Attempts int
	Code     int
	Error    string
	ReplySeq int64
	Updated  time.Time
}

// Node is an event in a causal tree.
type Node struct {
	Entry
	Children []*Node
}

// PendingDelivery is a delivery not yet done, as found at start-up.
type PendingDelivery struct {
	Key
	Broker   string
	Attempts int
	Code     int
	Error    string
	Event    cloudevents.Event
}

func (j *Journal) entryColumns() string {
	return `seq, id, source, type, subject, COALESCE(incident, ''), COALESCE(causation, ''), traceid, broker, received, body, ` + j.senderColumn
}

func scanEntry(row interface{ Scan(...any) error }) (Entry, error) {
	var e Entry
	var received int64
	var body []byte
	if err := row.Scan(&e.Seq, &e.ID, &e.Source, &e.Type, &e.Subject, &e.Incident, &e.Causation, &e.TraceID, &e.Broker, &received, &body, &e.Sender); err != nil {
		return e, err
	}
	e.Received = time.Unix(0, received)
	if err := e.Event.UnmarshalJSON(body); err != nil {
		return e, fmt.Errorf("journal: event %d is corrupt: %w", e.Seq, err)
	}
	return e, nil
}

func (j *Journal) queryEntries(ctx context.Context, where string, args ...any) ([]Entry, error) {
	rows, err := j.db.QueryContext(ctx, `SELECT `+j.entryColumns()+` FROM events `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	return out, j.attachDeliveries(ctx, out)
}

// deliveriesPerQuery keeps a query's parameters under SQLite's limit
// (32,766).
const deliveriesPerQuery = 10000

func (j *Journal) attachDeliveries(ctx context.Context, entries []Entry) error {
	for len(entries) > deliveriesPerQuery {
		if err := j.attachDeliveries(ctx, entries[:deliveriesPerQuery]); err != nil {
			return err
		}
		entries = entries[deliveriesPerQuery:]
	}
	if len(entries) == 0 {
		return nil
	}
	bySeq := make(map[int64]*Entry, len(entries))
	args := make([]any, len(entries))
	for i := range entries {
		bySeq[entries[i].Seq] = &entries[i]
		args[i] = entries[i].Seq
	}
	rows, err := j.db.QueryContext(ctx, `SELECT event_seq, trigger, target, state, attempts, code, error, COALESCE(reply_seq, 0), updated
		FROM deliveries WHERE event_seq IN (?`+strings.Repeat(",?", len(args)-1)+`) ORDER BY event_seq, trigger, target DESC`, args...)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var d Delivery
		var seq, updated int64
		if err := rows.Scan(&seq, &d.Trigger, &d.Target, &d.State, &d.Attempts, &d.Code, &d.Error, &d.ReplySeq, &updated); err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		d.Updated = time.Unix(0, updated)
		bySeq[seq].Deliveries = append(bySeq[seq].Deliveries, d)
	}
	return rows.Err()
}

// Event returns the event with id (the first journaled, should two sources
// share an id).
func (j *Journal) Event(ctx context.Context, id string) (Entry, error) {
	es, err := j.queryEntries(ctx, `WHERE id = ? ORDER BY seq LIMIT 1`, id)
	if err != nil {
		return Entry{}, err
	}
	if len(es) == 0 {
		return Entry{}, fmt.Errorf("%w with id %q", ErrNotFound, id)
	}
	return es[0], nil
}

// Has reports whether sender's event with id and source is journaled.
func (j *Journal) Has(ctx context.Context, id, source, sender string) (bool, error) {
	var n int
	err := j.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM events WHERE id = ? AND source = ? AND `+j.senderColumn+` = ?`, id, source, sender).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("journal: %w", err)
	}
	return n > 0, nil
}

// Last returns the n most recent events, oldest first.
func (j *Journal) Last(ctx context.Context, n int) ([]Entry, error) {
	if n <= 0 {
		return nil, nil
	}
	es, err := j.queryEntries(ctx, `WHERE seq IN (SELECT seq FROM events ORDER BY seq DESC LIMIT ?) ORDER BY seq`, n)
	return es, err
}

// Tree returns the causal tree that contains the event with id, from its
// root cause down.
func (j *Journal) Tree(ctx context.Context, id string) (*Node, error) { return tree(ctx, j, id) }

// Incident returns the causal trees of an incident: from the root cause of
// every event that carries the incident id, down to the last step. Usually
// that is one tree, rooted at the sensor event that opened the incident.
func (j *Journal) Incident(ctx context.Context, incident string) ([]*Node, error) {
	return incidentTrees(ctx, j, incident)
}

// Incidents lists incidents, most recently opened first.
func (j *Journal) Incidents(ctx context.Context, f IncidentFilter) ([]IncidentSummary, error) {
	return incidents(ctx, j, f)
}

func (j *Journal) byID(ctx context.Context, id string) (Entry, error) { return j.Event(ctx, id) }

func (j *Journal) byCausation(ctx context.Context, id string) ([]Entry, error) {
	return j.queryEntries(ctx, `WHERE causation = ? ORDER BY seq`, id)
}

func (j *Journal) byIncident(ctx context.Context, incident string) ([]Entry, error) {
	return j.queryEntries(ctx, `WHERE incident = ? ORDER BY seq`, incident)
}

// openedCondition is the condition of both stores' index of incident.opened
// events, written out: a query only uses a partial index whose condition
// it states in the same words, and a parameter in place of the type would
// not do.
const openedCondition = `type = '` + events.TypeIncidentOpened + `' AND incident IS NOT NULL`

func (j *Journal) opened(ctx context.Context, f IncidentFilter) ([]Entry, error) {
	q := `WHERE ` + openedCondition + ` AND received >= ? ORDER BY seq DESC`
	args := []any{unixNanos(f.Since)}
	if f.Limit > 0 {
		q += ` LIMIT ?`
		args = append(args, f.Limit)
	}
	return j.queryEntries(ctx, q, args...)
}

// Pending returns every delivery that has not finished, oldest first, for
// redelivery after a restart.
func (j *Journal) Pending(ctx context.Context) ([]PendingDelivery, error) {
	rows, err := j.db.QueryContext(ctx, `SELECT d.event_seq, d.trigger, d.target, d.attempts, d.code, d.error, e.broker, e.body
		FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.state = 'pending' ORDER BY d.event_seq`)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer rows.Close()
	var out []PendingDelivery
	for rows.Next() {
		var p PendingDelivery
		var body []byte
		if err := rows.Scan(&p.Seq, &p.Trigger, &p.Target, &p.Attempts, &p.Code, &p.Error, &p.Broker, &body); err != nil {
			return nil, fmt.Errorf("journal: %w", err)
		}
		if err := p.Event.UnmarshalJSON(body); err != nil {
			return nil, fmt.Errorf("journal: event %d is corrupt: %w", p.Seq, err)
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// unixNanos is t as received is stored, clamped: the zero time is before
// everything, and a time past 2262 (which UnixNano cannot represent) after.
func unixNanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	case t.Before(time.Unix(0, 0)):
		return 0
	}
	return t.UnixNano()
}
