// Command classify runs the classify step as a Knative Service: CloudEvents
// on $PORT, the compiled playbooks from the mounted parry-playbooks
// ConfigMap, baselines and open incidents in a JSON store.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"parry.dev/parry/functions/classify"
	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/internal/playbook"
)

func main() {
	bundle := flag.String("playbooks", "/etc/parry/playbooks/"+playbook.BundleKey, "the compiled playbook bundle (ConfigMap parry-playbooks mounted as a file), or a config directory")
	store := flag.String("store", "/var/lib/parry/classify.json", "baselines, open incidents and circuit breakers (JSON, on a volume that outlives restarts)")
	learning := flag.Duration("learning-window", 10*time.Minute, "how long a workload's baseline learns before anomalies count")
	flag.Parse()
	log, err := logging.New(os.Stderr, "info", logging.DefaultFormat())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b, err := playbook.LoadBundle(*bundle)
	if err != nil {
		log.Fatal().Err(err).Msg("classify")
	}
	c, err := classify.New(classify.Options{Bundle: b, StorePath: *store, LearningWindow: *learning, Log: log})
	if err != nil {
		log.Fatal().Err(err).Msg("classify")
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if err := function.Serve(ctx, ":"+port, c.Handle, log); err != nil {
		log.Fatal().Err(err).Msg("classify")
	}
}
