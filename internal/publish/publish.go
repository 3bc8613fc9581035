// Package publish is the one way parry's clients send a CloudEvent to a
// Broker's ingress: binary mode, with the sender's token on the HTTP
// client, the Broker's answer named in the error; once (Post), or until the
// Broker takes it (Sender), retrying what a retry can fix.
package publish

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

// Answer is the Broker's answer to one post.
type Answer struct {
	Status int
	// Reason is the answer's body, for a refusal.
	Reason string
	// RetryAfter is what a 429 or 503 asked for, zero if nothing.
	RetryAfter time.Duration
}

// Accepted reports a 2xx answer.
func (a Answer) Accepted() bool { return a.Status/100 == 2 }

// Retryable reports an answer a later attempt may change: 429 and 5xx.
func (a Answer) Retryable() bool { return a.Status == http.StatusTooManyRequests || a.Status/100 == 5 }

// Post sends e to url once with hc, which carries the sender's token. The
// error is a *RefusedError for a request that cannot be made (retrying
// cannot help), any other for one that was not answered.
func Post(ctx context.Context, hc *http.Client, url string, e cloudevents.Event) (Answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return Answer{}, &RefusedError{Reason: fmt.Sprintf("broker URL %q: %v", url, err)}
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(&e), req); err != nil {
		return Answer{}, &RefusedError{Reason: err.Error()}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return Answer{}, fmt.Errorf("the broker at %s is unreachable: %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	a := Answer{Status: resp.StatusCode, Reason: strings.TrimSpace(string(bytes.ToValidUTF8(body, nil)))}
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
		a.RetryAfter = time.Duration(secs) * time.Second
	}
	return a, nil
}

// post makes one attempt; a retryable failure may say how long to wait.
func (s *Sender) post(ctx context.Context, e cloudevents.Event) (time.Duration, error) {
	a, err := Post(ctx, s.HTTP, s.URL, e)
	switch {
	case err != nil:
		return 0, err
	case a.Accepted():
		return 0, nil
	case a.Retryable():
		return a.RetryAfter, fmt.Errorf("the broker at %s answered %d: %s", s.URL, a.Status, a.Reason)
	default:
		return 0, &RefusedError{Status: a.Status, Reason: a.Reason}
	}
}
