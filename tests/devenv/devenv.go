package devenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// Component selects servers to start. Dependencies are added automatically:
// the API server needs etcd; the controller-manager, scheduler and kwok need
// the API server.
type Component uint

const (
	Etcd Component = 1 << iota
	APIServer
	ControllerManager
	Scheduler
	Kwok
	Vault
	Postgres
	// S3 is SeaweedFS's S3 gateway. It is not in All: its server is an
	// opt-in build (tools/build.sh seaweedfs), used by RequireS3.
	S3
	// RealNode is a real node instead of kwok's fake one: containerd,
	// runc, the CNI bridge, kubelet, kube-proxy, a local registry with
	// images made from local files, and CoreDNS. It needs root, changes
	// the host (undone by Stop, or after a crash by the next Start or
	// `devenv down`), and only one runs per machine.
	RealNode
	// Knative is Knative Eventing v0.50.0 (core, in-memory channel, MT
	// channel-based broker) running on the real node.
	Knative

	// Kubernetes is the whole control plane with one fake node.
	Kubernetes = Etcd | APIServer | ControllerManager | Scheduler | Kwok
	// All is every server but S3; the zero Components means All.
	All = Kubernetes | Vault | Postgres
	// Cluster is the control plane, a real node and Knative Eventing:
	// pods really run. It is never part of All.
	Cluster = Etcd | APIServer | ControllerManager | Scheduler | RealNode | Knative
)

func (c Component) withDeps() Component {
	if c&Knative != 0 {
		c |= RealNode
	}
	if c&RealNode != 0 {
		c |= ControllerManager | Scheduler
	}
	if c&(ControllerManager|Scheduler|Kwok) != 0 {
		c |= APIServer
	}
	if c&APIServer != 0 {
		c |= Etcd
	}
	return c
}

// Options configures Start. The zero value starts everything in a fresh
// temporary directory.
type Options struct {
	// Dir holds data, certificates, logs, the kubeconfig and the env file.
	// Empty means a new temporary directory that Stop removes. A given
	// directory must be empty or a previous environment's (it is wiped);
	// one still owned by a live process is refused.
	Dir string
	// Components to start; zero means All.
	Components Component
	// BinDir holds the servers built by `make tools`; empty means
	// $PARRY_TOOLS_BIN, else bin/ at the repository root.
	BinDir string
	// Containerd is the real node's containerd binary; empty means
	// Debian's /usr/bin/containerd.
	Containerd string
	// PostgresBinDir holds initdb and postgres; empty means
	// $PARRY_PG_BIN, else the newest /usr/lib/postgresql/*/bin.
	PostgresBinDir string
	// ReadyTimeout bounds each server's start-up; zero means 90s.
	ReadyTimeout time.Duration
	// KnativeTimeout bounds the wait for Knative Eventing's webhook, and
	// then for all its components; zero means 4 minutes.
	KnativeTimeout time.Duration
	// Logf receives progress lines; nil is silent.
	Logf func(format string, args ...any)

	// reservePorts replaces freePorts in tests that simulate a port clash.
	reservePorts func(n int) ([]int, error)
}

// Env is a running environment. Its fields are set for the components that
// were started and must not be modified.
type Env struct {
	Dir        string
	Components Component

	Kubeconfig   string // admin kubeconfig (system:masters)
	EnvFile      string // KEY=value lines: KUBECONFIG, VAULT_ADDR, VAULT_TOKEN, PARRY_PG_DSN, ...
	APIServerURL string
	CACertPEM    []byte // the CA behind the API server's certificate and every client certificate
	NodeName     string // the node pods are scheduled to (kwok's or the real one)

	// ServiceAccountIssuer and ServiceAccountPublicKeyPEM let another party
	// (Vault's jwt auth: bound_issuer, jwt_validation_pubkeys) validate
	// service-account tokens the API server issues.
	ServiceAccountIssuer       string
	ServiceAccountPublicKeyPEM string

	VaultAddr  string
	VaultToken string // root token of the dev server

	PostgresDSN string // superuser DSN, e.g. for Vault's database secrets engine

	// S3Endpoint (http://127.0.0.1:port) is the S3 gateway, and the
	// access and secret key its one (admin) identity has.
	S3Endpoint, S3AccessKey, S3SecretKey string
	// RegistryHost is the real node's local OCI registry (plain HTTP on
	// loopback; containerd pulls from it) and Images the images pushed
	// there at start: "busybox", "coredns", "pause", "static" (the
	// StaticBaseTag index, ko's base) and "knative/<command>" (e.g.
	// "knative/event_display"), each a pullable reference.
	RegistryHost string
	Images       map[string]string

	opts      Options
	bins      binaries
	ownsDir   bool
	spawn     *spawner
	adminCert []byte
	adminKey  []byte
	pki       *pkiFiles
	etcdURL   string

	host         *hostState // what the real node changed on the machine
	hostLockFile *os.File   // holds the machine-wide real-node lock

	stateMu  sync.Mutex // serialises writeState
	mu       sync.Mutex // guards procs and stopped
	procs    []*proc
	stopped  bool // Stop has run: the state file records no owner
	stopOnce sync.Once
	stopErr  error
}

