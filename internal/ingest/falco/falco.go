// Package falco is the Falco adapter: it takes Falcosidekick's CloudEvents
// output as Falcosidekick sends it (type falco.rule.output.v1, binary
// mode, no authentication token) and sends each alert to parry's Broker as
// a detection, dev.parry.sensor.falco.alert.v1, with the pod resolved and
// Falco's rule, priority and tags as attributes a playbook matches on.
//
// Falcosidekick cannot send a bearer token, so the adapter is the sender
// parry trusts: it posts with its own identity (the ServiceAccount
// parry-ingest-falco, which an EventPolicy lets send Falco alerts and
// nothing else). What may reach the adapter is bounded twice: a shared key
// Falcosidekick sends as a CloudEvents extension it is configured with
// (cloudevents.extensions.parrykey), compared in constant time, and in a
// cluster a NetworkPolicy that admits only Falcosidekick's pods.
package falco

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/internal/publish"
	"parry.dev/parry/internal/step"
)

// Falcosidekick's CloudEvents, as its outputs/cloudevents.go sends them.
const (
	// Type is the type Falcosidekick sends.
	Type = "falco.rule.output.v1"
	// KeyExtension carries the shared key; Falcosidekick sends it when its
	// config says cloudevents.extensions.parrykey.
	KeyExtension = "parrykey"
)

// Payload is Falco's alert as Falcosidekick sends it in data.
type Payload struct {
	UUID         string         `json:"uuid"`
	Output       string         `json:"output"`
	Priority     string         `json:"priority"`
	Rule         string         `json:"rule"`
	Time         time.Time      `json:"time"`
	OutputFields map[string]any `json:"output_fields"`
	Source       string         `json:"source"`
	Tags         []string       `json:"tags"`
	Hostname     string         `json:"hostname"`
}

// Pods resolves the pod an alert is about; nil without a cluster.
type Pods interface {
	ByName(namespace, name string) (*corev1.Pod, bool)
	ByContainer(id string) (*corev1.Pod, string, bool)
}

// Adapter receives Falcosidekick's events and forwards them to the Broker.
type Adapter struct {
	// Broker is the Broker's ingress URL; HTTP sends there with the
	// adapter's token (auth.WithToken).
	Broker string
	HTTP   *http.Client
	// Key is the shared key Falcosidekick must send; empty accepts any
	// sender that can reach the adapter (say so at start).
	Key  []byte
	Pods Pods
	Log  zerolog.Logger
}

// maxBody bounds what the adapter reads of one request, as the broker does.
const maxBody = 1 << 20

func (a *Adapter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "send Falcosidekick's CloudEvents with POST", http.StatusMethodNotAllowed)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
	if err != nil {
		http.Error(w, "not a CloudEvent from Falcosidekick: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(a.Key) > 0 {
		got := events.String(*e, KeyExtension)
		if subtle.ConstantTimeCompare([]byte(got), a.Key) != 1 {
			a.Log.Warn().Str(logging.FieldEventID, e.ID()).Str("sender", r.RemoteAddr).Msg("refused a Falco alert without the shared key")
			http.Error(w, "the event carries no valid "+KeyExtension+" extension: configure Falcosidekick's cloudevents.extensions."+KeyExtension+" with the adapter's key", http.StatusUnauthorized)
			return
		}
	}
	alert, err := a.Translate(*e)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	answer, err := publish.Post(r.Context(), a.HTTP, a.Broker, alert)
	if err != nil {
		a.Log.Error().Err(err).Str(logging.FieldEventID, alert.ID()).Msg("the Broker could not be reached; Falcosidekick may retry")
		http.Error(w, "the Broker could not be reached: "+err.Error(), http.StatusBadGateway)
		return
	}
	if !answer.Accepted() {
		a.Log.Warn().Int("status", answer.Status).Str("answer", answer.Reason).Str(logging.FieldEventID, alert.ID()).Msg("the Broker refused a Falco alert")
	}
	w.WriteHeader(answer.Status)
	io.WriteString(w, answer.Reason)
}

