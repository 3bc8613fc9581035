package journal_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
)

func open(t *testing.T, path string) *journal.Journal {
	t.Helper()
	j, err := journal.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func sensorEvent(t testing.TB, key string) cloudevents.Event {
	t.Helper()
	e, err := events.New(events.Spec{Type: events.TypeNetworkConnect, Source: "parry://sensor/n1", Key: key,
		Extensions: map[string]string{events.ExtPodUID: "uid-1"}})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

const sensorSender = "system:serviceaccount:parry-sensor:parry-sensor"

func record(t testing.TB, e cloudevents.Event, triggers ...string) journal.Record {
	t.Helper()
	return recordFrom(t, sensorSender, e, triggers...)
}

func recordFrom(t testing.TB, sender string, e cloudevents.Event, triggers ...string) journal.Record {
	t.Helper()
	r, err := journal.NewRecord("parry-system/parry", sender, e, triggers)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestAppendDeduplicatesBySourceAndID(t *testing.T) {
	ctx := context.Background()
	j := open(t, filepath.Join(t.TempDir(), "j.db"))
	defer j.Close()
	e := sensorEvent(t, "k1")
	first, err := j.Append(ctx, record(t, e, "parry-system/a"))
	if err != nil || first.Duplicate {
		t.Fatalf("first append: %+v %v", first, err)
	}
	again, err := j.Append(ctx, record(t, e, "parry-system/a"))
	if err != nil || !again.Duplicate {
		t.Fatalf("redelivered event not recognised: %+v %v", again, err)
	}
	pending, err := j.Pending(ctx)
	if err != nil || len(pending) != 1 {
		t.Fatalf("want exactly one pending delivery, got %d (%v)", len(pending), err)
	}
}

// A duplicate is the same sender's: an id another sender sent first (a
// forged pre-sent reply id) must not suppress the real event.
func TestDedupIsScopedBySender(t *testing.T) {
	ctx := context.Background()
	j := open(t, filepath.Join(t.TempDir(), "j.db"))
	defer j.Close()
	e := sensorEvent(t, "k1")
	forged, err := j.Append(ctx, recordFrom(t, "system:serviceaccount:default:attacker", e, "parry-system/a"))
	if err != nil || forged.Duplicate {
		t.Fatalf("forged append: %+v %v", forged, err)
	}
	real, err := j.Append(ctx, record(t, e, "parry-system/a"))
	if err != nil || real.Duplicate {
		t.Fatalf("the real sender's event was suppressed by another sender's id: %+v %v", real, err)
	}
	// Positive control: the real sender's redelivery is still a duplicate.
	again, err := j.Append(ctx, record(t, e, "parry-system/a"))
	if err != nil || !again.Duplicate {
		t.Fatalf("the real sender's redelivery was not recognised: %+v %v", again, err)
	}
	last, err := j.Last(ctx, 2)
	if err != nil || len(last) != 2 || last[0].Sender != "system:serviceaccount:default:attacker" || last[1].Sender != sensorSender {
		t.Fatalf("senders not journaled: %+v %v", last, err)
	}
}

// A journal written before senders were recorded is migrated on open: its
// events keep their seq and get sender "", and dedup is by sender after.
func TestOpenMigratesAJournalWithoutSenders(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	e := sensorEvent(t, "old")
	body, _ := e.MarshalJSON()
	for _, q := range []string{
		`CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, source TEXT NOT NULL, type TEXT NOT NULL,
			subject TEXT NOT NULL DEFAULT '', incident TEXT, causation TEXT, traceid TEXT NOT NULL DEFAULT '',
			broker TEXT NOT NULL, received INTEGER NOT NULL, body BLOB NOT NULL, UNIQUE (id, source))`,
		`CREATE INDEX events_by_incident ON events (incident) WHERE incident IS NOT NULL`,
		`CREATE INDEX events_by_causation ON events (causation) WHERE causation IS NOT NULL`,
		`CREATE TABLE deliveries (event_seq INTEGER NOT NULL, trigger TEXT NOT NULL, target TEXT NOT NULL, state TEXT NOT NULL,
			attempts INTEGER NOT NULL DEFAULT 0, code INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT '', reply_seq INTEGER,
			updated INTEGER NOT NULL, PRIMARY KEY (event_seq, trigger, target)) WITHOUT ROWID`,
		`CREATE INDEX deliveries_pending ON deliveries (event_seq) WHERE state = 'pending'`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`INSERT INTO events (seq, id, source, type, broker, received, body) VALUES (7, ?, ?, ?, 'parry-system/parry', 1, ?)`,
		e.ID(), e.Source(), e.Type(), body); err != nil {
		t.Fatal(err)
	}
	db.Close()

	ro, err := journal.OpenReadOnly(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ro.Event(ctx, e.ID()); err != nil || got.Seq != 7 || got.Sender != "" {
		t.Fatalf("read-only, before migration: %+v %v", got, err)
	}
	ro.Close()

	j := open(t, path)
	defer j.Close()
	if got, err := j.Event(ctx, e.ID()); err != nil || got.Seq != 7 || got.Sender != "" {
		t.Fatalf("after migration: %+v %v", got, err)
	}
	a, err := j.Append(ctx, record(t, e))
	if err != nil || a.Duplicate || a.Seq <= 7 {
		t.Fatalf("an authenticated sender's event was taken for the unauthenticated one's: %+v %v", a, err)
	}
	if again, err := j.Append(ctx, record(t, e)); err != nil || !again.Duplicate {
		t.Fatalf("dedup after migration: %+v %v", again, err)
	}
	if v, indexes := schemaOf(t, path); v != 3 || !strings.Contains(indexes, "events_opened") {
		t.Fatalf("after migration: user_version %d, indexes %s; want 3 and the incident list's index", v, indexes)
	}
}

// schemaOf reads a journal's version and index names.
func schemaOf(t *testing.T, path string) (int, string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v int
	var indexes string
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT group_concat(name) FROM sqlite_master WHERE type = 'index'`).Scan(&indexes); err != nil {
		t.Fatal(err)
	}
	return v, indexes
}

// A new file is created at the newest version; a file a newer parry
// migrated is refused, not written to, and the error says what to do.
func TestOpenVersionsTheSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	j := open(t, path)
	j.Close()
	if v, _ := schemaOf(t, path); v != 3 {
		t.Fatalf("new journal at version %d, want 3", v)
	}
	// Reopening migrates nothing (a step run twice would fail: its
	// CREATE TABLE has no IF NOT EXISTS).
	open(t, path).Close()

	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`PRAGMA user_version = 99`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = journal.Open(context.Background(), path)
	if err == nil || !strings.Contains(err.Error(), "newer than this parry knows") || !strings.Contains(err.Error(), "version 99") {
		t.Fatalf("a newer schema: err = %v, want a refusal", err)
	}
}

func TestPendingSurvivesReopenAndCompleteIsFinal(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j := open(t, path)
	var seqs []int64
	for i := range 3 {
		a, err := j.Append(ctx, record(t, sensorEvent(t, fmt.Sprint(i)), "ns/t1", "ns/t2"))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, a.Seq)
	}
	if _, err := j.Complete(ctx, journal.Key{Seq: seqs[0], Trigger: "ns/t1", Target: journal.ToSubscriber}, 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := j.GiveUp(ctx, journal.Key{Seq: seqs[1], Trigger: "ns/t1", Target: journal.ToSubscriber}, 3, 503, "unavailable", true); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	j = open(t, path)
	defer j.Close()
	pending, err := j.Pending(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, p := range pending {
		got[fmt.Sprintf("%d/%s/%s", p.Seq, p.Trigger, p.Target)] = true
	}
	want := []string{
		fmt.Sprintf("%d/ns/t2/subscriber", seqs[0]),
		fmt.Sprintf("%d/ns/t1/deadletter", seqs[1]),
		fmt.Sprintf("%d/ns/t2/subscriber", seqs[1]),
		fmt.Sprintf("%d/ns/t1/subscriber", seqs[2]),
		fmt.Sprintf("%d/ns/t2/subscriber", seqs[2]),
	}
	if len(got) != len(want) {
		t.Fatalf("pending = %v, want %v", got, want)
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("missing pending delivery %s (have %v)", w, got)
		}
	}
}

func TestIncidentTreeFollowsCausation(t *testing.T) {
	ctx := context.Background()
	j := open(t, filepath.Join(t.TempDir(), "j.db"))
	defer j.Close()
	root := sensorEvent(t, "root")
	a, err := j.Append(ctx, record(t, root, "ns/classify"))
	if err != nil {
		t.Fatal(err)
	}
	opened, err := events.Reply(root, events.Spec{Type: events.TypeIncidentOpened, Source: "parry://function/classify", Key: "open",
		Extensions: map[string]string{events.ExtIncident: "inc-7"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Complete(ctx, journal.Key{Seq: a.Seq, Trigger: "ns/classify", Target: journal.ToSubscriber}, 1, ptr(record(t, opened, "ns/isolate"))); err != nil {
		t.Fatal(err)
	}
	done, err := events.Reply(opened, events.Spec{Type: events.StepDone("isolate"), Source: "parry://function/isolate", Key: "isolate"})
	if err != nil {
		t.Fatal(err)
	}
	openedEntry, err := j.Event(ctx, opened.ID())
	if err != nil {
		t.Fatalf("the reply was not journaled: %v", err)
	}
	if _, err := j.Complete(ctx, journal.Key{Seq: openedEntry.Seq, Trigger: "ns/isolate", Target: journal.ToSubscriber}, 1, ptr(record(t, done))); err != nil {
		t.Fatal(err)
	}

	trees, err := j.Incident(ctx, "inc-7")
	if err != nil {
		t.Fatal(err)
	}
	if len(trees) != 1 || trees[0].ID != root.ID() {
		t.Fatalf("want one tree rooted at the sensor event, got %d", len(trees))
	}
	chain := []string{}
	for n := trees[0]; n != nil; {
		chain = append(chain, n.Type)
		if len(n.Children) == 0 {
			break
		}
		n = n.Children[0]
	}
	if strings.Join(chain, ">") != events.TypeNetworkConnect+">"+events.TypeIncidentOpened+">"+events.StepDone("isolate") {
		t.Fatalf("chain = %v", chain)
	}
	if d := trees[0].Deliveries; len(d) != 1 || d[0].State != journal.Done || d[0].ReplySeq == 0 {
		t.Fatalf("root deliveries = %+v", d)
	}
	byEvent, err := j.Tree(ctx, done.ID())
	if err != nil || byEvent.ID != root.ID() {
		t.Fatalf("Tree from a leaf: %v %v", byEvent, err)
	}
	if _, err := j.Incident(ctx, "nope"); !errors.Is(err, journal.ErrNotFound) {
		t.Fatalf("unknown incident: %v", err)
	}
	last, err := j.Last(ctx, 2)
	if err != nil || len(last) != 2 || last[1].ID != done.ID() {
		t.Fatalf("Last(2) = %d entries, %v", len(last), err)
	}
}

func TestConcurrentAppendsAreAllDurable(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j := open(t, path)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if _, err := j.Append(ctx, record(t, sensorEvent(t, fmt.Sprintf("%d-%d", w, i)), "ns/t")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j = open(t, path)
	defer j.Close()
	pending, err := j.Pending(ctx)
	if err != nil || len(pending) != 1600 {
		t.Fatalf("pending = %d, %v; want 1600", len(pending), err)
	}
}

// A steady stream of commits never leaves the background checkpoint a gap to
// reach the WAL's end; without the writer's catch-up the WAL would hold
// every page written (about 8,700 frames here).
func TestWALStaysBoundedUnderSteadyWrites(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j := open(t, path)
	defer j.Close()
	const limit = 64
	journal.SetWALLimit(j, limit)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 400 {
				a, err := j.Append(ctx, record(t, sensorEvent(t, fmt.Sprintf("%d-%d", w, i)), "ns/t"))
				if err == nil {
					_, err = j.Complete(ctx, journal.Key{Seq: a.Seq, Trigger: "ns/t", Target: journal.ToSubscriber}, 1, nil)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	wal, err := os.Stat(path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	// The bound: the limit, plus what is written while one background pass
	// runs and until the writer's next batch — generous on a slow or busy
	// disk (800 to 1,400 frames on a quiet host, 2,100 seen in a CI run
	// beside other work), and still a third of what an unbounded WAL holds.
	const pageBytes, slackFrames = 4096 + 24, 3000
	t.Logf("WAL: %d frames", wal.Size()/pageBytes)
	if frames := wal.Size() / pageBytes; frames > limit+slackFrames {
		t.Fatalf("the WAL grew to %d frames (%d bytes); want at most %d", frames, wal.Size(), limit+slackFrames)
	}
}

func TestOpenErrorsSayWhatToDo(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "j.db")
	j := open(t, path)
	defer j.Close()
	if _, err := journal.Open(context.Background(), path); err == nil || !strings.Contains(err.Error(), "in use by another parry process") {
		t.Fatalf("second open: %v", err)
	}
	if os.Geteuid() == 0 {
		// Root ignores permission bits; a path below a regular file fails for everyone.
		blocker := filepath.Join(dir, "file")
		if err := os.WriteFile(blocker, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		path = filepath.Join(blocker, "j.db")
	} else {
		ro := filepath.Join(dir, "ro")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		path = filepath.Join(ro, "sub", "j.db")
	}
	if _, err := journal.Open(context.Background(), path); err == nil || !strings.Contains(err.Error(), "--journal") {
		t.Fatalf("unwritable path: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// The journal's files are owner-only even where the directory already
// exists and the umask is permissive, and an older world-readable journal
// is tightened on open.
func TestFilesAreOwnerOnly(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "journal.db")
	if err := os.WriteFile(filepath.Join(dir, "other"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(context.Background(), record(t, sensorEvent(t, "perm"), "ns/x")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"journal.db", "journal.db-wal", "journal.db-shm", "journal.db.lock"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v (the positive control: the journal wrote its files)", name, err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", name, fi.Mode().Perm())
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	j, err = journal.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("a world-readable journal was not tightened on open: %v %v", fi.Mode(), err)
	}
}
