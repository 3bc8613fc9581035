package classify

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/guard"
)

// pgSchema is classify's tables, one migration step per schema version.
// Each row is one entry of the state: key is its digest (rowKey), name a
// printable copy of what it is keyed by (for people reading the tables),
// doc its JSON, the same as in classify.json. doc is json, not jsonb,
// because jsonb refuses the \u0000 an event's strings may hold.
var pgSchema = []string{`
CREATE TABLE classify_workloads (key bytea PRIMARY KEY, name text NOT NULL, since timestamptz NOT NULL, doc json NOT NULL);
CREATE INDEX classify_workloads_since ON classify_workloads (since);
CREATE TABLE classify_incidents (key bytea PRIMARY KEY, name text NOT NULL, last timestamptz NOT NULL, doc json NOT NULL);
CREATE INDEX classify_incidents_last ON classify_incidents (last);
CREATE TABLE classify_breakers (key bytea PRIMARY KEY, name text NOT NULL, doc json NOT NULL);
CREATE TABLE classify_loss (key bytea PRIMARY KEY, name text NOT NULL, at timestamptz NOT NULL);
`}

// pgStore keeps the state in PostgreSQL, shared by every replica. Each
// update is one transaction that first takes transaction-scoped advisory
// locks on the incident (pod and playbook), the workload's baseline and the
// playbook's breaker, always in that order (so no two transactions wait on
// each other in a cycle), then reads those rows, decides, and writes back
// what changed. Two replicas given events of one pod and playbook, or the
// same event twice, thus decide one after the other, the second seeing the
// first's incident: it is opened once. Sensor loss is written as the later
// of the stored and the new time, so it needs no lock.
type pgStore struct {
	pool *pgxpool.Pool
	// maxWorkloads bounds the baselines (maxWorkloads; tests lower it).
	maxWorkloads int
	log          zerolog.Logger
}

func newPGStore(ctx context.Context, pool *pgxpool.Pool, log zerolog.Logger) (*pgStore, error) {
	if err := clients.Migrate(ctx, pool, Name, pgSchema); err != nil {
		return nil, err
	}
	return &pgStore{pool: pool, maxWorkloads: maxWorkloads, log: log}, nil
}

// rowKey is an entry's primary key: the SHA-256 of its kind and parts, each
// length-prefixed, so that a string of any size and bytes is a key of 32
// bytes that no other kind, string or split of strings shares.
func rowKey(kind string, parts ...string) []byte {
	h := sha256.New()
	for _, p := range append([]string{kind}, parts...) {
		h.Write(binary.AppendUvarint(nil, uint64(len(p))))
		h.Write([]byte(p))
	}
	return h.Sum(nil)
}

// lockID is the advisory lock of the row keyed key. Two keys sharing one
// (one chance in 2⁶⁴) only wait for each other.
func lockID(key []byte) int64 { return int64(binary.BigEndian.Uint64(key)) }

// printable is name as a text column takes it: valid UTF-8 without NUL.
func printable(name string) string {
	return strings.ToValidUTF8(strings.ReplaceAll(name, "\x00", "\uFFFD"), "\uFFFD")
}

type rowKeys struct{ workload, incident, breaker, loss []byte }

func keysOf(s scope) rowKeys {
	return rowKeys{workload: rowKey("workload", s.workload), incident: rowKey("incident", s.pod, s.playbook),
		breaker: rowKey("breaker", s.playbook), loss: rowKey("loss", s.node)}
}

func (p *pgStore) update(ctx context.Context, s scope, decide func(*state) error) error {
	k := keysOf(s)
	var before, after entries
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		st, err := p.load(ctx, tx, s, k)
		if err != nil {
			return err
		}
		if before, err = st.entries(s); err != nil {
			return err
		}
		if err := decide(st); err != nil {
			return err
		}
		if after, err = st.entries(s); err != nil {
			return err
		}
		return p.save(ctx, tx, s, k, st, before, after)
	})
	if err != nil {
		return fmt.Errorf("classify state in PostgreSQL: %w", err)
	}
	// Pruning runs after the commit, holding no lock: inside, deleting a
	// row another transaction holds could make the two wait on each other.
	if before.workload == "" && after.workload != "" {
		if _, err := p.pool.Exec(ctx, `DELETE FROM classify_workloads WHERE key IN (SELECT key FROM classify_workloads ORDER BY since DESC OFFSET $1)`, p.maxWorkloads); err != nil {
			p.log.Warn().Err(err).Msg("evicting the oldest workload baselines failed; the next new workload tries again")
		}
	}
	if after.incident != before.incident && s.playbook != "" {
		if _, err := p.pool.Exec(ctx, `DELETE FROM classify_incidents WHERE last < $1`, s.now.Add(-incidentTTL)); err != nil {
			p.log.Warn().Err(err).Msg("forgetting incidents older than a day failed; the next incident tries again")
		}
	}
	return nil
}

