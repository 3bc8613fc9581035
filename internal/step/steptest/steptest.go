// Package steptest helps tests drive steps with events classify would have
// sealed.
package steptest

import (
	"context"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/step"
)

// Key is an incident key for tests: give it as Deps.IncidentKey.
var Key = []byte("parry-test-incident-key-0123456789abcdef")

// Sealed seals every event with Key before h handles it, as classify
// would have: tests of a step's action need not build seals.
func Sealed(h events.Handler) events.Handler {
	return func(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
		step.SealEvent(Key, &e)
		return h(ctx, e)
	}
}
