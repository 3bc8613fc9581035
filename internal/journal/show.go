package journal

import (
	"encoding/json"
	"maps"
	"slices"

	"parry.dev/parry/internal/events"
)

// Why is what an event's data says about why: classify's scoring reasons,
// a step's reason for failing or refusing, a note. On-call reads them
// without opening the JSON.
func (e Entry) Why() []string {
	var data struct {
		Reasons []string `json:"reasons"`
		Reason  string   `json:"reason"`
		Note    string   `json:"note"`
	}
	if json.Unmarshal(e.Event.Data(), &data) != nil {
		return nil
	}
	out := data.Reasons
	for _, s := range []string{data.Reason, data.Note} {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Applied is what a step's done reply says it changed (step.Applier).
func (e Entry) Applied() []string {
	var data struct {
		Applied []string `json:"applied"`
	}
	if json.Unmarshal(e.Event.Data(), &data) != nil {
		return nil
	}
	return data.Applied
}

// Attribute is one extension attribute of an event.
type Attribute struct{ Name, Value string }

// KeyAttributes are the attributes on-call reads first — the routing ones
// in a fixed order, then the rest by name, then the source — without the
// plumbing (trace context, causation, the incident seal, pod UID, node).
func (e Entry) KeyAttributes() []Attribute {
	order := []string{events.ExtIncident, events.ExtPlaybook, events.ExtSeverity, events.ExtRule, events.ExtPodNamespace, events.ExtPodName, events.ExtContainer, events.ExtExe, events.ExtDestPort}
	skip := map[string]bool{events.ExtTraceparent: true, events.ExtCausation: true, events.ExtPodUID: true, events.ExtNode: true, events.ExtIncidentSeal: true}
	var out []Attribute
	for _, k := range order {
		if v := events.String(e.Event, k); v != "" {
			out = append(out, Attribute{k, v})
		}
		skip[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(e.Event.Extensions())) {
		if !skip[k] {
			out = append(out, Attribute{k, events.String(e.Event, k)})
		}
	}
	return append(out, Attribute{"source", e.Source})
}
