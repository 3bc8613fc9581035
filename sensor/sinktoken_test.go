package sensor_test

import (
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"parry.dev/parry/sensor"
)

// The sensor sends the token of --sink-token-file as a bearer token on
// every delivery to its sink (the Broker authenticates senders by it); with
// no token it sends no Authorization header at all.
func TestSinkToken(t *testing.T) {
	requireKernel(t)
	headers := make(chan string, 64)
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case headers <- r.Header.Get("Authorization"):
		default:
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(sink.Close)
	first := func(t *testing.T) string {
		t.Helper()
		select {
		case h := <-headers:
			return h
		case <-time.After(5 * time.Second):
			t.Fatal("no delivery to the sink within 5s (the first health report goes out at start)")
			return ""
		}
	}

	t.Run("with --sink-token-file", func(t *testing.T) {
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte("projected-token-1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := sensor.DefaultConfig()
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		cfg.RegisterFlags(fs)
		if err := fs.Parse([]string{"--sink", sink.URL, "--sink-token-file", tokenFile, "--health-interval", "1h"}); err != nil {
			t.Fatal(err)
		}
		cfg.RecorderAddr, cfg.SpoolDir, cfg.Node = "127.0.0.1:0", "", ""
		startSensor(t, cfg)
		if got := first(t); got != "Bearer projected-token-1" {
			t.Fatalf("Authorization %q, want %q", got, "Bearer projected-token-1")
		}
	})
	for len(headers) > 0 {
		<-headers
	}
	t.Run("without a token", func(t *testing.T) {
		startSensor(t, sensor.Config{Sink: sink.URL, HealthInterval: time.Hour})
		if got := first(t); got != "" {
			t.Fatalf("Authorization %q with no token configured, want none", got)
		}
	})
	t.Run("an unreadable token file fails the start", func(t *testing.T) {
		ensurePodRoot(t)
		cfg := sensor.Config{Sink: sink.URL, RecorderAddr: "-", SpoolDir: "-", Node: "test-node"}
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		cfg.RegisterFlags(fs)
		if err := fs.Parse([]string{"--sink-token-file", "/nonexistent/token"}); err != nil {
			t.Fatal(err)
		}
		s, err := sensor.New(t.Context(), cfg, testLog(t))
		if err == nil {
			s.Close()
			t.Fatal("the sensor started with an unreadable --sink-token-file")
		}
		if !strings.Contains(err.Error(), "--sink-token-file") {
			t.Errorf("error %q does not name --sink-token-file", err)
		}
	})
}
