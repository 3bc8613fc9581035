// Package stack is the assembler: it holds the one list of parry's steps,
// renders their manifests, and assembles the embedded default — journal,
// broker, the in-process steps and the sensor — as `parry run` runs it, so
// that tests and the demo start exactly what users run.
//
// It is the only package outside cmd/ and tests/ that imports the sensor
// agent and the steps under functions/; everything below it is a library
// that takes its clients by injection (see docs/design.md, "Imports").
package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"k8s.io/client-go/rest"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/httpserver"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/manifest"
	"parry.dev/parry/internal/metrics"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/sensor"
)

// DefaultBroker is the Broker config/ ships; the sensor sends to it.
const DefaultBroker = "parry-system/parry"

// Options configure a stack.
type Options struct {
	ConfigDir   string
	JournalPath string
	// Retention bounds the journal, pruned in the background; zero fields
	// do not bound (parry run passes its --journal-max-* flags).
	Retention     journal.Retention
	Listen        string
	MaxEventBytes int64
	// Limits bound the ingress per sender and in total (broker.Limits).
	Limits broker.Limits
	// Freshness bounds ingress events' time (broker.Freshness).
	Freshness broker.Freshness
	// InsecureIngress accepts events without a token; only with a
	// loopback Listen. Otherwise senders need a token of the state
	// directory's token file (given to the in-process sensor and
	// publishing steps) or, with Kube, a service-account token for the
	// Broker's audience.
	InsecureIngress bool
	// HTTP limits the ingress server; zero fields are httpserver.Defaults.
	HTTP httpserver.Limits
	// Sensor runs the eBPF sensor in-process when set and this process may
	// load BPF; its Sink is set to the embedded broker when empty.
	Sensor *sensor.Config
	// Steps run in-process, once the sensor (if any) runs, each with the
	// clients below; parry run passes Steps().
	Steps []step.Definition
	// StateDir is where steps keep their state (beside the journal).
	StateDir string
	// Kube is the cluster the steps act on; nil runs without one:
	// Kubernetes actions are skipped with that reason in the trace.
	Kube *rest.Config
	// Vault is the steps' Vault client; nil leaves the steps that need
	// one unregistered.
	Vault *vaultapi.Client
	// Getenv reads the steps' own settings (step.Deps.Getenv); parry run
	// passes os.Getenv.
	Getenv func(string) string
	// Functions are more in-process subscribers, by Knative Service name.
	Functions map[string]events.Handler
	// Wrap may replace or wrap the in-process handlers (tests record
	// replies with it).
	Wrap func(map[string]events.Handler) error
	// Metrics, when set, gets the broker's, the steps' and the journal
	// pruner's collectors (package metrics); parry run serves it.
	Metrics *prometheus.Registry
	Log     zerolog.Logger
}

// Stack is a running embedded default.
type Stack struct {
	// Addr is the ingress address (host:port).
	Addr    string
	Journal *journal.Journal
	// Pruner applies Options.Retention; nil when it bounds nothing. Its
	// Pruned counts are the journal's pruning metric.
	Pruner *journal.Pruner
	// Sensor is nil when it was not asked for or could not start (see
	// SensorDisabled).
	Sensor         *sensor.Sensor
	SensorDisabled error
	Manifests      *manifest.Set
	// Tokens are the local token file's tokens by identity
	// (EnsureLocalTokens): the sensor's API and its callers use them.
	Tokens map[string]string

	log      zerolog.Logger
	srv      *http.Server
	broker   *broker.Broker
	workCtx  context.Context
	stopWork context.CancelFunc
	// sensorStopped is closed when the sensor's read loop has returned,
	// prunerStopped when the pruner has (it writes to the journal).
	sensorStopped chan struct{}
	prunerStopped chan struct{}
	done          chan error
	stopOnce      sync.Once
	stopErr       error
}

// BrokerURL is the ingress URL of the Broker with key "namespace/name".
func (s *Stack) BrokerURL(key string) string { return "http://" + s.Addr + "/" + key }

