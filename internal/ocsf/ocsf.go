package ocsf

import (
	"strings"
	"time"

	"parry.dev/parry/internal/journal"
)

// Version is the OCSF schema version the events follow.
const Version = "1.3.0"

// Class and category ids of OCSF 1.3.0.
const (
	CategoryFindings    = 2
	ClassDetection      = 2004
	CategoryRemediation = 7
	ClassRemediation    = 7001
)

// Event is one OCSF event, ready to marshal.
type Event map[string]any

// Product names the producer in every event's metadata.
type Product struct {
	Name, Vendor, Version string
}

// remediation is how a step's outcome maps to OCSF's Remediation Activity:
// the D3FEND tactic (activity) and technique (countermeasure).
type remediation struct {
	activityID     int
	activity       string
	countermeasure string
	d3fend         string
}

// remediations are the steps that change the workload; classify and
// snapshot decide or observe and are part of the finding instead.
var remediations = map[string]remediation{
	"isolate": {1, "Isolate", "Network Isolation", "d3f:NetworkIsolation"},
	"respawn": {3, "Restore", "Restore Configuration", "d3f:RestoreConfiguration"},
	"revoke":  {2, "Evict", "Credential Revoking", "d3f:CredentialRevoking"},
}

// Events are the OCSF events of one incident: its Detection Finding, then a
// Remediation Activity per remediating step, in the order they replied.
func Events(s journal.IncidentSummary, p Product) []Event {
	out := []Event{finding(s, p)}
	for _, st := range s.Steps {
		r, ok := remediations[st.Step]
		if !ok {
			continue
		}
		out = append(out, remediationEvent(s, st, r, p))
	}
	return out
}

func finding(s journal.IncidentSummary, p Product) Event {
	// A finding's status tracks triage: New while open, Resolved once a
	// person closed it.
	statusID, status := 1, "New"
	if s.State == journal.IncidentClosed {
		statusID, status = 4, "Resolved"
	}
	title := s.Description
	if title == "" {
		title = "parry playbook " + s.Playbook
	}
	info := Event{
		"uid":             s.ID,
		"title":           title,
		"desc":            strings.Join(s.Reasons, "\n"),
		"created_time":    millis(s.Opened),
		"first_seen_time": millis(s.Opened),
		"last_seen_time":  millis(s.Last),
		"analytic":        Event{"name": s.Playbook, "uid": s.Playbook, "type_id": 1, "type": "Rule"},
		"types":           []string{"parry/" + s.Playbook},
	}
	e := Event{
		"category_uid":  CategoryFindings,
		"category_name": "Findings",
		"class_uid":     ClassDetection,
		"class_name":    "Detection Finding",
		"activity_id":   1,
		"activity_name": "Create",
		"type_uid":      ClassDetection*100 + 1,
		"type_name":     "Detection Finding: Create",
		"time":          millis(s.Opened),
		"severity_id":   severityID(s.Severity),
		"severity":      severityName(s.Severity),
		"status_id":     statusID,
		"status":        status,
		"is_alert":      true,
		"message":       title,
		"metadata":      metadata(s, p),
		"finding_info":  info,
		"resources":     resources(s),
		"confidence_id": confidenceID(s.Score),
		"risk_score":    s.Score,
	}
	if s.State == journal.IncidentClosed {
		e["end_time"] = millis(s.Closed)
		e["comment"] = "closed by " + s.ClosedBy
	}
	return e
}

func remediationEvent(s journal.IncidentSummary, st journal.StepOutcome, r remediation, p Product) Event {
	statusID, status := 1, "Success"
	message := strings.Join(st.Applied, "; ")
	if st.Outcome != "done" {
		statusID, status = 2, "Failure"
		message = st.Reason
	}
	md := metadata(s, p)
	md["uid"] = s.ID + "/" + st.Step
	return Event{
		"category_uid":    CategoryRemediation,
		"category_name":   "Remediation",
		"class_uid":       ClassRemediation,
		"class_name":      "Remediation Activity",
		"activity_id":     r.activityID,
		"activity_name":   r.activity,
		"type_uid":        ClassRemediation*100 + r.activityID,
		"type_name":       "Remediation Activity: " + r.activity,
		"time":            millis(s.Opened.Add(st.After)),
		"severity_id":     severityID(s.Severity),
		"severity":        severityName(s.Severity),
		"status_id":       statusID,
		"status":          status,
		"message":         message,
		"metadata":        md,
		"command_uid":     s.ID + "/" + st.Step,
		"countermeasures": []Event{{"name": r.countermeasure, "uid": r.d3fend}},
		"resources":       resources(s),
	}
}

func metadata(s journal.IncidentSummary, p Product) Event {
	return Event{
		"version":         Version,
		"product":         Event{"name": p.Name, "vendor_name": p.Vendor, "version": p.Version},
		"correlation_uid": s.ID,
		"log_name":        "parry incidents",
	}
}

func resources(s journal.IncidentSummary) []Event {
	pod := Event{"type": "Kubernetes Pod", "name": s.Pod}
	if s.Namespace != "" {
		pod["namespace"] = s.Namespace
	}
	if s.PodUID != "" {
		pod["uid"] = s.PodUID
	}
	if s.Node != "" {
		pod["hostname"] = s.Node
	}
	return []Event{pod}
}

// severityID maps parry's severities onto OCSF's: 1 Informational, 2 Low,
// 3 Medium, 4 High, 5 Critical; 0 Unknown for anything else.
func severityID(s string) int {
	switch s {
	case "low":
		return 2
	case "medium":
		return 3
	case "high":
		return 4
	case "critical":
		return 5
	}
	return 0
}

func severityName(s string) string {
	return [...]string{"Unknown", "Informational", "Low", "Medium", "High", "Critical"}[severityID(s)]
}

// confidenceID maps the score: 1 Low, 2 Medium, 3 High.
func confidenceID(score int) int {
	switch {
	case score >= 80:
		return 3
	case score >= 50:
		return 2
	}
	return 1
}

// millis is OCSF's timestamp_t: milliseconds since the epoch.
func millis(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}
