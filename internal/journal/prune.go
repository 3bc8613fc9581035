package journal

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"time"
)

// eventBytesSQL is an event's own size, in both stores' SQL: its JSON and
// its attributes. Pruned.Bytes and PostgreSQL's size bound count it.
const eventBytesSQL = `octet_length(body) + octet_length(id) + octet_length(source) + octet_length(type) + octet_length(subject)
	+ COALESCE(octet_length(incident), 0) + COALESCE(octet_length(causation), 0) + octet_length(traceid) + octet_length(broker) + octet_length(sender)`

// pruneReq deletes up to limit of the oldest events below seq before,
// in the writer's transaction; events and bytes are what it deleted.
type pruneReq struct {
	before        int64
	limit         int
	events, bytes int64
}

func (st *statements) prune(ctx context.Context, p *pruneReq) error {
	p.events, p.bytes = 0, 0
	var upTo sql.NullInt64
	if err := st.pruneUpTo.QueryRowContext(ctx, p.before, p.limit).Scan(&upTo); err != nil {
		return fmt.Errorf("journal: pruning: %w", err)
	}
	if !upTo.Valid {
		return nil
	}
	if _, err := st.pruneDeliveries.ExecContext(ctx, upTo.Int64); err != nil {
		return fmt.Errorf("journal: pruning deliveries: %w", err)
	}
	if err := st.prunedSize.QueryRowContext(ctx, upTo.Int64).Scan(&p.events, &p.bytes); err != nil {
		return fmt.Errorf("journal: pruning: %w", err)
	}
	if _, err := st.pruneEvents.ExecContext(ctx, upTo.Int64); err != nil {
		return fmt.Errorf("journal: pruning events: %w", err)
	}
	return nil
}

// Prune deletes the events r no longer keeps, oldest first, and their
// deliveries with them; never an event with a pending delivery, which the
// broker still has to deliver. The size bound is on the pages the file
// uses: a deleted event's pages are reused, not returned to the disk, so
// the file stays at about MaxBytes (plus its write-ahead log).
func (j *Journal) Prune(ctx context.Context, r Retention) ([]Pruned, error) {
	var out []Pruned
	if r.MaxAge > 0 {
		// Seq follows the time of writing, so the events to go are those
		// before the first young one: found walking up from the oldest,
		// without an index on time for the writer to keep.
		var before int64
		err := j.db.QueryRowContext(ctx, `SELECT COALESCE((SELECT seq FROM events WHERE received >= ? ORDER BY seq LIMIT 1),
			(SELECT COALESCE(MAX(seq), 0) + 1 FROM events))`, time.Now().Add(-r.MaxAge).UnixNano()).Scan(&before)
		if err != nil {
			return out, fmt.Errorf("journal: pruning by age: %w", err)
		}
		p := Pruned{Reason: ReasonAge}
		for {
			n, b, err := j.pruneChunk(ctx, before)
			p.Events, p.Bytes = p.Events+n, p.Bytes+b
			if err != nil {
				return append(out, p), err
			}
			if n == 0 {
				break
			}
		}
		out = append(out, p)
	}
	if r.MaxBytes > 0 {
		p := Pruned{Reason: ReasonSize}
		for {
			used, err := j.usedBytes(ctx)
			if err != nil {
				return append(out, p), err
			}
			if used <= r.MaxBytes {
				break
			}
			n, b, err := j.pruneChunk(ctx, math.MaxInt64)
			p.Events, p.Bytes = p.Events+n, p.Bytes+b
			if err != nil {
				return append(out, p), err
			}
			if n == 0 {
				break // what is left waits for delivery
			}
		}
		out = append(out, p)
	}
	return out, nil
}

func (j *Journal) pruneChunk(ctx context.Context, before int64) (events, bytes int64, err error) {
	p := &pruneReq{before: before, limit: pruneChunk}
	_, err = j.write(ctx, &writeReq{prune: p})
	return p.events, p.bytes, err
}

