package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/httpserver"
	"parry.dev/parry/internal/ingest/falco"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/internal/step"
)

const ingestUsage = `Usage:
  parry ingest falco [flags]      take Falcosidekick's CloudEvents and send them to the Broker as Falco alerts
  parry ingest tetragon [flags]   follow Tetragon's JSON export and send its execs to the Broker as parry's exec events

Run 'parry ingest <tool> --help' for its flags.
`

func ingestCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return subcommand("ingest", "tool", ingestUsage, args, stdout, stderr, map[string]func([]string) error{
		"falco":    func(args []string) error { return ingestFalco(ctx, args, stderr) },
		"tetragon": func(args []string) error { return ingestTetragon(ctx, args, stderr) },
	})
}

// senderToken is an ingester's token for the Broker: a projected
// service-account token in a cluster (--token-file), or under parry run its
// identity's token in the local token file (--tokens).
func senderToken(tokenFile, tokens, user string) (auth.TokenSource, error) {
	if tokenFile != "" {
		src := auth.FileToken(tokenFile)
		if _, err := src(); err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		return src, nil
	}
	tok, err := localToken(tokens, user)
	if err != nil {
		return nil, fmt.Errorf("%w (in a cluster pass --token-file)", err)
	}
	return auth.StaticToken(tok), nil
}

// localToken is user's token in parry run's token file at path: how a
// local client acts as the identity parry run gave it.
func localToken(path, user string) (string, error) {
	f, err := auth.LoadTokenFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("no token file %s: parry run writes it beside its journal when it starts; use the state directory (--journal) parry run uses", path)
	}
	if err != nil {
		return "", err
	}
	return f.TokenOf(user)
}

func ingestFalco(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("ingest falco", "[flags]", stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: parry ingest falco [flags]

Receives Falcosidekick's CloudEvents output (type falco.rule.output.v1) on
--listen and sends each alert to the Broker as dev.parry.sensor.falco.alert.v1,
with the pod resolved (Falco's k8s.ns.name and k8s.pod.name, else its
container.id, else only the node) and Falco's rule, priority and tags as
attributes playbooks match on (see playbooks/falco-critical.yaml).

Falcosidekick sends no token, so the adapter sends with its own identity
(parry-system/parry-ingest-falco, which may send Falco alerts and nothing
else) and admits only events that carry the shared key of --key-file as
the extension parrykey. Configure Falcosidekick with:

  cloudevents:
    address: http://<this address>/
    extensions:
      parrykey: <the key in --key-file>

Flags:
`)
		fs.PrintDefaults()
	}
	listen := fs.String("listen", "127.0.0.1:2801", "address Falcosidekick posts to")
	brokerURL := fs.String("broker", "http://127.0.0.1:8080/parry-system/parry", "the Broker's ingress")
	tokenFile := fs.String("token-file", "", "a projected service-account token for the Broker's audience (in a cluster)")
	tokens := fs.String("tokens", filepath.Join(filepath.Dir(defaultJournal()), stack.TokenFile), "parry run's token file, which holds the adapter's token (without --token-file)")
	keyFile := fs.String("key-file", "", "file holding the key Falcosidekick must send as the extension parrykey")
	noKey := fs.Bool("no-key", false, "accept events without a key (only on a loopback --listen)")
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "cluster to resolve pods in (in a pod: its service account)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "console", "console or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := logging.New(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	var key []byte
	switch {
	case *keyFile != "":
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return fmt.Errorf("--key-file: %w", err)
		}
		if key = []byte(strings.TrimSpace(string(b))); len(key) < 16 {
			return fmt.Errorf("--key-file %s holds %d bytes: use a random key of at least 16 characters", *keyFile, len(key))
		}
	case !*noKey:
		return errors.New("pass --key-file (the key Falcosidekick sends as cloudevents.extensions.parrykey), or --no-key on a loopback --listen")
	case !stack.IsLoopback(*listen):
		return fmt.Errorf("--no-key accepts events from anyone who reaches --listen %s: use it on loopback only, or pass --key-file", *listen)
	default:
		log.Warn().Str("listen", *listen).Msg("no key: any local process can send Falco alerts through this adapter")
	}
	src, err := senderToken(*tokenFile, *tokens, stack.FalcoAdapter())
	if err != nil {
		return err
	}
	a := &falco.Adapter{Broker: *brokerURL, HTTP: auth.WithToken(httpclient.New(10*time.Second), src), Key: key, Log: log}
	cfg, err := clients.KubeConfig(*kubeconfig)
	switch {
	case errors.Is(err, clients.ErrNoCluster):
		log.Info().Msg("no cluster: alerts keep Falco's namespace and pod name as they are (no UID); set --kubeconfig to resolve pods")
	case err != nil:
		return err
	default:
		kube, _, err := clients.Kube(cfg)
		if err != nil {
			return err
		}
		if a.Pods, err = step.WatchPods(ctx, kube); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	srv := httpserver.New(a, httpserver.Limits{})
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info().Str("listen", ln.Addr().String()).Str("broker", *brokerURL).Msg("receiving Falcosidekick's CloudEvents")
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
