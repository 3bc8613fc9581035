package journal_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"parry.dev/parry/internal/journal"
)

// retentionStore is a store under retention: what the contract tests use,
// its Prune, a way to make events old (rewriting their received time, as
// only a test may), and what its size bound measures.
type retentionStore struct {
	contractStore
	journal.Prunable
	backdate func(t *testing.T, ids ...string)
	size     func(t *testing.T) int64
}

const longAgo = 40 * 24 * time.Hour

func retentionStores() map[string]func(t *testing.T) retentionStore {
	return map[string]func(t *testing.T) retentionStore{
		"sqlite": func(t *testing.T) retentionStore {
			path := filepath.Join(t.TempDir(), "j.db")
			j := open(t, path)
			t.Cleanup(func() { j.Close() })
			side, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { side.Close() })
			return retentionStore{
				contractStore: contractStore{Reader: j, record: appendEach(j)},
				Prunable:      j,
				backdate: func(t *testing.T, ids ...string) {
					for _, id := range ids {
						if _, err := side.Exec(`UPDATE events SET received = received - ? WHERE id = ?`, int64(longAgo), id); err != nil {
							t.Fatal(err)
						}
					}
				},
				size: func(t *testing.T) int64 {
					n, err := journal.UsedBytes(j)
					if err != nil {
						t.Fatal(err)
					}
					return n
				},
			}
		},
		"postgres": func(t *testing.T) retentionStore {
			pool := freshPool(t)
			p, err := journal.OpenPostgres(context.Background(), pool)
			if err != nil {
				t.Fatal(err)
			}
			return retentionStore{
				contractStore: contractStore{Reader: p, record: func(ctx context.Context, recs ...journal.Record) (int, error) { return p.Record(ctx, recs) }},
				Prunable:      p,
				backdate: func(t *testing.T, ids ...string) {
					if _, err := pool.Exec(context.Background(), `UPDATE journal_events SET received = received - $1::interval WHERE id = ANY($2)`, longAgo, ids); err != nil {
						t.Fatal(err)
					}
				},
				size: func(t *testing.T) int64 {
					events, bytes, err := journal.Volume(p)
					if err != nil {
						t.Fatal(err)
					}
					// The running count must be the table's own.
					var count, sum int64
					if err := pool.QueryRow(context.Background(), `SELECT count(*), COALESCE(sum(`+journal.EventBytesSQL+`), 0)::bigint FROM journal_events`).Scan(&count, &sum); err != nil {
						t.Fatal(err)
					}
					if events != count || bytes != sum {
						t.Fatalf("journal_volume says %d events of %d bytes; the table holds %d of %d", events, bytes, count, sum)
					}
					return bytes
				},
			}
		},
	}
}

func appendEach(j *journal.Journal) func(ctx context.Context, recs ...journal.Record) (int, error) {
	return func(ctx context.Context, recs ...journal.Record) (int, error) {
		n := 0
		for _, r := range recs {
			a, err := j.Append(ctx, r)
			if err != nil {
				return n, err
			}
			if !a.Duplicate {
				n++
			}
		}
		return n, nil
	}
}

func batch(t *testing.T, prefix string, n int) ([]journal.Record, []string) {
	recs := make([]journal.Record, n)
	ids := make([]string, n)
	for i := range recs {
		recs[i] = record(t, sensorEvent(t, fmt.Sprint(prefix, i)))
		ids[i] = recs[i].Event.ID()
	}
	return recs, ids
}

// present says which of ids the store still holds.
func present(t *testing.T, st retentionStore, ids []string) (n int) {
	for _, id := range ids {
		_, err := st.Event(context.Background(), id)
		switch {
		case err == nil:
			n++
		case !errors.Is(err, journal.ErrNotFound):
			t.Fatal(err)
		}
	}
	return n
}

func pruned(t *testing.T, got []journal.Pruned, reason string) journal.Pruned {
	for _, p := range got {
		if p.Reason == reason {
			return p
		}
	}
	t.Fatalf("no %s in %+v", reason, got)
	return journal.Pruned{}
}

func TestPruneByAge(t *testing.T) {
	for name, openStore := range retentionStores() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t)
			old, oldIDs := batch(t, "old", 1200) // more than one chunk
			young, youngIDs := batch(t, "young", 50)
			st.mustRecord(t, old...)
			st.mustRecord(t, young...)
			// Nothing is old yet: a pass deletes nothing.
			got, err := st.Prune(ctx, journal.Retention{MaxAge: 24 * time.Hour})
			if err != nil || pruned(t, got, journal.ReasonAge).Events != 0 {
				t.Fatalf("pruned young events: %+v %v", got, err)
			}
			st.backdate(t, oldIDs...)
			got, err = st.Prune(ctx, journal.Retention{MaxAge: 30 * 24 * time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			p := pruned(t, got, journal.ReasonAge)
			if p.Events != int64(len(old)) || p.Bytes < int64(len(old))*200 {
				t.Fatalf("pruned %+v; want %d events and their bytes", p, len(old))
			}
			if n := present(t, st, oldIDs); n != 0 {
				t.Fatalf("%d old events remain", n)
			}
			// Positive control: the young ones are all there.
			if n := present(t, st, youngIDs); n != len(young) {
				t.Fatalf("%d of %d young events remain", n, len(young))
			}
			st.size(t) // PostgreSQL: the count still matches the table
			// A pruned event's redelivery is journaled again.
			if n := st.mustRecord(t, old[0]); n != 1 {
				t.Fatalf("a pruned event's redelivery: %d new", n)
			}
		})
	}
}

