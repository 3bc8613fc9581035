package sensor

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/sensor/api"
)

// TestMalformedRecord: garbage in the ring buffer's place is counted as a
// loss and reported in a health event at once; the sensor keeps running.
func TestMalformedRecord(t *testing.T) {
	if err := Probe(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: %v", err)
		}
		t.Skip(err)
	}
	var mu sync.Mutex
	var health []api.Health
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := cehttp.NewEventFromHTTPRequest(r)
		if err == nil && ev.Type() == events.TypeSensorHealth {
			var h api.Health
			if err := json.Unmarshal(ev.Data(), &h); err != nil {
				t.Errorf("health data: %v", err)
			}
			mu.Lock()
			health = append(health, h)
			mu.Unlock()
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(ctx, Config{Sink: srv.URL, RecorderAddr: "-", SpoolDir: "-", Node: "n", HealthInterval: time.Hour}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Before Run, this goroutine is the only reader: feed it what a broken
	// or mismatched BPF object could produce.
	for _, b := range [][]byte{nil, {1}, make([]byte, 80), {3, 1, 0, 0, 255, 255, 255, 255}} {
		s.pipe.handle(b)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		var got *api.Health
		for i := range health {
			if health[i].Lost.Malformed == 4 && health[i].NewLoss {
				got = &health[i]
			}
		}
		mu.Unlock()
		if got != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no health event reporting 4 malformed records: %+v", health)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
