package ocsf_test

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/ocsf"
)

// schema is the part of OCSF 1.3.0 the export must satisfy
// (testdata/ocsf-1.3.0-required.json).
type schema struct {
	Classes map[string]struct {
		CategoryUID int      `json:"category_uid"`
		Required    []string `json:"required"`
		ActivityIDs []int    `json:"activity_ids"`
		StatusIDs   []int    `json:"status_ids"`
	} `json:"classes"`
	Objects     map[string][]string `json:"objects"`
	SeverityIDs []int               `json:"severity_ids"`
	Integers    []string            `json:"integers"`
}

func loadSchema(t *testing.T) schema {
	t.Helper()
	b, err := os.ReadFile("testdata/ocsf-1.3.0-required.json")
	if err != nil {
		t.Fatal(err)
	}
	var s schema
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// Validate checks one event, as a SIEM would read it back from JSON,
// against the schema: its class is known, every required attribute and
// object attribute is present and non-empty, ids are integers within their
// enums, and type_uid is class_uid*100 + activity_id.
func Validate(s schema, line []byte) error {
	var e map[string]any
	if err := json.Unmarshal(line, &e); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	for _, name := range s.Integers {
		if v, ok := e[name]; ok {
			if f, isNum := v.(float64); !isNum || f != float64(int64(f)) {
				return fmt.Errorf("%s = %v: want an integer", name, v)
			}
		}
	}
	num := func(name string) int { f, _ := e[name].(float64); return int(f) }
	class, ok := s.Classes[strconv.Itoa(num("class_uid"))]
	if !ok {
		return fmt.Errorf("class_uid %v is not an exported class", e["class_uid"])
	}
	for _, name := range class.Required {
		if empty(e[name]) {
			return fmt.Errorf("class %d: required %s is missing or empty", num("class_uid"), name)
		}
	}
	for path, required := range s.Objects {
		obj, present := lookup(e, path)
		if !present {
			continue // the object is optional in this class
		}
		for _, name := range required {
			if empty(obj[name]) {
				return fmt.Errorf("%s.%s is required", path, name)
			}
		}
	}
	if num("category_uid") != class.CategoryUID {
		return fmt.Errorf("category_uid %d, want %d", num("category_uid"), class.CategoryUID)
	}
	if !slices.Contains(class.ActivityIDs, num("activity_id")) {
		return fmt.Errorf("activity_id %d not in %v", num("activity_id"), class.ActivityIDs)
	}
	if _, ok := e["status_id"]; ok && !slices.Contains(class.StatusIDs, num("status_id")) {
		return fmt.Errorf("status_id %d not in %v", num("status_id"), class.StatusIDs)
	}
	if !slices.Contains(s.SeverityIDs, num("severity_id")) {
		return fmt.Errorf("severity_id %d not in %v", num("severity_id"), s.SeverityIDs)
	}
	if num("type_uid") != num("class_uid")*100+num("activity_id") {
		return fmt.Errorf("type_uid %d != class_uid*100 + activity_id", num("type_uid"))
	}
	if md, _ := e["metadata"].(map[string]any); md["version"] != ocsf.Version {
		return fmt.Errorf("metadata.version %v, want %s", md["version"], ocsf.Version)
	}
	return nil
}

func lookup(e map[string]any, path string) (map[string]any, bool) {
	cur := e
	for _, part := range strings.Split(path, ".") {
		next, ok := cur[part].(map[string]any)
		if !ok {
			return nil, false
		}
		cur = next
	}
	return cur, true
}

func empty(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case string:
		return v == ""
	case float64:
		return false
	case map[string]any:
		return len(v) == 0
	case []any:
		return len(v) == 0
	}
	return false
}

