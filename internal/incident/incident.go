// Package incident closes incidents: it finds an incident's pods (in the
// journal under parry run, by their quarantine label in a cluster), lifts
// each pod's in-kernel egress block through its node's sensor, and builds
// and publishes dev.parry.incident.closed.v1, which records who closed it.
//
// Lifting a block is the one sensor action no step may take
// (sensors.parry.dev/unblock): in a cluster only the ServiceAccount
// parry-incident-closer has it, and who may close an incident is who may
// create that account's tokens (config/610-incident-closer.yaml).
package incident

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/labels"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/publish"
	"parry.dev/parry/internal/step"
)

// CloserManifest is where the closer's ServiceAccount and the Role that
// may create its tokens are shipped; errors name it.
const CloserManifest = "config/610-incident-closer.yaml"

// closerTokenRole is the Role of CloserManifest whose binding lets a person
// close incidents.
const closerTokenRole = "parry-incident-closer-token"

// Source is the CloudEvents source of the closed events.
const Source = "parry://cli/incident-close"

// ErrUnknown: no pod of the incident was found where the caller looked.
var ErrUnknown = errors.New("unknown incident")

// Pod is one pod of an incident and the node whose sensor blocks it.
type Pod struct {
	UID, Namespace, Name, Node string
}

func (p Pod) String() string {
	s := "pod " + p.UID
	if p.Name != "" {
		s += " (" + p.Namespace + "/" + p.Name + ")"
	}
	if p.Node != "" {
		s += " on node " + p.Node
	}
	return s
}

// FromJournal returns the pods the journal's events of incident name (their
// poduid, with the node, namespace and name they carry), and the event that
// opened it (nil when the journal lacks it), which the closed event is
// caused by so that `parry trace` shows the close in the incident's tree.
func FromJournal(ctx context.Context, j *journal.Journal, incident string) ([]Pod, *cloudevents.Event, error) {
	trees, err := j.Incident(ctx, incident)
	if errors.Is(err, journal.ErrNotFound) {
		return nil, nil, fmt.Errorf("%w %q: no event of the journal names it", ErrUnknown, incident)
	}
	if err != nil {
		return nil, nil, err
	}
	var pods []Pod
	var opened *cloudevents.Event
	var walk func(n *journal.Node)
	walk = func(n *journal.Node) {
		if n.Incident == incident {
			e := n.Event
			if e.Type() == events.TypeIncidentOpened && opened == nil {
				opened = &e
			}
			uid := events.String(e, events.ExtPodUID)
			if uid != "" && !slices.ContainsFunc(pods, func(p Pod) bool { return p.UID == uid }) {
				pods = append(pods, Pod{UID: uid, Node: events.String(e, events.ExtNode),
					Namespace: events.String(e, events.ExtPodNamespace), Name: events.String(e, events.ExtPodName)})
			}
		}
		for _, c := range n.Children {
			walk(c)
		}
	}
	for _, t := range trees {
		walk(t)
	}
	if len(pods) == 0 {
		return nil, nil, fmt.Errorf("%w %q: its events in the journal name no pod (no %s attribute)", ErrUnknown, incident, events.ExtPodUID)
	}
	return pods, opened, nil
}

// FromCluster returns the pods quarantined for incident: labelled
// parry.dev/quarantine with the incident's label value and annotated
// parry.dev/incident with the incident itself (the label value may be
// shortened, so the annotation decides).
func FromCluster(ctx context.Context, kube kubernetes.Interface, incident string) ([]Pod, error) {
	sel := labels.Quarantine + "=" + labels.Value(incident)
	list, err := kube.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("listing the pods labelled %s in all namespaces (closing needs list on pods): %w", sel, err)
	}
	var pods []Pod
	for _, p := range list.Items {
		if p.Annotations[labels.Incident] == incident {
			pods = append(pods, Pod{UID: string(p.UID), Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName})
		}
	}
	if len(pods) == 0 {
		return nil, fmt.Errorf("%w %q: no pod is labelled %s with annotation %s=%s (respawn may have deleted it, which ends its block)", ErrUnknown, incident, sel, labels.Incident, incident)
	}
	return pods, nil
}

// CloserToken mints a short-lived token of the ServiceAccount
// parry-incident-closer for audience by TokenRequest. A caller who may not
// is told which Role to be bound to.
func CloserToken(ctx context.Context, kube kubernetes.Interface, audience string) (string, error) {
	expiry := int64((10 * time.Minute).Seconds()) // the API server's minimum
	tr, err := kube.CoreV1().ServiceAccounts(playbook.Namespace).CreateToken(ctx, playbook.IncidentCloserServiceAccount,
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	sa := playbook.Namespace + "/" + playbook.IncidentCloserServiceAccount
	switch {
	case apierrors.IsForbidden(err):
		return "", fmt.Errorf("you may not create tokens of the ServiceAccount %s, which closes incidents: ask for a RoleBinding in %s to the Role %s (%s): %w",
			sa, playbook.Namespace, closerTokenRole, CloserManifest, err)
	case apierrors.IsNotFound(err):
		return "", fmt.Errorf("the ServiceAccount %s does not exist: apply %s: %w", sa, CloserManifest, err)
	case err != nil:
		return "", fmt.Errorf("requesting a token of %s for audience %s: %w", sa, audience, err)
	}
	return tr.Status.Token, nil
}

// WhoAmI is the username the API server knows the caller by
// (SelfSubjectReview): the person recorded as having closed an incident.
func WhoAmI(ctx context.Context, kube kubernetes.Interface) (string, error) {
	r, err := kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("asking the API server who you are (SelfSubjectReview), to record who closed the incident: %w", err)
	}
	return r.Status.UserInfo.Username, nil
}

// Unblock lifts each pod's block through its node's sensor and returns
// the pods unblocked and those that failed, with the sensor's reason.
func Unblock(ctx context.Context, pods []Pod, sensors step.SensorLocator) (unblocked, failed []events.ClosedPod) {
	for _, p := range pods {
		cp := events.ClosedPod{UID: p.UID, Namespace: p.Namespace, Name: p.Name, Node: p.Node}
		c, err := sensors(ctx, p.Node)
		if err == nil {
			err = c.UnblockPod(ctx, p.UID)
		}
		if err != nil {
			cp.Error = err.Error()
			failed = append(failed, cp)
			continue
		}
		unblocked = append(unblocked, cp)
	}
	return unblocked, failed
}

// Closed builds the closed event of data, caused by opened when it is
// known. Each close is its own occurrence: closing twice records twice.
func Closed(data events.IncidentClosed, opened *cloudevents.Event, now time.Time) (cloudevents.Event, error) {
	e, err := events.New(events.Spec{Type: events.TypeIncidentClosed, Source: Source, Subject: data.Incident,
		Key:  data.Incident + "\x00" + data.ClosedBy + "\x00" + strconv.FormatInt(now.UnixNano(), 10),
		Time: now, Extensions: map[string]string{events.ExtIncident: data.Incident}, Data: data})
	if err != nil || opened == nil {
		return e, err
	}
	events.SetCause(&e, *opened)
	return e, events.Validate(e)
}

// Publish posts e to a broker's ingress URL with hc (which carries the
// sender's token); the error names the broker's answer.
func Publish(ctx context.Context, hc *http.Client, url string, e cloudevents.Event) error {
	a, err := publish.Post(ctx, hc, url, e)
	if err != nil {
		return err
	}
	if !a.Accepted() {
		return fmt.Errorf("the broker at %s answered %d: %s", url, a.Status, a.Reason)
	}
	return nil
}