// Start starts the selected servers and returns once all of them are ready.
// On error nothing is left running. The caller must call Stop.
func Start(ctx context.Context, opts Options) (*Env, error) {
	began := time.Now()
	if opts.Components == 0 {
		opts.Components = All
	}
	opts.Components = opts.Components.withDeps()
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 90 * time.Second
	}
	if opts.KnativeTimeout == 0 {
		opts.KnativeTimeout = 4 * time.Minute
	}
	if opts.reservePorts == nil {
		opts.reservePorts = freePorts
	}
	bins, err := findBinaries(opts)
	if err != nil {
		return nil, err
	}
	e := &Env{Components: opts.Components, opts: opts, bins: bins}
	if err := e.prepareDir(); err != nil {
		return nil, err
	}
	e.spawn = newSpawner()
	if err := e.start(ctx); err != nil {
		// Keep the logs for a look; the next Start of a temporary
		// environment removes them (cleanStaleTemp).
		e.ownsDir = false
		_ = e.Stop()
		return nil, fmt.Errorf("%w\n(logs kept in %s)", err, filepath.Join(e.Dir, "logs"))
	}
	e.logf("devenv: ready in %s (%s)", time.Since(began).Round(10*time.Millisecond), e.Dir)
	return e, nil
}

func (e *Env) has(c Component) bool { return e.Components&c != 0 }

func (e *Env) logf(format string, args ...any) {
	if e.opts.Logf != nil {
		e.opts.Logf(format, args...)
	}
}

func (e *Env) start(ctx context.Context) error {
	if e.has(RealNode) {
		// Before anything listens: the API server binds to the
		// bridge's address.
		if err := e.prepareRealNode(); err != nil {
			return err
		}
	}
	if e.has(APIServer) {
		if err := e.writePKI(); err != nil {
			return err
		}
	}
	// Independent chains start side by side; within the Kubernetes
	// chain each step waits for the servers the next one talks to.
	var chains []func() error
	runtime := make(chan error, 1) // the real node's registry, images and containerd
	if e.has(RealNode) {
		chains = append(chains, func() error {
			err := e.startNodeRuntime(ctx)
			runtime <- err
			return err
		})
	}
	if e.has(Etcd) {
		chains = append(chains, func() error { return e.startKubernetes(ctx, runtime) })
	}
	if e.has(Vault) {
		chains = append(chains, func() error { return e.startVault(ctx) })
	}
	if e.has(Postgres) {
		chains = append(chains, func() error { return e.startPostgres(ctx) })
	}
	if e.has(S3) {
		chains = append(chains, func() error { return e.startS3(ctx) })
	}
	if err := parallel(chains...); err != nil {
		return err
	}
	return e.writeEnvFile()
}

func (e *Env) startKubernetes(ctx context.Context, runtime <-chan error) error {
	if err := e.startEtcd(ctx); err != nil {
		return err
	}
	if !e.has(APIServer) {
		return nil
	}
	if err := e.startAPIServer(ctx); err != nil {
		return err
	}
	if err := e.writeKubeconfigs(); err != nil {
		return err
	}
	var next []func() error
	if e.has(ControllerManager) {
		next = append(next, func() error { return e.startControllerManager(ctx) })
	}
	if e.has(Scheduler) {
		next = append(next, func() error { return e.startScheduler(ctx) })
	}
	if e.has(Kwok) {
		next = append(next, func() error { return e.startKwok(ctx) })
	}
	if err := parallel(next...); err != nil {
		return err
	}
	if !e.has(RealNode) {
		return nil
	}
	if err := <-runtime; err != nil {
		return nil // reported by its own chain
	}
	return e.startRealNode(ctx)
}

