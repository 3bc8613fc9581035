package journal

// SetWALLimit lowers the WAL size at which the writer checkpoints inline, so
// a test can reach it with a few thousand events.
func SetWALLimit(j *Journal, frames int64) { j.walLimit.Store(frames) }
