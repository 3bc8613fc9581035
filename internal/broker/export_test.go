package broker

import (
	"context"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"parry.dev/parry/internal/manifest"
)

// Allow is the EventPolicy decision of the Broker brokerKey of set, for
// comparing with Knative's own.
func Allow(set *manifest.Set, brokerKey, sub string, e cloudevents.Event) (bool, string, []string) {
	br, _ := set.Broker(brokerKey)
	a, problems := newAuthorizer(set, br)
	ok, reason := a.allow(context.Background(), sub, e)
	return ok, reason, problems
}