// Translate turns one of Falcosidekick's events into parry's Falco alert.
func (a *Adapter) Translate(e cloudevents.Event) (cloudevents.Event, error) {
	if e.Type() != Type {
		return cloudevents.Event{}, fmt.Errorf("type %q is not Falcosidekick's %s", e.Type(), Type)
	}
	var p Payload
	if err := json.Unmarshal(e.Data(), &p); err != nil {
		return cloudevents.Event{}, fmt.Errorf("data is not Falco's alert payload: %w", err)
	}
	if p.Rule == "" {
		p.Rule = events.String(e, "rule")
	}
	if p.Priority == "" {
		p.Priority = events.String(e, "priority")
	}
	if p.Hostname == "" {
		p.Hostname = events.String(e, "hostname")
	}
	if p.Rule == "" || p.Priority == "" {
		return cloudevents.Event{}, errors.New("the alert names no rule or priority")
	}
	ext := map[string]string{
		events.ExtFalcoRule: p.Rule,
		events.ExtPriority:  strings.ToLower(p.Priority),
		events.ExtSeverity:  severity(p.Priority),
	}
	if len(p.Tags) > 0 {
		ext[events.ExtTags] = "," + strings.Join(p.Tags, ",") + ","
	}
	if p.Hostname != "" {
		ext[events.ExtNode] = p.Hostname
	}
	field := func(name string) string {
		if v, ok := p.OutputFields[name].(string); ok && v != "<NA>" {
			return v
		}
		return ""
	}
	for attr, f := range map[string]string{events.ExtComm: "proc.name", events.ExtExe: "proc.exepath", events.ExtImage: "container.image.repository"} {
		if v := field(f); v != "" {
			ext[attr] = v
		}
	}
	a.resolve(ext, field("k8s.ns.name"), field("k8s.pod.name"), field("container.id"))
	key := p.UUID
	if key == "" {
		key = e.Source() + "\x00" + e.ID()
	}
	at := p.Time
	if at.IsZero() {
		at = e.Time()
	}
	source := "parry://falco"
	if p.Hostname != "" {
		source += "/" + p.Hostname
	}
	// The payload travels as Falcosidekick sent it (the key is an
	// extension, not in it).
	return events.New(events.Spec{Type: events.TypeFalcoAlert, Source: source, Key: key, Time: at, Extensions: ext, Data: json.RawMessage(e.Data())})
}

// resolve names the pod from what Falco's output fields hold: the
// namespace and name, else the container id (Falco prints 12 characters),
// else only the node. Without a cluster the namespace and name are taken
// as they are, and the steps' checks decide.
func (a *Adapter) resolve(ext map[string]string, ns, name, container string) {
	if container != "" && container != "host" {
		ext[events.ExtContainerID] = container
	}
	if a.Pods == nil {
		if ns != "" && name != "" {
			ext[events.ExtPodNamespace], ext[events.ExtPodName] = ns, name
		}
		return
	}
	var pod *corev1.Pod
	var ok bool
	if ns != "" && name != "" {
		pod, ok = a.Pods.ByName(ns, name)
	}
	if !ok && container != "" && container != "host" {
		var whole string
		if pod, whole, ok = a.Pods.ByContainer(container); ok {
			ext[events.ExtContainerID] = whole
		}
	}
	if !ok {
		return
	}
	ext[events.ExtPodNamespace], ext[events.ExtPodName], ext[events.ExtPodUID] = pod.Namespace, pod.Name, string(pod.UID)
	if pod.Spec.NodeName != "" {
		ext[events.ExtNode] = pod.Spec.NodeName
	}
	if id := ext[events.ExtContainerID]; id != "" {
		for _, whole := range step.ContainerIDs(pod) {
			if strings.HasPrefix(whole, id) {
				ext[events.ExtContainerID] = whole
			}
		}
	}
}

// severity maps Falco's priority onto parry's severities.
func severity(priority string) string {
	switch strings.ToLower(priority) {
	case "emergency", "alert", "critical":
		return "critical"
	case "error":
		return "high"
	case "warning":
		return "medium"
	}
	return "low"
}
