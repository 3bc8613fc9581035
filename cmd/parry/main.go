// Command parry detects attacks on short-lived Kubernetes workloads with eBPF
// and answers them with small event-driven functions. See `parry help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"parry.dev/parry/internal/buildinfo"
)

// command is one `parry <name>` subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"run", "run the embedded default: broker, journal, functions and sensor in one process", runCommand},
		{"sensor", "run the eBPF sensor alone, sending to --sink or $K_SINK (the DaemonSet's command)", sensorCommand},
		{"playbook", "validate playbooks and compile them into Triggers and sensor filters", playbookCommand},
		{"steps", "describe the response steps: parameters, permissions and an example", stepsCommand},
		{"incidents", "list incidents: state, playbook, pod, score and what each step did", incidentsCommand},
		{"trace", "show an incident's causal chain from the first syscall to the last step", traceCommand},
		{"incident", "close an incident: lift its pods' in-kernel blocks and record who closed it", incidentCommand},
		{"ingest", "send other tools' detections (Falco, Tetragon) to the Broker as parry's events", ingestCommand},
		{"evidence", "fetch an incident's evidence bundles from the store and verify them (get, verify)", evidenceCommand},
		{"version", "print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) error {
			fmt.Fprintln(stdout, buildinfo.String())
			return nil
		}},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		default:
			fmt.Fprintf(stderr, "parry %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "parry: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// subcommand runs the subcommand of `parry <group>` that args[0] names
// (what says what kind of word it is: "subcommand", "tool"), or prints
// usage: to stdout when asked for, else to stderr as a usage error.
func subcommand(group, what, usage string, args []string, stdout, stderr io.Writer, subs map[string]func(args []string) error) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	run, ok := subs[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "parry %s: unknown %s %q\n\n%s", group, what, args[0], usage)
		return errUsage
	}
	return run(args[1:])
}

// errUsage reports bad arguments; the flag set has already said what.
var errUsage = errors.New("usage")

func usage(w io.Writer) {
	fmt.Fprint(w, `parry detects attacks on short-lived Kubernetes workloads with eBPF and answers
them in milliseconds with small event-driven functions.

Usage: parry <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Run 'parry <command> --help' for a command's flags.
`)
}

// newFlagSet returns a flag set that prints its usage to stderr and reports
// bad flags as errUsage.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("parry "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: parry %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}
