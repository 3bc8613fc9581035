package journal

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	_ "modernc.org/sqlite" // registers the pure-Go "sqlite" driver

	"parry.dev/parry/internal/events"
)

// Target says who a delivery goes to.
type Target string

const (
	// ToSubscriber is the Trigger's subscriber.
	ToSubscriber Target = "subscriber"
	// ToDeadLetter is the dead-letter sink, after the subscriber gave up.
	ToDeadLetter Target = "deadletter"
)

// State of a delivery.
type State string

const (
	Pending State = "pending"
	Done    State = "done"
	// Failed means the delivery was given up: retries exhausted or a
	// non-retryable answer. A dead-letter delivery may follow it.
	Failed State = "failed"
)

// maxBatch bounds one group commit, so a flood cannot hold the write lock
// long enough to stall readers.
const maxBatch = 512

// lingerFor is how long a busy writer waits to fill a batch.
const lingerFor = 200 * time.Microsecond

// checkpointEvery spaces the checkpoints of a busy journal.
const checkpointEvery = 100 * time.Millisecond

// checkpointSQL copies what it can of the WAL into the database file
// without waiting for readers or the writer.
const checkpointSQL = `PRAGMA wal_checkpoint(PASSIVE)`

// walLimitFrames is how far the WAL may grow before the writer itself
// checkpoints; walLimitBytes is the size it is truncated back to.
const (
	walLimitFrames = 8192
	walLimitBytes  = 64 << 20
)

// Journal is an open journal file. It is safe for concurrent use.
type Journal struct {
	db     *sql.DB
	lock   *os.File
	writes chan *writeReq
	wg     sync.WaitGroup
	// committed wakes the checkpointer after a commit; catchUp asks the
	// writer to checkpoint inline because the WAL outgrew walLimit.
	committed chan struct{}
	catchUp   atomic.Bool
	walLimit  atomic.Int64
	// conn is the writer's own connection, so BEGIN and COMMIT frame the
	// statements of one batch; its statements are prepared once on it
	// (database/sql's Tx.Stmt would re-prepare them per transaction).
	conn  *sql.Conn
	stmts statements
	// senderColumn is what queries select as the sender: "sender", or ''
	// for a journal from before senders were recorded, read read-only.
	senderColumn string
}

// writeReq is one caller's write: an event to add (with its deliveries), a
// delivery to finish, or both (a completed delivery and its reply).
type writeReq struct {
	rec   *Record
	fin   *finish
	prune *pruneReq
	now   int64
	done  chan error
	// out is filled by the writer before done is signalled.
	out Appended
}

// finish updates one delivery. With replyFromRec, reply_seq is the seq of
// the same request's record; with deadLetter, a dead-letter delivery is
// added.
type finish struct {
	key          Key
	state        State
	attempts     int
	code         int
	reason       string
	replyFromRec bool
	deadLetter   bool
}

// Open opens (creating if needed) the journal at path. Only one process may
// have a journal open at a time: a second broker on the same file would
// redeliver the first one's pending work.
func Open(ctx context.Context, path string) (*Journal, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("journal: cannot create the directory for %s: %w (pass --journal with a writable path)", path, err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal: cannot open %s: %w (pass --journal with a writable path)", path+".lock", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		holder, _ := os.ReadFile(path + ".lock")
		return nil, fmt.Errorf("journal: %s is in use by another parry process (pid %s): stop it or pass a different --journal", path, string(holder))
	}
	_ = lock.Truncate(0)
	_, _ = lock.WriteAt([]byte(strconv.Itoa(os.Getpid())), 0)
	// The journal holds what the sensors saw (command lines among it):
	// owner-only, whatever the umask and whether or not the directory
	// existed. SQLite gives its -wal and -shm files the database's mode.
	if err := ownerOnly(path); err != nil {
		lock.Close()
		return nil, err
	}

	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(NORMAL)", "busy_timeout(10000)", "temp_store(MEMORY)",
		// The checkpointer goroutine copies the WAL back, not the writer.
		"wal_autocheckpoint(0)", "journal_size_limit(" + strconv.Itoa(walLimitBytes) + ")"} {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("journal: %s: %w", path, err)
	}
	j := &Journal{db: db, lock: lock, writes: make(chan *writeReq, 4*maxBatch), committed: make(chan struct{}, 1)}
	j.walLimit.Store(walLimitFrames)
	if err := j.init(ctx); err != nil {
		if j.conn != nil {
			j.conn.Close()
		}
		db.Close()
		lock.Close()
		if errors.Is(err, errNewerSchema) {
			return nil, fmt.Errorf("journal: %s: %w", path, err)
		}
		return nil, fmt.Errorf("journal: %s: %w (pass --journal with a writable path)", path, err)
	}
	checkpoints, err := db.Conn(ctx)
	if err != nil {
		j.conn.Close()
		db.Close()
		lock.Close()
		return nil, fmt.Errorf("journal: %s: %w", path, err)
	}
	j.wg.Add(2)
	go j.writer()
	go j.checkpointer(checkpoints)
	return j, nil
}

