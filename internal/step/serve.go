package step

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/httpserver"
)

// ServiceAudience is the OIDC audience of a step's Knative Service: the
// Triggers name it as their subscriber's audience, so Knative's broker
// filter sends a token for it, and Serve accepts only tokens for it.
func ServiceAudience(namespace, name string) string {
	return "serving.knative.dev/service/" + namespace + "/" + name
}

// MaxEventBytes bounds the body of a request Serve accepts; more is
// answered 413. The broker's ingress has the same bound.
const MaxEventBytes = 1 << 20

// Limits are Serve's: httpserver.Defaults, but a handler may work for as
// long as a Knative Service's default request timeout (300 s) before its
// answer must be written.
var Limits = httpserver.Limits{Write: 300 * time.Second}

// Serve runs h as a Knative Service does: CloudEvents over HTTP on addr (a
// Knative Service gets it from $PORT), the reply in the response. A handler
// error answers 500, so the broker retries per the delivery spec.
func Serve(ctx context.Context, addr string, h events.Handler, log zerolog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := NewServer(h, log, Limits)
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	log.Info().Str("addr", ln.Addr().String()).Msg("serving CloudEvents")
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// NewServer is Serve's server for h with limits l (zero fields from
// httpserver.Defaults): request bodies over MaxEventBytes are answered 413.
func NewServer(h events.Handler, log zerolog.Logger, l httpserver.Limits) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxEventBytes))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				http.Error(w, fmt.Sprintf("event larger than the limit of %d bytes", MaxEventBytes), http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "reading the request: "+err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, "malformed CloudEvent: "+err.Error(), http.StatusBadRequest)
			return
		}
		reply, err := h(r.Context(), *e)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if reply == nil {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		if err := cehttp.WriteResponseWriter(r.Context(), binding.ToMessage(reply), http.StatusOK, w); err != nil {
			log.Error().Err(err).Str("event_id", e.ID()).Msg("writing the reply")
		}
	})
	return httpserver.New(mux, l)
}
