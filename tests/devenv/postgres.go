package devenv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// startPostgres creates a fresh cluster with initdb and runs the postmaster
// in the foreground (not via pg_ctl, which would detach it from us and from
// its parent-death signal), both as the postgres user.
func (e *Env) startPostgres(ctx context.Context) error {
	if err := searchableBy(e.Dir, e.bins.pgCred); err != nil {
		return err
	}
	root := filepath.Join(e.Dir, "postgres")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	if err := e.chownPostgres(root); err != nil {
		return err
	}
	password := randomHex(16)
	pwfile := filepath.Join(root, "pwfile")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		return err
	}
	if err := e.chownPostgres(pwfile); err != nil {
		return err
	}
	data := filepath.Join(root, "data")
	if err := e.runAsPostgres(ctx, "initdb", e.bins.initdb,
		"--pgdata="+data, "--username=postgres", "--pwfile="+pwfile,
		// Password (SCRAM) over TCP, as Vault's database engine and the
		// credentials it issues will log in; trust on the private socket.
		"--auth-host=scram-sha-256", "--auth-local=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync"); err != nil {
		return err
	}
	_ = os.Remove(pwfile)
	return e.retryPorts(ctx, 1, func(ports []int) (*proc, error) {
		e.PostgresDSN = fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable", password, ports[0])
		return e.launchPostgres(ctx, ports[0])
	})
}

// launchPostgres starts the postmaster on the cluster initdb made, on port,
// and waits until it accepts connections.
func (e *Env) launchPostgres(ctx context.Context, port int) (*proc, error) {
	root := filepath.Join(e.Dir, "postgres")
	p, err := e.startProc(procSpec{name: "postgres", path: e.bins.postgres, cred: e.bins.pgCred,
		stopSig: syscall.SIGINT, // "fast" shutdown: ends sessions, no waiting for clients
		args: []string{
			"-D", filepath.Join(root, "data"), "-p", strconv.Itoa(port),
			"-c", "listen_addresses=127.0.0.1",
			"-c", "unix_socket_directories=" + root,
			// A throw-away cluster: durability only costs time.
			"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		}})
	if err != nil {
		return nil, err
	}
	return p, waitReady(ctx, p, e.opts.ReadyTimeout, func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, e.bins.pgIsReady, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", "postgres", "-d", "postgres").CombinedOutput()
		if err != nil {
			return fmt.Errorf("pg_isready: %v: %s", err, out)
		}
		return nil
	})
}

// RestartPostgres stops PostgreSQL (a fast shutdown: sessions are ended,
// open transactions roll back), leaves it down for down, and starts it
// again on the same port and data, returning once it accepts connections:
// for tests of what a client does while its database is away. What was
// committed survives (the shutdown checkpoints); PostgresDSN is unchanged.
func (e *Env) RestartPostgres(ctx context.Context, down time.Duration) error {
	old := e.procNamed("postgres")
	if old == nil {
		return errors.New("devenv: no PostgreSQL runs in this environment")
	}
	u, err := url.Parse(e.PostgresDSN)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return fmt.Errorf("devenv: PostgreSQL DSN names no port: %w", err)
	}
	old.stop(10 * time.Second)
	select {
	case <-time.After(down):
	case <-ctx.Done():
		return ctx.Err()
	}
	began := time.Now()
	p, err := e.launchPostgres(ctx, port)
	e.replaceProc(old, p)
	if err != nil {
		return fmt.Errorf("devenv: restarting PostgreSQL on port %d: %w", port, err)
	}
	e.logf("devenv: postgres back after %s down, ready in %s (pid %d)", down, time.Since(began).Round(10*time.Millisecond), p.pid())
	return nil
}

func (e *Env) chownPostgres(path string) error {
	if c := e.bins.pgCred; c != nil {
		if err := os.Chown(path, int(c.Uid), int(c.Gid)); err != nil {
			return fmt.Errorf("devenv: hand %s to the postgres user: %w", path, err)
		}
	}
	return nil
}

// runAsPostgres runs a one-shot PostgreSQL tool, logging to logs/<name>.log.
func (e *Env) runAsPostgres(ctx context.Context, name, path string, args ...string) error {
	logPath := filepath.Join(e.Dir, "logs", name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = filepath.Join(e.Dir, "postgres")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: e.bins.pgCred}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("devenv: %s failed (%v); if it cannot reach %s, every directory above it must be searchable by the postgres user; log %s ends with:\n%s",
			name, err, e.Dir, logPath, logTail(logPath, 25))
	}
	return nil
}

// searchableBy checks that the postgres user can reach dir: every directory
// above it must grant it search (x) permission, or initdb cannot even start.
func searchableBy(dir string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		m := fi.Mode().Perm()
		ok := m&0o001 != 0 ||
			(st.Uid == cred.Uid && m&0o100 != 0) ||
			(st.Gid == cred.Gid && m&0o010 != 0)
		if !ok {
			return fmt.Errorf("devenv: PostgreSQL runs as the postgres user, which cannot reach %s because %s is mode %04o; put the environment elsewhere (an empty Options.Dir uses a temporary directory) or run: chmod o+x %s", dir, d, m, d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