// startRealNode starts the node on a running control plane, then its
// add-ons.
func (e *Env) startRealNode(ctx context.Context) error {
	if err := parallel(func() error { return e.startKubelet(ctx) }, func() error { return e.startKubeProxy(ctx) }); err != nil {
		return err
	}
	if err := e.startCoreDNS(ctx); err != nil {
		return err
	}
	if e.has(Knative) {
		return e.installKnative(ctx)
	}
	return nil
}

// parallel runs fns concurrently and joins their errors.
func parallel(fns ...func() error) error {
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Go(func() { errs[i] = fn() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// RESTConfig returns an admin (system:masters) client configuration.
func (e *Env) RESTConfig() *rest.Config {
	return &rest.Config{
		Host: e.APIServerURL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   e.CACertPEM,
			CertData: e.adminCert,
			KeyData:  e.adminKey,
		},
		QPS:   100,
		Burst: 200,
	}
}

// PIDs returns the process IDs of the running servers (each one also leads
// its own process group).
func (e *Env) PIDs() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	var pids []int
	for _, p := range e.procs {
		pids = append(pids, p.pid())
	}
	return pids
}

// Stop ends every server (SIGTERM to its process group, SIGKILL after a
// grace period) and removes the directory if Start created it. It is safe to
// call more than once.
func (e *Env) Stop() error {
	e.stopOnce.Do(func() {
		var nodeErr error
		if e.has(RealNode) {
			// First, while the API server still runs: the kubelet,
			// then every container and the host's changes.
			nodeErr = e.stopRealNode()
		}
		defer func() { e.stopErr = errors.Join(nodeErr, e.stopErr) }()
		e.mu.Lock()
		procs := append([]*proc(nil), e.procs...)
		e.mu.Unlock()
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Go(func() { p.stop(5 * time.Second) })
		}
		wg.Wait()
		if e.spawn != nil {
			e.spawn.close()
		}
		if e.ownsDir {
			e.stopErr = os.RemoveAll(e.Dir)
		} else if e.Dir != "" {
			// Keep logs for inspection; record "stopped" (no owner, no
			// servers) so the directory is neither mistaken for a
			// crashed run nor for someone else's.
			e.mu.Lock()
			e.procs, e.stopped = nil, true
			e.mu.Unlock()
			e.stopErr = e.writeState()
		}
	})
	return e.stopErr
}

// writeEnvFile writes the variables a shell or the demo needs; it is the
// last step of Start, so its presence means "ready".
func (e *Env) writeEnvFile() error {
	vars := map[string]string{}
	if e.has(APIServer) {
		vars["KUBECONFIG"] = e.Kubeconfig
		vars["PARRY_SA_ISSUER"] = e.ServiceAccountIssuer
		vars["PARRY_SA_PUBKEY_FILE"] = e.pki.saPub
	}
	if e.has(Vault) {
		vars["VAULT_ADDR"] = e.VaultAddr
		vars["VAULT_TOKEN"] = e.VaultToken
	}
	if e.has(Postgres) {
		vars["PARRY_PG_DSN"] = e.PostgresDSN
	}
	if e.has(S3) {
		vars["PARRY_EVIDENCE_S3_ENDPOINT"] = e.S3Endpoint
		vars["AWS_ACCESS_KEY_ID"] = e.S3AccessKey
		vars["AWS_SECRET_ACCESS_KEY"] = e.S3SecretKey
	}
	if e.has(RealNode) {
		// ko's settings for parry's images (KO_DOCKER_REPO, the base).
		vars["PARRY_REGISTRY"] = e.RegistryHost
		vars["KO_DOCKER_REPO"] = e.RegistryHost + "/parry"
		vars["KO_DEFAULTBASEIMAGE"] = e.Images["static"]
	}
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by parry's devenv; source it with: set -a; . " + filepath.Join(e.Dir, "env") + "; set +a\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, vars[k])
	}
	e.EnvFile = filepath.Join(e.Dir, "env")
	return os.WriteFile(e.EnvFile, []byte(b.String()), 0o600)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}
