package journal

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"parry.dev/parry/internal/events"
)

// Incident states.
const (
	IncidentOpen   = "open"
	IncidentClosed = "closed"
)

// IncidentFilter selects incidents; zero fields select all.
type IncidentFilter struct {
	State     string    `json:"state,omitempty"` // IncidentOpen or IncidentClosed
	Playbook  string    `json:"playbook,omitempty"`
	Namespace string    `json:"namespace,omitempty"`
	Since     time.Time `json:"since,omitzero"` // opened at or after
	Limit     int       `json:"limit,omitempty"`
}

// IncidentSummary is one incident as on-call first sees it: what matched,
// on which pod, how bad, what the steps did, and whether it is closed.
type IncidentSummary struct {
	ID          string        `json:"id"`
	State       string        `json:"state"`
	Playbook    string        `json:"playbook"`
	Description string        `json:"description,omitempty"`
	Namespace   string        `json:"namespace,omitempty"`
	Pod         string        `json:"pod,omitempty"`
	PodUID      string        `json:"podUID,omitempty"`
	Node        string        `json:"node,omitempty"`
	Score       int           `json:"score"`
	Severity    string        `json:"severity,omitempty"`
	Response    string        `json:"response,omitempty"`
	Reasons     []string      `json:"reasons,omitempty"`
	Opened      time.Time     `json:"opened"`
	Last        time.Time     `json:"last"`
	Joined      int           `json:"joined"` // later events of the same pod and playbook
	Steps       []StepOutcome `json:"steps,omitempty"`
	ClosedBy    string        `json:"closedBy,omitempty"`
	Closed      time.Time     `json:"closed,omitzero"`
	// First is the id of the event that opened it: `parry trace --event`.
	First string `json:"first"`
}

// StepOutcome is one step's reply in an incident.
type StepOutcome struct {
	Step    string        `json:"step"`
	Outcome string        `json:"outcome"` // done or failed
	After   time.Duration `json:"after"`   // since the incident opened
	Reason  string        `json:"reason,omitempty"`
	Applied []string      `json:"applied,omitempty"`
}

// Summarize folds an incident's events (in journal order) into its summary.
func Summarize(incident string, entries []Entry) IncidentSummary {
	s := IncidentSummary{ID: incident, State: IncidentOpen}
	for _, e := range entries {
		if e.Received.After(s.Last) {
			s.Last = e.Received
		}
		var data struct {
			Reasons     []string `json:"reasons"`
			Reason      string   `json:"reason"`
			Applied     []string `json:"applied"`
			Description string   `json:"description"`
			ClosedBy    string   `json:"closedBy"`
		}
		_ = json.Unmarshal(e.Event.Data(), &data) // a foreign event's data may be anything
		switch {
		case e.Type == events.TypeIncidentOpened && s.First == "":
			s.First = e.ID
			s.Opened = e.Received
			s.Playbook = events.String(e.Event, events.ExtPlaybook)
			s.Description = data.Description
			s.Namespace = events.String(e.Event, events.ExtPodNamespace)
			s.Pod = events.String(e.Event, events.ExtPodName)
			s.PodUID = events.String(e.Event, events.ExtPodUID)
			s.Node = events.String(e.Event, events.ExtNode)
			s.Score, _ = strconv.Atoi(events.String(e.Event, events.ExtScore))
			s.Severity = events.String(e.Event, events.ExtSeverity)
			s.Response = events.String(e.Event, events.ExtResponse)
			s.Reasons = data.Reasons
		case e.Type == events.TypeIncidentJoined:
			s.Joined++
		case e.Type == events.TypeIncidentClosed:
			s.State = IncidentClosed
			s.ClosedBy = data.ClosedBy
			s.Closed = e.Received
		default:
			step := events.String(e.Event, events.ExtStep)
			switch {
			case step == "":
			case e.Type == events.StepDone(step):
				s.Steps = append(s.Steps, StepOutcome{Step: step, Outcome: "done", After: e.Received.Sub(s.Opened), Applied: data.Applied})
			case e.Type == events.StepFailed(step):
				s.Steps = append(s.Steps, StepOutcome{Step: step, Outcome: "failed", After: e.Received.Sub(s.Opened), Reason: data.Reason})
			}
		}
	}
	if s.Opened.IsZero() {
		// Replies whose opening was not journaled have no offset to show.
		for i := range s.Steps {
			s.Steps[i].After = 0
		}
	}
	return s
}

// incidents is Reader.Incidents over a store: the opened events the store
// selects, each summarized from its incident's events, then the state
// filter (which only the summary knows) and the limit. With a limit, the
// opened events are read a page at a time, doubling, so that the newest
// twenty of fifty thousand incidents do not read all fifty thousand; a
// page re-reads the one before (at most twice the work), and an incident
// already considered is skipped, also should new ones have arrived
// meanwhile.
func incidents(ctx context.Context, l lookup, f IncidentFilter) ([]IncidentSummary, error) {
	var out []IncidentSummary
	seen := map[string]bool{}
	page := 0 // all at once without a limit
	if f.Limit > 0 {
		page = max(4*f.Limit, 64)
	}
	for {
		opened, err := l.opened(ctx, IncidentFilter{Since: f.Since, Limit: page})
		if err != nil {
			return nil, err
		}
		for _, o := range opened {
			inc := events.String(o.Event, events.ExtIncident)
			if inc == "" || seen[inc] {
				continue
			}
			seen[inc] = true
			if f.Playbook != "" && events.String(o.Event, events.ExtPlaybook) != f.Playbook {
				continue
			}
			if f.Namespace != "" && events.String(o.Event, events.ExtPodNamespace) != f.Namespace {
				continue
			}
			members, err := l.byIncident(ctx, inc)
			if err != nil {
				return nil, err
			}
			s := Summarize(inc, members)
			if f.State != "" && !strings.EqualFold(s.State, f.State) {
				continue
			}
			out = append(out, s)
			if f.Limit > 0 && len(out) == f.Limit {
				return out, nil
			}
		}
		if page == 0 || len(opened) < page {
			return out, nil
		}
		page *= 2
	}
}
