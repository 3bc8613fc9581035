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

// Journal is an open journal file. It is safe for concurrent use.
type Journal struct {
	db     *sql.DB
	lock   *os.File
	writes chan writeReq
	wg     sync.WaitGroup
	stmts  statements
}

type writeReq struct {
	apply func(ctx context.Context, tx *sql.Tx, st *statements) error
	done  chan error
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

	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(NORMAL)", "busy_timeout(10000)", "temp_store(MEMORY)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("journal: %s: %w", path, err)
	}
	j := &Journal{db: db, lock: lock, writes: make(chan writeReq, 4*maxBatch)}
	if err := j.init(ctx); err != nil {
		db.Close()
		lock.Close()
		return nil, fmt.Errorf("journal: %s: %w (pass --journal with a writable path)", path, err)
	}
	j.wg.Add(1)
	go j.writer()
	return j, nil
}

func (j *Journal) init(ctx context.Context) error {
	if _, err := j.db.ExecContext(ctx, schema); err != nil {
		return err
	}
	return j.stmts.prepare(ctx, j.db)
}

// Close stops the writer after the writes already queued, and closes the file.
func (j *Journal) Close() error {
	if j.writes == nil {
		return j.db.Close()
	}
	close(j.writes)
	j.wg.Wait()
	j.stmts.close()
	err := j.db.Close()
	j.lock.Close()
	return err
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
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("journal: %s: %w", path, err)
	}
	return &Journal{db: db}, nil
}

// write runs apply in a group-committed transaction and waits for the commit.
func (j *Journal) write(ctx context.Context, apply func(context.Context, *sql.Tx, *statements) error) error {
	if j.writes == nil {
		return errors.New("journal: opened read-only")
	}
	req := writeReq{apply: apply, done: make(chan error, 1)}
	select {
	case j.writes <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued the write happens; waiting for it even past ctx keeps the
	// caller's view (e.g. "202 means journaled") true.
	return <-req.done
}

func (j *Journal) writer() {
	defer j.wg.Done()
	batch := make([]writeReq, 0, maxBatch)
	for first := range j.writes {
		batch = append(batch[:0], first)
	drain:
		for len(batch) < maxBatch {
			select {
			case req, ok := <-j.writes:
				if !ok {
					break drain
				}
				batch = append(batch, req)
			default:
				break drain
			}
		}
		err := j.commit(batch)
		for _, req := range batch {
			if err != nil && len(batch) > 1 {
				// One bad write must not fail its neighbours: retry each alone.
				req.done <- j.commit([]writeReq{req})
				continue
			}
			req.done <- err
		}
	}
}

func (j *Journal) commit(batch []writeReq) error {
	ctx := context.Background()
	tx, err := j.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("journal: begin: %w", err)
	}
	for _, req := range batch {
		if err := req.apply(ctx, tx, &j.stmts); err != nil {
			tx.Rollback()
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("journal: commit: %w", err)
	}
	return nil
}

// Record is an event to journal with the Triggers it must be delivered to.
type Record struct {
	Broker   string
	Event    cloudevents.Event
	Triggers []string
	// body is the structured-mode JSON, encoded by the caller's goroutine so
	// the single writer only writes.
	body []byte
}

// NewRecord encodes e for the journal.
func NewRecord(broker string, e cloudevents.Event, triggers []string) (Record, error) {
	body, err := e.MarshalJSON()
	if err != nil {
		return Record{}, fmt.Errorf("journal: encoding event %s: %w", e.ID(), err)
	}
	return Record{Broker: broker, Event: e, Triggers: triggers, body: body}, nil
}

// Appended says what Append did.
type Appended struct {
	Seq int64
	// Duplicate is true when an event with the same source and id was
	// journaled before: nothing was added and it must not be delivered again.
	Duplicate bool
}

// Append journals r and one pending delivery per Trigger, durably, before it
// returns.
func (j *Journal) Append(ctx context.Context, r Record) (Appended, error) {
	var out Appended
	now := time.Now().UnixNano()
	err := j.write(ctx, func(ctx context.Context, tx *sql.Tx, st *statements) error {
		var err error
		out, err = appendTx(ctx, tx, st, r, now)
		return err
	})
	return out, err
}

func appendTx(ctx context.Context, tx *sql.Tx, st *statements, r Record, now int64) (Appended, error) {
	e := r.Event
	var seq int64
	err := tx.StmtContext(ctx, st.insertEvent).QueryRowContext(ctx,
		e.ID(), e.Source(), e.Type(), e.Subject(),
		nullable(events.String(e, events.ExtIncident)), nullable(events.String(e, events.ExtCausation)),
		events.TraceID(e), r.Broker, now, r.body,
	).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return Appended{Duplicate: true}, nil
	}
	if err != nil {
		return Appended{}, fmt.Errorf("journal: inserting event %s: %w", e.ID(), err)
	}
	ins := tx.StmtContext(ctx, st.insertDelivery)
	for _, trig := range r.Triggers {
		if _, err := ins.ExecContext(ctx, seq, trig, string(ToSubscriber), 0, "", now); err != nil {
			return Appended{}, fmt.Errorf("journal: inserting delivery of %s to %s: %w", e.ID(), trig, err)
		}
	}
	return Appended{Seq: seq}, nil
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
	var out Appended
	now := time.Now().UnixNano()
	err := j.write(ctx, func(ctx context.Context, tx *sql.Tx, st *statements) error {
		var replySeq any
		if reply != nil {
			var err error
			if out, err = appendTx(ctx, tx, st, *reply, now); err != nil {
				return err
			}
			if !out.Duplicate {
				replySeq = out.Seq
			}
		}
		_, err := tx.StmtContext(ctx, st.finish).ExecContext(ctx, string(Done), attempts, 0, "", replySeq, now, k.Seq, k.Trigger, string(k.Target))
		return err
	})
	return out, err
}

