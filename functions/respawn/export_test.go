package respawn

import (
	"context"
	"time"

	"github.com/rs/zerolog"
	"k8s.io/client-go/kubernetes"
)

// ReapEvery runs the reaper at a test's pace (the step's own runs every
// reapInterval).
func ReapEvery(ctx context.Context, kube kubernetes.Interface, interval time.Duration) {
	(&respawner{kube: kube, log: zerolog.Nop()}).reap(ctx, interval)
}
