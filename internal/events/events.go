package events

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
)

// Event types. They are reverse-DNS and versioned; a breaking change to an
// event's data gets a new version suffix, never a silent change.
const (
	TypeProcessExec    = "dev.parry.sensor.process.exec.v1"
	TypeProcessExit    = "dev.parry.sensor.process.exit.v1"
	TypeNetworkConnect = "dev.parry.sensor.network.connect.v1"
	TypeFileOpen       = "dev.parry.sensor.file.open.v1"
	TypePrivilege      = "dev.parry.sensor.privilege.v1"
	TypeSensorHealth   = "dev.parry.sensor.health.v1"
	TypeIncidentOpened = "dev.parry.incident.opened.v1"
	// TypeIncidentJoined: a later event of an open incident's pod and playbook.
	TypeIncidentJoined = "dev.parry.incident.joined.v1"
	// TypeIncidentSuppressed: a playbook matched but the score stayed under
	// its threshold; recorded, not acted on.
	TypeIncidentSuppressed = "dev.parry.incident.suppressed.v1"
	// TypeIncidentClosed: a person closed an incident (parry incident
	// close): its pods' in-kernel blocks lifted, and who did it.
	TypeIncidentClosed = "dev.parry.incident.closed.v1"

	// TypeFalcoAlert is a Falco alert, as the Falco adapter (parry ingest
	// falco) turns Falcosidekick's CloudEvents into a detection: the pod
	// resolved, Falco's rule, priority and tags as attributes.
	TypeFalcoAlert = "dev.parry.sensor.falco.alert.v1"
	// TypeFalcoPrefix starts the types only the Falco adapter may send.
	TypeFalcoPrefix = "dev.parry.sensor.falco."

	// TypeSensorPrefix starts the type of every detection: the sensor's
	// events, and those other tools' adapters send (Tetragon's execs as
	// parry's own TypeProcessExec, Falco's alerts as TypeFalcoAlert). They
	// are the only events classify opens incidents for.
	TypeSensorPrefix = "dev.parry.sensor."
	typeStepPrefix   = "dev.parry.step."
)

// StepDone is the type a step replies with when it succeeded.
func StepDone(step string) string { return typeStepPrefix + step + ".done.v1" }

// StepFailed is the type a step replies with when it gave up.
func StepFailed(step string) string { return typeStepPrefix + step + ".failed.v1" }

// Extension attributes. Knative requires lower-case a-z0-9 names; Triggers
// can filter on these and on nothing inside data.
const (
	ExtNode         = "node"
	ExtPodNamespace = "podns"
	ExtPodName      = "podname"
	ExtPodUID       = "poduid"
	ExtContainer    = "container"
	ExtExe          = "exe"
	ExtDestPort     = "dport"
	ExtRule         = "rule"
	ExtSeverity     = "severity"
	ExtIncident     = "incident"
	ExtPlaybook     = "playbook"
	ExtStep         = "step"
	// ExtIncidentSeal binds incident, playbook and pod (step.Seal).
	ExtIncidentSeal = "incidentseal"
	// Falco's alert, as the Falco adapter sets them: the rule's name,
	// its priority in lower case (debug … emergency), and its tags as
	// ",tag1,tag2," so a filter can match one tag with a cesql LIKE
	// '%,tag,%'.
	ExtFalcoRule = "falcorule"
	ExtPriority  = "priority"
	ExtTags      = "tags"
	// Sensor attributes beside the ones above. ExtContainer is the
	// container's name (as in the pod spec); ExtContainerID its runtime id.
	ExtContainerID = "containerid"
	ExtImage       = "image"
	ExtOwner       = "owner"  // the pod's controller, e.g. Deployment/web
	ExtComm        = "comm"   // the task's comm (15 bytes)
	ExtUID         = "uid"    // the process's real uid
	ExtDestAddr    = "daddr"  // connect destination address
	ExtProto       = "proto"  // tcp, udp, ...
	ExtPath        = "path"   // file path of an open
	ExtSignal      = "signal" // privilege signal: setuid, ptrace, memfd, ...
	ExtAction      = "action" // what the kernel did: "blocked" for a refused connect
	// ExtTraceparent is the CloudEvents distributed-tracing extension.
	ExtTraceparent = "traceparent"
	// ExtCausation holds the id of the event that caused this one.
	ExtCausation = "causation"
	// ExtResponse is set by classify on incident.opened: one of the
	// Response values. Steps after classify do not run for escalate.
	ExtResponse = "response"
	// ExtScore carries the score (0-100) on incident events.
	ExtScore = "score"
	// ExtDescription carries the playbook's human description on
	// incident.opened and .suppressed, so that `parry trace` shows it; it
	// is for people, not for routing, and later steps do not inherit it.
	ExtDescription = "description"
)

