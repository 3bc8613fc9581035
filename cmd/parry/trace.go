package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"parry.dev/parry/internal/display"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
)

func traceCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("trace", "[flags] (INCIDENT | --event ID | --last N)", stderr)
	jf := addJournalFlags(fs)
	eventID := fs.String("event", "", "show the causal tree that contains this event id")
	last := fs.Int("last", 0, "list the N most recent events")
	asJSON := fs.Bool("json", false, "print JSON for tools instead of text")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	chosen := 0
	for _, set := range []bool{fs.NArg() > 0, *eventID != "", *last > 0} {
		if set {
			chosen++
		}
	}
	if chosen != 1 || fs.NArg() > 1 {
		fmt.Fprintln(stderr, "parry trace: give exactly one of INCIDENT, --event ID or --last N")
		fs.Usage()
		return errUsage
	}
	j, err := jf.open(ctx)
	if err != nil {
		return err
	}
	defer j.Close()

	var trees []*journal.Node
	switch {
	case *last > 0:
		entries, err := j.Last(ctx, *last)
		if err != nil {
			return err
		}
		for _, e := range entries {
			trees = append(trees, &journal.Node{Entry: e})
		}
	case *eventID != "":
		tree, err := j.Tree(ctx, *eventID)
		if err != nil {
			return notFound(err, *jf.where)
		}
		trees = []*journal.Node{tree}
	default:
		trees, err = j.Incident(ctx, fs.Arg(0))
		if err != nil {
			return notFound(err, *jf.where)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		out := make([]traceNode, len(trees))
		for i, t := range trees {
			out[i] = toTraceNode(t, t.Received)
		}
		return enc.Encode(out)
	}
	if *last > 0 {
		for _, t := range trees {
			printEvent(stdout, t.Entry, t.Received, "", "")
		}
		return nil
	}
	for _, t := range trees {
		printTree(stdout, t)
	}
	return nil
}

func notFound(err error, path string) error {
	if errors.Is(err, journal.ErrNotFound) {
		return fmt.Errorf("%w in %s ('parry trace --last 20' lists recent events)", err, path)
	}
	return err
}

func printTree(w io.Writer, root *journal.Node) {
	end := root.Received
	count := 0
	walk(root, func(n *journal.Node, _ int) {
		count++
		if n.Received.After(end) {
			end = n.Received
		}
		for _, d := range n.Deliveries {
			if d.Updated.After(end) {
				end = d.Updated
			}
		}
	})
	fmt.Fprintf(w, "trace %s · %d events · %s from the first event to the last step\n\n", display.Printable(orDash(root.TraceID)), count, ms(end.Sub(root.Received)))
	var print func(n *journal.Node, prefix, branch string)
	print = func(n *journal.Node, prefix, branch string) {
		printEvent(w, n.Entry, root.Received, prefix, branch)
		childPrefix := prefix
		switch branch {
		case "├─ ":
			childPrefix += "│  "
		case "└─ ":
			childPrefix += "   "
		}
		for i, c := range n.Children {
			b := "├─ "
			if i == len(n.Children)-1 {
				b = "└─ "
			}
			print(c, childPrefix, b)
		}
	}
	print(root, "", "")
	fmt.Fprintln(w)
}

