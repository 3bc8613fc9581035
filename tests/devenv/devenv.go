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

	// Kubernetes is the whole control plane with one fake node.
	Kubernetes = Etcd | APIServer | ControllerManager | Scheduler | Kwok
	// All is every server but S3; the zero Components means All.
	All = Kubernetes | Vault | Postgres
)

func (c Component) withDeps() Component {
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
	// PostgresBinDir holds initdb and postgres; empty means
	// $PARRY_PG_BIN, else the newest /usr/lib/postgresql/*/bin.
	PostgresBinDir string
	// ReadyTimeout bounds each server's start-up; zero means 90s.
	ReadyTimeout time.Duration
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
	NodeName     string // the kwok node pods are scheduled to

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

	opts      Options
	bins      binaries
	ownsDir   bool
	spawn     *spawner
	adminCert []byte
	adminKey  []byte
	pki       *pkiFiles
	etcdURL   string

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
	if e.has(APIServer) {
		if err := e.writePKI(); err != nil {
			return err
		}
	}
	// Three independent chains start side by side; within the Kubernetes
	// chain each step waits for the servers the next one talks to.
	var chains []func() error
	if e.has(Etcd) {
		chains = append(chains, func() error { return e.startKubernetes(ctx) })
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

func (e *Env) startKubernetes(ctx context.Context) error {
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
	return parallel(next...)
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