// usedBytes is the size of the file's pages that hold data (not free).
func (j *Journal) usedBytes(ctx context.Context) (int64, error) {
	var used int64
	err := j.db.QueryRowContext(ctx, `SELECT (p.page_count - f.freelist_count) * s.page_size
		FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s`).Scan(&used)
	if err != nil {
		return 0, fmt.Errorf("journal: measuring the file: %w", err)
	}
	return used, nil
}

// Prune deletes the events r no longer keeps, oldest first. The size bound
// is on the events' own bytes (journal_volume's sum, kept by Record), not
// on the tables' files: PostgreSQL reuses a deleted row's space rather
// than returning it, and its indexes and row headers add a roughly
// constant share (docs/performance.md measures it). Replicas may prune at
// once: each row is deleted, and counted, once.
func (p *Postgres) Prune(ctx context.Context, r Retention) ([]Pruned, error) {
	var out []Pruned
	if r.MaxAge > 0 {
		var before int64
		err := p.pool.QueryRow(ctx, `SELECT COALESCE((SELECT seq FROM journal_events WHERE received >= $1 ORDER BY seq LIMIT 1),
			(SELECT COALESCE(MAX(seq), 0) + 1 FROM journal_events))`, time.Now().Add(-r.MaxAge)).Scan(&before)
		if err != nil {
			return out, fmt.Errorf("journal: pruning by age: %w", err)
		}
		x := Pruned{Reason: ReasonAge}
		for {
			n, b, err := p.pruneChunk(ctx, before, pruneChunk)
			x.Events, x.Bytes = x.Events+n, x.Bytes+b
			if err != nil {
				return append(out, x), err
			}
			if n == 0 {
				break
			}
		}
		out = append(out, x)
	}
	if r.MaxBytes > 0 {
		x := Pruned{Reason: ReasonSize}
		for {
			events, bytes, err := p.volume(ctx)
			if err != nil {
				return append(out, x), err
			}
			if bytes <= r.MaxBytes || events <= 0 {
				break
			}
			// As many of the oldest as the excess holds at the average
			// size; the next round deletes what that missed.
			n := min(max(int(float64(bytes-r.MaxBytes)*float64(events)/float64(bytes)), 1), pruneChunk)
			deleted, b, err := p.pruneChunk(ctx, math.MaxInt64, n)
			x.Events, x.Bytes = x.Events+deleted, x.Bytes+b
			if err != nil {
				return append(out, x), err
			}
			if deleted == 0 {
				break
			}
		}
		out = append(out, x)
	}
	return out, nil
}

// pruneChunk deletes the limit oldest events below seq before and takes
// them off the volume, in one statement.
func (p *Postgres) pruneChunk(ctx context.Context, before int64, limit int) (events, bytes int64, err error) {
	err = p.pool.QueryRow(ctx, `WITH d AS (
			DELETE FROM journal_events WHERE seq IN (SELECT seq FROM journal_events WHERE seq < $1 ORDER BY seq LIMIT $2)
			RETURNING `+eventBytesSQL+` AS bytes
		), total AS (SELECT count(*) AS events, COALESCE(sum(bytes), 0)::bigint AS bytes FROM d),
		upd AS (UPDATE journal_volume SET events = journal_volume.events - total.events, bytes = journal_volume.bytes - total.bytes
			FROM total WHERE shard = 0 AND total.events > 0)
		SELECT events, bytes FROM total`, before, limit).Scan(&events, &bytes)
	if err != nil {
		return 0, 0, fmt.Errorf("journal: pruning: %w", err)
	}
	return events, bytes, nil
}

// volume is how many events the journal holds and their bytes.
func (p *Postgres) volume(ctx context.Context) (events, bytes int64, err error) {
	err = p.pool.QueryRow(ctx, `SELECT COALESCE(sum(events), 0)::bigint, COALESCE(sum(bytes), 0)::bigint FROM journal_volume`).Scan(&events, &bytes)
	if err != nil {
		return 0, 0, fmt.Errorf("journal: measuring the journal: %w", err)
	}
	return events, bytes, nil
}

var (
	_ Prunable = (*Journal)(nil)
	_ Prunable = (*Postgres)(nil)
)