// printEvent prints one event: when it arrived relative to start, what it
// is, the attributes on-call cares about, and what became of each delivery.
func printEvent(w io.Writer, e journal.Entry, start time.Time, prefix, branch string) {
	fmt.Fprintf(w, "%s %9s  %s%s%s  %s\n", e.Received.Format("15:04:05.000000"), "+"+ms(e.Received.Sub(start)), prefix, branch, display.Printable(e.Type), display.Printable(short(e.ID)))
	pad := strings.Repeat(" ", 27) + prefix
	switch branch {
	case "├─ ":
		pad += "│  "
	case "└─ ":
		pad += "   "
	}
	if attrs := keyAttributes(e); attrs != "" {
		fmt.Fprintf(w, "%s  %s\n", pad, display.Printable(attrs))
	}
	if e.Sender != "" {
		fmt.Fprintf(w, "%s  from %s\n", pad, display.Printable(e.Sender))
	}
	for _, why := range e.Why() {
		fmt.Fprintf(w, "%s  ! %s\n", pad, display.Printable(why))
	}
	for _, what := range e.Applied() {
		fmt.Fprintf(w, "%s  = %s\n", pad, display.Printable(what))
	}
	for _, d := range e.Deliveries {
		line := fmt.Sprintf("→ %s %s: %s after %s, %d attempt(s)", d.Target, d.Trigger, d.State, ms(d.Updated.Sub(e.Received)), d.Attempts)
		if d.Target == journal.ToSubscriber && d.State == journal.Pending && d.Attempts == 0 {
			line = fmt.Sprintf("→ %s %s: pending", d.Target, d.Trigger)
		}
		if d.Error != "" {
			line += fmt.Sprintf(" (last answer %d: %s)", d.Code, firstLine(d.Error))
		}
		fmt.Fprintf(w, "%s  %s\n", pad, display.Printable(line))
	}
}

func walk(n *journal.Node, f func(*journal.Node, int)) {
	var rec func(*journal.Node, int)
	rec = func(n *journal.Node, depth int) {
		f(n, depth)
		for _, c := range n.Children {
			rec(c, depth+1)
		}
	}
	rec(n, 0)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

func short(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	return id
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// traceNode is the --json shape: stable field names for tools.
type traceNode struct {
	ID         string            `json:"id"`
	Type       string            `json:"type"`
	Source     string            `json:"source"`
	Sender     string            `json:"sender,omitempty"`
	Subject    string            `json:"subject,omitempty"`
	Time       time.Time         `json:"time,omitzero"`
	Received   time.Time         `json:"received"`
	OffsetMS   float64           `json:"offset_ms"`
	Incident   string            `json:"incident,omitempty"`
	Causation  string            `json:"causation,omitempty"`
	TraceID    string            `json:"trace_id,omitempty"`
	Extensions map[string]string `json:"extensions,omitempty"`
	Deliveries []traceDelivery   `json:"deliveries,omitempty"`
	Children   []traceNode       `json:"children,omitempty"`
}

type traceDelivery struct {
	Trigger   string  `json:"trigger"`
	Target    string  `json:"target"`
	State     string  `json:"state"`
	Attempts  int     `json:"attempts"`
	Code      int     `json:"code,omitempty"`
	Error     string  `json:"error,omitempty"`
	LatencyMS float64 `json:"latency_ms"`
}

func toTraceNode(n *journal.Node, start time.Time) traceNode {
	ext := map[string]string{}
	for k := range n.Event.Extensions() {
		ext[k] = events.String(n.Event, k)
	}
	out := traceNode{
		ID: n.ID, Type: n.Type, Source: n.Source, Sender: n.Sender, Subject: n.Subject, Time: n.Event.Time(), Received: n.Received,
		OffsetMS: float64(n.Received.Sub(start).Microseconds()) / 1000, Incident: n.Incident, Causation: n.Causation,
		TraceID: n.TraceID, Extensions: ext,
	}
	for _, d := range n.Deliveries {
		out.Deliveries = append(out.Deliveries, traceDelivery{Trigger: d.Trigger, Target: string(d.Target), State: string(d.State),
			Attempts: d.Attempts, Code: d.Code, Error: d.Error, LatencyMS: float64(d.Updated.Sub(n.Received).Microseconds()) / 1000})
	}
	for _, c := range n.Children {
		out.Children = append(out.Children, toTraceNode(c, start))
	}
	return out
}

// keyAttributes is the attributes line: k=v k=v ... source=...
func keyAttributes(e journal.Entry) string {
	var parts []string
	for _, a := range e.KeyAttributes() {
		parts = append(parts, a.Name+"="+a.Value)
	}
	return strings.Join(parts, " ")
}
