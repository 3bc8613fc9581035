package events

import (
	"fmt"
	"strings"
)

// Entry documents one event type or extension attribute.
type Entry struct {
	Name string
	// From says who sends the type, or sets the attribute.
	From string
	Doc  string
}

// Types is the catalogue of the event types parry sends. docs/events.md is
// generated from it; a test fails when that page is stale.
func Types() []Entry {
	return []Entry{
		{TypeProcessExec, "sensor; the Tetragon ingester (parry ingest tetragon, source parry://tetragon/<node>, from Tetragon's JSON export)", "a process in a pod's cgroup called execve; data: the process, its arguments and its pod"},
		{TypeProcessExit, "sensor", "a watched process exited"},
		{TypeNetworkConnect, "sensor", "a connect() from a pod's cgroup; action=blocked when the in-kernel egress block refused it"},
		{TypeFileOpen, "sensor", "an open of a path under one of the sensor's watched prefixes"},
		{TypePrivilege, "sensor", "a privilege signal: setuid to root, ptrace, memfd execution, ... (signal names which)"},
		{TypeFalcoAlert, "the Falco adapter (parry ingest falco)", "a Falco alert from Falcosidekick, with the pod resolved (from Falco's namespace and name, else its container id, else only the node); falcorule, priority and tags to match on; data: Falco's payload as Falcosidekick sent it"},
		{TypeSensorHealth, "sensor", "the sensor's hooks and counters, every interval; severity=warning when events were lost"},
		{TypeIncidentOpened, "classify", "a playbook matched and the score reached its threshold: a new incident, with score, response and reasons"},
		{TypeIncidentJoined, "classify", "a later event of an open incident's pod and playbook, within the dedup window"},
		{TypeIncidentSuppressed, "classify", "a playbook matched but the score stayed under its threshold: recorded, not acted on"},
		{TypeIncidentClosed, "parry incident close", "a person closed the incident: data says who (closedBy), why (reason), the pods whose in-kernel block was lifted (unblocked) and those whose sensor refused or could not be reached (failed)"},
		{StepDone("<step>"), "each step", "the step succeeded; data says what it applied"},
		{StepFailed("<step>"), "each step, and parry-failed for dead-lettered deliveries", "the step gave up or refused; data.reason says why"},
	}
}

// Extensions is the catalogue of the extension attributes parry sets. Every
// value a Trigger may filter on travels as one of these: Knative filters on
// attributes only, never on data.
func Extensions() []Entry {
	return []Entry{
		{ExtNode, "sensor", "the node the event happened on"},
		{ExtPodNamespace, "sensor", "the pod's namespace"},
		{ExtPodName, "sensor", "the pod's name"},
		{ExtPodUID, "sensor", "the pod's UID (from the cgroup path, so present even when the API server is unreachable)"},
		{ExtContainer, "sensor", "the container's name in the pod spec"},
		{ExtContainerID, "sensor, ingesters", "the container's runtime id: 64 hex characters, without the runtime's scheme, whoever reported it (parry's sensor, Tetragon, Falco), so their events about one container join"},
		{ExtFalcoRule, "Falco adapter", "the Falco rule that fired"},
		{ExtPriority, "Falco adapter", "the Falco rule's priority, lower case: debug, informational, notice, warning, error, critical, alert, emergency"},
		{ExtTags, "Falco adapter", "the Falco rule's tags as ,tag1,tag2, (match one with cesql: tags LIKE '%,mitre_execution,%')"},
		{ExtImage, "sensor", "the container's image"},
		{ExtOwner, "sensor", "the pod's controller, e.g. Deployment/web"},
		{ExtExe, "sensor", "the executable of the process"},
		{ExtComm, "sensor", "the task's comm (15 bytes)"},
		{ExtUID, "sensor", "the process's real uid"},
		{ExtDestAddr, "sensor", "connect: destination address"},
		{ExtDestPort, "sensor", "connect: destination port"},
		{ExtProto, "sensor", "connect: tcp, udp, ..."},
		{ExtPath, "sensor", "open: the file's path"},
		{ExtSignal, "sensor", "privilege: setuid, ptrace, memfd, ..."},
		{ExtAction, "sensor", "what the kernel did: blocked for a refused connect"},
		{ExtRule, "classify", "the playbook that matched"},
		{ExtSeverity, "sensor, classify", "low, medium, high or critical; warning on a lossy health event"},
		{ExtIncident, "classify", "the incident id; every later step of the incident carries it"},
		{ExtIncidentSeal, "classify", "an HMAC under the key parry's steps share of the incident, playbook and pod (UID, namespace, name): steps refuse an incident without a valid one, so incident ids cannot be invented or reused for another pod"},
		{ExtPlaybook, "classify", "the playbook whose steps run"},
		{ExtResponse, "classify", fmt.Sprintf("%s, %s or %s: what the guardrails allow; steps do not run for %s", ResponseAct, ResponseDryRun, ResponseEscalate, ResponseEscalate)},
		{ExtScore, "classify", "the incident's score, 0-100"},
		{ExtDescription, "classify", "the playbook's description, for people (not inherited by later steps)"},
		{ExtStep, "each step", "the step that replied"},
		{ExtTraceparent, "every sender", "W3C trace context, carried from the sensor through every step"},
		{ExtCausation, "every reply", "the id of the event that caused this one"},
	}
}

// Markdown renders the catalogue as docs/events.md.
func Markdown() []byte {
	var b strings.Builder
	b.WriteString("# Events\n\n<!-- Generated from internal/events (catalog.go). DO NOT EDIT: go test ./internal/events -run Catalogue -update -->\n\n")
	b.WriteString("Every step of a response is a CloudEvent. Types are reverse-DNS and versioned; a breaking change to an event's data gets a new version. Ids are derived from the occurrence (a sensor event) or from the cause and the replying step, so a redelivery carries the same id.\n\n")
	b.WriteString("## Types\n\n| type | sent by | meaning |\n| --- | --- | --- |\n")
	for _, e := range Types() {
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", e.Name, e.From, e.Doc)
	}
	b.WriteString("\n## Extension attributes\n\nKnative Triggers filter on attributes only, never on `data`, so everything a playbook matches on or routes by is an extension attribute (1-20 characters of a-z and 0-9).\n\n| attribute | set by | meaning |\n| --- | --- | --- |\n")
	for _, e := range Extensions() {
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", e.Name, e.From, e.Doc)
	}
	fmt.Fprintf(&b, "\nA reply inherits these from its cause unless it sets them itself: %s.\n", "`"+strings.Join(inherited, "`, `")+"`")
	return []byte(b.String())
}
