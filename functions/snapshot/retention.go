package snapshot

import (
	"context"
	"time"

	"github.com/rs/zerolog"
)

// pruneInterval is how often the step looks for bundles past retention.
const pruneInterval = time.Hour

// pruneEvery deletes the bundles older than retention from the store, at
// once and then every interval, until ctx ends; it logs "evidence pruned"
// with the count when it deleted any, and what failed.
func pruneEvery(ctx context.Context, store Store, retention, interval time.Duration, log zerolog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := store.Prune(ctx, time.Now().Add(-retention))
		if n > 0 {
			log.Info().Int("pruned", n).Dur("retention", retention).Str("store", store.Location("", "")).Msg("evidence pruned")
		}
		if err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Int("pruned", n).Msg("evidence pruning failed")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
