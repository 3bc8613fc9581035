package step

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	vaultapi "github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/internal/metrics"
	"parry.dev/parry/sensor/client"
)

// Definition is a step: what it declares and how it is built.
type Definition struct {
	Spec Spec
	// New builds the step's action from its dependencies. ctx lasts as long
	// as the step: background work (respawn's reaper) runs under it.
	New func(ctx context.Context, d Deps) (Action, error)
}

// Deps are the clients and settings a step may take, built once by the
// process that runs it (cmd/ reads the environment, never a step).
type Deps struct {
	// Kube and Meta are nil without a cluster.
	Kube kubernetes.Interface
	Meta metadata.Interface
	// Sensors finds the sensor of a node; nil where no sensor runs.
	Sensors SensorLocator
	// Vault is nil unless the step's Spec asks for it and one is
	// configured.
	Vault     *vaultapi.Client
	Playbooks Playbooks
	HTTP      *http.Client
	// Sink is the broker's ingress, for steps that publish.
	Sink string
	// StateDir is where a step with Spec.State keeps its files.
	StateDir string
	// SecretDir is where the Secret of Spec.Secret is mounted in a
	// cluster; "" when the step has none (under parry run).
	SecretDir string
	// Pods resolves pods by UID from a watch of the cluster's pods; nil
	// reads each pod from the API server.
	Pods *PodIndex
	// Postgres is the pool of a step with Spec.Postgres in a cluster;
	// nil under parry run, where the step keeps its state under StateDir.
	Postgres *pgxpool.Pool
	// IncidentKey verifies (and, for classify, makes) incident seals
	// (Seal). Without it a step that acts on an incident refuses every
	// event.
	IncidentKey []byte
	// Getenv reads a step's own settings (snapshot's evidence store):
	// os.Getenv in the process cmd/ starts, a map in tests; nil has none,
	// so every setting takes its default.
	Getenv func(key string) string
	// Metrics count what the runtime does with each event; nil counts
	// nothing.
	Metrics *metrics.Steps
	Log     zerolog.Logger
}

// SensorLocator returns the API of the sensor on a node.
type SensorLocator func(ctx context.Context, node string) (*client.Client, error)

// Action is what a step does for one event. It returns the data of its
// done reply, or an error: a *Failure (from Fail) makes the failed reply
// with its reason; any other error is a failed attempt that the broker
// retries per the Trigger's delivery spec. A step with Spec.Replies returns
// a Reply, or nil for no reply.
type Action func(ctx context.Context, r *Request) (any, error)

// StepConfig is what one playbook asks of one step: its parameters and its
// guardrails (dry-run among them).
type StepConfig struct {
	Params Params
	Guard  guard.Rules
}

// Playbooks finds what a playbook asks of a step. The compiled playbooks
// implement it (from config/ under parry run, from a mounted ConfigMap in a
// cluster).
type Playbooks interface {
	StepConfig(playbook, step string) (StepConfig, error)
}

// Pod is the pod an event names, as the runtime verified it. With a
// cluster, Namespace, Name and UID name a pod the API server has (Object),
// Node is where it runs, or Gone says the API server has no pod of that
// namespace, name and UID (any more). Without a cluster they are the
// event's, sealed by classify; only the sensor's own checks back them.
type Pod struct {
	Namespace, Name, UID string
	Node                 string
	Object               *corev1.Pod
	Gone                 bool
}

// Request is one event as the runtime has checked it.
type Request struct {
	Event    cloudevents.Event
	Incident string
	Playbook string
	Pod      Pod
	Node     string
	// Config is the playbook's configuration of the step (zero for a step
	// without Spec.Playbook).
	Config StepConfig
	// DryRun: describe what would be done, change nothing.
	DryRun bool
	Log    zerolog.Logger

	// outcome is metrics' name for how the runtime answered, once it
	// answered failed (failed sets it); done otherwise.
	outcome string
}

