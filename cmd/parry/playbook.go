package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"parry.dev/parry/internal/manifest"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/stack"
)

func playbookCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, playbookUsage)
		return errUsage
	}
	switch args[0] {
	case "validate":
		fs := newFlagSet("playbook validate", "FILE|DIR...", stderr)
		if err := parseFlags(fs, args[1:]); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			fmt.Fprint(stderr, playbookUsage)
			return errUsage
		}
		srcs, err := playbook.Load(fs.Args()...)
		if err != nil {
			return positioned(err, stderr)
		}
		// Compile in memory: validation then catches all compile would,
		// Knative's own Trigger validation included.
		if _, err := playbook.Compile(ctx, srcs, stack.Registry()); err != nil {
			return positioned(err, stderr)
		}
		fmt.Fprintf(stdout, "%d playbooks valid\n", len(srcs))
		return nil
	case "compile":
		fs := newFlagSet("playbook compile", "[--out config/] FILE|DIR...", stderr)
		out := fs.String("out", "config", "directory the Triggers, the sensor filters and the playbook bundle are written to")
		if err := parseFlags(fs, args[1:]); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			fmt.Fprint(stderr, playbookUsage)
			return errUsage
		}
		srcs, err := playbook.Load(fs.Args()...)
		if err != nil {
			return positioned(err, stderr)
		}
		files, err := playbook.Compile(ctx, srcs, stack.Registry())
		if err != nil {
			return positioned(err, stderr)
		}
		if err := files.Write(*out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "compiled %d playbooks into %d files in %s\n", len(srcs), len(files), *out)
		return nil
	}
	fmt.Fprint(stderr, playbookUsage)
	return errUsage
}

const playbookUsage = `Usage:
  parry playbook validate FILE|DIR...             check playbooks; errors as file:line:col
  parry playbook compile [--out config/] DIR...   write Triggers, sensor filters and the bundle
`

// errReported: the errors are printed one per line already.
var errReported = errors.New("invalid playbooks")

// positioned prints file:line:col errors one per line, as compilers do.
func positioned(err error, stderr io.Writer) error {
	var errs manifest.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			fmt.Fprintln(stderr, e.Error())
		}
		return fmt.Errorf("%w: %d errors", errReported, len(errs))
	}
	return err
}
