// Package fnmain is the few lines every step's main shares when it runs as a
// Knative Service: logging, signals, the clients a step may take (built once
// here and injected), the compiled playbooks, and serving CloudEvents on
// $PORT.
package fnmain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"parry.dev/parry/internal/function"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/sensor"
	"parry.dev/parry/sensor/client"
)

// Deps are the clients a step may take.
type Deps struct {
	// Kube and Meta are nil without a cluster (in-cluster config or
	// $KUBECONFIG).
	Kube kubernetes.Interface
	Meta metadata.Interface
	// Sensors finds the sensor of a node.
	Sensors   func(ctx context.Context, node string) (*client.Client, error)
	Playbooks function.Playbooks
	HTTP      *http.Client
	// Sink is the broker's ingress ($K_SINK), for steps that publish.
	Sink string
	Log  zerolog.Logger
}

// Main builds the step with build and serves it until SIGTERM. It exits the
// process.
func Main(name string, build func(ctx context.Context, d Deps) (function.Handler, error)) {
	log, err := logging.New(os.Stderr, envOr("LOG_LEVEL", "info"), envOr("LOG_FORMAT", "json"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	log = log.With().Str("function", name).Logger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, build, log); err != nil {
		log.Error().Err(err).Msg("stopped")
		os.Exit(1)
	}
}

func run(ctx context.Context, build func(context.Context, Deps) (function.Handler, error), log zerolog.Logger) error {
	d := Deps{HTTP: httpclient.New(30 * time.Second), Sink: os.Getenv("K_SINK"), Log: log}
	cfg, err := KubeConfig()
	if err != nil {
		log.Warn().Err(err).Msg("no Kubernetes cluster: steps that act on pods will fail with that reason")
	} else {
		if d.Kube, err = kubernetes.NewForConfig(cfg); err != nil {
			return err
		}
		if d.Meta, err = metadata.NewForConfig(cfg); err != nil {
			return err
		}
		d.Sensors = NodeSensors(d.Kube, d.HTTP, envOr("PARRY_SENSOR_PORT", "9470"))
	}
	bundle, err := playbook.LoadBundle(envOr("PARRY_PLAYBOOKS", "/etc/parry/playbooks/playbooks.yaml"))
	if err != nil {
		return fmt.Errorf("%w (mount the parry-playbooks ConfigMap, or set PARRY_PLAYBOOKS)", err)
	}
	d.Playbooks = bundle
	h, err := build(ctx, d)
	if err != nil {
		return err
	}
	return function.Serve(ctx, ":"+envOr("PORT", "8080"), h, log)
}

// KubeConfig is the in-cluster config, else $KUBECONFIG's. client-go's
// default rate limit (5 requests/s, bursts of 10) would queue a step's
// writes behind another step's polling on the containment path, so the
// steps get more headroom.
func KubeConfig() (*rest.Config, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		path := os.Getenv("KUBECONFIG")
		if path == "" {
			return nil, errors.New("not in a cluster and KUBECONFIG is unset")
		}
		if cfg, err = clientcmd.BuildConfigFromFlags("", path); err != nil {
			return nil, err
		}
	}
	cfg.QPS, cfg.Burst = 100, 200
	return cfg, nil
}

// NodeSensors finds a node's sensor at its InternalIP: the sensor DaemonSet
// runs on the host network and serves its API on port.
func NodeSensors(kube kubernetes.Interface, hc *http.Client, port string) func(context.Context, string) (*client.Client, error) {
	return func(ctx context.Context, node string) (*client.Client, error) {
		if node == "" {
			return nil, errors.New("the event names no node, so its sensor cannot be found")
		}
		n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("finding the sensor of node %s: %w", node, err)
		}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				return client.New("http://"+net.JoinHostPort(a.Address, port), hc), nil
			}
		}
		return nil, fmt.Errorf("node %s has no InternalIP to reach its sensor at", node)
	}
}

// LocalSensor is the locator under parry run: one node, the sensor in this
// process, whatever node an event names.
func LocalSensor(s *sensor.Sensor, hc *http.Client) func(context.Context, string) (*client.Client, error) {
	return func(context.Context, string) (*client.Client, error) {
		if s == nil || s.RecorderAddr() == "" {
			return nil, errors.New("no sensor runs in this process (parry run without --no-sensor, as root, with the recorder on)")
		}
		return client.New("http://"+s.RecorderAddr(), hc), nil
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
