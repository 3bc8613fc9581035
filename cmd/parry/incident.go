package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"k8s.io/client-go/kubernetes"
	"parry.dev/parry/internal/auth"
	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/clients"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/incident"
	"parry.dev/parry/internal/journal"
	"parry.dev/parry/internal/stack"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/sensor/api"
)

const incidentUsage = `Usage:
  parry incident close INCIDENT [flags]   lift the in-kernel blocks of the incident's pods and record who closed it

Run 'parry incident close --help' for its flags.
`

func incidentCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return subcommand("incident", "subcommand", incidentUsage, args, stdout, stderr, map[string]func([]string) error{
		"close": func(args []string) error { return incidentClose(ctx, args, stdout, stderr) },
	})
}

// closeTarget is where a close acts: the embedded default's journal and
// loopback sensor, or a cluster's quarantined pods and node sensors.
type closeTarget struct {
	pods     []incident.Pod
	opened   *cloudevents.Event
	sensors  step.SensorLocator
	closedBy string
	// brokerURL is "" when there is none to record the close in; why
	// says so.
	brokerURL, why string
	brokerHTTP     *http.Client
}

func incidentClose(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("incident close", "INCIDENT [flags]", stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: parry incident close INCIDENT [flags]

Lifts the in-kernel egress block of every pod of INCIDENT, through the
sensor of the pod's node, and records who closed it: the event
`+events.TypeIncidentClosed+` (closedBy, reason, the pods unblocked and
those that failed), which 'parry trace INCIDENT' then shows.

Under parry run (the default, or --journal) the pods come from the journal
and the operator's token from the token file beside it. In a cluster
(--kubeconfig, or KUBECONFIG without --journal) the pods are those
labelled parry.dev/quarantine for INCIDENT, and the sensors and the Broker
are called with a token of the ServiceAccount parry-system/parry-incident-closer
(TokenRequest), which you may create once bound to the Role
parry-incident-closer-token (config/610-incident-closer.yaml).

It exits 1 if any pod stays blocked. A close that cannot be recorded
(the broker unreachable) is reported but does not undo the unblock.

Flags:
`)
		fs.PrintDefaults()
	}
	journalPath := fs.String("journal", defaultJournal(), "parry run's journal: where the incident's pods are found (its token file is beside it)")
	kubeconfig := fs.String("kubeconfig", "", "close in this cluster instead (default $KUBECONFIG, unless --journal is given)")
	reason := fs.String("reason", "", "why it is closed, recorded with who closed it")
	sensorAddr := fs.String("sensor", "127.0.0.1:9470", "parry run's sensor API (its --recorder-listen)")
	sensorPort := fs.String("sensor-port", "9470", "in a cluster: the port of the sensors' API on each node's InternalIP")
	brokerURL := fs.String("broker", "", "the Broker's ingress URL to record the close at (parry run: http://127.0.0.1:8080/parry-system/parry; in a cluster none unless given, e.g. through kubectl port-forward)")
	ids, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(ids) != 1 {
		fmt.Fprintln(stderr, "parry incident close: give exactly one INCIDENT")
		fs.Usage()
		return errUsage
	}
	id := ids[0]
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["journal"] && set["kubeconfig"] {
		fmt.Fprintln(stderr, "parry incident close: give --journal (parry run) or --kubeconfig (a cluster), not both")
		return errUsage
	}
	if !set["journal"] && *kubeconfig == "" {
		*kubeconfig = os.Getenv("KUBECONFIG")
	}

	var t closeTarget
	if *kubeconfig != "" {
		t, err = clusterTarget(ctx, id, *kubeconfig, *sensorPort, *brokerURL)
	} else {
		t, err = localTarget(ctx, id, *journalPath, *sensorAddr, *brokerURL)
	}
	if err != nil {
		return err
	}

	unblocked, failed := incident.Unblock(ctx, t.pods, t.sensors)
	fmt.Fprintf(stdout, "closing incident %s as %s\n", id, t.closedBy)
	for _, p := range unblocked {
		fmt.Fprintf(stdout, "  unblocked %s\n", describePod(p))
	}
	for _, p := range failed {
		fmt.Fprintf(stdout, "  STILL BLOCKED %s: %s\n", describePod(p), p.Error)
	}

	data := events.IncidentClosed{Incident: id, ClosedBy: t.closedBy, Reason: *reason, Unblocked: unblocked, Failed: failed}
	if data.Unblocked == nil {
		data.Unblocked = []events.ClosedPod{}
	}
	e, err := incident.Closed(data, t.opened, time.Now())
	switch {
	case err != nil:
		fmt.Fprintf(stdout, "the close is not recorded: %v\n", err)
	case t.brokerURL == "":
		fmt.Fprintf(stdout, "the close is not recorded: %s\n", t.why)
	default:
		if err := incident.Publish(ctx, t.brokerHTTP, t.brokerURL, e); err != nil {
			fmt.Fprintf(stdout, "the close is not recorded: %v\n", err)
		} else {
			fmt.Fprintf(stdout, "recorded as %s %s at %s\n", e.Type(), e.ID(), t.brokerURL)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d pods of incident %s are still blocked (see above); run it again once their sensors answer", len(failed), len(t.pods), id)
	}
	return nil
}

// parseInterspersed parses flags before and after the positional
// arguments, as the synopsis "INCIDENT [flags]" reads (the flag package
// stops at the first argument that is not a flag).
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func describePod(p events.ClosedPod) string {
	return incident.Pod{UID: p.UID, Namespace: p.Namespace, Name: p.Name, Node: p.Node}.String()
}

// localTarget closes an incident of parry run: pods from its journal, the
// operator's token from the token file beside it.
func localTarget(ctx context.Context, id, journalPath, sensorAddr, brokerURL string) (closeTarget, error) {
	if _, err := os.Stat(journalPath); err != nil {
		return closeTarget{}, fmt.Errorf("no journal at %s (%w): pass parry run's --journal, or --kubeconfig to close in a cluster", journalPath, err)
	}
	j, err := journal.OpenReadOnly(ctx, journalPath)
	if err != nil {
		return closeTarget{}, err
	}
	pods, opened, err := incident.FromJournal(ctx, j, id)
	j.Close()
	if err != nil {
		return closeTarget{}, fmt.Errorf("%w, in the journal %s ('parry trace --last 20' lists recent events)", err, journalPath)
	}
	tok, err := localToken(filepath.Join(filepath.Dir(journalPath), stack.TokenFile), stack.Operator)
	if err != nil {
		return closeTarget{}, err
	}
	hc := auth.WithToken(httpclient.New(30*time.Second), auth.StaticToken(tok))
	who := stack.Operator
	if u, err := user.Current(); err == nil {
		who = u.Username + " (" + stack.Operator + ")"
	}
	if brokerURL == "" {
		brokerURL = "http://127.0.0.1:8080/" + stack.DefaultBroker
	}
	return closeTarget{pods: pods, opened: opened, sensors: step.SensorAt(sensorAddr, hc), closedBy: who, brokerURL: brokerURL, brokerHTTP: hc}, nil
}

// clusterTarget closes an incident in a cluster: pods by their quarantine
// label, the sensors and the Broker called as parry-incident-closer, the
// closer named by the API server.
func clusterTarget(ctx context.Context, id, kubeconfig, sensorPort, brokerURL string) (closeTarget, error) {
	cfg, err := clients.KubeConfig(kubeconfig)
	if err != nil {
		return closeTarget{}, err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return closeTarget{}, err
	}
	who, err := incident.WhoAmI(ctx, kube)
	if err != nil {
		return closeTarget{}, err
	}
	// Who may close is decided first: one without the Role learns which
	// to ask for before anything else.
	tok, err := incident.CloserToken(ctx, kube, api.Audience)
	if err != nil {
		return closeTarget{}, err
	}
	pods, err := incident.FromCluster(ctx, kube, id)
	if err != nil {
		return closeTarget{}, fmt.Errorf("%w, in the cluster of %s", err, kubeconfig)
	}
	hc := httpclient.New(30 * time.Second)
	t := closeTarget{pods: pods, sensors: step.NodeSensors(kube, auth.WithToken(hc, auth.StaticToken(tok)), sensorPort), closedBy: who}
	if brokerURL == "" {
		t.why = "no --broker given (the Broker's ingress is inside the cluster: port-forward to it and pass its URL, e.g. http://127.0.0.1:8080/" + stack.DefaultBroker + ")"
		return t, nil
	}
	btok, err := incident.CloserToken(ctx, kube, broker.Audience(brokerKey(brokerURL)))
	if err != nil {
		t.why = err.Error()
		return t, nil
	}
	t.brokerURL, t.brokerHTTP = brokerURL, auth.WithToken(hc, auth.StaticToken(btok))
	return t, nil
}

// brokerKey is the "namespace/name" a Broker's ingress URL ends with
// (Knative's and the embedded broker's paths are /<namespace>/<name>).
func brokerKey(url string) string {
	parts := strings.Split(strings.TrimRight(url, "/"), "/")
	if len(parts) < 2 {
		return stack.DefaultBroker
	}
	return parts[len(parts)-2] + "/" + parts[len(parts)-1]
}
