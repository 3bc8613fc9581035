package httpserver_test

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"parry.dev/parry/internal/httpserver"
	"parry.dev/parry/internal/httpserver/servertest"
)

func TestNewClosesSlowClients(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ok", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httpserver.New(mux, servertest.Short)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	servertest.SlowClients(t, servertest.Target{Addr: ln.Addr().String(), Get: "/ok", Body: "POST /"}, servertest.Short)
}

func TestZeroLimitsAreDefaults(t *testing.T) {
	srv := httpserver.New(http.NotFoundHandler(), httpserver.Limits{Write: time.Minute})
	d := httpserver.Defaults
	if srv.ReadHeaderTimeout != d.ReadHeader || srv.ReadTimeout != d.Read || srv.WriteTimeout != time.Minute ||
		srv.IdleTimeout != d.Idle || srv.MaxHeaderBytes != d.MaxHeaderBytes {
		t.Fatalf("server %+v from Limits{Write: 1m}: want the defaults %+v with Write 1m", srv, d)
	}
	for _, v := range []time.Duration{d.ReadHeader, d.Read, d.Write, d.Idle} {
		if v <= 0 {
			t.Fatalf("a default of %+v is off", d)
		}
	}
}