// Params are the step's parameters from the playbook.
func (r *Request) Params() Params { return r.Config.Params }

// Applier is an action's result that says, for people, what the step
// changed: the runtime adds it to the done reply's data as "applied"
// (which parry trace prints), so every step says it the same way.
type Applier interface {
	Applied() []string
}

// withApplied marshals data with its "applied" list beside its fields.
type withApplied struct {
	data    any
	applied []string
}

func (w withApplied) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(w.data)
	if err != nil || len(w.applied) == 0 {
		return b, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return b, nil // not an object: nothing to add to
	}
	if fields["applied"], err = json.Marshal(w.applied); err != nil {
		return nil, err
	}
	return json.Marshal(fields)
}

// Failure is a permanent reason not to act: the step replies failed.
type Failure struct {
	Reason string
	// Data replaces {"reason": Reason} as the failed reply's data; it
	// should carry the reason too.
	Data any
	// refusal is the runtime's reason class (metrics.BadSeal...) when its
	// own checks refused the event.
	refusal string
}

// refuse is the runtime's *Failure for a refusal of class (a reason of
// parry_step_refusals_total).
func refuse(class, format string, args ...any) error {
	return &Failure{Reason: fmt.Sprintf(format, args...), refusal: class}
}

func (f *Failure) Error() string { return f.Reason }

// Fail is a *Failure with a formatted reason.
func Fail(format string, args ...any) error {
	return &Failure{Reason: fmt.Sprintf(format, args...)}
}

// Reply is the answer of a step with Spec.Replies: an event of its own
// type, keyed (for its derived id) by Key.
type Reply struct {
	Type       string
	Key        string
	Extensions map[string]string
	Data       any
}

// Handler is the runtime around def's action a: the one events.Handler a
// step runs as, in-process and in a cluster.
func Handler(def Definition, a Action, d Deps) events.Handler {
	rt := &runtime{spec: def.Spec, action: a, playbooks: d.Playbooks, guard: guard.New(), kube: d.Kube, pods: d.Pods, key: d.IncidentKey,
		metrics: d.Metrics, log: d.Log.With().Str(logging.FieldStep, def.Spec.Name).Logger()}
	return rt.handle
}

type runtime struct {
	spec      Spec
	action    Action
	playbooks Playbooks
	guard     *guard.Guard
	kube      kubernetes.Interface
	pods      *PodIndex
	key       []byte
	metrics   *metrics.Steps
	log       zerolog.Logger
}

// handle runs one event and counts how it went.
func (rt *runtime) handle(ctx context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
	start := time.Now()
	r := &Request{
		Event:    e,
		Incident: events.String(e, events.ExtIncident),
		Playbook: events.String(e, events.ExtPlaybook),
		Pod: Pod{Namespace: events.String(e, events.ExtPodNamespace), Name: events.String(e, events.ExtPodName),
			UID: events.String(e, events.ExtPodUID)},
		Node:    events.String(e, events.ExtNode),
		outcome: metrics.StepDone,
	}
	reply, err := rt.run(ctx, r)
	if err != nil {
		r.outcome = metrics.StepError
	}
	rt.metrics.Request(rt.spec.Name, r.outcome, time.Since(start))
	if err == nil && reply != nil && reply.Type() == events.TypeIncidentOpened {
		// The playbook is classify's own (from the compiled bundle), so
		// the label's values are the configured playbooks.
		rt.metrics.IncidentOpened(events.String(*reply, events.ExtPlaybook), events.String(*reply, events.ExtResponse))
	}
	return reply, err
}

