package sensor

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/httpserver"
	"parry.dev/parry/internal/redact"
	"parry.dev/parry/sensor/internal/recorder"
)

// Config configures a sensor. DefaultConfig gives every default; the zero
// value of a field means its default too, so callers may set only what they
// need.
type Config struct {
	// Sink is the CloudEvents endpoint (HTTP, binary mode); empty keeps
	// events in the flight recorder only. FromEnvironment reads K_SINK.
	Sink string
	// Node names this node in events; empty means the host name.
	// FromEnvironment reads NODE_NAME.
	Node string
	// Kubeconfig for pod metadata; empty means the pod's service account
	// when running in a cluster. Without a cluster, events carry the pod UID
	// and container id from the cgroup path only. FromEnvironment reads
	// KUBECONFIG.
	Kubeconfig string
	// CEOverrides is the CloudEvents overrides JSON a Knative
	// ContainerSource or SinkBinding sets ({"extensions": {...}}).
	// FromEnvironment reads K_CE_OVERRIDES.
	CEOverrides string
	// FiltersPath is a SensorFilters file (sensor/filters); empty uses the
	// built-in default.
	FiltersPath string
	// RecorderAddr is where the flight recorder's HTTP API listens; "-"
	// turns it off.
	RecorderAddr string
	// APIAuthn authenticates the callers of the API by their bearer token
	// and APIAuthz authorizes each request (APIAccess names what a route
	// needs); set both or neither. Left nil with a cluster, the sensor reviews tokens for
	// api.Audience (TokenReview) and asks the API server
	// (SubjectAccessReview), caching both briefly. Left nil without a
	// cluster, the API refuses every request but /healthz (503): parry
	// run passes its local token file and grants (internal/stack).
	APIAuthn auth.Authenticator
	APIAuthz auth.Authorizer
	// RecorderLimits bound the API's connections (a slow or idle client
	// is closed); zero fields are httpserver.Defaults.
	RecorderLimits httpserver.Limits
	// RecorderTTL is how long a cgroup's events are kept.
	RecorderTTL time.Duration
	// RecorderMaxBytes bounds the memory the flight recorder holds over
	// all cgroups, events and summaries together.
	RecorderMaxBytes int
	// SpoolDir holds events while the sink is down; "-" keeps no spool.
	SpoolDir string
	// SpoolMaxBytes bounds the spool; what does not fit is counted as lost.
	SpoolMaxBytes int64
	// SinkTimeout bounds one delivery attempt.
	SinkTimeout time.Duration
	// SinkToken is sent as "Authorization: Bearer <token>" on every
	// delivery to the sink: the sensor's identity, which Knative's Broker
	// (OIDC sender authentication) and the embedded broker check. nil sends
	// no header. --sink-token-file reads a projected service-account token
	// and re-reads it as the kubelet rotates it (auth.FileToken).
	SinkToken auth.TokenSource
	// RingBufferSize in bytes (a power of two, at least a page).
	RingBufferSize int
	// HealthInterval between dev.parry.sensor.health.v1 events; a loss
	// sends one at once.
	HealthInterval time.Duration
	// CoalesceWindow: identical events (same cgroup, kind and details)
	// within the window are emitted once; the next one carries the count.
	// Zero after defaults means 1s; negative turns coalescing off.
	CoalesceWindow time.Duration
	// AttributionWait holds an event of a pod the API server has not told
	// us about yet, up to this long, so it leaves with the pod's name.
	AttributionWait time.Duration
	// WakeupInterval batches wake-ups: under load the kernel wakes the
	// sensor once per interval (sooner when an eighth of the ring is
	// unread), so no record waits longer; the first record after a quiet
	// interval wakes it at once.
	WakeupInterval time.Duration
	// LimitMemory: the process runs the sensor alone, so once the kernel
	// objects are loaded New sets the Go runtime's soft memory limit from
	// RecorderMaxBytes (see memoryLimit), unless one is set already
	// (GOMEMLIMIT). It is process-wide: leave it off where the sensor
	// shares the process.
	LimitMemory bool
	// StormWakeupInterval bounds how far a storm (over 1,000 records/s)
	// stretches the wake-up interval, so that each wake-up carries about
	// 128 records; at or below WakeupInterval nothing stretches.
	StormWakeupInterval time.Duration
	// BTFPath is a vmlinux BTF file for kernels without built-in BTF.
	BTFPath string
	// DisableHooks lists hooks not to load: "exec", "open.openat",
	// "priv.*", or a variant such as "exec/tp_btf" to force its fallback.
	DisableHooks []string
	// CgroupMode is auto, v2 or v1: which hierarchy attributes records.
	CgroupMode string
	// Source is the CloudEvents source; empty means parry://sensor/<node>.
	Source string
	// RedactNames extends the names whose values are redacted from process
	// arguments before the flight recorder keeps them or an event carries
	// them (internal/redact: password, token, secret, key, ... by default).
	RedactNames []string
}