// Start loads and validates the manifests, opens the journal, listens,
// starts the sensor and the functions, and redelivers what was pending.
func Start(ctx context.Context, opts Options) (*Stack, error) {
	set, err := manifest.LoadDir(ctx, opts.ConfigDir)
	if err != nil {
		return nil, fmt.Errorf("invalid manifests in %s:\n%w", opts.ConfigDir, err)
	}
	if _, ok := set.Broker(DefaultBroker); !ok && opts.Sensor != nil {
		return nil, fmt.Errorf("%s defines no Broker %s, which the sensor sends to", opts.ConfigDir, DefaultBroker)
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%s is already in use (another parry run?): pass --listen with a free address, e.g. --listen 127.0.0.1:0", opts.Listen)
		}
		return nil, fmt.Errorf("listening on %s: %w", opts.Listen, err)
	}
	j, err := journal.Open(ctx, opts.JournalPath)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &Stack{Addr: ln.Addr().String(), Journal: j, Manifests: set, log: opts.Log, done: make(chan error, 1)}
	fail := func(err error) (*Stack, error) {
		ln.Close()
		if s.Sensor != nil {
			s.Sensor.Close()
		}
		j.Close()
		return nil, err
	}

	stateDir := opts.StateDir
	if stateDir == "" {
		stateDir = filepath.Dir(opts.JournalPath)
	}
	tokens, tokenFile, err := EnsureLocalTokens(stateDir, LocalIdentities(opts.Steps))
	if err != nil {
		return fail(err)
	}
	s.Tokens = tokens

	authns, err := ingressAuth(set, opts, tokenFile)
	if err != nil {
		return fail(err)
	}

	var sensorCtx context.Context
	workCtx, stopWork := context.WithCancel(context.Background())
	s.workCtx, s.stopWork = workCtx, stopWork
	if opts.Sensor != nil {
		sensorCtx = workCtx
		if s.SensorDisabled = sensor.Probe(); s.SensorDisabled == nil {
			cfg := *opts.Sensor
			if cfg.Sink == "" {
				cfg.Sink = s.BrokerURL(DefaultBroker)
			}
			if cfg.SinkToken == nil && !opts.InsecureIngress {
				cfg.SinkToken = auth.StaticToken(tokens[SensorSender()])
			}
			if cfg.RecorderAddr != "-" && !IsLoopback(cfg.RecorderAddr) {
				stopWork()
				return fail(fmt.Errorf("--recorder-listen %s: the local sensor's API (which can block and unblock pods) listens on loopback only; pass --recorder-listen 127.0.0.1:<port>", cfg.RecorderAddr))
			}
			// Locally the API is on loopback and its callers carry
			// tokens of the local file, granted what config/ grants
			// in a cluster.
			cfg.APIAuthn, cfg.APIAuthz = tokenFile, SensorGrants(opts.Steps)
			if s.Sensor, err = sensor.New(ctx, cfg, opts.Log); err != nil {
				stopWork()
				return fail(fmt.Errorf("starting the sensor: %w (or pass --no-sensor)", err))
			}
		}
	}
	fns, err := s.buildSteps(workCtx, opts)
	if err != nil {
		stopWork()
		return fail(err)
	}
	b, err := broker.New(broker.Options{
		Manifests: set, Journal: j, Functions: fns, Client: httpclient.New(0),
		Log: opts.Log, MaxEventBytes: opts.MaxEventBytes, Limits: opts.Limits,
		Authenticators: authns, Insecure: opts.InsecureIngress, Freshness: opts.Freshness,
		Metrics: brokerMetrics(opts.Metrics),
	})
	if err != nil {
		stopWork()
		return fail(err)
	}
	if err := b.Start(workCtx); err != nil {
		stopWork()
		return fail(err)
	}
	s.broker = b
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.Handle("/", b)
	s.srv = httpserver.New(mux, opts.HTTP)
	go func() {
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.done <- fmt.Errorf("serving %s: %w", s.Addr, err)
		}
	}()
	s.prunerStopped = make(chan struct{})
	if r := opts.Retention; r.MaxAge > 0 || r.MaxBytes > 0 {
		s.Pruner = journal.NewPruner(j, r, journal.DefaultPruneEvery, opts.Log)
		if opts.Metrics != nil {
			metrics.RegisterPruned(opts.Metrics, s.Pruner.Pruned)
		}
		go func() {
			defer close(s.prunerStopped)
			s.Pruner.Run(workCtx)
		}()
	} else {
		close(s.prunerStopped)
	}
	s.sensorStopped = make(chan struct{})
	if s.Sensor == nil {
		close(s.sensorStopped)
	} else {
		go func() {
			defer close(s.sensorStopped)
			if err := s.Sensor.Run(sensorCtx); err != nil && sensorCtx.Err() == nil {
				s.done <- fmt.Errorf("sensor: %w", err)
			}
		}()
	}
	return s, nil
}

// Context is done when the stack stops: background work of in-process
// functions (respawn's reaper) runs under it.
func (s *Stack) Context() context.Context { return s.workCtx }

// Done reports a failure that stops the stack (the listener or the sensor
// failing); it never fires on Stop.
func (s *Stack) Done() <-chan error { return s.done }

// Stop finishes requests in flight, stops deliveries (pending ones stay in
// the journal), the sensor, and closes the journal.
func (s *Stack) Stop() error {
	s.stopOnce.Do(func() {
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := s.srv.Shutdown(shutdown)
		s.stopWork()
		s.broker.Wait()
		<-s.sensorStopped
		<-s.prunerStopped
		if s.Sensor != nil {
			err = errors.Join(err, s.Sensor.Close())
		}
		s.stopErr = errors.Join(err, s.Journal.Close())
	})
	return s.stopErr
}

func brokerMetrics(reg *prometheus.Registry) *metrics.Broker {
	if reg == nil {
		return nil
	}
	return metrics.NewBroker(reg)
}
