package step

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/httpserver"
	"parry.dev/parry/internal/logging"
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

// TriggerIdentitySuffix ends the name of the ServiceAccount Knative gives a
// Trigger for OIDC (auth.GetOIDCServiceAccountNameForResource): the
// identity its broker filter delivers events, and dead-letters them, with.
const TriggerIdentitySuffix = "-oidc-eventing.knative.dev-trigger"

// Callers decides who may deliver events to a step's Service: a bearer
// token for the Service's audience (ServiceAudience), reviewed by Authn,
// whose identity Allow accepts. A request without one is answered 401, an
// identity Allow refuses 403, and a token that cannot be reviewed 503, so
// the broker retries.
type Callers struct {
	Authn auth.Authenticator
	Allow func(auth.Identity) bool
	// Who says, for a 403, who may call.
	Who string
}

// TriggersIn are the callers Knative's broker filter is in namespace: the
// OIDC identities of the Triggers there, which deliver every event a step
// gets (parry's Triggers are all in parry-system).
func TriggersIn(namespace string, authn auth.Authenticator) *Callers {
	return &Callers{Authn: authn, Who: "the OIDC identities of the Triggers in " + namespace + " (ServiceAccounts *" + TriggerIdentitySuffix + ")",
		Allow: func(id auth.Identity) bool {
			ns, name, ok := id.ServiceAccount()
			return ok && ns == namespace && strings.HasSuffix(name, TriggerIdentitySuffix)
		}}
}

// Admit reports whether r comes from a caller c allows (a nil c allows
// anyone). When it does not, the refusal is written to w: 401 without a
// token or with one the reviewer rejects, 403 naming who may call, 503 when
// the token could not be reviewed, so the broker retries.
func (c *Callers) Admit(w http.ResponseWriter, r *http.Request, log zerolog.Logger) bool {
	if c == nil {
		return true
	}
	id, err := c.Authn.Authenticate(r.Context(), auth.BearerToken(r))
	var unavailable *auth.Unavailable
	switch {
	case errors.As(err, &unavailable):
		log.Warn().Err(err).Msg("a caller's token could not be reviewed, so its event is refused (503); the broker retries")
		auth.Refuse(w, http.StatusServiceUnavailable, err.Error())
		return false
	case err != nil:
		auth.Refuse(w, http.StatusUnauthorized, err.Error())
		return false
	case !c.Allow(id):
		log.Warn().Str(logging.FieldUser, id.Username).Msg("refused an event from a caller that may not deliver here")
		auth.Refuse(w, http.StatusForbidden, fmt.Sprintf("%s may not deliver events here: only %s may", id.Username, c.Who))
		return false
	}
	return true
}

// ReadEvent reads r's CloudEvent, in binary or structured mode, of at most
// MaxEventBytes. When it cannot, the answer is written to w: 413 for a
// larger body, 400 for anything that is not one CloudEvent.
func ReadEvent(w http.ResponseWriter, r *http.Request) (*cloudevents.Event, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxEventBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("event larger than the limit of %d bytes", MaxEventBytes), http.StatusRequestEntityTooLarge)
			return nil, false
		}
		http.Error(w, "reading the request: "+err.Error(), http.StatusBadRequest)
		return nil, false
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
	if err != nil {
		http.Error(w, "malformed CloudEvent: "+err.Error(), http.StatusBadRequest)
		return nil, false
	}
	return e, true
}

// Serve runs h as a Knative Service does: CloudEvents over HTTP on addr (a
// Knative Service gets it from $PORT), the reply in the response, from the
// callers c allows (nil: anyone, which stepmain allows only when told to).
// A handler error answers 500, so the broker retries per the delivery spec.
// metrics, when not nil, is served as GET /metrics.
func Serve(ctx context.Context, addr string, h events.Handler, c *Callers, metrics http.Handler, log zerolog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := NewServer(h, c, metrics, log, Limits)
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

// NewServer is Serve's server for h, from the callers c allows, with limits
// l (zero fields from httpserver.Defaults): request bodies over
// MaxEventBytes are answered 413. metrics, when not nil, is GET /metrics:
// it needs no caller's token (Prometheus scrapes with none), since it
// shows only counts by step, outcome and reason class, no event, pod or
// incident.
func NewServer(h events.Handler, c *Callers, metrics http.Handler, log zerolog.Logger, l httpserver.Limits) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		if !c.Admit(w, r, log) {
			return
		}
		e, ok := ReadEvent(w, r)
		if !ok {
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