// Defaults.
const (
	DefaultRecorderAddr = "127.0.0.1:9470"
	DefaultSpoolDir     = "/var/lib/parry/sensor-spool"
)

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	c := Config{}
	c.applyDefaults()
	return c
}

// FromEnvironment fills what Knative and the DaemonSet pass in the
// environment, where the config leaves it empty: K_SINK, NODE_NAME,
// KUBECONFIG and K_CE_OVERRIDES. The mains call it with os.Getenv; the
// sensor reads no environment itself.
func (c *Config) FromEnvironment(getenv func(string) string) {
	for field, name := range map[*string]string{&c.Sink: "K_SINK", &c.Kubeconfig: "KUBECONFIG", &c.CEOverrides: "K_CE_OVERRIDES"} {
		if *field == "" {
			*field = getenv(name)
		}
	}
	if node := getenv("NODE_NAME"); node != "" && (c.Node == "" || c.Node == hostname()) {
		c.Node = node
	}
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func (c *Config) applyDefaults() {
	if c.Node == "" {
		c.Node, _ = os.Hostname()
	}
	if c.RecorderAddr == "" {
		c.RecorderAddr = DefaultRecorderAddr
	}
	if c.RecorderTTL == 0 {
		c.RecorderTTL = 15 * time.Minute
	}
	if c.RecorderMaxBytes == 0 {
		c.RecorderMaxBytes = recorder.DefaultMaxBytes
	}
	if c.SpoolDir == "" {
		c.SpoolDir = DefaultSpoolDir
	}
	if c.SpoolMaxBytes == 0 {
		c.SpoolMaxBytes = 64 << 20
	}
	if c.SinkTimeout == 0 {
		c.SinkTimeout = 5 * time.Second
	}
	if c.RingBufferSize == 0 {
		c.RingBufferSize = 2 << 20 // mapped twice: 4 MiB of RSS
	}
	if c.HealthInterval == 0 {
		c.HealthInterval = 30 * time.Second
	}
	if c.CoalesceWindow == 0 {
		c.CoalesceWindow = time.Second
	}
	if c.AttributionWait == 0 {
		c.AttributionWait = time.Second
	}
	if c.WakeupInterval == 0 {
		// Each wake-up of the sensor costs tens of µs of scheduler work
		// (more in VMs); 10ms batches a storm into few wake-ups while the
		// first record after a quiet spell still wakes it at once.
		c.WakeupInterval = 10 * time.Millisecond
	}
	if c.StormWakeupInterval == 0 {
		// A wake-up costs about 57µs in the CI VM and handling an exec
		// record about 1.3µs: 40ms of a 3,000 records/s storm keeps the
		// sum under 2µs a record.
		c.StormWakeupInterval = 40 * time.Millisecond
	}

	if c.CgroupMode == "" {
		c.CgroupMode = "auto"
	}
}

// derive fills the defaults that depend on other fields, once the flags
// have been parsed (DefaultConfig leaves them zero so --node still moves
// them).
func (c *Config) derive() {
	if c.Source == "" {
		c.Source = "parry://sensor/" + c.Node
	}
}

func (c *Config) validate() error {
	var errs []error
	switch c.CgroupMode {
	case "auto", "v1", "v2":
	default:
		errs = append(errs, fmt.Errorf("--cgroup-mode %q: use auto, v2 or v1", c.CgroupMode))
	}
	if n := c.RingBufferSize; n < os.Getpagesize() || n&(n-1) != 0 {
		errs = append(errs, fmt.Errorf("--ring-buffer-size %d: a power of two of at least %d", n, os.Getpagesize()))
	}
	if c.Sink != "" && !strings.HasPrefix(c.Sink, "http://") && !strings.HasPrefix(c.Sink, "https://") {
		errs = append(errs, fmt.Errorf("--sink %q: an http:// or https:// URL", c.Sink))
	}
	if c.HealthInterval < time.Second {
		errs = append(errs, fmt.Errorf("--health-interval %s: at least 1s", c.HealthInterval))
	}
	if c.WakeupInterval < 100*time.Microsecond {
		errs = append(errs, fmt.Errorf("--wakeup-interval %s: at least 100µs", c.WakeupInterval))
	}
	if c.StormWakeupInterval > time.Second {
		errs = append(errs, fmt.Errorf("--storm-wakeup-interval %s: at most 1s (records wait that long in a storm)", c.StormWakeupInterval))
	}
	if c.RecorderMaxBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("--recorder-max-bytes %d: at least 65536", c.RecorderMaxBytes))
	}
	return errors.Join(errs...)
}

