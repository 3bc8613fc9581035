package journal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/events"
)

// postgresComponent names the journal's schema in parry_schema.
const postgresComponent = "journal"

// postgresSteps are the PostgreSQL journal's schema versions, applied in
// order by clients.Migrate. Never edit a step once released: add one.
//
// Every attribute an event's sender chooses can be long (a 10 KB id is a
// valid CloudEvent) and a B-tree entry cannot exceed a third of a page, so
// the lookups by id, incident and causation are hash indexes (equality is
// all they answer) and identity is unique on a SHA-256 of (id, source,
// sender) rather than on the attributes themselves.
var postgresSteps = []string{
	`CREATE SEQUENCE journal_events_seq;
	CREATE TABLE journal_events (
		seq       bigint PRIMARY KEY DEFAULT nextval('journal_events_seq'),
		ident     bytea NOT NULL,
		id        text NOT NULL,
		source    text NOT NULL,
		type      text NOT NULL,
		subject   text NOT NULL DEFAULT '',
		incident  text,
		causation text,
		traceid   text NOT NULL DEFAULT '',
		broker    text NOT NULL DEFAULT '',
		sender    text NOT NULL DEFAULT '',
		received  timestamptz NOT NULL,
		body      bytea NOT NULL
	);
	ALTER SEQUENCE journal_events_seq OWNED BY journal_events.seq;
	CREATE UNIQUE INDEX journal_events_identity ON journal_events (ident);
	CREATE INDEX journal_events_by_id ON journal_events USING hash (id);
	CREATE INDEX journal_events_by_incident ON journal_events USING hash (incident) WHERE incident IS NOT NULL;
	CREATE INDEX journal_events_by_causation ON journal_events USING hash (causation) WHERE causation IS NOT NULL;
	CREATE INDEX journal_events_opened ON journal_events (seq) WHERE ` + openedCondition + `;
	-- The events' count and bytes, for the size bound: summing them over
	-- the table would read all of it. Record adds to a random shard, so
	-- that concurrent batches rarely wait for each other's row; Prune
	-- subtracts from shard 0.
	CREATE TABLE journal_volume (
		shard  smallint PRIMARY KEY,
		events bigint NOT NULL DEFAULT 0,
		bytes  bigint NOT NULL DEFAULT 0
	);
	INSERT INTO journal_volume (shard) SELECT generate_series(0, ` + strconv.Itoa(volumeShards-1) + `);`,
}

// ErrUnstorable says that an event holds what PostgreSQL's text cannot: a
// NUL character or bytes that are not UTF-8. CloudEvents forbids both in
// attribute values, so such an event is malformed, not merely unlucky.
var ErrUnstorable = errors.New("journal: the event cannot be stored")

// Postgres is the journal of a cluster, in PostgreSQL: events only, since
// Knative Eventing (not parry) delivers them there, so its entries have no
// Deliveries. It is safe for concurrent use, also by several replicas.
type Postgres struct {
	pool *pgxpool.Pool
}

// OpenPostgres brings the journal's schema in the database behind pool to
// the newest version. The pool stays the caller's: Close leaves it open.
func OpenPostgres(ctx context.Context, pool *pgxpool.Pool) (*Postgres, error) {
	if err := clients.Migrate(ctx, pool, postgresComponent, postgresSteps); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	return &Postgres{pool: pool}, nil
}

// ReadPostgres opens the journal in the database behind pool for queries
// only: it changes no table, so a role that may only SELECT can read.
func ReadPostgres(ctx context.Context, pool *pgxpool.Pool) (*Postgres, error) {
	if err := clients.RequireSchema(ctx, pool, postgresComponent, postgresSteps); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	return &Postgres{pool: pool}, nil
}

// Close releases nothing: the pool belongs to whoever opened it.
func (p *Postgres) Close() error { return nil }

// volumeShards is how many rows journal_volume spreads its counts over.
const volumeShards = 16

