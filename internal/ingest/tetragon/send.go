package tetragon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/logging"
)

// Sender posts events to the Broker's ingress in binary mode.
type Sender struct {
	// URL is the Broker's ingress, e.g.
	// http://broker-ingress.knative-eventing.svc.cluster.local/parry-system/parry.
	URL string
	// HTTP carries the ingester's token (auth.WithToken).
	HTTP *http.Client
	Log  zerolog.Logger
	// MaxBackoff bounds the wait between retries; zero means 10 seconds.
	MaxBackoff time.Duration
}

// RefusedError is the Broker's final answer to an event: a 4xx other than
// 429, which retrying cannot change (no token, a policy that does not let
// the ingester send the type, an event too old).
type RefusedError struct {
	Status int
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("the broker refused the event with %d: %s", e.Status, e.Reason)
}

// Send posts e until the Broker accepts it, refuses it (RefusedError), or
// ctx is done. Connection errors, 5xx and 429 are retried with a doubling
// backoff (honouring Retry-After), each retry logged: the Broker being
// away for a while delays events rather than losing them, up to the
// Broker's freshness bound.
func (s *Sender) Send(ctx context.Context, e cloudevents.Event) error {
	maxBackoff := s.MaxBackoff
	if maxBackoff == 0 {
		maxBackoff = 10 * time.Second
	}
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		wait, err := s.post(ctx, e)
		var refused *RefusedError
		if err == nil || errors.As(err, &refused) || ctx.Err() != nil {
			return err
		}
		if wait == 0 {
			wait = backoff
		}
		s.Log.Warn().Err(err).Int(logging.FieldAttempt, attempt).Str(logging.FieldEventID, e.ID()).
			Dur("retry_in", wait).Msg("the broker did not take the event; retrying")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// post makes one attempt; a retryable failure may say how long to wait.
func (s *Sender) post(ctx context.Context, e cloudevents.Event) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL, nil)
	if err != nil {
		return 0, &RefusedError{Reason: fmt.Sprintf("broker URL %q: %v", s.URL, err)}
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(&e), req); err != nil {
		return 0, &RefusedError{Reason: err.Error()}
	}
	resp, err := s.HTTP.Do(req)
	if err != nil {
		return 0, fmt.Errorf("the broker at %s is unreachable: %w", s.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	reason := strings.TrimSpace(string(bytes.ToValidUTF8(body, nil)))
	switch {
	case resp.StatusCode/100 == 2:
		return 0, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode/100 == 5:
		var wait time.Duration
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			wait = time.Duration(secs) * time.Second
		}
		return wait, fmt.Errorf("the broker at %s answered %d: %s", s.URL, resp.StatusCode, reason)
	default:
		return 0, &RefusedError{Status: resp.StatusCode, Reason: reason}
	}
}
