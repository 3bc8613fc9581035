package journalservice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/httpserver"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/step"
)

// Name is the journal service's Deployment, Service and Trigger in
// parry-system.
const Name = "parry-journal"

// Audience is the audience of the tokens the read API accepts: a token for
// any other (the API server's, the Broker's, the deliveries') is refused.
// On-call gets one with `kubectl create token <account> --audience
// parry-journal`.
const Audience = "parry-journal"

// DeliveryAudience is the audience of the tokens the journal's Trigger
// delivers with: config/620-journal.yaml names it as its subscriber's.
var DeliveryAudience = step.ServiceAudience(playbook.Namespace, Name)

// Recorder writes events. *journal.Postgres is one: it records each event
// identity once, so redeliveries are harmless.
type Recorder interface {
	// Record stores recs in one transaction, returning how many were new;
	// an error means none may be assumed stored.
	Record(ctx context.Context, recs []journal.Record) (recorded int, err error)
}

// Batch bounds a group commit.
type Batch struct {
	// Max is the most events in one commit (default 256).
	Max int
	// Linger is how long the first event of a batch waits for others
	// (default 2ms): an event alone is committed after it.
	Linger time.Duration
}

// Config is a journal service.
type Config struct {
	Recorder Recorder
	Reader   journal.Reader
	// Broker is recorded as every event's broker ("namespace/name").
	Broker string
	// Callers may deliver events (TriggerCallers); nil lets anyone.
	Callers *step.Callers
	// ReadAuthn and ReadAuthz decide who may read; when either is nil the
	// read API and /metrics answer 503.
	ReadAuthn auth.Authenticator
	ReadAuthz auth.Authorizer
	Batch     Batch
	// Pruner bounds the journal while the service runs (nil: it is not
	// pruned). Replicas may prune side by side.
	Pruner *journal.Pruner
	// Limits of the HTTP server (zero fields from httpserver.Defaults).
	Limits httpserver.Limits
	Log    zerolog.Logger
}

// TriggerCallers are who may deliver events to the journal: the OIDC
// identity of its own Trigger (parry-system/parry-journal) only, with
// tokens authn accepts (a TokenReview for DeliveryAudience). A step's
// Trigger, or any other workload, is refused.
func TriggerCallers(authn auth.Authenticator) *step.Callers {
	who := broker.TriggerIdentity(playbook.Namespace, Name)
	return &step.Callers{Authn: authn, Who: fmt.Sprintf("the OIDC identity of the Trigger %s/%s (%s)", playbook.Namespace, Name, who),
		Allow: func(id auth.Identity) bool { return id.Username == who }}
}

// Service records and serves. Start its writer with New and stop it with
// Close after the HTTP server has stopped.
type Service struct {
	cfg     Config
	log     zerolog.Logger
	writer  *writer
	metrics *metrics
}

// New starts the service's writer.
func New(cfg Config) (*Service, error) {
	if cfg.Recorder == nil || cfg.Reader == nil {
		return nil, errors.New("journalservice: a Recorder and a Reader are required")
	}
	if cfg.Broker == "" {
		cfg.Broker = playbook.Namespace + "/" + playbook.BrokerName
	}
	if cfg.Batch.Max <= 0 {
		cfg.Batch.Max = 256
	}
	if cfg.Batch.Linger <= 0 {
		cfg.Batch.Linger = 2 * time.Millisecond
	}
	s := &Service{cfg: cfg, log: cfg.Log, metrics: &metrics{}}
	s.writer = startWriter(cfg.Recorder, cfg.Batch, s.metrics, cfg.Log)
	return s, nil
}

// Handler serves deliveries (POST /), the read API (GET /v1/...),
// /healthz and /metrics.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("POST /{$}", s.deliver)
	mux.HandleFunc("GET "+routeMetrics, s.authorized(accessMetrics, func(w http.ResponseWriter, _ *http.Request) { s.metrics.write(w, s.writer, s.cfg.Pruner) }))
	s.routes(mux)
	return mux
}

// Serve serves Handler on ln, and runs the Pruner, until ctx is done, then
// finishes the requests in flight (their batches commit), and stops the
// writer.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	srv := httpserver.New(s.Handler(), s.cfg.Limits)
	pruneCtx, stopPruning := context.WithCancel(ctx)
	pruned := make(chan struct{})
	go func() {
		defer close(pruned)
		if s.cfg.Pruner != nil {
			s.cfg.Pruner.Run(pruneCtx)
		}
	}()
	defer func() {
		stopPruning()
		<-pruned
	}()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	s.log.Info().Str("addr", ln.Addr().String()).Msg("journal service: recording the Broker's events and serving the read API")
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-stopped
		err = nil
	}
	s.Close()
	return err
}

// Close commits what is queued and stops the writer. Deliveries still
// waiting are answered 503.
func (s *Service) Close() { s.writer.stop() }
