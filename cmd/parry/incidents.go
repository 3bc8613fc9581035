package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"parry.dev/parry/internal/buildinfo"
	"parry.dev/parry/internal/display"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/ocsf"
)

func incidentsCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("incidents", "[flags]", stderr)
	jf := addJournalFlags(fs)
	state := fs.String("state", "", "only incidents in this state: open or closed")
	playbook := fs.String("playbook", "", "only incidents of this playbook")
	namespace := fs.String("namespace", "", "only incidents of pods in this namespace")
	since := fs.String("since", "", "only incidents opened since: a duration back from now (24h, 90m) or a time (2026-12-06T10:00:00Z)")
	limit := fs.Int("limit", 50, "at most this many, the most recently opened first (0: all)")
	format := fs.String("format", "table", "table; json (the summaries, for tools); or ocsf: OCSF "+ocsf.Version+" JSON lines for a SIEM, a Detection Finding (class 2004) per incident and a Remediation Activity (class 7001) per isolate, respawn and revoke")
	asJSON := fs.Bool("json", false, "the same as --format json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "parry incidents: unexpected argument %q ('parry trace INCIDENT' shows one incident)\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	if *asJSON {
		*format = "json"
	}
	switch *format {
	case "table", "json", "ocsf":
	default:
		fmt.Fprintf(stderr, "parry incidents: --format %q: want table, json or ocsf\n", *format)
		return errUsage
	}
	f := journal.IncidentFilter{State: *state, Playbook: *playbook, Namespace: *namespace, Limit: *limit}
	switch *state {
	case "", journal.IncidentOpen, journal.IncidentClosed:
	default:
		fmt.Fprintf(stderr, "parry incidents: --state %q: want open or closed\n", *state)
		return errUsage
	}
	if *limit < 0 {
		fmt.Fprintln(stderr, "parry incidents: --limit must be 0 (all) or more")
		return errUsage
	}
	now := time.Now()
	if *since != "" {
		t, err := parseSince(*since, now)
		if err != nil {
			fmt.Fprintf(stderr, "parry incidents: --since %q: %v\n", *since, err)
			return errUsage
		}
		f.Since = t
	}
	j, err := jf.open(ctx)
	if err != nil {
		return err
	}
	defer j.Close()
	list, err := j.Incidents(ctx, f)
	if err != nil {
		return err
	}
	switch *format {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if list == nil {
			list = []journal.IncidentSummary{}
		}
		return enc.Encode(list)
	case "ocsf":
		enc := json.NewEncoder(stdout)
		product := ocsf.Product{Name: "parry", Vendor: "parry", Version: buildinfo.Version}
		for _, s := range list {
			for _, e := range ocsf.Events(s, product) {
				if err := enc.Encode(e); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if len(list) == 0 {
		fmt.Fprintln(stderr, "no incidents match")
		return nil
	}
	printIncidents(stdout, list, now)
	return nil
}

// parseSince reads --since: a duration back from now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("a duration back from now must be positive")
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("want a duration (24h) or a time (2026-12-06T10:00:00Z)")
	}
	return t, nil
}

// printIncidents prints the list on-call starts from: one line per
// incident, then what its steps did. Every value came from events, which an
// attacker may have shaped: all of it goes through display.Printable.
func printIncidents(w io.Writer, list []journal.IncidentSummary, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INCIDENT\tSTATE\tPLAYBOOK\tPOD\tSCORE\tRESPONSE\tOPENED\tSTEPS")
	for _, s := range list {
		pod := s.Pod
		if s.Namespace != "" {
			pod = s.Namespace + "/" + s.Pod
		}
		score := strconv.Itoa(s.Score)
		if s.Severity != "" {
			score += " " + s.Severity
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			display.Printable(s.ID), display.Printable(s.State), display.Printable(orDash(s.Playbook)), display.Printable(orDash(pod)), display.Printable(score),
			display.Printable(orDash(s.Response)), ago(now, s.Opened), display.Printable(orDash(steps(s))))
	}
	tw.Flush()
}

// steps is what an incident's steps did, in the order they replied:
// "isolate ok 4.1ms, snapshot FAILED 120.0ms".
func steps(s journal.IncidentSummary) string {
	parts := make([]string, 0, len(s.Steps)+1)
	for _, st := range s.Steps {
		outcome := "ok"
		if st.Outcome != "done" {
			outcome = "FAILED"
		}
		parts = append(parts, fmt.Sprintf("%s %s %s", st.Step, outcome, ms(st.After)))
	}
	if s.State == journal.IncidentClosed {
		parts = append(parts, "closed by "+orDash(s.ClosedBy))
	}
	return strings.Join(parts, ", ")
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.UTC().Format("2006-01-02 15:04Z")
}
