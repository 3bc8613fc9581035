package journal_test

import (
	"context"
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

func record(t testing.TB, e cloudevents.Event, triggers ...string) journal.Record {
	t.Helper()
	r, err := journal.NewRecord("parry-system/parry", e, triggers)
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
// every page written (about 6,000 frames here).
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
	// runs and until the writer's next batch — generous on a slow disk.
	const pageBytes, slackFrames = 4096 + 24, 1500
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
