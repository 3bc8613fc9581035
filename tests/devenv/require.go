package devenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"
)

// sharedEnv is one shared environment and how its start ended.
type sharedEnv struct {
	mu  sync.Mutex
	env *Env
	err error
}

// shared is the one environment of a test binary, and sharedS3 its S3
// server. They are the package's only mutable state, by necessity: Require
// hands the same servers to every test so that a package pays start-up
// once.
var shared, sharedS3 sharedEnv

// Require returns the test binary's shared environment with all components,
// starting it on first use. When the servers are not built or PostgreSQL is
// not installed, it skips the test with the command that provides them, or
// fails it when CI=true (CI must never silently skip). Any other start-up
// failure fails the test.
//
// Tests share the servers: create your own namespaces, Vault mounts and
// database roles with unique names.
func Require(t testing.TB) *Env {
	t.Helper()
	return require(t, &shared, All)
}

// RequireS3 returns the test binary's shared S3 server (SeaweedFS; the
// Env's S3 fields), an environment of its own, started on first use.
// SeaweedFS is an opt-in build (make tools-s3; too long for CI's cold
// budget), so when it is not built the test is skipped with the command
// that builds it, also under CI=true, unless PARRY_S3=required, which makes
// it a failure (and makes make tools build it). Tests share the server:
// create buckets with unique names.
func RequireS3(t testing.TB) *Env {
	t.Helper()
	return require(t, &sharedS3, S3)
}

// mustNotSkip: a missing prerequisite of c fails the test instead of
// skipping it.
func mustNotSkip(c Component) bool {
	if c&S3 != 0 {
		return os.Getenv("PARRY_S3") == "required"
	}
	return os.Getenv("CI") == "true"
}

func require(t testing.TB, s *sharedEnv, c Component) *Env {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.env == nil && s.err == nil {
		s.env, s.err = Start(context.Background(), Options{Components: c, Logf: func(f string, a ...any) {
			fmt.Fprintf(os.Stderr, f+"\n", a...)
		}})
		if s.err == nil {
			stopOnSignal(s.env)
		}
	}
	if err := s.err; err != nil {
		var missing *MissingError
		if errors.As(err, &missing) && !mustNotSkip(c) {
			t.Skipf("%v", err)
		}
		t.Fatalf("%v", err)
	}
	return s.env
}

// Main runs the tests and then stops the shared environment. Use it from
// TestMain in every package that calls Require:
//
//	func TestMain(m *testing.M) { devenv.Main(m) }
func Main(m *testing.M) {
	MaybeReap()
	code := m.Run()
	for _, s := range []*sharedEnv{&shared, &sharedS3} {
		s.mu.Lock()
		if s.env != nil {
			if err := s.env.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}
		s.mu.Unlock()
	}
	os.Exit(code)
}

// stopOnSignal stops env on SIGINT/SIGTERM (Ctrl-C, go test's own
// interruption) and then dies of the same signal, so the servers get a clean
// shutdown and the temporary directory is removed. A SIGKILL cannot be
// caught; the parent-death signal covers that case.
func stopOnSignal(env *Env) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-ch
		_ = env.Stop()
		signal.Reset(sig)
		_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
	}()
}
