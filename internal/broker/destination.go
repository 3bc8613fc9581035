package broker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"parry.dev/parry/internal/events"
)

// destination is where a delivery goes: an in-process function or an HTTP
// endpoint.
type destination struct {
	name    string
	fn      events.Handler
	url     string
	client  *http.Client
	maxBody int64
}

// outcome of one attempt. code is the HTTP status, or for a function 200 on
// success and 500 on error; body is what the subscriber said on failure.
type outcome struct {
	reply *cloudevents.Event
	code  int
	err   error
	resp  *http.Response
	body  []byte
}

func (o outcome) ok() bool { return o.err == nil && o.code >= 200 && o.code < 300 }

// reason is the journaled explanation of a failed attempt.
func (o outcome) reason() string {
	switch {
	case o.err != nil:
		return o.err.Error()
	case len(o.body) > 0:
		return string(o.body)
	default:
		return http.StatusText(o.code)
	}
}

func (d destination) send(ctx context.Context, e cloudevents.Event) outcome {
	if d.fn != nil {
		return d.call(ctx, e)
	}
	return d.post(ctx, e)
}

func (d destination) call(ctx context.Context, e cloudevents.Event) (o outcome) {
	defer func() {
		if r := recover(); r != nil {
			o = outcome{code: http.StatusInternalServerError, err: fmt.Errorf("%s panicked: %v\n%s", d.name, r, debug.Stack())}
		}
	}()
	reply, err := d.fn(ctx, e)
	if err != nil {
		// A function error is a server-side failure: retryable, as a 500 is.
		return outcome{code: http.StatusInternalServerError, err: err, resp: &http.Response{StatusCode: http.StatusInternalServerError}}
	}
	return outcome{reply: reply, code: http.StatusOK, resp: &http.Response{StatusCode: http.StatusOK}}
}

func (d destination) post(ctx context.Context, e cloudevents.Event) outcome {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url, nil)
	if err != nil {
		return outcome{err: err}
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(&e), req); err != nil {
		return outcome{err: fmt.Errorf("encoding event for %s: %w", d.url, err)}
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return outcome{err: err}
	}
	defer resp.Body.Close()
	o := outcome{code: resp.StatusCode, resp: resp}
	body, err := io.ReadAll(io.LimitReader(resp.Body, d.maxBody+1))
	if err != nil {
		o.err = fmt.Errorf("reading the answer of %s: %w", d.url, err)
		return o
	}
	if !o.ok() {
		o.body = body
		return o
	}
	if int64(len(body)) > d.maxBody {
		o.code, o.err = http.StatusBadGateway, fmt.Errorf("%s replied with more than %d bytes", d.url, d.maxBody)
		return o
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	msg := cehttp.NewMessageFromHttpResponse(resp)
	if msg.ReadEncoding() == binding.EncodingUnknown {
		return o // a plain 2xx: no reply
	}
	reply, err := binding.ToEvent(ctx, msg)
	if err != nil {
		o.code, o.err = http.StatusBadGateway, fmt.Errorf("%s replied with a malformed CloudEvent: %w", d.url, err)
		return o
	}
	o.reply = reply
	return o
}
