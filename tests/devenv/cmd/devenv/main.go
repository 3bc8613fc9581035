// Command devenv runs parry's local environment (see package
// parry.dev/parry/tests/devenv) as a background daemon for the demo and for
// manual work:
//
//	devenv up      start it (or report the running one); prints the paths of
//	               the kubeconfig and the env file
//	devenv up -cluster
//	               the same with a real node and Knative Eventing instead of
//	               kwok, Vault and PostgreSQL (make cluster; needs root)
//	devenv down    stop it and remove its directory, also after a crash
//	devenv status  report whether it runs
//
// The directory is .devenv at the repository root unless -dir is given.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"parry.dev/parry/tests/devenv"
)

// readyLine is what the daemon prints once the environment is up.
const readyLine = "devenv: READY"

func main() {
	devenv.MaybeReap() // this program may be started again as a real node's reaper
	fs := flag.NewFlagSet("devenv", flag.ExitOnError)
	dir := fs.String("dir", "", "environment directory (default: .devenv at the repository root)")
	cluster := fs.Bool("cluster", false, "up: a real node with Knative Eventing (devenv.Cluster) instead of the kwok environment")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: devenv [-dir DIR] [-cluster] up|down|status")
		fs.PrintDefaults()
	}
	if len(os.Args) < 2 {
		fs.Usage()
		os.Exit(2)
	}
	cmd := os.Args[1]
	_ = fs.Parse(os.Args[2:])
	if *dir == "" {
		root, err := devenv.RepoRoot()
		if err != nil {
			fatal(err)
		}
		*dir = filepath.Join(root, ".devenv")
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fatal(err)
	}
	opts := devenv.Options{}
	if *cluster {
		opts.Components = devenv.Cluster
	}
	switch cmd {
	case "up":
		err = up(abs, opts)
	case "down":
		err = down(abs)
	case "status":
		err = status(abs)
	case "serve":
		err = serve(abs, opts)
	default:
		fs.Usage()
		os.Exit(2)
	}
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// up starts the daemon (this program's "serve") in its own session, relays
// its progress until it is ready, and returns.
func up(dir string, opts devenv.Options) error {
	if err := devenv.Check(opts); err != nil {
		return err
	}
	if pid := devenv.OwnerAlive(dir); pid != 0 {
		fmt.Printf("devenv: already running (pid %d)\n", pid)
		return printPaths(dir)
	}
	if _, err := os.Stat(dir); err == nil {
		ended, err := devenv.CleanStale(dir)
		if err != nil {
			return err
		}
		if len(ended) > 0 {
			fmt.Printf("devenv: %s was left by a crashed run; ended %s\n", dir, strings.Join(ended, ", "))
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"serve", "-dir", dir}
	if opts.Components == devenv.Cluster {
		args = append(args, "-cluster")
	}
	cmd := exec.Command(self, args...)
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	// Its own session: the daemon outlives this command and make, and
	// no terminal's Ctrl-C reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	pw.Close()
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		if sc.Text() == readyLine {
			pr.Close()
			return printPaths(dir)
		}
		fmt.Println(sc.Text())
	}
	_ = cmd.Wait()
	return fmt.Errorf("devenv: the environment did not start (see above); logs are in %s", filepath.Join(dir, "logs"))
}

func printPaths(dir string) error {
	fmt.Printf("kubeconfig: %s\nenv file:   %s\nlogs:       %s\nuse it:     set -a; . %s; set +a\n",
		filepath.Join(dir, "kubeconfig"), filepath.Join(dir, "env"), filepath.Join(dir, "logs"), filepath.Join(dir, "env"))
	fmt.Printf("look:       bin/kubectl --kubeconfig %s get pods -A\nstop it:    make devenv-down (or make cluster-down)\n", filepath.Join(dir, "kubeconfig"))
	return nil
}

// serve is the daemon: it runs the environment until SIGTERM or SIGINT.
func serve(dir string, opts devenv.Options) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	began := time.Now()
	opts.Dir = dir
	opts.Logf = func(f string, a ...any) { fmt.Printf(f+"\n", a...) }
	env, err := devenv.Start(ctx, opts)
	if err != nil {
		return err
	}
	fmt.Printf("devenv: %s started in %s\n", strings.Join(names(env), ", "), time.Since(began).Round(10*time.Millisecond))
	fmt.Println(readyLine)
	// `up` stops reading now: send further output to the daemon's log.
	if f, err := os.OpenFile(filepath.Join(dir, "logs", "devenv.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		_ = syscall.Dup3(int(f.Fd()), 1, 0)
		_ = syscall.Dup3(int(f.Fd()), 2, 0)
	}
	<-ctx.Done()
	fmt.Println("devenv: stopping")
	return env.Stop()
}

func names(env *devenv.Env) []string {
	var out []string
	for _, c := range []struct {
		c    devenv.Component
		name string
	}{{devenv.Etcd, "etcd"}, {devenv.APIServer, "kube-apiserver"}, {devenv.ControllerManager, "kube-controller-manager"},
		{devenv.Scheduler, "kube-scheduler"}, {devenv.Kwok, "kwok"}, {devenv.Vault, "vault"}, {devenv.Postgres, "postgres"},
		{devenv.RealNode, "real node " + env.NodeName}, {devenv.Knative, "Knative Eventing"}} {
		if env.Components&c.c != 0 {
			out = append(out, c.name)
		}
	}
	return out
}

// down stops the daemon by its recorded PID and removes the directory; a
// directory from a crashed daemon has its leftover servers ended.
func down(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		fmt.Println("devenv: not running")
		return nil
	}
	if pid := devenv.OwnerAlive(dir); pid != 0 {
		fmt.Printf("devenv: stopping (pid %d)\n", pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(60 * time.Second) // a real node takes seconds to clean
		for devenv.OwnerAlive(dir) != 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if devenv.OwnerAlive(dir) != 0 {
			fmt.Printf("devenv: pid %d did not stop in 60s; killing it\n", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			time.Sleep(200 * time.Millisecond)
		}
	}
	ended, err := devenv.CleanStale(dir)
	if err != nil {
		return err
	}
	if len(ended) > 0 {
		fmt.Printf("devenv: ended leftovers of a crashed run: %s\n", strings.Join(ended, ", "))
	}
	fmt.Printf("devenv: stopped; removed %s\n", dir)
	return nil
}

func status(dir string) error {
	pid := devenv.OwnerAlive(dir)
	if pid == 0 {
		if _, err := os.Stat(dir); err == nil {
			fmt.Printf("devenv: not running; %s is left from an earlier run (make devenv and make devenv-down clean it)\n", dir)
			return nil
		}
		fmt.Println("devenv: not running (start it with: make devenv)")
		return nil
	}
	fmt.Printf("devenv: running (pid %d)\n", pid)
	f, err := os.Open(filepath.Join(dir, "env"))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(os.Stdout, f)
	return err
}
