// Package failed turns a dead-lettered step delivery into the step's failed
// event. Every step Trigger that playbooks compile names this function as
// its dead-letter sink: when the broker gives up on a step (retries spent,
// or a non-retryable answer), the event that step could not handle arrives
// here with Knative's knativeerrordest, knativeerrorcode and
// knativeerrordata attributes, and dev.parry.step.<step>.failed.v1 goes back
// into the broker with the reason — so the trace shows why the incident
// stopped, and playbooks can branch on the failure.
//
// Knative drops a dead-letter sink's reply, so this function publishes the
// failed event to the broker itself (K_SINK in a cluster).
package failed

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"knative.dev/eventing/pkg/kncloudevents/attributes"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/step"
)

// Name is the function's name: the dead-letter sink of every step Trigger
// that playbooks compile.
const Name = playbook.DeadLetterFunction

// Definition declares the function and builds it, publishing to the
// Broker's ingress (Deps.Sink) with Deps.HTTP.
func Definition() step.Definition {
	return step.Definition{Spec: spec(), New: func(_ context.Context, d step.Deps) (step.Action, error) {
		if d.Sink == "" {
			return nil, errors.New("no Broker to publish to: K_SINK is unset (bind this Service to the Broker with a SinkBinding)")
		}
		return (&failer{publish: HTTPPublisher(d.Sink, d.HTTP)}).act, nil
	}}
}

func spec() step.Spec {
	return step.Spec{
		Name:        Name,
		Description: "Turn a dead-lettered step delivery into dev.parry.step.<step>.failed.v1 with the reason.",
		Replies:     true,
		Publishes:   true,
		Account:     Name,
	}
}

// Publisher sends an event into the broker.
type Publisher func(ctx context.Context, e cloudevents.Event) error

// HTTPPublisher publishes to a broker's ingress URL in binary mode.
func HTTPPublisher(sink string, hc *http.Client) Publisher {
	return func(ctx context.Context, e cloudevents.Event) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, sink, nil)
		if err != nil {
			return err
		}
		if err := cehttp.WriteRequest(ctx, binding.ToMessage(&e), req); err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return fmt.Errorf("publishing %s to %s: %w", e.Type(), sink, err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("publishing %s to %s: status %d", e.Type(), sink, resp.StatusCode)
		}
		return nil
	}
}

type failer struct{ publish Publisher }

// act publishes the failed event of the step that gave up on the event.
func (f *failer) act(ctx context.Context, r *step.Request) (any, error) {
	e := r.Event
	dest := events.String(e, attributes.KnativeErrorDestExtensionKey)
	name := StepOf(dest)
	if name == "" {
		return nil, fmt.Errorf("dead-lettered event %s names no step in knativeerrordest %q", e.ID(), dest)
	}
	reason, _ := base64.StdEncoding.DecodeString(events.String(e, attributes.KnativeErrorDataExtensionKey))
	clean := e.Clone()
	for _, k := range []string{attributes.KnativeErrorDestExtensionKey, attributes.KnativeErrorCodeExtensionKey, attributes.KnativeErrorDataExtensionKey} {
		clean.SetExtension(k, nil)
	}
	out, err := step.FailedReply(clean, name, fmt.Sprintf("gave up after the Trigger's retries: %s answered %s: %s",
		dest, events.String(e, attributes.KnativeErrorCodeExtensionKey), strings.TrimSpace(string(reason))))
	if err != nil {
		return nil, err
	}
	return nil, f.publish(ctx, *out)
}

// StepOf finds the step in a dead-letter destination: "function:isolate"
// under parry run, the Knative Service's address
// (http://isolate.parry-system.svc.cluster.local) in a cluster.
func StepOf(dest string) string {
	if name, ok := strings.CutPrefix(dest, "function:"); ok {
		return name
	}
	u, err := url.Parse(dest)
	if err != nil || u.Hostname() == "" {
		return ""
	}
	name, _, _ := strings.Cut(u.Hostname(), ".")
	return name
}
