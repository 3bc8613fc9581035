package step_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/httpserver/servertest"
	"parry.dev/parry/internal/step"
)

func startServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := func(context.Context, cloudevents.Event) (*cloudevents.Event, error) { return nil, nil }
	srv := step.NewServer(h, nil, nil, zerolog.Nop(), servertest.Short)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// A client that sends half a request, or nothing after its first, cannot
// hold a step's server open past its limits.
func TestServeClosesSlowClients(t *testing.T) {
	addr := startServer(t)
	servertest.SlowClients(t, servertest.Target{Addr: addr, Get: "/healthz", Body: "POST /"}, servertest.Short)
}

// A body over MaxEventBytes is answered 413 without being decoded; one at
// the limit reaches the CloudEvents decoder.
func TestServeRefusesLargeBodies(t *testing.T) {
	addr := startServer(t)
	post := func(n int) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader(`"`+strings.Repeat("a", n-2)+`"`))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range map[string]string{"Content-Type": "application/json", "Ce-Specversion": "1.0", "Ce-Id": "1", "Ce-Source": "t", "Ce-Type": "t"} {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := post(step.MaxEventBytes + 1); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("a body of %d bytes: %s, want 413", step.MaxEventBytes+1, resp.Status)
	}
	if resp := post(step.MaxEventBytes); resp.StatusCode != http.StatusAccepted {
		t.Errorf("a body of %d bytes: %s, want 202 (the handler replies nothing)", step.MaxEventBytes, resp.Status)
	}
}
