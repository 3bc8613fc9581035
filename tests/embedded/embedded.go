// Package embedded starts, for tests, the embedded default exactly as
// `parry run` does — config/ as compiled, the real sensor with the compiled
// filters, every step of stack.Steps — so the kernel-level tests of
// playbooks and the end-to-end tests run what users run.
package embedded

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"k8s.io/client-go/rest"

	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/sensor"
	"parry.dev/parry/tests/podcgroup"
)

// Options vary what the tests need.
type Options struct {
	// ConfigDir holds the compiled playbooks (the repository's config/).
	ConfigDir string
	// Kubeconfig of the cluster the steps act on and the sensor attributes
	// from; empty runs without one, as parry run without KUBECONFIG.
	Kubeconfig string
	// Node names the sensor's node (the kwok node's name with a cluster).
	Node string
	// CoalesceWindow is the sensor's; negative turns coalescing off.
	CoalesceWindow time.Duration
	// Wrap may replace or wrap the in-process steps (to record replies).
	Wrap func(map[string]events.Handler) error
}

// Start runs the stack until the test ends. It needs root and a kernel
// that loads the sensor: under CI=true it fails without them, otherwise
// it skips.
func Start(t *testing.T, o Options) *stack.Stack {
	t.Helper()
	podcgroup.Require(t)
	if err := sensor.Probe(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: the sensor cannot run here: %v", err)
		}
		t.Skipf("the sensor cannot run here: %v", err)
	}
	if err := podcgroup.EnsureRoot(); err != nil {
		t.Fatal(err)
	}
	var kube *rest.Config
	if o.Kubeconfig != "" {
		var err error
		if kube, err = clients.KubeConfig(o.Kubeconfig); err != nil {
			t.Fatal(err)
		}
	}
	state := t.TempDir()
	filters, ok, err := playbook.SensorFiltersFromConfig(o.ConfigDir, state)
	if err != nil || !ok {
		t.Fatalf("compiled sensor filters in %s: ok=%v err=%v", o.ConfigDir, ok, err)
	}
	cfg := sensor.DefaultConfig()
	cfg.FiltersPath, cfg.RecorderAddr, cfg.SpoolDir = filters, "127.0.0.1:0", filepath.Join(state, "spool")
	cfg.Node, cfg.Kubeconfig, cfg.CoalesceWindow = o.Node, o.Kubeconfig, o.CoalesceWindow
	log := zerolog.New(io.Discard)
	if testing.Verbose() {
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(zerolog.WarnLevel)
	}
	s, err := stack.Start(context.Background(), stack.Options{
		ConfigDir: o.ConfigDir, JournalPath: filepath.Join(state, "journal.db"), Listen: "127.0.0.1:0", Sensor: &cfg, Log: log,
		Steps: stack.Steps(), StateDir: state, Kube: kube, Wrap: o.Wrap,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	if s.Sensor == nil {
		t.Fatalf("the sensor did not start: %v", s.SensorDisabled)
	}
	return s
}