// IncidentClosed is the data of TypeIncidentClosed.
type IncidentClosed struct {
	Incident string `json:"incident"`
	// ClosedBy is the person: their Kubernetes username, or locally the
	// OS user and the identity of the token they used.
	ClosedBy string `json:"closedBy"`
	Reason   string `json:"reason,omitempty"`
	// Unblocked are the pods whose block was lifted; Failed those whose
	// sensor refused or could not be reached, with why.
	Unblocked []ClosedPod `json:"unblocked"`
	Failed    []ClosedPod `json:"failed,omitempty"`
}

// ClosedPod is one pod of a closed incident.
type ClosedPod struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	Node      string `json:"node,omitempty"`
	Error     string `json:"error,omitempty"`
}

// Values of ExtResponse.
const (
	ResponseAct      = "act"
	ResponseDryRun   = "dryrun"
	ResponseEscalate = "escalate"
)

// inherited are the routing extensions a reply keeps from its cause, so that
// later steps of the same incident can still be filtered by pod and playbook.
var inherited = []string{
	ExtNode, ExtPodNamespace, ExtPodName, ExtPodUID, ExtContainer,
	ExtIncident, ExtPlaybook, ExtSeverity, ExtRule, ExtIncidentSeal,
}

// Spec describes an event to build. Key is the stable identity of the
// occurrence (for a sensor event: node, boot, kernel time and pid); the id is
// derived from Type, Source and Key, so building the same Spec twice yields
// the same id.
type Spec struct {
	Type       string
	Source     string
	Subject    string
	Key        string
	Time       time.Time
	Extensions map[string]string
	// Data is encoded as JSON; nil means no data.
	Data any
}

// New builds an event that starts a trace: a new trace id, derived from the
// event id so that a rebuilt event has the same traceparent.
func New(s Spec) (cloudevents.Event, error) {
	if s.Key == "" {
		return cloudevents.Event{}, errors.New("events: Spec.Key is empty: the id must be derived from the occurrence, not random")
	}
	id := deriveID(s.Type, s.Source, s.Key)
	e, err := build(id, s)
	if err != nil {
		return e, err
	}
	e.SetExtension(ExtTraceparent, traceparent(id[:32], id[32:48]))
	return e, Validate(e)
}

// Reply builds the event a step answers cause with. Its id is derived from the
// cause's id and the reply type, so a redelivered cause yields the same reply;
// the trace id is kept, the span id is new, and causation names the cause.
// Routing extensions of the cause are inherited unless s overrides them.
func Reply(cause cloudevents.Event, s Spec) (cloudevents.Event, error) {
	id := deriveID(s.Type, s.Source, cause.Source()+"\x00"+cause.ID()+"\x00"+s.Key)
	ext := make(map[string]string, len(inherited)+len(s.Extensions))
	for _, name := range inherited {
		if v, ok := cause.Extensions()[name]; ok {
			if str, ok := v.(string); ok && str != "" {
				ext[name] = str
			}
		}
	}
	for k, v := range s.Extensions {
		ext[k] = v
	}
	s.Extensions = ext
	if s.Subject == "" {
		s.Subject = cause.Subject()
	}
	e, err := build(id, s)
	if err != nil {
		return e, err
	}
	SetCause(&e, cause)
	return e, Validate(e)
}

// SetCause links e to cause: causation is cause's id and the traceparent
// continues cause's trace (or starts one from cause's id when cause carried
// none, as events from other tools may). The broker uses it for replies that
// a subscriber built without this package.
func SetCause(e *cloudevents.Event, cause cloudevents.Event) {
	e.SetExtension(ExtCausation, cause.ID())
	traceID := TraceID(cause)
	if traceID == "" {
		traceID = deriveID("trace", cause.Source(), cause.ID())[:32]
	}
	e.SetExtension(ExtTraceparent, traceparent(traceID, deriveID("span", e.Source(), e.ID())[:16]))
}

// TraceID returns the trace id of e's traceparent, or "" when it has none or
// it is malformed.
func TraceID(e cloudevents.Event) string {
	tp := String(e, ExtTraceparent)
	if !validTraceparent(tp) {
		return ""
	}
	return tp[3:35]
}

