package broker_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"parry.dev/parry/internal/broker"
)

// send posts e and returns the status and Retry-After.
func send(t *testing.T, url string, id string, data []byte, chunked bool) (int, string) {
	t.Helper()
	e := newEvent(id, "dev.parry.test.v1", nil)
	if data != nil {
		if err := e.SetData("application/octet-stream", data); err != nil {
			t.Fatal(err)
		}
	}
	req := newRequest(t, http.MethodPost, url, nil)
	if err := cehttp.WriteRequest(context.Background(), binding.ToMessage(&e), req); err != nil {
		t.Fatal(err)
	}
	if chunked {
		var body []byte
		if req.Body != nil {
			var err error
			if body, err = io.ReadAll(req.Body); err != nil {
				t.Fatal(err)
			}
		}
		// A reader of unknown length: the client sends it chunked.
		req.Body, req.ContentLength = io.NopCloser(io.MultiReader(bytes.NewReader(body))), -1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

func limited(l broker.Limits) func(*broker.Options) {
	return func(o *broker.Options) { o.Limits = l }
}

// A sender over its events per second gets 429 with Retry-After; what it
// sent within the limit was accepted (the positive control) and journaled.
func TestIngressLimitsEventsPerSender(t *testing.T) {
	h := start(t, "", nil, limited(broker.Limits{SenderEvents: 20, SenderBytes: -1, TotalEvents: -1, TotalBytes: -1}))
	accepted, refused := 0, 0
	for i := range 60 {
		code, retry := send(t, h.url, fmt.Sprint("e-", i), nil, i%2 == 0)
		switch code {
		case http.StatusAccepted:
			accepted++
		case http.StatusTooManyRequests:
			refused++
			if n, err := strconv.Atoi(retry); err != nil || n < 1 {
				t.Fatalf("429 with Retry-After %q: want whole seconds, at least 1", retry)
			}
		default:
			t.Fatalf("event %d: status %d", i, code)
		}
	}
	if accepted < 20 || accepted > 25 || refused == 0 {
		t.Fatalf("60 events at once against 20/s: %d accepted, %d refused", accepted, refused)
	}
	// Another sender has buckets of its own.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	e := newEvent("other-1", "dev.parry.test.v1", nil)
	req := newRequest(t, http.MethodPost, h.url, nil)
	if err := cehttp.WriteRequest(context.Background(), binding.ToMessage(&e), req); err != nil {
		t.Fatal(err)
	}
	resp, err := other.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("another sender (127.0.0.2) got %d while the first was limited, want 202", resp.StatusCode)
	}
	accepted++
	last, err := h.journal.Last(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(last) != accepted {
		t.Fatalf("the journal holds %d events, %d were accepted", len(last), accepted)
	}
}

// Bytes count as well as events, for bodies of known length and chunked
// ones alike.
func TestIngressLimitsBytes(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		h := start(t, "", nil, limited(broker.Limits{SenderEvents: -1, SenderBytes: 40 << 10, TotalEvents: -1, TotalBytes: -1}))
		big := []byte(strings.Repeat("x", 16<<10))
		codes := []int{}
		for i := range 4 {
			code, _ := send(t, h.url, fmt.Sprint("big-", i), big, chunked)
			codes = append(codes, code)
		}
		if codes[0] != http.StatusAccepted || codes[1] != http.StatusAccepted || codes[3] != http.StatusTooManyRequests {
			t.Fatalf("chunked=%v: four 16 KiB events against 40 KiB/s: %v", chunked, codes)
		}
		if code, _ := send(t, h.url, "small", nil, chunked); code != http.StatusAccepted {
			t.Fatalf("chunked=%v: a small event after the big ones: %d, want 202 (only the bytes ran out)", chunked, code)
		}
	}
}

// The total bounds all senders together.
func TestIngressLimitsTotal(t *testing.T) {
	h := start(t, "", nil, limited(broker.Limits{SenderEvents: -1, SenderBytes: -1, TotalEvents: 10, TotalBytes: -1}))
	refused := 0
	for i := range 30 {
		if code, _ := send(t, h.url, fmt.Sprint("t-", i), nil, false); code == http.StatusTooManyRequests {
			refused++
		}
	}
	if refused < 15 {
		t.Fatalf("30 events against 10/s in total: only %d refused", refused)
	}
}