// recordSQL inserts a batch passed as arrays, one per column, sorted by
// identity, and adds what was new to a shard of journal_volume, in one
// statement (so one transaction). Sorting makes every caller take the
// identity index's locks in the same order, so two batches holding the
// same redelivered events wait for each other instead of deadlocking; seq
// is still drawn in the order the events arrived (the arrival column),
// which is the order the queries call "journal order": the materialized
// CTE draws them after its ORDER BY, before the insert. The volume row is
// locked last, by a statement that waits for nothing after it, so it
// cannot close a cycle either.
const recordSQL = `WITH b AS (
		SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[], $12::int[])
			AS b(ident, id, source, type, subject, incident, causation, traceid, broker, sender, body, arrival)
	), seqs AS MATERIALIZED (
		SELECT arrival, nextval('journal_events_seq') AS seq FROM (SELECT arrival FROM b ORDER BY arrival) a
	), ins AS (
		INSERT INTO journal_events (seq, ident, id, source, type, subject, incident, causation, traceid, broker, sender, received, body)
		SELECT seqs.seq, b.ident, b.id, b.source, b.type, b.subject, NULLIF(b.incident, ''), NULLIF(b.causation, ''), b.traceid, b.broker, b.sender, $13, b.body
		FROM b JOIN seqs USING (arrival) ORDER BY b.ident
		ON CONFLICT (ident) DO NOTHING
		RETURNING ` + eventBytesSQL + ` AS bytes
	), total AS (SELECT count(*) AS events, COALESCE(sum(bytes), 0)::bigint AS bytes FROM ins),
	upd AS (UPDATE journal_volume SET events = journal_volume.events + total.events, bytes = journal_volume.bytes + total.bytes
		FROM total WHERE shard = $14 AND total.events > 0)
	SELECT events FROM total`

// Record journals recs in one transaction (one statement) and returns how many were new:
// an event journaled before (same id, source and sender) is not recorded
// again, also when concurrent callers record it at once, so at-least-once
// redelivery records it once. Records' Triggers are ignored. An event
// that cannot be stored fails the whole batch before anything is written
// (ErrUnstorable, naming it); nothing of the batch is recorded on error.
func (p *Postgres) Record(ctx context.Context, recs []Record) (int, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	type row struct {
		ident []byte
		rec   *Record
		i     int
	}
	rows := make([]row, len(recs))
	for i := range recs {
		r := &recs[i]
		if err := r.encode(); err != nil {
			return 0, err
		}
		if err := storable(r); err != nil {
			return 0, fmt.Errorf("%w: event %d of the batch (id %.64q): %v (CloudEvents forbids it; drop the event)", ErrUnstorable, i, r.Event.ID(), err)
		}
		rows[i] = row{ident: identity(r.Event.ID(), r.Event.Source(), r.Sender), rec: r, i: i}
	}
	slices.SortFunc(rows, func(a, b row) int { return bytes.Compare(a.ident, b.ident) })
	n := len(rows)
	idents, bodies := make([][]byte, n), make([][]byte, n)
	ids, sources, types, subjects, incidents, causations, traceIDs, brokers, senders := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	arrival := make([]int32, n)
	for k, w := range rows {
		e := w.rec.Event
		idents[k], bodies[k], arrival[k] = w.ident, w.rec.body, int32(w.i)
		ids[k], sources[k], types[k], subjects[k] = e.ID(), e.Source(), e.Type(), e.Subject()
		incidents[k], _ = w.rec.incident.(string)
		causations[k], _ = w.rec.causation.(string)
		traceIDs[k], brokers[k], senders[k] = w.rec.traceID, w.rec.Broker, w.rec.Sender
	}
	// Microseconds are what timestamptz keeps; truncating here makes the
	// time a reader gets back the time that was written.
	now := time.Now().Truncate(time.Microsecond)
	var recorded int64
	err := p.pool.QueryRow(ctx, recordSQL, idents, ids, sources, types, subjects, incidents, causations, traceIDs, brokers, senders, bodies, arrival, now,
		rand.IntN(volumeShards)).Scan(&recorded)
	if err != nil {
		return 0, fmt.Errorf("journal: recording %d events in PostgreSQL: %w", n, err)
	}
	return int(recorded), nil
}

// identity is what makes two deliveries the same event: CloudEvents'
// (source, id), scoped by sender so nobody can pre-send an id to suppress
// another's event. Length prefixes keep ("ab", "c") apart from ("a", "bc").
func identity(id, source, sender string) []byte {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	for _, s := range []string{id, source, sender} {
		h.Write(binary.AppendUvarint(n[:0], uint64(len(s))))
		h.Write([]byte(s))
	}
	return h.Sum(nil)
}

