package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Reader is what on-call reads: the queries `parry trace` and `parry
// incidents` make. The SQLite journal of `parry run`, the PostgreSQL journal
// of a cluster, and the journal service's HTTP client all answer them, with
// the same results for the same events.
type Reader interface {
	// Event returns the event with id (the first journaled, should two
	// sources share an id); ErrNotFound when there is none.
	Event(ctx context.Context, id string) (Entry, error)
	// Last returns the n most recent events, oldest first.
	Last(ctx context.Context, n int) ([]Entry, error)
	// Tree returns the causal tree that contains the event with id, from
	// its root cause down.
	Tree(ctx context.Context, id string) (*Node, error)
	// Incident returns the causal trees of an incident, from the root cause
	// of every event that carries the incident id down to the last step.
	Incident(ctx context.Context, incident string) ([]*Node, error)
	// Incidents lists incidents, most recently opened first.
	Incidents(ctx context.Context, f IncidentFilter) ([]IncidentSummary, error)
	io.Closer
}

// lookup is what a store answers directly; the causal trees and the
// incident list are built from it once, here, for every store.
type lookup interface {
	// byID is the first journaled event with id.
	byID(ctx context.Context, id string) (Entry, error)
	// byCausation are the events caused by id, in journal order.
	byCausation(ctx context.Context, id string) ([]Entry, error)
	// byIncident are the events that carry incident, in journal order.
	byIncident(ctx context.Context, incident string) ([]Entry, error)
	// opened are the incident.opened events that f's time and attribute
	// conditions select, most recent first, at most f.Limit (all when 0).
	opened(ctx context.Context, f IncidentFilter) ([]Entry, error)
}

// tree is Reader.Tree over a store.
func tree(ctx context.Context, l lookup, id string) (*Node, error) {
	e, err := l.byID(ctx, id)
	if err != nil {
		return nil, err
	}
	root, err := rootOf(ctx, l, e)
	if err != nil {
		return nil, err
	}
	return grow(ctx, l, root)
}

// incidentTrees is Reader.Incident over a store. Usually that is one tree,
// rooted at the sensor event that opened the incident.
func incidentTrees(ctx context.Context, l lookup, incident string) ([]*Node, error) {
	members, err := l.byIncident(ctx, incident)
	if err != nil {
		return nil, err
	}
	if len(members) == 0 {
		return nil, fmt.Errorf("%w in incident %q", ErrNotFound, incident)
	}
	var trees []*Node
	// placed are the events in the trees so far: a member among them needs
	// no walk to its root (usually every member after the first), and a
	// causation cycle, whose members each find a different "root", is
	// shown once.
	placed := map[int64]bool{}
	for _, m := range members {
		if placed[m.Seq] {
			continue
		}
		root, err := rootOf(ctx, l, m)
		if err != nil {
			return nil, err
		}
		if placed[root.Seq] {
			continue
		}
		t, err := grow(ctx, l, root)
		if err != nil {
			return nil, err
		}
		t.walk(func(n *Node) { placed[n.Seq] = true })
		trees = append(trees, t)
	}
	return trees, nil
}

func (n *Node) walk(f func(*Node)) {
	f(n)
	for _, c := range n.Children {
		c.walk(f)
	}
}

func rootOf(ctx context.Context, l lookup, e Entry) (Entry, error) {
	visited := map[int64]bool{e.Seq: true}
	for e.Causation != "" {
		parent, err := l.byID(ctx, e.Causation)
		if errors.Is(err, ErrNotFound) {
			return e, nil // the cause came from outside the journal
		}
		if err != nil {
			return e, err
		}
		if visited[parent.Seq] {
			return e, nil // a causation cycle can only come from a foreign producer
		}
		visited[parent.Seq] = true
		e = parent
	}
	return e, nil
}

func grow(ctx context.Context, l lookup, root Entry) (*Node, error) {
	top := &Node{Entry: root}
	queue := []*Node{top}
	visited := map[int64]bool{root.Seq: true}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		children, err := l.byCausation(ctx, n.ID)
		if err != nil {
			return nil, err
		}
		for _, c := range children {
			if visited[c.Seq] {
				continue
			}
			visited[c.Seq] = true
			child := &Node{Entry: c}
			n.Children = append(n.Children, child)
			queue = append(queue, child)
		}
	}
	return top, nil
}

var _ Reader = (*Journal)(nil)