func TestPruneBySize(t *testing.T) {
	for name, openStore := range retentionStores() {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t)
			recs, ids := batch(t, "e", 4000)
			for i := 0; i < len(recs); i += 500 {
				st.mustRecord(t, recs[i:i+500]...)
			}
			full := st.size(t)
			// Positive control: a bound above the size deletes nothing.
			got, err := st.Prune(ctx, journal.Retention{MaxBytes: full + 1})
			if err != nil || pruned(t, got, journal.ReasonSize).Events != 0 {
				t.Fatalf("pruned under the bound: %+v %v", got, err)
			}
			limit := full / 2
			got, err = st.Prune(ctx, journal.Retention{MaxBytes: limit})
			if err != nil {
				t.Fatal(err)
			}
			p := pruned(t, got, journal.ReasonSize)
			after := st.size(t)
			t.Logf("%d bytes, bound %d: pruned %+v, now %d bytes", full, limit, p, after)
			if after > limit || p.Events < 1000 || p.Events > 3000 {
				t.Fatalf("after pruning to %d bytes: %d bytes, %d events deleted", limit, after, p.Events)
			}
			// Oldest first: the deleted are a prefix, the newest all remain.
			if n := present(t, st, ids[:p.Events]); n != 0 {
				t.Errorf("%d of the oldest %d events remain", n, p.Events)
			}
			if n := present(t, st, ids[p.Events:]); n != len(ids)-int(p.Events) {
				t.Errorf("%d of the newest %d events remain", n, len(ids)-int(p.Events))
			}
		})
	}
}

// The broker still has to deliver an event with a pending delivery: no
// bound deletes it, nor its deliveries; an old event whose deliveries are
// finished goes with them.
func TestPruneKeepsPendingDeliveries(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j := open(t, path)
	defer j.Close()
	var done, pending []string
	for i := range 600 {
		e := sensorEvent(t, fmt.Sprint("p", i))
		a, err := j.Append(ctx, record(t, e, "ns/t1", "ns/t2"))
		if err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			pending = append(pending, e.ID()) // t2's delivery stays pending
			_, err = j.Complete(ctx, journal.Key{Seq: a.Seq, Trigger: "ns/t1", Target: journal.ToSubscriber}, 1, nil)
		} else {
			done = append(done, e.ID())
			_, err = j.Complete(ctx, journal.Key{Seq: a.Seq, Trigger: "ns/t1", Target: journal.ToSubscriber}, 1, nil)
			if err == nil {
				err = j.GiveUp(ctx, journal.Key{Seq: a.Seq, Trigger: "ns/t2", Target: journal.ToSubscriber}, 3, 500, "down", false)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	side, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer side.Close()
	if _, err := side.Exec(`UPDATE events SET received = received - ?`, int64(longAgo)); err != nil {
		t.Fatal(err)
	}
	got, err := j.Prune(ctx, journal.Retention{MaxAge: time.Hour, MaxBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	if p := pruned(t, got, journal.ReasonAge); p.Events != int64(len(done)) {
		t.Fatalf("pruned %+v, want the %d events whose deliveries finished", got, len(done))
	}
	var orphans int
	if err := side.QueryRow(`SELECT COUNT(*) FROM deliveries WHERE event_seq NOT IN (SELECT seq FROM events)`).Scan(&orphans); err != nil || orphans != 0 {
		t.Fatalf("%d deliveries outlived their events (%v)", orphans, err)
	}
	p, err := j.Pending(ctx)
	if err != nil || len(p) != len(pending) {
		t.Fatalf("%d pending deliveries after pruning (%v), want %d", len(p), err, len(pending))
	}
	for i, id := range pending {
		e, err := j.Event(ctx, id)
		if err != nil || len(e.Deliveries) != 2 || p[i].Event.ID() != id {
			t.Fatalf("pending event %d: %+v %v", i, e.Deliveries, err)
		}
	}
	// Once delivered, it goes at the next pass.
	if _, err := j.Complete(ctx, p[0].Key, 1, nil); err != nil {
		t.Fatal(err)
	}
	got, err = j.Prune(ctx, journal.Retention{MaxAge: time.Hour})
	if err != nil || pruned(t, got, journal.ReasonAge).Events != 1 {
		t.Fatalf("after its delivery: %+v %v", got, err)
	}
}

// The background pruner logs each deletion with stable fields and counts
// it for metrics.
func TestPrunerLogsAndCounts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	j := open(t, filepath.Join(t.TempDir(), "j.db"))
	defer j.Close()
	recs, _ := batch(t, "x", 10)
	if _, err := appendEach(j)(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	p := journal.NewPruner(j, journal.Retention{MaxBytes: 1}, 10*time.Millisecond, zerolog.New(&logs))
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if events, bytes := p.Pruned(); events == 10 && bytes > 0 {
			break
		}
		if time.Now().After(deadline) {
			events, bytes := p.Pruned()
			t.Fatalf("pruned %d events, %d bytes; want 10", events, bytes)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	line := logs.String()
	for _, want := range []string{`"message":"journal pruned"`, `"events":10`, `"reason":"size"`, `"bytes":`} {
		if !strings.Contains(line, want) {
			t.Errorf("log %s lacks %s", line, want)
		}
	}
	if strings.Count(line, "journal pruned") != 1 {
		t.Errorf("passes that deleted nothing logged: %s", line)
	}
}