// storable checks the text columns: PostgreSQL's text holds neither NUL
// nor bytes that are not UTF-8.
func storable(r *Record) error {
	e := r.Event
	incident, _ := r.incident.(string)
	causation, _ := r.causation.(string)
	for _, a := range []struct{ name, v string }{
		{"id", e.ID()}, {"source", e.Source()}, {"type", e.Type()}, {"subject", e.Subject()},
		{events.ExtIncident, incident}, {events.ExtCausation, causation}, {"broker", r.Broker}, {"sender", r.Sender},
	} {
		if strings.IndexByte(a.v, 0) >= 0 {
			return fmt.Errorf("attribute %s contains a NUL character", a.name)
		}
		if !utf8.ValidString(a.v) {
			return fmt.Errorf("attribute %s is not UTF-8", a.name)
		}
	}
	return nil
}

const pgEntryColumns = `seq, id, source, type, subject, COALESCE(incident, ''), COALESCE(causation, ''), traceid, broker, received, body, sender`

func (p *Postgres) queryEntries(ctx context.Context, where string, args ...any) ([]Entry, error) {
	rows, err := p.pool.Query(ctx, `SELECT `+pgEntryColumns+` FROM journal_events `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var e Entry
		var body []byte
		if err := rows.Scan(&e.Seq, &e.ID, &e.Source, &e.Type, &e.Subject, &e.Incident, &e.Causation, &e.TraceID, &e.Broker, &e.Received, &body, &e.Sender); err != nil {
			return nil, fmt.Errorf("journal: %w", err)
		}
		if err := e.Event.UnmarshalJSON(body); err != nil {
			return nil, fmt.Errorf("journal: event %d is corrupt: %w", e.Seq, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	return out, nil
}

// Event returns the event with id (the first journaled, should two sources
// share an id).
func (p *Postgres) Event(ctx context.Context, id string) (Entry, error) {
	es, err := p.queryEntries(ctx, `WHERE id = $1 ORDER BY seq LIMIT 1`, id)
	if err != nil {
		return Entry{}, err
	}
	if len(es) == 0 {
		return Entry{}, fmt.Errorf("%w with id %q", ErrNotFound, id)
	}
	return es[0], nil
}

// Last returns the n most recent events, oldest first.
func (p *Postgres) Last(ctx context.Context, n int) ([]Entry, error) {
	if n <= 0 {
		return nil, nil
	}
	es, err := p.queryEntries(ctx, `WHERE seq IN (SELECT seq FROM journal_events ORDER BY seq DESC LIMIT $1) ORDER BY seq`, n)
	return es, err
}

// Tree returns the causal tree that contains the event with id, from its
// root cause down.
func (p *Postgres) Tree(ctx context.Context, id string) (*Node, error) { return tree(ctx, p, id) }

// Incident returns the causal trees of an incident.
func (p *Postgres) Incident(ctx context.Context, incident string) ([]*Node, error) {
	return incidentTrees(ctx, p, incident)
}

// Incidents lists incidents, most recently opened first.
func (p *Postgres) Incidents(ctx context.Context, f IncidentFilter) ([]IncidentSummary, error) {
	return incidents(ctx, p, f)
}

func (p *Postgres) byID(ctx context.Context, id string) (Entry, error) { return p.Event(ctx, id) }

func (p *Postgres) byCausation(ctx context.Context, id string) ([]Entry, error) {
	return p.queryEntries(ctx, `WHERE causation = $1 ORDER BY seq`, id)
}

func (p *Postgres) byIncident(ctx context.Context, incident string) ([]Entry, error) {
	return p.queryEntries(ctx, `WHERE incident = $1 ORDER BY seq`, incident)
}

func (p *Postgres) opened(ctx context.Context, f IncidentFilter) ([]Entry, error) {
	q := `WHERE ` + openedCondition + ` AND received >= $1 ORDER BY seq DESC`
	since := f.Since
	switch {
	case since.Before(time.Unix(0, 0)):
		since = time.Unix(0, 0)
	case since.Year() > 9999:
		// Past what timestamptz holds (294276 AD) the query would fail;
		// nothing was opened after 9999 either.
		return nil, nil
	}
	args := []any{since}
	if f.Limit > 0 {
		q += ` LIMIT $2`
		args = append(args, f.Limit)
	}
	return p.queryEntries(ctx, q, args...)
}

var _ Reader = (*Postgres)(nil)
