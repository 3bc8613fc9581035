package journal

import "context"

// SetWALLimit lowers the WAL size at which the writer checkpoints inline, so
// a test can reach it with a few thousand events.
func SetWALLimit(j *Journal, frames int64) { j.walLimit.Store(frames) }

// UsedBytes is what the SQLite file's size bound measures.
func UsedBytes(j *Journal) (int64, error) { return j.usedBytes(context.Background()) }

// Volume is what PostgreSQL's size bound measures.
func Volume(p *Postgres) (events, bytes int64, err error) { return p.volume(context.Background()) }

// EventBytesSQL is an event's own size in SQL.
const EventBytesSQL = eventBytesSQL

// Identity is PostgreSQL's identity digest of an event, for a COPY.
func Identity(id, source, sender string) []byte { return identity(id, source, sender) }