// String returns the extension attribute name of e as a string ("" when
// absent). The broker and functions read extensions only through it, so the
// loosely typed map of the SDK stays in one place. It reads a v1 context's
// map in place: Event.Extensions copies the whole map on every call, and
// GetExtension builds an error for every absent name. name is lower case,
// as the SDK stores extension names.
func String(e cloudevents.Event, name string) string {
	var v any
	var ok bool
	if ec, isV1 := e.Context.(*event.EventContextV1); isV1 {
		v, ok = ec.Extensions[name]
	} else {
		v, ok = e.Extensions()[name]
	}
	if !ok {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

func build(id string, s Spec) (cloudevents.Event, error) {
	e := cloudevents.NewEvent(cloudevents.VersionV1)
	e.SetID(id)
	e.SetType(s.Type)
	e.SetSource(s.Source)
	if s.Subject != "" {
		e.SetSubject(s.Subject)
	}
	t := s.Time
	if t.IsZero() {
		t = time.Now()
	}
	e.SetTime(t.UTC())
	for k, v := range s.Extensions {
		if v == "" {
			continue
		}
		if err := checkExtensionName(k); err != nil {
			return e, err
		}
		e.SetExtension(k, v)
	}
	if s.Data != nil {
		if err := e.SetData(cloudevents.ApplicationJSON, s.Data); err != nil {
			return e, fmt.Errorf("events: encoding data of %s: %w", s.Type, err)
		}
	}
	return e, nil
}

func deriveID(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:48]
}

func traceparent(traceID, spanID string) string {
	return "00-" + traceID + "-" + spanID + "-01"
}

// validName and validTraceparent are hand-written rather than regular
// expressions: the broker checks every attribute of every event.
func validName(name string) bool {
	if len(name) == 0 || len(name) > 20 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// validTraceparent checks the W3C form 00-<32 hex>-<16 hex>-<2 hex>.
func validTraceparent(tp string) bool {
	if len(tp) != 55 || tp[:3] != "00-" || tp[35] != '-' || tp[52] != '-' {
		return false
	}
	for i := 3; i < 55; i++ {
		if i == 35 || i == 52 {
			continue
		}
		if c := tp[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func checkExtensionName(name string) error {
	if !validName(name) {
		return fmt.Errorf("events: extension attribute %q: names must be 1-20 characters of lower-case a-z and 0-9 (CloudEvents 1.0)", name)
	}
	return nil
}

// Validate checks e against the CloudEvents 1.0 rules and parry's own:
// extension names, a well-formed traceparent. The error names the attribute.
func Validate(e cloudevents.Event) error {
	if err := e.Validate(); err != nil {
		var verr event.ValidationError
		if errors.As(err, &verr) {
			return fmt.Errorf("invalid CloudEvent: %s", describe(verr))
		}
		return fmt.Errorf("invalid CloudEvent: %w", err)
	}
	for name := range e.Extensions() {
		if err := checkExtensionName(name); err != nil {
			return err
		}
	}
	if tp, ok := e.Extensions()[ExtTraceparent]; ok {
		if s, _ := tp.(string); !validTraceparent(s) {
			return fmt.Errorf("invalid CloudEvent: attribute traceparent %q is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)", tp)
		}
	}
	return nil
}

func describe(verr event.ValidationError) string {
	msgs := make([]string, 0, len(verr))
	for attr, err := range verr {
		msgs = append(msgs, fmt.Sprintf("attribute %s: %v", attr, err))
	}
	// Map order is random; a stable message is easier to test and to grep.
	slices.Sort(msgs)
	return strings.Join(msgs, "; ")
}

// Handler handles one event and replies with one event or none. An error is
// a failed attempt: the broker retries it per the Trigger's delivery spec.
// The broker delivers to handlers and every step runs as one.
type Handler func(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error)

// ContainerID normalises a runtime's container id as Kubernetes, Tetragon
// and Falco's adapter find it (containerd://<64 hex>, cri-o://..., docker://...) to
// what parry's sensor puts in the containerid attribute: the id alone, in
// lower case, and returns the runtime's scheme beside it. An id that is
// not 64 hex characters afterwards is returned as "", so that an
// attribute meant to join events never holds something else.
func ContainerID(s string) (id, runtime string) {
	runtime, id, found := strings.Cut(s, "://")
	if !found {
		runtime, id = "", s
	}
	id = strings.ToLower(id)
	if len(id) != 64 {
		return "", runtime
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", runtime
		}
	}
	return id, runtime
}
