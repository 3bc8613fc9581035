package step_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/step"
)

var spec = step.Spec{
	Name: "isolate",
	Params: []step.Param{
		{Name: "allow", Type: step.StringList, Description: "egress allowed"},
		{Name: "mode", Type: step.String, Enum: []string{"pod", "serviceaccount"}, Default: "pod"},
		{Name: "ttl", Type: step.Duration, Required: true, Description: "how long"},
		{Name: "kill", Type: step.Bool},
		{Name: "max", Type: step.Int},
	},
}

func TestValidate(t *testing.T) {
	p, err := spec.Validate(map[string]any{"allow": []any{"dns", "collector"}, "ttl": "5m", "kill": true, "max": 3})
	if err != nil {
		t.Fatal(err)
	}
	if p.String("mode") != "pod" || p.Duration("ttl") != 5*time.Minute || !p.Bool("kill") || p.Int("max") != 3 || len(p.List("allow")) != 2 {
		t.Fatalf("typed params wrong: %v", p)
	}
	_, err = spec.Validate(map[string]any{"mode": "cluster", "kill": "yes", "bogus": 1})
	for _, want := range []string{`no parameter "bogus"`, `"ttl" is required`, `"mode": "cluster" is not one of pod, serviceaccount`, `"kill": want true or false`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not contain %q", err, want)
		}
	}
}

func TestServeRepliesAndFails(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	handler := func(_ context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
		if e.Type() == "fail" {
			return nil, errors.New("api server unavailable")
		}
		r := cloudevents.NewEvent()
		r.SetID("reply-" + e.ID())
		r.SetSource("fn")
		r.SetType("done")
		return &r, nil
	}
	go step.Serve(ctx, addr, handler, nil, nil, zerolog.Nop())
	send := func(typ string) (*http.Response, error) {
		e := cloudevents.NewEvent()
		e.SetID("1")
		e.SetSource("t")
		e.SetType(typ)
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", nil)
		cehttp.WriteRequest(ctx, binding.ToMessage(&e), req)
		return http.DefaultClient.Do(req)
	}
	var resp *http.Response
	var err error
	for range 100 {
		if resp, err = send("ok"); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	reply, err := binding.ToEvent(ctx, cehttp.NewMessageFromHttpResponse(resp))
	if err != nil || reply.ID() != "reply-1" {
		t.Fatalf("reply %v, %v", reply, err)
	}
	resp, err = send("fail")
	if err != nil || resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("failing handler: %v %v", resp.StatusCode, err)
	}
}