func (j *Journal) init(ctx context.Context) error {
	conn, err := j.db.Conn(ctx)
	if err != nil {
		return err
	}
	j.conn = conn
	if err := migrateSQLite(ctx, conn); err != nil {
		return err
	}
	j.senderColumn = "sender"
	return j.stmts.prepare(ctx, conn)
}

// Close stops the writer after the writes already queued, and closes the file.
func (j *Journal) Close() error {
	if j.writes == nil {
		return j.db.Close()
	}
	close(j.writes) // the writer closes committed, which stops the checkpointer
	j.wg.Wait()
	j.stmts.close()
	j.conn.Close()
	err := j.db.Close()
	j.lock.Close()
	return err
}

// ownerOnly creates the database file 0600, or makes an existing one so.
func ownerOnly(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("journal: cannot open %s: %w (pass --journal with a writable path)", path, err)
	}
	defer f.Close()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("journal: cannot make %s readable by its owner only: %w", path, err)
	}
	return nil
}

// OpenReadOnly opens an existing journal for queries only, without taking
// the lock, so `parry trace` can read while `parry run` writes (WAL mode
// allows concurrent readers).
func OpenReadOnly(ctx context.Context, path string) (*Journal, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("journal: %w (parry run writes it; pass --journal with its path)", err)
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Set("mode", "ro")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("journal: %s: %w", path, err)
	}
	// A file that parry run has not migrated yet is read as it is.
	v, err := sqliteVersion(ctx, db)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("journal: %s: %w", path, err)
	}
	j := &Journal{db: db, senderColumn: "sender"}
	if v == 1 {
		j.senderColumn = "''"
	}
	return j, nil
}

// write queues req for the next group commit and waits for it.
func (j *Journal) write(ctx context.Context, req *writeReq) (Appended, error) {
	if j.writes == nil {
		return Appended{}, errors.New("journal: opened read-only")
	}
	if req.rec != nil {
		if err := req.rec.encode(); err != nil {
			return Appended{}, err
		}
	}
	req.now = time.Now().UnixNano()
	req.done = make(chan error, 1)
	select {
	case j.writes <- req:
	case <-ctx.Done():
		return Appended{}, ctx.Err()
	}
	// Once queued the write happens; waiting for it even past ctx keeps the
	// caller's view (e.g. "202 means journaled") true.
	err := <-req.done
	return req.out, err
}

func (j *Journal) writer() {
	defer j.wg.Done()
	defer close(j.committed)
	batch := make([]*writeReq, 0, maxBatch)
	linger := time.NewTimer(0)
	busy := false
	for first := range j.writes {
		batch = append(batch[:0], first)
		// Under load, wait a moment for more writers: a commit costs about
		// the same for one row as for a hundred, so fewer, larger commits
		// are what keeps the journal ahead of ingress. Idle, commit at once.
		// Measured side by side: without the wait the broker benchmark
		// (CPU-bound) drops from 7.5-8.9k to 5.0k events/s, while the
		// journal-only benchmark (latency-bound, 32 writers) doubles, and
		// a few scheduler yields instead of the wait land in between.
		if busy {
			linger.Reset(lingerFor)
		}
	drain:
		for len(batch) < maxBatch {
			select {
			case req, ok := <-j.writes:
				if !ok {
					break drain
				}
				batch = append(batch, req)
			default:
				if !busy {
					break drain
				}
				select {
				case req, ok := <-j.writes:
					if !ok {
						break drain
					}
					batch = append(batch, req)
				case <-linger.C:
					break drain
				}
			}
		}
		if busy && !linger.Stop() {
			select {
			case <-linger.C:
			default:
			}
		}
		busy = len(batch) > 1
		err := j.commit(batch)
		for _, req := range batch {
			if err != nil && len(batch) > 1 {
				// One bad write must not fail its neighbours: retry each alone.
				req.done <- j.commit([]*writeReq{req})
				continue
			}
			req.done <- err
		}
		select {
		case j.committed <- struct{}{}:
		default:
		}
		if j.catchUp.Swap(false) {
			// Between batches nothing else writes, so this pass reaches the
			// end of the WAL and the next commit starts it over.
			_, _ = j.stmts.checkpoint.ExecContext(context.Background())
		}
	}
}

