package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/rs/zerolog"
	"k8s.io/apimachinery/pkg/api/resource"

	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/clients/vault"
	"parry.dev/parry/internal/httpserver"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/internal/metrics"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/internal/timeline"
	"parry.dev/parry/sensor"
)

func runCommand(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("run", "[flags]", stderr)
	configDir := fs.String("config", "config", "directory with the Broker and Trigger manifests (the same ones 'ko apply -f' installs)")
	journalPath := fs.String("journal", defaultJournal(), "journal file (SQLite); created if missing")
	retention := journal.Retention{MaxAge: journal.DefaultMaxAge, MaxBytes: journal.DefaultMaxBytes}
	fs.DurationVar(&retention.MaxAge, "journal-max-age", retention.MaxAge, "delete journaled events older than this, in the background (never one still to be delivered); 0: keep them however old")
	fs.Var((*byteSize)(&retention.MaxBytes), "journal-max-size", "delete the oldest journaled events while the journal file's data is larger than `size` (2Gi, 500Mi, or bytes); the file stays about this size; 0: no bound")
	listen := fs.String("listen", "127.0.0.1:8080", "address of the broker ingress: POST /<namespace>/<broker>")
	uiListen := fs.String("ui-listen", "127.0.0.1:8081", "address of the web timeline (the incident list, and each incident from the first kernel event to the last step) and of Prometheus metrics (GET /metrics); loopback only, the pages show what the sensors saw; empty: off")
	noSensor := fs.Bool("no-sensor", false, "do not start the eBPF sensor in this process")
	maxEvent := fs.Int64("max-event-bytes", 1<<20, "largest event the ingress accepts; larger ones get 413")
	limits := broker.DefaultLimits()
	fs.IntVar(&limits.SenderEvents, "ingress-sender-events", limits.SenderEvents, "events per second the ingress accepts from one sender (its address); more get 429 with Retry-After; -1: no limit")
	fs.IntVar(&limits.SenderBytes, "ingress-sender-bytes", limits.SenderBytes, "bytes per second the ingress accepts from one sender; -1: no limit")
	fs.IntVar(&limits.TotalEvents, "ingress-total-events", limits.TotalEvents, "events per second the ingress accepts from all senders together; -1: no limit")
	fs.IntVar(&limits.TotalBytes, "ingress-total-bytes", limits.TotalBytes, "bytes per second the ingress accepts from all senders together; -1: no limit")
	fresh := broker.DefaultFreshness()
	fs.DurationVar(&fresh.MaxAge, "ingress-max-age", fresh.MaxAge, "oldest event time the ingress accepts, back from now; older events get 400 (a journaled event's redelivery is still accepted); negative: no bound")
	fs.DurationVar(&fresh.MaxSkew, "ingress-max-skew", fresh.MaxSkew, "how far ahead of this host's clock an event's time may be; further gets 400; negative: no bound")
	insecure := fs.Bool("insecure-ingress", false, "accept events without a bearer token (loopback --listen only): anyone on this host can then feed parry events. Without it, senders need a token from the token file beside the journal, or with KUBECONFIG a service-account token for the Broker's audience (eventing.knative.dev/broker/<namespace>/<name>)")
	newLog := logFlags(fs, stderr)
	sensorCfg := sensor.DefaultConfig()
	sensorCfg.FromEnvironment(os.Getenv)
	sensorCfg.RegisterFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "parry run takes no arguments, got %q\n", fs.Args())
		return errUsage
	}
	log, err := newLog()
	if err != nil {
		return err
	}
	stateDir := filepath.Dir(*journalPath)
	if sensorCfg.FiltersPath == "" {
		// The sensor watches what the playbooks need: the compiled
		// ConfigMap in config/, as the DaemonSet mounts it in a cluster.
		path, ok, err := playbook.SensorFiltersFromConfig(*configDir, stateDir)
		if err != nil {
			return fmt.Errorf("writing the sensor's filters beside the journal: %w (pass --journal with a writable path)", err)
		}
		if ok {
			sensorCfg.FiltersPath = path
		}
	}
	opts := stack.Options{
		ConfigDir: *configDir, JournalPath: *journalPath, Retention: retention, Listen: *listen, MaxEventBytes: *maxEvent, Limits: limits, Log: log,
		Freshness: fresh, InsecureIngress: *insecure,
		Steps: stack.Steps(), StateDir: stateDir, Getenv: os.Getenv, Metrics: metrics.NewRegistry(),
	}
	// The steps act on the cluster in $KUBECONFIG, if any, and revoke Vault
	// credentials with $VAULT_ADDR and $VAULT_TOKEN, if set.
	if path := os.Getenv("KUBECONFIG"); path != "" {
		if opts.Kube, err = clients.KubeConfig(path); err != nil {
			return err
		}
	}
	if addr := os.Getenv("VAULT_ADDR"); addr != "" {
		if opts.Vault, err = vault.New(addr, os.Getenv("VAULT_TOKEN")); err != nil {
			return err
		}
	}
	if !*noSensor {
		opts.Sensor = &sensorCfg
	}
	var ui net.Listener
	if *uiListen != "" {
		// Bound before the stack starts, so a taken port is an error at
		// start and not after the sensor is loaded.
		if !stack.IsLoopback(*uiListen) {
			return fmt.Errorf("--ui-listen %s: the web timeline shows what the sensors saw (command lines among it) to whoever reaches it, without a login, so it listens on loopback only: pass --ui-listen 127.0.0.1:<port> and reach it through an SSH tunnel or kubectl port-forward", *uiListen)
		}
		if ui, err = net.Listen("tcp", *uiListen); err != nil {
			return fmt.Errorf("--ui-listen: %w (pass another port, or --ui-listen '' to turn the web timeline off)", err)
		}
		defer ui.Close()
	}
	s, err := stack.Start(ctx, opts)
	if err != nil {
		return err
	}
	if ui != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metrics.Handler(opts.Metrics))
		mux.Handle("/", (&timeline.Server{Journal: s.Journal, Log: log}).Handler())
		srv := httpserver.New(mux, httpserver.Defaults)
		go srv.Serve(ui) //nolint:errcheck // ends with the listener
		defer srv.Close()
		log.Info().Str("url", "http://"+ui.Addr().String()+"/").Str("metrics", "http://"+ui.Addr().String()+"/metrics").
			Msg("web timeline: the incidents, each from the first kernel event to the last step")
	}
	brokers := make([]string, len(s.Manifests.Brokers))
	for i, br := range s.Manifests.Brokers {
		brokers[i] = s.BrokerURL(br.Key())
	}
	log.Info().Strs("brokers", brokers).Int("triggers", len(s.Manifests.Triggers)).Str("journal", *journalPath).
		Str("config", *configDir).Msg("parry is running; send CloudEvents to a broker URL")
	if *insecure {
		log.Warn().Str("listen", s.Addr).Msg("ingress: INSECURE (--insecure-ingress): events are accepted without a token, so any process on this host can feed parry events and run its responses")
	} else {
		log.Info().Str("tokens", filepath.Join(stateDir, "tokens")).Msg("ingress: senders need a bearer token (the in-process sensor and steps have theirs; EventPolicies in config/ decide what each may send)")
	}
	switch {
	case *noSensor:
		log.Info().Msg("sensor: off (--no-sensor)")
	case s.SensorDisabled != nil:
		log.Warn().Err(s.SensorDisabled).Msg("sensor: not started; running the broker and functions without it")
	}

	select {
	case <-ctx.Done():
		log.Info().Msg("stopping: finishing requests in flight; pending deliveries stay in the journal")
		return s.Stop()
	case err := <-s.Done():
		s.Stop()
		return err
	}
}

