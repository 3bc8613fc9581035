package journal

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Retention bounds a journal: events older than MaxAge, and the oldest
// events while the journal is larger than MaxBytes, are deleted. A zero
// field does not bound. What "larger" measures is each store's: the pages
// in use in the SQLite file (Journal.Prune), the events' own bytes in
// PostgreSQL (Postgres.Prune).
type Retention struct {
	MaxAge   time.Duration
	MaxBytes int64
}

// Defaults (docs/design.md, "Retention", says why these).
const (
	DefaultMaxAge           = 30 * 24 * time.Hour
	DefaultMaxBytes         = 2 << 30  // the SQLite file of parry run
	DefaultPostgresMaxBytes = 20 << 30 // the cluster's PostgreSQL
	// DefaultPruneEvery spaces the passes. A pass that finds nothing to
	// do costs two small queries; at the embedded ingress's default total
	// limit (32 MB/s) the file outgrows its bound by at most a few hundred
	// MB between two passes.
	DefaultPruneEvery = 10 * time.Second
)

// Reasons for pruning, as logged.
const (
	ReasonAge  = "age"
	ReasonSize = "size"
)

// Pruned is what one pass deleted for one reason. Bytes are the deleted
// events' own (their JSON and attributes), in both stores.
type Pruned struct {
	Reason string
	Events int64
	Bytes  int64
}

// Prunable is a store that Retention applies to: the SQLite file and
// PostgreSQL.
type Prunable interface {
	Prune(ctx context.Context, r Retention) ([]Pruned, error)
}

// pruneChunk bounds the events one transaction deletes, so that pruning a
// large backlog never holds the writer (SQLite's single one, or
// PostgreSQL's row locks) for long.
const pruneChunk = 500

// Pruner applies a Retention to a store in the background, one pass at
// start and one every interval, and counts what it deleted.
type Pruner struct {
	store  Prunable
	policy Retention
	every  time.Duration
	log    zerolog.Logger
	events atomic.Int64
	bytes  atomic.Int64
}

// NewPruner prunes store by policy every interval (DefaultPruneEvery when
// zero), logging each deletion.
func NewPruner(store Prunable, policy Retention, every time.Duration, log zerolog.Logger) *Pruner {
	if every <= 0 {
		every = DefaultPruneEvery
	}
	return &Pruner{store: store, policy: policy, every: every, log: log}
}

// Run prunes until ctx is done.
func (p *Pruner) Run(ctx context.Context) {
	tick := time.NewTicker(p.every)
	defer tick.Stop()
	for {
		p.pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (p *Pruner) pass(ctx context.Context) {
	pruned, err := p.store.Prune(ctx, p.policy)
	for _, x := range pruned {
		if x.Events == 0 {
			continue
		}
		p.events.Add(x.Events)
		p.bytes.Add(x.Bytes)
		p.log.Info().Int64("events", x.Events).Int64("bytes", x.Bytes).Str("reason", x.Reason).
			Dur("max_age", p.policy.MaxAge).Int64("max_bytes", p.policy.MaxBytes).Msg("journal pruned")
	}
	if err != nil && ctx.Err() == nil {
		p.log.Warn().Err(err).Msg("journal: pruning failed; the next pass tries again")
	}
}

// Pruned is how many events, and of how many bytes, the pruner deleted
// since it started: the counters for metrics.
func (p *Pruner) Pruned() (events, bytes int64) { return p.events.Load(), p.bytes.Load() }