// Attempted records a failed attempt that will be retried.
func (j *Journal) Attempted(ctx context.Context, k Key, attempts, code int, reason string) error {
	now := time.Now().UnixNano()
	return j.write(ctx, func(ctx context.Context, tx *sql.Tx, st *statements) error {
		_, err := tx.StmtContext(ctx, st.finish).ExecContext(ctx, string(Pending), attempts, code, reason, nil, now, k.Seq, k.Trigger, string(k.Target))
		return err
	})
}

// GiveUp marks a delivery failed; with deadLetter, a pending delivery of the
// same event to the dead-letter sink is added in the same transaction.
func (j *Journal) GiveUp(ctx context.Context, k Key, attempts, code int, reason string, deadLetter bool) error {
	now := time.Now().UnixNano()
	return j.write(ctx, func(ctx context.Context, tx *sql.Tx, st *statements) error {
		if _, err := tx.StmtContext(ctx, st.finish).ExecContext(ctx, string(Failed), attempts, code, reason, nil, now, k.Seq, k.Trigger, string(k.Target)); err != nil {
			return err
		}
		if !deadLetter || k.Target == ToDeadLetter {
			return nil
		}
		// The dead-letter delivery keeps the subscriber's last answer: it
		// becomes the knativeerror* attributes of the dead-lettered event.
		_, err := tx.StmtContext(ctx, st.insertDelivery).ExecContext(ctx, k.Seq, k.Trigger, string(ToDeadLetter), code, reason, now)
		return err
	})
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

type statements struct {
	insertEvent, insertDelivery, finish *sql.Stmt
}

func (st *statements) prepare(ctx context.Context, db *sql.DB) error {
	var err error
	prep := func(q string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var s *sql.Stmt
		s, err = db.PrepareContext(ctx, q)
		return s
	}
	st.insertEvent = prep(`INSERT INTO events (id, source, type, subject, incident, causation, traceid, broker, received, body)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, id) DO NOTHING RETURNING seq`)
	st.insertDelivery = prep(`INSERT OR IGNORE INTO deliveries (event_seq, trigger, target, state, code, error, updated) VALUES (?, ?, ?, 'pending', ?, ?, ?)`)
	st.finish = prep(`UPDATE deliveries SET state = ?, attempts = ?, code = ?, error = ?, reply_seq = ?, updated = ?
		WHERE event_seq = ? AND trigger = ? AND target = ?`)
	return err
}

func (st *statements) close() {
	for _, s := range []*sql.Stmt{st.insertEvent, st.insertDelivery, st.finish} {
		if s != nil {
			s.Close()
		}
	}
}