func summary() journal.IncidentSummary {
	opened := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	return journal.IncidentSummary{
		ID: "inc-1", State: journal.IncidentClosed, Playbook: "crypto-miner", Description: "A crypto-miner in a container",
		Namespace: "shop", Pod: "web-1", PodUID: "u-1", Node: "n1", Score: 95, Severity: "critical", Response: "act",
		Reasons: []string{"+90: playbook crypto-miner"}, Opened: opened, Last: opened.Add(time.Second), ClosedBy: "alice", Closed: opened.Add(time.Hour),
		Steps: []journal.StepOutcome{
			{Step: "isolate", Outcome: "done", After: 4 * time.Millisecond, Applied: []string{"NetworkPolicy q"}},
			{Step: "snapshot", Outcome: "done", After: 90 * time.Millisecond},
			{Step: "respawn", Outcome: "failed", After: 200 * time.Millisecond, Reason: "quota"},
			{Step: "revoke", Outcome: "done", After: 30 * time.Millisecond, Applied: []string{"lease x"}},
		},
	}
}

func TestEventsFollowTheSchema(t *testing.T) {
	s := loadSchema(t)
	evs := ocsf.Events(summary(), ocsf.Product{Name: "parry", Vendor: "parry", Version: "test"})
	// One finding, and a remediation for isolate, respawn and revoke —
	// not snapshot, which observes.
	var classes []string
	for _, e := range evs {
		line, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if err := Validate(s, line); err != nil {
			t.Errorf("%v\n%s", err, line)
		}
		classes = append(classes, fmt.Sprintf("%v:%v:%v", e["class_uid"], e["activity_name"], e["status_id"]))
	}
	want := []string{"2004:Create:4", "7001:Isolate:1", "7001:Restore:2", "7001:Evict:1"}
	if !slices.Equal(classes, want) {
		t.Fatalf("events %v, want %v", classes, want)
	}
	for _, e := range evs {
		if md := e["metadata"].(ocsf.Event); md["correlation_uid"] != "inc-1" {
			t.Errorf("metadata.correlation_uid = %v: the SIEM cannot join the incident's events", md["correlation_uid"])
		}
	}
}

// The validator must be able to fail: each broken event is refused.
func TestValidatorRefusesBrokenEvents(t *testing.T) {
	s := loadSchema(t)
	good := ocsf.Events(summary(), ocsf.Product{Name: "parry", Vendor: "parry", Version: "test"})[0]
	for name, breakIt := range map[string]func(ocsf.Event){
		"no finding_info uid": func(e ocsf.Event) { e["finding_info"].(ocsf.Event)["uid"] = "" },
		"no metadata":         func(e ocsf.Event) { delete(e, "metadata") },
		"no vendor":           func(e ocsf.Event) { e["metadata"].(ocsf.Event)["product"].(ocsf.Event)["vendor_name"] = "" },
		"wrong type_uid":      func(e ocsf.Event) { e["type_uid"] = 200402 },
		"string severity":     func(e ocsf.Event) { e["severity_id"] = "5" },
		"unknown class":       func(e ocsf.Event) { e["class_uid"] = 1234 },
		"no time":             func(e ocsf.Event) { delete(e, "time") },
	} {
		t.Run(name, func(t *testing.T) {
			line, _ := json.Marshal(good)
			var e ocsf.Event
			_ = json.Unmarshal(line, &e)
			// Re-type nested maps so breakIt can reach them.
			e = retype(e)
			breakIt(e)
			broken, _ := json.Marshal(e)
			if err := Validate(s, broken); err == nil {
				t.Fatalf("accepted:\n%s", broken)
			}
		})
	}
	line, _ := json.Marshal(good)
	if err := Validate(s, line); err != nil {
		t.Fatalf("positive control refused: %v", err)
	}
}

func retype(m map[string]any) ocsf.Event {
	out := ocsf.Event{}
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			v = retype(sub)
		}
		out[k] = v
	}
	return out
}

func TestOpenIncidentIsNewAndUnknownSeverityIsZero(t *testing.T) {
	sum := summary()
	sum.State, sum.Severity, sum.Steps = journal.IncidentOpen, "weird", nil
	evs := ocsf.Events(sum, ocsf.Product{Name: "parry", Vendor: "parry", Version: "test"})
	if len(evs) != 1 || evs[0]["status_id"] != 1 || evs[0]["severity_id"] != 0 || evs[0]["end_time"] != nil {
		t.Fatalf("%v", evs)
	}
	line, _ := json.Marshal(evs[0])
	if err := Validate(loadSchema(t), line); err != nil {
		t.Fatal(err)
	}
}