func (rt *runtime) run(ctx context.Context, r *Request) (*cloudevents.Event, error) {
	e := r.Event
	r.Log = rt.log.With().Str(logging.FieldEventID, e.ID()).Str(logging.FieldEventType, e.Type()).Str(logging.FieldIncident, r.Incident).
		Str(logging.FieldPlaybook, r.Playbook).Str(logging.FieldPodUID, r.Pod.UID).Logger()
	if reason := rt.missingTarget(r); reason != "" {
		return rt.failed(r, &Failure{Reason: reason})
	}
	if rt.spec.Playbook && !rt.spec.Root {
		if rt.playbooks == nil {
			return rt.failed(r, &Failure{Reason: fmt.Sprintf("no compiled playbooks were given to step %s", rt.spec.Name)})
		}
		cfg, err := rt.playbooks.StepConfig(r.Playbook, rt.spec.Name)
		if err != nil {
			return rt.failed(r, &Failure{Reason: fmt.Sprintf("playbook %q: %v", r.Playbook, err)})
		}
		r.Config, r.DryRun = cfg, cfg.Guard.DryRun
	}
	if rt.spec.Target != TargetNone {
		if reason := verifySeal(rt.key, e); reason != "" {
			return rt.failed(r, &Failure{Reason: "refused: " + reason, refusal: metrics.BadSeal})
		}
	}
	if rt.spec.Target == TargetPod {
		if err := rt.resolve(ctx, r); err != nil {
			var f *Failure
			if errors.As(err, &f) {
				return rt.failed(r, f)
			}
			r.Log.Error().Err(err).Msg("attempt failed; the broker retries per the Trigger's delivery spec")
			return nil, err
		}
	}
	if rt.spec.Target != TargetNone {
		pod := r.Pod.UID
		if pod == "" {
			pod = "node/" + r.Node
		}
		t := guard.Target{Playbook: r.Playbook, Namespace: r.Pod.Namespace, Pod: pod}
		if refusal := rt.guard.Admit(t, r.Config.Guard); refusal != nil {
			return rt.failed(r, &Failure{Reason: refusal.Reason, refusal: metrics.Guardrail})
		}
	}
	if r.DryRun && !rt.spec.DryRun {
		r.Log.Info().Msg("dry run: the step cannot describe its changes, so it does not run")
		return DoneReply(e, rt.spec.Name, map[string]any{"dryRun": true, "note": rt.spec.Name + " does not run in a dry run"})
	}
	data, err := rt.action(ctx, r)
	var f *Failure
	switch {
	case errors.As(err, &f):
		return rt.failed(r, f)
	case err != nil:
		r.Log.Error().Err(err).Msg("attempt failed; the broker retries per the Trigger's delivery spec")
		return nil, err
	}
	if !rt.spec.Replies {
		if a, ok := data.(Applier); ok {
			data = withApplied{data: data, applied: a.Applied()}
		}
		return DoneReply(e, rt.spec.Name, data)
	}
	reply, ok := data.(Reply)
	if data == nil || !ok {
		if data != nil {
			return nil, fmt.Errorf("step %s returned %T, want step.Reply or nil", rt.spec.Name, data)
		}
		return nil, nil
	}
	return build(e, rt.spec.Name, reply.Type, reply.Key, reply.Extensions, reply.Data)
}

func (rt *runtime) missingTarget(r *Request) string {
	p := r.Pod
	switch rt.spec.Target {
	case TargetPod:
		if r.Incident == "" || p.UID == "" {
			return "the event names no pod UID (poduid) or no incident: nothing to " + rt.spec.Name
		}
		if rt.kube != nil && (p.Namespace == "" || p.Name == "") {
			return "the event names pod " + p.UID + " without its namespace and name (podns, podname), so the API server cannot confirm which pod it is: nothing to " + rt.spec.Name
		}
	case TargetIncident:
		if r.Incident == "" {
			return "the event names no incident: nothing to " + rt.spec.Name
		}
	}
	return ""
}