// RegisterFlags adds the sensor's flags to fs, with c's current values (or
// the defaults) as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	d := *c
	d.applyDefaults()
	fs.StringVar(&c.Sink, "sink", d.Sink, "CloudEvents sink URL (HTTP, binary mode); default $K_SINK. Without one, events stay in the flight recorder")
	fs.StringVar(&c.Node, "node", d.Node, "node name put on every event; default $NODE_NAME or the host name")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", d.Kubeconfig, "kubeconfig for pod names, images and owners; default $KUBECONFIG, or the service account in a cluster")
	fs.StringVar(&c.FiltersPath, "filters", d.FiltersPath, "SensorFilters YAML (what the kernel passes on); default: built in (see sensor/filters/default.yaml)")
	fs.StringVar(&c.RecorderAddr, "recorder-listen", d.RecorderAddr, `address of the flight recorder's HTTP API (GET /v1/pods/{uid}); "-" turns it off`)
	fs.DurationVar(&c.RecorderTTL, "recorder-ttl", d.RecorderTTL, "how long a cgroup's events stay in the flight recorder, also after the pod is gone")
	fs.IntVar(&c.RecorderMaxBytes, "recorder-max-bytes", d.RecorderMaxBytes, "memory the flight recorder may hold over all cgroups, events and summaries together; the oldest events of the busiest cgroup go first")
	fs.StringVar(&c.SpoolDir, "spool-dir", d.SpoolDir, `directory for events while the sink is down; "-" keeps no spool`)
	fs.Int64Var(&c.SpoolMaxBytes, "spool-max-bytes", d.SpoolMaxBytes, "spool size bound; events beyond it are counted as lost")
	fs.Func("sink-token-file", "file holding the bearer token sent to the sink on every delivery (a projected service-account token for the Broker's audience; re-read as it rotates); default: no token", func(path string) error {
		if path == "" {
			c.SinkToken = nil
			return nil
		}
		c.SinkToken = auth.FileToken(path)
		return nil
	})
	fs.DurationVar(&c.SinkTimeout, "sink-timeout", d.SinkTimeout, "time allowed for one delivery to the sink")
	fs.IntVar(&c.RingBufferSize, "ring-buffer-size", d.RingBufferSize, "BPF ring buffer size in bytes (power of two)")
	fs.DurationVar(&c.HealthInterval, "health-interval", d.HealthInterval, "interval of dev.parry.sensor.health.v1 events (one is sent at once on any loss)")
	fs.DurationVar(&c.CoalesceWindow, "coalesce-window", d.CoalesceWindow, "identical events within this window are emitted once, with a count; negative turns it off")
	fs.DurationVar(&c.AttributionWait, "attribution-wait", d.AttributionWait, "how long an event may wait for the API server to name its pod")
	fs.DurationVar(&c.WakeupInterval, "wakeup-interval", d.WakeupInterval, "under load the kernel wakes the sensor once per interval, so no record waits longer (batching); the first record after a quiet interval wakes it at once")
	fs.DurationVar(&c.StormWakeupInterval, "storm-wakeup-interval", d.StormWakeupInterval, "during a storm (over 1,000 records/s) the interval stretches up to this, so each wake-up carries about 128 records; at or below --wakeup-interval it never stretches")
	fs.StringVar(&c.BTFPath, "btf", d.BTFPath, "vmlinux BTF file for kernels without /sys/kernel/btf/vmlinux")
	fs.Func("disable-hooks", `comma-separated hooks not to load (exec, exit, connect4, connect6, open.openat, priv.ptrace, priv.*, exec/tp_btf, ...)`, func(s string) error {
		for h := range strings.SplitSeq(s, ",") {
			if h = strings.TrimSpace(h); h != "" {
				c.DisableHooks = append(c.DisableHooks, h)
			}
		}
		return nil
	})
	fs.Func("redact-names", "comma-separated name fragments whose values are redacted from process arguments, besides the built-in "+strings.Join(redact.DefaultNames, ", "), func(s string) error {
		for n := range strings.SplitSeq(s, ",") {
			if n = strings.TrimSpace(n); n != "" {
				c.RedactNames = append(c.RedactNames, n)
			}
		}
		return nil
	})
	fs.StringVar(&c.CgroupMode, "cgroup-mode", d.CgroupMode, "cgroup hierarchy that attributes records: auto, v2, or v1 (memory controller)")
}
