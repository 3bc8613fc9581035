package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/ingest/tetragon"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/internal/publish"
	"parry.dev/parry/internal/stack"
)

func ingestTetragon(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("ingest tetragon", "[flags]", stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: parry ingest tetragon [flags]

Follows Tetragon's JSON export file on this node and sends each
process_exec to the Broker as parry's own exec event
(dev.parry.sensor.process.exec.v1, source parry://tetragon/<node>), with
the attributes parry's sensor sets (pod, container id without its
runtime's scheme, image, owner, exe, comm, uid), so the shipped playbooks
match Tetragon's execs too. Arguments are redacted as the sensor redacts
them. Other Tetragon events, lines that are not JSON and execs older than
--max-age are counted, logged and skipped.

The file is read from its end (--from-start to send what it already
holds) and followed across Tetragon's rotations. Events are sent one at a
time with the ingester's own identity, parry-sensor/parry-ingest-tetragon,
which may send exec events and nothing else: a projected token in a
cluster (--token-file; config/710-ingest-tetragon.yaml), or under parry
run its token in the local token file (--tokens). The Broker being away
or overloaded (5xx, 429, unreachable) is retried with backoff; a refusal
(4xx) drops the event and logs why.

Flags:
`)
		fs.PrintDefaults()
	}
	file := fs.String("file", "/var/run/cilium/tetragon/tetragon.log", "Tetragon's export file (its --export-filename), or - for stdin")
	fromStart := fs.Bool("from-start", false, "send the lines already in the file too, not only those written from now on")
	brokerURL := fs.String("broker", "http://127.0.0.1:8080/"+stack.DefaultBroker, "the Broker's ingress")
	tokenFile := fs.String("token-file", "", "a projected service-account token for the Broker's audience (in a cluster)")
	tokens := fs.String("tokens", filepath.Join(filepath.Dir(defaultJournal()), stack.TokenFile), "parry run's token file (without --token-file)")
	tokenFor := fs.String("token-for", stack.TetragonIngest(), "whose token of --tokens to send with")
	maxAge := fs.Duration("max-age", 5*time.Minute, "skip execs older than this: the Broker refuses them (its --ingress-max-age)")
	poll := fs.Duration("poll", 250*time.Millisecond, "how often the file is checked for new lines")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", logging.DefaultFormat(), "console or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "parry ingest tetragon: unexpected argument %q (the file is --file)\n", fs.Arg(0))
		return errUsage
	}
	log, err := logging.New(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	src, err := senderToken(*tokenFile, *tokens, *tokenFor)
	if err != nil {
		return err
	}
	if *file != "-" {
		f, err := os.Open(*file)
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("--file %s: %w (Tetragon writes it mode 0600 as root: run as root, or set Tetragon's --export-file-perm)", *file, err)
		}
		if err == nil {
			f.Close()
		}
	}
	_, err = tetragon.Run(ctx, tetragon.Options{
		Path: *file, Stdin: os.Stdin, FromStart: *fromStart, Poll: *poll, MaxAge: *maxAge,
		Sender: &publish.Sender{URL: *brokerURL, HTTP: auth.WithToken(httpclient.New(10*time.Second), src), Log: log},
		Log:    log,
	})
	return err
}