func sensorCommand(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("sensor", "[flags]", stderr)
	newLog := logFlags(fs, stderr)
	cfg := sensor.DefaultConfig()
	cfg.FromEnvironment(os.Getenv)
	cfg.LimitMemory = true // `parry sensor` runs the sensor alone
	cfg.RegisterFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLog()
	if err != nil {
		return err
	}
	if err := sensor.Probe(); err != nil {
		return err
	}
	return sensor.Run(ctx, cfg, log)
}

// logFlags registers --log-level and --log-format and returns the logger
// they describe, once the flags are parsed.
func logFlags(fs *flag.FlagSet, stderr io.Writer) func() (zerolog.Logger, error) {
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", logging.DefaultFormat(), "console or json")
	return func() (zerolog.Logger, error) { return logging.New(stderr, *level, *format) }
}

// byteSize is a flag of bytes, written as a Kubernetes quantity (2Gi,
// 500Mi, 1G) or a plain number.
type byteSize int64

func (b *byteSize) String() string {
	return resource.NewQuantity(int64(*b), resource.BinarySI).String()
}

func (b *byteSize) Set(s string) error {
	q, err := resource.ParseQuantity(s)
	if err != nil || q.Sign() < 0 {
		return fmt.Errorf("want a size such as 2Gi, 500Mi or a number of bytes, not %q", s)
	}
	*b = byteSize(q.Value())
	return nil
}
