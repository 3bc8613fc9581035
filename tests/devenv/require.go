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

// shared is the one environment of a test binary. It is the package's only
// mutable state, by necessity: Require hands the same servers to every test
// so that a package pays start-up once.
var shared struct {
	mu  sync.Mutex
	env *Env
	err error
}

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
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.env == nil && shared.err == nil {
		shared.env, shared.err = Start(context.Background(), Options{Logf: func(f string, a ...any) {
			fmt.Fprintf(os.Stderr, f+"\n", a...)
		}})
		if shared.err == nil {
			stopOnSignal(shared.env)
		}
	}
	if err := shared.err; err != nil {
		var missing *MissingError
		if errors.As(err, &missing) && os.Getenv("CI") != "true" {
			t.Skipf("%v", err)
		}
		t.Fatalf("%v", err)
	}
	return shared.env
}

// Main runs the tests and then stops the shared environment. Use it from
// TestMain in every package that calls Require:
//
//	func TestMain(m *testing.M) { devenv.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	shared.mu.Lock()
	if shared.env != nil {
		if err := shared.env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	shared.mu.Unlock()
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