// resolve checks the pod the event names against the API server: the pod
// with the event's UID (from the watch of every pod, else read by the
// event's namespace and name) must have the event's namespace and name and
// run on the node of the sensor that saw it. Namespace, name and node then
// are the API server's, not the event's. Without a cluster it only takes
// the event's node.
func (rt *runtime) resolve(ctx context.Context, r *Request) error {
	p := &r.Pod
	if rt.kube == nil {
		p.Node = r.Node
		return nil
	}
	if rt.pods != nil {
		if pod, ok := rt.pods.ByUID(p.UID); ok {
			if pod.Namespace != p.Namespace || pod.Name != p.Name {
				return refuse(metrics.WrongPod, "refused: pod %s is %s/%s, not %s/%s as the event says", p.UID, pod.Namespace, pod.Name, p.Namespace, p.Name)
			}
			return rt.place(r, pod.DeepCopy())
		}
	}
	pod, err := rt.kube.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err) || (err == nil && string(pod.UID) != p.UID):
		// Gone, or the same name now belongs to another pod (a
		// StatefulSet's successor), which must not be acted on.
		p.Gone, p.Node = true, r.Node
		return nil
	case apierrors.IsForbidden(err):
		return Fail("RBAC: %v", err)
	case err != nil:
		return fmt.Errorf("reading pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return rt.place(r, pod)
}

// place checks that pod runs on the node of the event's sensor and takes
// it as the request's pod.
func (rt *runtime) place(r *Request, pod *corev1.Pod) error {
	p := &r.Pod
	if r.Node != "" && pod.Spec.NodeName != "" && pod.Spec.NodeName != r.Node {
		return refuse(metrics.WrongNode, "refused: pod %s/%s (%s) runs on node %s, not on node %s whose sensor the event names", p.Namespace, p.Name, p.UID, pod.Spec.NodeName, r.Node)
	}
	p.Object, p.Node = pod, pod.Spec.NodeName
	if p.Node == "" {
		p.Node = r.Node
	}
	return nil
}

func (rt *runtime) failed(r *Request, f *Failure) (*cloudevents.Event, error) {
	r.outcome = metrics.StepFailed
	if f.refusal != "" {
		r.outcome = metrics.StepRefused
		rt.metrics.Refusal(rt.spec.Name, f.refusal)
	}
	r.Log.Warn().Str(logging.FieldReason, f.Reason).Msg("not acting")
	if f.Data != nil {
		return build(r.Event, rt.spec.Name, events.StepFailed(rt.spec.Name), rt.spec.Name, nil, f.Data)
	}
	return FailedReply(r.Event, rt.spec.Name, f.Reason)
}

// DoneReply is a step's reply when it succeeded: dev.parry.step.<step>.done.v1
// from parry://function/<step>, carrying the step extension and data. Its
// id derives from the cause and the step, so a redelivered cause gets the
// same reply.
func DoneReply(cause cloudevents.Event, step string, data any) (*cloudevents.Event, error) {
	return build(cause, step, events.StepDone(step), step, nil, data)
}

// FailedReply is a step's reply when it gave up or refused:
// dev.parry.step.<step>.failed.v1 with {"reason": reason}. The dead-letter
// sink builds it for the step the broker gave up on.
func FailedReply(cause cloudevents.Event, step, reason string) (*cloudevents.Event, error) {
	return build(cause, step, events.StepFailed(step), step, nil, map[string]string{"reason": reason})
}

func build(cause cloudevents.Event, step, typ, key string, ext map[string]string, data any) (*cloudevents.Event, error) {
	all := map[string]string{events.ExtStep: step}
	for k, v := range ext {
		all[k] = v
	}
	r, err := events.Reply(cause, events.Spec{Type: typ, Source: "parry://function/" + step, Key: key, Extensions: all, Data: data})
	if err != nil {
		return nil, fmt.Errorf("%s: building the reply: %w", step, err)
	}
	return &r, nil
}

// Build constructs def's action from d and returns its handler: what every
// process that runs a step calls.
func Build(ctx context.Context, def Definition, d Deps) (events.Handler, error) {
	a, err := def.New(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("step %s: %w", def.Spec.Name, err)
	}
	return Handler(def, a, d), nil
}
