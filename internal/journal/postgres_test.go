package journal_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/tests/devenv"
)

func TestMain(m *testing.M) { devenv.Main(m) }

// freshPool connects to a database of the test's own on the test
// environment's PostgreSQL, dropped when the test ends.
func freshPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := clients.Postgres(context.Background(), devenv.Require(t).Database(t, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close) // before the database is dropped: cleanups run last first
	return pool
}

func openPostgres(t testing.TB) *journal.Postgres {
	t.Helper()
	p, err := journal.OpenPostgres(context.Background(), freshPool(t))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPostgresRecordsOnceAndInArrivalOrder(t *testing.T) {
	ctx := context.Background()
	pool := freshPool(t)
	p, err := journal.OpenPostgres(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	// A second replica opening the same database migrates nothing twice.
	if _, err := journal.OpenPostgres(ctx, pool); err != nil {
		t.Fatalf("second open: %v", err)
	}
	var batch []journal.Record
	// Ids in descending order, so sorting by identity differs from arrival.
	for i := range 20 {
		batch = append(batch, record(t, sensorEvent(t, fmt.Sprint(19-i))))
	}
	batch = append(batch, batch[3]) // a duplicate inside the batch
	n, err := p.Record(ctx, batch)
	if err != nil || n != 20 {
		t.Fatalf("Record = %d, %v; want 20 new", n, err)
	}
	n, err = p.Record(ctx, batch[:5])
	if err != nil || n != 0 {
		t.Fatalf("redelivery recorded %d, %v; want 0", n, err)
	}
	last, err := p.Last(ctx, 100)
	if err != nil || len(last) != 20 {
		t.Fatalf("Last = %d entries, %v", len(last), err)
	}
	for i, e := range last {
		if e.ID != batch[i].Event.ID() {
			t.Fatalf("entry %d is %s, want %s: journal order is not arrival order", i, e.ID, batch[i].Event.ID())
		}
		if e.Sender != sensorSender || e.Deliveries != nil || e.Received.IsZero() {
			t.Fatalf("entry %d: %+v", i, e)
		}
	}
	// Another sender's event with the same id and source is a new event.
	n, err = p.Record(ctx, []journal.Record{recordFrom(t, "system:serviceaccount:default:attacker", batch[0].Event)})
	if err != nil || n != 1 {
		t.Fatalf("another sender's event: %d, %v; want 1", n, err)
	}
}

// Redeliveries of the same events reach several callers (or replicas) at
// once, in different orders: each event is recorded exactly once and no
// caller fails (a deadlock between two batches would fail one).
func TestPostgresConcurrentRecordOfTheSameEvents(t *testing.T) {
	ctx := context.Background()
	p := openPostgres(t)
	const rounds, size, callers = 5, 100, 8
	var total int
	var mu sync.Mutex
	for r := range rounds {
		var recs []journal.Record
		for i := range size {
			recs = append(recs, record(t, sensorEvent(t, fmt.Sprint(r, "-", i))))
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for c := range callers {
			mine := slices.Clone(recs)
			if c%2 == 1 {
				slices.Reverse(mine)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				n, err := p.Record(ctx, mine)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				total += n
				mu.Unlock()
			}()
		}
		close(start)
		wg.Wait()
	}
	last, err := p.Last(ctx, 10*rounds*size)
	if err != nil {
		t.Fatal(err)
	}
	if total != rounds*size || len(last) != rounds*size {
		t.Fatalf("recorded %d, journal holds %d; want %d and %d", total, len(last), rounds*size, rounds*size)
	}
}

// A NUL in an id is what PostgreSQL's text cannot hold (and CloudEvents
// forbids): the batch fails before anything is written and says which
// event, and the other events go in once it is dropped.
func TestPostgresRefusesAnUnstorableEvent(t *testing.T) {
	ctx := context.Background()
	p := openPostgres(t)
	bad := sensorEvent(t, "bad")
	bad.SetID("a\x00b")
	good := record(t, sensorEvent(t, "good"))
	_, err := p.Record(ctx, []journal.Record{good, record(t, bad)})
	if !errors.Is(err, journal.ErrUnstorable) || !strings.Contains(err.Error(), "event 1 ") || !strings.Contains(err.Error(), "NUL") {
		t.Fatalf("err = %v; want ErrUnstorable naming event 1 and the NUL", err)
	}
	if last, err := p.Last(ctx, 10); err != nil || len(last) != 0 {
		t.Fatalf("a failed batch wrote %d events (%v)", len(last), err)
	}
	if n, err := p.Record(ctx, []journal.Record{good}); err != nil || n != 1 {
		t.Fatalf("positive control: %d, %v", n, err)
	}
}