// checkpointer copies committed pages from the WAL back into the database
// file on its own connection, so the writer never waits for that copy and
// its fsyncs. SQLite's automatic checkpoint would run them inside the
// writer's commit, where every ingress request waits on them: measured side
// by side (five runs each), moving them here took the broker benchmark's
// median from 14.2k to 16.2k events/s and its p99 from 17.6 ms to 5.7 ms.
// A passive checkpoint does not block the writer, but under steady load it
// never catches up with the WAL's end, and only a checkpoint that does lets
// the WAL start over; past walLimit frames the writer runs one itself
// between two batches.
func (j *Journal) checkpointer(conn *sql.Conn) {
	defer j.wg.Done()
	defer conn.Close()
	ctx := context.Background()
	var last time.Time
	for range j.committed {
		if time.Since(last) < checkpointEvery {
			continue
		}
		last = time.Now()
		var busy, frames, copied int64
		if err := conn.QueryRowContext(ctx, checkpointSQL).Scan(&busy, &frames, &copied); err == nil && frames > j.walLimit.Load() {
			j.catchUp.Store(true)
		}
	}
}

// commit writes a batch in one transaction.
func (j *Journal) commit(batch []*writeReq) error {
	ctx := context.Background()
	if _, err := j.stmts.begin.ExecContext(ctx); err != nil {
		return fmt.Errorf("journal: begin: %w", err)
	}
	for _, req := range batch {
		if err := j.stmts.apply(ctx, req); err != nil {
			_, _ = j.stmts.rollback.ExecContext(ctx)
			return err
		}
	}
	if _, err := j.stmts.commit.ExecContext(ctx); err != nil {
		_, _ = j.stmts.rollback.ExecContext(ctx)
		return fmt.Errorf("journal: commit: %w", err)
	}
	return nil
}

type statements struct {
	begin, commit, rollback, checkpoint, insertEvent, insertDelivery, finish *sql.Stmt
	pruneUpTo, pruneDeliveries, prunedSize, pruneEvents                      *sql.Stmt
}

func (st *statements) prepare(ctx context.Context, conn *sql.Conn) error {
	var err error
	prep := func(q string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var s *sql.Stmt
		s, err = conn.PrepareContext(ctx, q)
		return s
	}
	st.begin = prep(`BEGIN IMMEDIATE`)
	st.commit = prep(`COMMIT`)
	st.rollback = prep(`ROLLBACK`)
	st.checkpoint = prep(checkpointSQL)
	st.insertEvent = prep(`INSERT INTO events (id, source, type, subject, incident, causation, traceid, broker, received, body, sender)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id, source, sender) DO NOTHING`)
	st.insertDelivery = prep(`INSERT OR IGNORE INTO deliveries (event_seq, trigger, target, code, error, updated, state)
		VALUES (?, ?, ?, ?, ?, ?, 'pending')`)
	st.finish = prep(`UPDATE deliveries SET state = ?, attempts = ?, code = ?, error = ?, reply_seq = ?, updated = ?
		WHERE event_seq = ? AND trigger = ? AND target = ?`)
	// Pruning: the last seq of the oldest events that may go (none with a
	// pending delivery), their finished deliveries, then the events left
	// without deliveries up to it, which are exactly those.
	st.pruneUpTo = prep(`SELECT MAX(seq) FROM (SELECT seq FROM events e WHERE seq < ?
		AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.state = 'pending') ORDER BY seq LIMIT ?)`)
	st.pruneDeliveries = prep(`DELETE FROM deliveries WHERE event_seq <= ?
		AND event_seq NOT IN (SELECT event_seq FROM deliveries WHERE state = 'pending')`)
	st.prunedSize = prep(`SELECT COUNT(*), COALESCE(SUM(` + eventBytesSQL + `), 0) FROM events
		WHERE seq <= ? AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = events.seq)`)
	st.pruneEvents = prep(`DELETE FROM events WHERE seq <= ? AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = events.seq)`)
	return err
}

func (st *statements) close() {
	for _, s := range []*sql.Stmt{st.begin, st.commit, st.rollback, st.checkpoint, st.insertEvent, st.insertDelivery, st.finish,
		st.pruneUpTo, st.pruneDeliveries, st.prunedSize, st.pruneEvents} {
		if s != nil {
			s.Close()
		}
	}
}

