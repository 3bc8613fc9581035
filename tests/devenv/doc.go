// Package devenv starts a real, throw-away environment for parry's tests and
// its demo: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
// kwok (one fake node whose pods become Running without a container runtime),
// a Vault dev server and a PostgreSQL instance for Vault's database secrets
// engine; and, opt-in (RequireS3), SeaweedFS's S3 gateway.
//
// Every server runs as a child process on free loopback ports, with its data,
// certificates and logs in one directory. The servers are built from pinned
// sources by `make tools` (see tools/README.md) and found in bin/ of the
// repository or in $PARRY_TOOLS_BIN; PostgreSQL comes from Debian's packages.
//
// Nothing outlives its owner: each server gets its own process group, is
// started from a dedicated OS thread with a parent-death signal (so even a
// SIGKILLed test binary takes its servers with it), and Stop ends the groups
// by PID. A state file in the directory records the owner and the servers so
// that a directory left behind by a crashed run is recognised and cleaned.
//
// Tests use Require, which starts one environment per test binary:
//
//	func TestSomething(t *testing.T) {
//		env := devenv.Require(t)
//		cs := kubernetes.NewForConfigOrDie(env.RESTConfig())
//		...
//	}
//
// and call devenv.Main from TestMain so the shared environment is stopped
// when the tests end. The `devenv` command (tests/devenv/cmd/devenv, used by
// `make devenv`) runs the same environment as a background daemon.
package devenv
