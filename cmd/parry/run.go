package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"

	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/internal/manifest"
)

func runCommand(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlagSet("run", "[flags]", stderr)
	configDir := fs.String("config", "config", "directory with the Broker and Trigger manifests (the same ones 'ko apply -f' installs)")
	journalPath := fs.String("journal", defaultJournal(), "journal file (SQLite); created if missing")
	listen := fs.String("listen", "127.0.0.1:8080", "address of the broker ingress: POST /<namespace>/<broker>")
	noSensor := fs.Bool("no-sensor", false, "do not start the eBPF sensor in this process")
	maxEvent := fs.Int64("max-event-bytes", 1<<20, "largest event the ingress accepts; larger ones get 413")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", logging.DefaultFormat(), "console or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "parry run takes no arguments, got %q\n", fs.Args())
		return errUsage
	}
	log, err := logging.New(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}

	set, err := manifest.LoadDir(ctx, *configDir)
	if err != nil {
		return fmt.Errorf("invalid manifests in %s:\n%w", *configDir, err)
	}
	j, err := journal.Open(ctx, *journalPath)
	if err != nil {
		return err
	}
	defer j.Close()

	// Functions register here as they are built; in a cluster each runs as
	// the Knative Service of the same name.
	fns := map[string]broker.Handler{}
	b, err := broker.New(broker.Options{
		Manifests: set, Journal: j, Functions: fns, Client: httpclient.New(0),
		Log: log, MaxEventBytes: *maxEvent,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%s is already in use (another parry run?): pass --listen with a free address, e.g. --listen 127.0.0.1:0", *listen)
		}
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	workCtx, stopWork := context.WithCancel(context.Background())
	if err := b.Start(workCtx); err != nil {
		stopWork()
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("/", b)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	brokers := make([]string, len(set.Brokers))
	for i, br := range set.Brokers {
		brokers[i] = "http://" + ln.Addr().String() + "/" + br.Key()
	}
	log.Info().Strs("brokers", brokers).Int("triggers", len(set.Triggers)).Str("journal", *journalPath).
		Str("config", *configDir).Msg("parry is running; send CloudEvents to a broker URL")
	if !*noSensor {
		log.Warn().Msg("sensor: not part of this build yet; running broker and functions only")
	}

	select {
	case <-ctx.Done():
		log.Info().Msg("stopping: finishing requests in flight; pending deliveries stay in the journal")
	case err := <-serveErr:
		stopWork()
		b.Wait()
		return fmt.Errorf("serving %s: %w", *listen, err)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	stopWork()
	b.Wait()
	return err
}
