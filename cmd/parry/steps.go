package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"parry.dev/parry/internal/stack"
	"parry.dev/parry/internal/step"
)

func stepsCommand(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("steps", "[step ...]", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	all := stack.Steps()
	byName := map[string]step.Spec{}
	var names []string
	for _, d := range all {
		byName[d.Spec.Name] = d.Spec
		names = append(names, d.Spec.Name)
	}
	want := fs.Args()
	if len(want) == 0 {
		want = names
	}
	for i, name := range want {
		spec, ok := byName[name]
		if !ok {
			fmt.Fprintf(stderr, "parry steps: no step %q (the steps are: %s)\n", name, strings.Join(names, ", "))
			return errUsage
		}
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		describe(stdout, spec)
	}
	return nil
}

// describe prints what a step's Spec declares, for people writing playbooks
// and reviewing parry's permissions.
func describe(w io.Writer, s step.Spec) {
	fmt.Fprintf(w, "%s\n  %s\n", s.Name, s.Description)
	if !s.Playbook {
		fmt.Fprintln(w, "  (not named in playbooks: parry runs it for all of them)")
	}
	if len(s.Params) > 0 {
		fmt.Fprintln(w, "\n  Parameters:")
		for _, p := range s.Params {
			var notes []string
			if p.Required {
				notes = append(notes, "required")
			}
			if p.Default != "" {
				notes = append(notes, "default "+p.Default)
			}
			if len(p.Enum) > 0 {
				notes = append(notes, "one of "+strings.Join(p.Enum, ", "))
			}
			note := ""
			if len(notes) > 0 {
				note = " (" + strings.Join(notes, "; ") + ")"
			}
			fmt.Fprintf(w, "    %-14s %-9s %s%s\n", p.Name, p.Type, p.Description, note)
		}
	}
	fmt.Fprintf(w, "\n  Kubernetes permissions (ServiceAccount %s):\n", s.ServiceAccount())
	if len(s.ClusterRules) == 0 {
		fmt.Fprintln(w, "    none")
	}
	for _, r := range s.ClusterRules {
		groups := make([]string, len(r.APIGroups))
		for i, g := range r.APIGroups {
			if g == "" {
				g = "core"
			}
			groups[i] = g
		}
		fmt.Fprintf(w, "    %s on %s (%s)\n", strings.Join(r.Verbs, ", "), strings.Join(r.Resources, ", "), strings.Join(groups, ", "))
	}
	var needs []string
	for _, n := range []struct {
		on   bool
		what string
	}{{s.Sensors, "the node sensors' API"}, {s.Vault, "a Vault token (functions/revoke/policy.hcl)"}, {s.Publishes, "the Broker as K_SINK"},
		{s.State, "a state directory"}, {s.Postgres, "PostgreSQL in a cluster (the Secret parry-postgres)"}} {
		if n.on {
			needs = append(needs, n.what)
		}
	}
	if len(needs) > 0 {
		fmt.Fprintf(w, "\n  Needs: %s\n", strings.Join(needs, "; "))
	}
	if d := s.Delivery; d != (step.Delivery{}) {
		then := "then the event is dropped from the Trigger (the journal keeps it)"
		if s.Playbook && !s.Root {
			then = "then parry-failed reports the step failed"
		}
		fmt.Fprintf(w, "\n  Delivery: %d retries, exponential backoff from %s, each attempt cut off after %s; %s\n", d.Retry, d.Backoff, d.Timeout, then)
	}
	if s.Example != "" {
		fmt.Fprintln(w, "\n  Example:")
		for _, line := range strings.Split(strings.TrimRight(s.Example, "\n"), "\n") {
			fmt.Fprintln(w, "    "+line)
		}
	}
}