// load locks and reads the entries of s.
func (p *pgStore) load(ctx context.Context, tx pgx.Tx, s scope, k rowKeys) (*state, error) {
	st := newState()
	b := &pgx.Batch{}
	lock := func(key []byte) { b.Queue(`SELECT pg_advisory_xact_lock($1)`, lockID(key)) }
	if s.playbook != "" {
		lock(k.incident)
	}
	if s.workload != "" {
		lock(k.workload)
	}
	if s.playbook != "" {
		lock(k.breaker)
	}
	read := func(query string, key []byte, into func(doc []byte) error) {
		b.Queue(query, key).QueryRow(func(row pgx.Row) error {
			var doc []byte
			switch err := row.Scan(&doc); {
			case errors.Is(err, pgx.ErrNoRows):
				return nil
			case err != nil:
				return err
			}
			return into(doc)
		})
	}
	if s.workload != "" {
		read(`SELECT doc FROM classify_workloads WHERE key = $1`, k.workload, func(doc []byte) error {
			var v baseline
			st.Workloads[s.workload] = &v
			return json.Unmarshal(doc, &v)
		})
	}
	if s.playbook != "" {
		read(`SELECT doc FROM classify_incidents WHERE key = $1`, k.incident, func(doc []byte) error {
			var v incident
			st.Incidents[incidentKey(s.pod, s.playbook)] = &v
			return json.Unmarshal(doc, &v)
		})
		read(`SELECT doc FROM classify_breakers WHERE key = $1`, k.breaker, func(doc []byte) error {
			var v guard.Breaker
			st.Breakers[s.playbook] = &v
			return json.Unmarshal(doc, &v)
		})
	}
	b.Queue(`SELECT at FROM classify_loss WHERE key = $1`, k.loss).QueryRow(func(row pgx.Row) error {
		var at time.Time
		switch err := row.Scan(&at); {
		case errors.Is(err, pgx.ErrNoRows):
			return nil
		case err != nil:
			return err
		}
		st.Loss[s.node] = at
		return nil
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	return st, nil
}

// save writes the entries of s that decide changed. decide adds and
// changes entries, never removes one.
func (p *pgStore) save(ctx context.Context, tx pgx.Tx, s scope, k rowKeys, st *state, before, after entries) error {
	b := &pgx.Batch{}
	if after.workload != before.workload {
		b.Queue(`INSERT INTO classify_workloads (key, name, since, doc) VALUES ($1, $2, $3, $4)
			ON CONFLICT (key) DO UPDATE SET since = EXCLUDED.since, doc = EXCLUDED.doc`,
			k.workload, printable(s.workload), st.Workloads[s.workload].Since, []byte(after.workload))
	}
	if after.incident != before.incident {
		b.Queue(`INSERT INTO classify_incidents (key, name, last, doc) VALUES ($1, $2, $3, $4)
			ON CONFLICT (key) DO UPDATE SET last = EXCLUDED.last, doc = EXCLUDED.doc`,
			k.incident, printable(incidentKey(s.pod, s.playbook)), st.Incidents[incidentKey(s.pod, s.playbook)].Last, []byte(after.incident))
	}
	if after.breaker != before.breaker {
		b.Queue(`INSERT INTO classify_breakers (key, name, doc) VALUES ($1, $2, $3)
			ON CONFLICT (key) DO UPDATE SET doc = EXCLUDED.doc`,
			k.breaker, printable(s.playbook), []byte(after.breaker))
	}
	if after.loss != before.loss {
		b.Queue(`INSERT INTO classify_loss (key, name, at) VALUES ($1, $2, $3)
			ON CONFLICT (key) DO UPDATE SET at = GREATEST(classify_loss.at, EXCLUDED.at)`,
			k.loss, printable(s.node), st.Loss[s.node])
	}
	if b.Len() == 0 {
		return nil
	}
	return tx.SendBatch(ctx, b).Close()
}