// apply runs one request's statements inside the batch's transaction.
func (st *statements) apply(ctx context.Context, req *writeReq) error {
	req.out = Appended{}
	if p := req.prune; p != nil {
		return st.prune(ctx, p)
	}
	if r := req.rec; r != nil {
		e := r.Event
		res, err := st.insertEvent.ExecContext(ctx, e.ID(), e.Source(), e.Type(), e.Subject(),
			r.incident, r.causation, r.traceID, r.Broker, req.now, r.body, r.Sender)
		if err != nil {
			return fmt.Errorf("journal: inserting event %s: %w", e.ID(), err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			// Journaled before (same source, id and sender): a redelivery.
			req.out.Duplicate = true
		} else {
			req.out.Seq, _ = res.LastInsertId()
			for _, trig := range r.Triggers {
				if _, err := st.insertDelivery.ExecContext(ctx, req.out.Seq, trig, string(ToSubscriber), 0, "", req.now); err != nil {
					return fmt.Errorf("journal: inserting delivery of %s to %s: %w", e.ID(), trig, err)
				}
			}
		}
	}
	f := req.fin
	if f == nil {
		return nil
	}
	var replySeq any
	if f.replyFromRec && !req.out.Duplicate {
		replySeq = req.out.Seq
	}
	if _, err := st.finish.ExecContext(ctx, string(f.state), f.attempts, f.code, f.reason, replySeq, req.now, f.key.Seq, f.key.Trigger, string(f.key.Target)); err != nil {
		return fmt.Errorf("journal: updating delivery of %d to %s: %w", f.key.Seq, f.key.Trigger, err)
	}
	if f.deadLetter && f.key.Target == ToSubscriber {
		// The dead-letter delivery keeps the subscriber's last answer: it
		// becomes the knativeerror* attributes of the dead-lettered event.
		if _, err := st.insertDelivery.ExecContext(ctx, f.key.Seq, f.key.Trigger, string(ToDeadLetter), f.code, f.reason, req.now); err != nil {
			return fmt.Errorf("journal: adding the dead-letter delivery of %d: %w", f.key.Seq, err)
		}
	}
	return nil
}

// Record is an event to journal with the Triggers it must be delivered to.
type Record struct {
	Broker   string
	Event    cloudevents.Event
	Triggers []string
	// Sender is who sent it (an authenticated username; "" when the
	// ingress was unauthenticated). Only the same sender's event with the
	// same source and id is a duplicate.
	Sender string
	// body is the structured-mode JSON and the rest the indexed columns,
	// prepared on the caller's goroutine so the single writer only writes.
	body                []byte
	incident, causation any // nil when absent
	traceID             string
}

// NewRecord encodes e, sent by sender, for the journal.
func NewRecord(broker, sender string, e cloudevents.Event, triggers []string) (Record, error) {
	r := Record{Broker: broker, Sender: sender, Event: e, Triggers: triggers}
	if err := r.encode(); err != nil {
		return Record{}, err
	}
	return r, nil
}

// encode fills what NewRecord prepares; a store calls it for a Record made
// as a literal.
func (r *Record) encode() error {
	if r.body != nil {
		return nil
	}
	body, err := r.Event.MarshalJSON()
	if err != nil {
		return fmt.Errorf("journal: encoding event %s: %w", r.Event.ID(), err)
	}
	r.body = body
	r.incident = nullable(events.String(r.Event, events.ExtIncident))
	r.causation = nullable(events.String(r.Event, events.ExtCausation))
	r.traceID = events.TraceID(r.Event)
	return nil
}

// Appended says what Append did.
type Appended struct {
	Seq int64
	// Duplicate is true when an event with the same source and id was
	// journaled before from the same sender: nothing was added and it must not be delivered again.
	Duplicate bool
}

// Append journals r and one pending delivery per Trigger, durably, before it
// returns.
func (j *Journal) Append(ctx context.Context, r Record) (Appended, error) {
	return j.write(ctx, &writeReq{rec: &r})
}

// Key names one delivery.
type Key struct {
	Seq     int64
	Trigger string
	Target  Target
}

// Complete marks a delivery done and, in the same transaction, journals the
// subscriber's reply (nil for none) with its own deliveries.
func (j *Journal) Complete(ctx context.Context, k Key, attempts int, reply *Record) (Appended, error) {
	return j.write(ctx, &writeReq{rec: reply, fin: &finish{key: k, state: Done, attempts: attempts, replyFromRec: reply != nil}})
}

// Attempted records a failed attempt that will be retried.
func (j *Journal) Attempted(ctx context.Context, k Key, attempts, code int, reason string) error {
	_, err := j.write(ctx, &writeReq{fin: &finish{key: k, state: Pending, attempts: attempts, code: code, reason: reason}})
	return err
}

// GiveUp marks a delivery failed; with deadLetter, a pending delivery of the
// same event to the dead-letter sink is added in the same transaction.
func (j *Journal) GiveUp(ctx context.Context, k Key, attempts, code int, reason string, deadLetter bool) error {
	_, err := j.write(ctx, &writeReq{fin: &finish{key: k, state: Failed, attempts: attempts, code: code, reason: reason, deadLetter: deadLetter}})
	return err
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}
