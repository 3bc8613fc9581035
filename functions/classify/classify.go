package classify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"go.uber.org/zap"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/eventfilter/subscriptionsapi"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/guard"
	"parry.dev/parry/internal/playbook"
	"parry.dev/parry/internal/step"
	"parry.dev/parry/sensor/api"
)

// Name is the step's name: its Knative Service and reply types.
const Name = playbook.RootFunction

// Definition declares classify and builds it from the compiled playbook
// bundle (Deps.Playbooks: classify evaluates the playbooks' match filters
// itself, so it needs the whole bundle), keeping baselines, open incidents
// and circuit breakers in PostgreSQL (Deps.Postgres) in a cluster, else in
// Deps.StateDir/classify.json.
func Definition() step.Definition {
	return step.Definition{Spec: spec(), New: func(ctx context.Context, d step.Deps) (step.Action, error) {
		bundle, ok := d.Playbooks.(*playbook.Bundle)
		if !ok {
			return nil, fmt.Errorf("classify needs the compiled playbook bundle, got %T", d.Playbooks)
		}
		c, err := New(ctx, Options{Bundle: bundle, StorePath: filepath.Join(d.StateDir, "classify.json"), Postgres: d.Postgres,
			IncidentKey: d.IncidentKey, Log: d.Log})
		if err != nil {
			return nil, err
		}
		return c.act, nil
	}}
}

func spec() step.Spec {
	return step.Spec{
		Name:        Name,
		Description: "Open an incident for a playbook's matching events (or join the open one), score it against the workload's baseline, and apply the guardrails.",
		Params: []step.Param{
			{Name: "threshold", Type: step.Int, Default: "40", Description: "score (0-100) at which an incident opens; below it the event is recorded as suppressed"},
			{Name: "dedupWindow", Type: step.Duration, Default: "10m", Description: "events of the same pod and playbook within this time of the incident's last event join it"},
		},
		Example:  "- function: classify\n  params: {threshold: 40, dedupWindow: 10m}\n",
		Playbook: true,
		Root:     true,
		Replies:  true,
		State:    true,
		Postgres: true,
		// classify answers in microseconds and touches no API: a few quick
		// retries cover a restart of its own process.
		Delivery: step.Delivery{Retry: 5, Backoff: 100 * time.Millisecond, Timeout: 10 * time.Second},
	}
}

// Options configure a Classifier.
type Options struct {
	Bundle *playbook.Bundle
	// StorePath is the JSON file baselines, open incidents and circuit
	// breakers persist in when Postgres is nil; "" keeps them in memory.
	StorePath string
	// Postgres keeps them in PostgreSQL instead, shared by every replica
	// (classify's tables are created or migrated by New).
	Postgres *pgxpool.Pool
	// IncidentKey seals the incidents classify opens (step.Seal); the
	// steps refuse incidents without a valid seal.
	IncidentKey []byte
	// LearningWindow is how long after a workload's first event its
	// baseline keeps learning; anomalies count only after it.
	LearningWindow time.Duration
	// SensorLossWindow: a loss reported this recently makes the sensor
	// unhealthy for playbooks with requireHealthySensor.
	SensorLossWindow time.Duration
	Now              func() time.Time
	Log              zerolog.Logger
}

// Classifier is the classify step. It is safe for concurrent use, and
// several Classifiers (replicas) may share one PostgreSQL.
type Classifier struct {
	opts     Options
	matchers []matcher
	store    store
}

type matcher struct {
	pb     playbook.Compiled
	filter eventfilter.Filter
}

// New opens the store and builds the playbooks' filters.
func New(ctx context.Context, opts Options) (*Classifier, error) {
	if opts.Bundle == nil {
		return nil, fmt.Errorf("classify: no playbook bundle (compile the playbooks with `parry playbook compile`)")
	}
	if len(opts.IncidentKey) == 0 {
		return nil, fmt.Errorf("classify: no incident key, so it cannot seal the incidents it opens (mount the Secret %s)", step.IncidentKeySecret)
	}
	if opts.LearningWindow == 0 {
		opts.LearningWindow = 10 * time.Minute
	}
	if opts.SensorLossWindow == 0 {
		opts.SensorLossWindow = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &Classifier{opts: opts}
	var err error
	if opts.Postgres != nil {
		c.store, err = newPGStore(ctx, opts.Postgres, opts.Log)
	} else {
		c.store, err = loadFileStore(opts.StorePath)
	}
	if err != nil {
		return nil, err
	}
	pbs := slices.Clone(opts.Bundle.Playbooks)
	// Most severe first, then by name: the playbook an event gets is
	// deterministic when several match.
	slices.SortStableFunc(pbs, func(a, b playbook.Compiled) int {
		if d := severityRank(b.Severity) - severityRank(a.Severity); d != 0 {
			return d
		}
		return strings.Compare(a.Name, b.Name)
	})
	for _, pb := range pbs {
		f := subscriptionsapi.CreateSubscriptionsAPIFilters(zap.NewNop(), playbook.Knative(pb.Match))
		c.matchers = append(c.matchers, matcher{pb: pb, filter: f})
	}
	return c, nil
}

// act classifies one event: a step.Reply, or nil when the event opens,
// joins or suppresses no incident.
func (c *Classifier) act(ctx context.Context, r *step.Request) (any, error) {
	e := r.Event
	now := c.opts.Now()
	if e.Type() == events.TypeSensorHealth {
		if events.String(e, events.ExtSeverity) == "warning" {
			s := scope{now: now, node: events.String(e, events.ExtNode)}
			return nil, c.store.update(ctx, s, func(st *state) error {
				st.Loss[s.node] = now
				return nil
			})
		}
		return nil, nil
	}
	if !strings.HasPrefix(e.Type(), events.TypeSensorPrefix) {
		// Incidents come from sensor events only; never from replies,
		// which inherit the pod's extensions and could match again.
		return nil, nil
	}
	var pb *playbook.Compiled
	for i := range c.matchers {
		if c.matchers[i].filter.Filter(ctx, e) == eventfilter.PassFilter {
			pb = &c.matchers[i].pb
			break
		}
	}
	s := scope{now: now, workload: workload(e), pod: pod(e), node: events.String(e, events.ExtNode)}
	if pb != nil {
		s.playbook = pb.Name
	}
	obs := observe(e)
	var reply any
	err := c.store.update(ctx, s, func(st *state) error {
		reasons, anomaly := c.anomaly(st, s.workload, obs, now)
		c.learn(st, s.workload, obs, now)
		if pb == nil {
			return nil
		}
		r, err := c.classify(st, e, *pb, s.workload, reasons, anomaly, now)
		reply = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return reply, nil
}

// observation is what an event tells about its workload's behaviour.
type observation struct {
	exe, dest, port string
	hosts           []string
}

func observe(e cloudevents.Event) observation {
	o := observation{exe: events.String(e, events.ExtExe), port: events.String(e, events.ExtDestPort)}
	if a := events.String(e, events.ExtDestAddr); a != "" {
		o.dest = a + ":" + o.port
	}
	if e.Type() == events.TypeProcessExec {
		var d api.EventData
		if json.Unmarshal(e.Data(), &d) == nil {
			o.hosts = hostNames(d.Args)
		}
	}
	return o
}

// workload is the baseline's key: the pod's controller when known, so all
// replicas share one baseline, else the pod, else the node.
func workload(e cloudevents.Event) string {
	ns := events.String(e, events.ExtPodNamespace)
	if owner := events.String(e, events.ExtOwner); owner != "" {
		return ns + "/" + owner
	}
	if uid := events.String(e, events.ExtPodUID); uid != "" {
		return "pod/" + uid
	}
	return "node/" + events.String(e, events.ExtNode)
}

// pod is the dedup key's pod part.
func pod(e cloudevents.Event) string {
	if uid := events.String(e, events.ExtPodUID); uid != "" {
		return uid
	}
	return "node/" + events.String(e, events.ExtNode)
}

// Points of the anomaly score, each with its reason.
const (
	pointsNewExe     = 15
	pointsNewDest    = 10
	pointsNewPort    = 10
	pointsHighEntopy = 15
	entropyThreshold = 3.5 // bits per character of a host name's longest label
)

func (c *Classifier) anomaly(st *state, wl string, o observation, now time.Time) ([]string, int) {
	var reasons []string
	score := 0
	for _, h := range o.hosts {
		if ent := hostEntropy(h); ent >= entropyThreshold {
			score += pointsHighEntopy
			reasons = append(reasons, fmt.Sprintf("+%d: host name %s has a high-entropy label (%.2f bits/char ≥ %.1f), typical of generated mining-pool and C2 domains", pointsHighEntopy, h, ent, entropyThreshold))
			break
		}
	}
	b := st.Workloads[wl]
	if b == nil || now.Sub(b.Since) < c.opts.LearningWindow {
		since := now
		if b != nil {
			since = b.Since
		}
		reasons = append(reasons, fmt.Sprintf("+0: workload %s is still learning its baseline (until %s); no baseline anomaly points", wl, since.Add(c.opts.LearningWindow).UTC().Format(time.RFC3339)))
		return reasons, score
	}
	if o.exe != "" && !b.Exes[o.exe] {
		score += pointsNewExe
		reasons = append(reasons, fmt.Sprintf("+%d: executable %s is not in workload %s's baseline (%d executables)", pointsNewExe, o.exe, wl, len(b.Exes)))
	}
	if o.dest != "" && !b.Dests[o.dest] {
		score += pointsNewDest
		reasons = append(reasons, fmt.Sprintf("+%d: destination %s is not in workload %s's baseline (%d destinations)", pointsNewDest, o.dest, wl, len(b.Dests)))
	}
	if o.port != "" && !b.Ports[o.port] {
		score += pointsNewPort
		reasons = append(reasons, fmt.Sprintf("+%d: port %s is not in workload %s's baseline (%d ports)", pointsNewPort, o.port, wl, len(b.Ports)))
	}
	return reasons, score
}

// learn adds o to the workload's baseline while it is learning (the
// store bounds how many baselines it keeps).
func (c *Classifier) learn(st *state, wl string, o observation, now time.Time) {
	b := st.Workloads[wl]
	if b == nil {
		b = &baseline{Since: now, Exes: set{}, Dests: set{}, Ports: set{}}
		st.Workloads[wl] = b
	}
	if now.Sub(b.Since) >= c.opts.LearningWindow {
		return
	}
	for s, v := range map[*set]string{&b.Exes: o.exe, &b.Dests: o.dest, &b.Ports: o.port} {
		if v != "" {
			(*s)[v] = true
		}
	}
}

func (c *Classifier) classify(st *state, e cloudevents.Event, pb playbook.Compiled, wl string, anomalyReasons []string, anomaly int, now time.Time) (step.Reply, error) {
	params, ok := c.opts.Bundle.Step(pb.Name, Name)
	if !ok {
		return step.Reply{}, fmt.Errorf("playbook %s has no classify step in the bundle (recompile the playbooks)", pb.Name)
	}
	threshold := params.Int("threshold")
	window := params.Duration("dedupWindow")
	key := incidentKey(pod(e), pb.Name)
	if inc := st.Incidents[key]; inc != nil && (inc.First == e.ID() || now.Sub(inc.Last) <= window) {
		if inc.First == e.ID() {
			// The same event again (another Trigger, or a redelivery):
			// the same reply, with the same id.
			return c.reply(e, events.TypeIncidentOpened, pb, inc.ID, inc.Score, inc.Response, inc.Reasons)
		}
		// now was read before this decision waited for the incident's
		// lock: another may have moved Last past it meanwhile.
		if now.After(inc.Last) {
			inc.Last = now
		}
		inc.Events++
		c.opts.Log.Debug().Str("incident", inc.ID).Str("playbook", pb.Name).Str("event_id", e.ID()).Msg("joined the open incident")
		return c.reply(e, events.TypeIncidentJoined, pb, inc.ID, inc.Score, inc.Response,
			[]string{fmt.Sprintf("joined incident %s (%d events): same pod and playbook within %s of its last event", inc.ID, inc.Events, window)})
	}
	base := severityPoints(pb.Severity)
	score := min(base+anomaly, 100)
	reasons := append([]string{fmt.Sprintf("+%d: playbook %s (%s): %s", base, pb.Name, pb.Severity, pb.Description)}, anomalyReasons...)
	if score < threshold {
		reasons = append(reasons, fmt.Sprintf("score %d is below the threshold %d: recorded, not acted on", score, threshold))
		return c.reply(e, events.TypeIncidentSuppressed, pb, "", score, "", reasons)
	}
	id := incidentID(e, pb.Name)
	response, why := c.guard(st, e, pb, now)
	reasons = append(reasons, why)
	inc := &incident{ID: id, Playbook: pb.Name, Pod: pod(e), Workload: wl, First: e.ID(),
		Opened: now, Last: now, Events: 1, Score: score, Response: response, Reasons: reasons}
	st.Incidents[key] = inc
	c.opts.Log.Info().Str("incident", inc.ID).Str("playbook", pb.Name).Int("score", score).Str("response", response).
		Str("pod", inc.Pod).Msg("incident opened")
	return c.reply(e, events.TypeIncidentOpened, pb, inc.ID, score, response, reasons)
}

// guard applies the guardrails to a new incident.
func (c *Classifier) guard(st *state, e cloudevents.Event, pb playbook.Compiled, now time.Time) (string, string) {
	g := pb.Guardrails
	if ns := events.String(e, events.ExtPodNamespace); guard.IsProtected(ns, g.ProtectedNamespaces) {
		return events.ResponseEscalate, fmt.Sprintf("escalated: namespace %s is protected; parry never acts there", ns)
	}
	if g.RateIncidents > 0 {
		br := st.Breakers[pb.Name]
		if br == nil {
			br = &guard.Breaker{}
			st.Breakers[pb.Name] = br
		}
		if refusal := br.Admit(now, pb.Name, pod(e), g); refusal != nil {
			return events.ResponseEscalate, "escalated: " + refusal.Reason
		}
	}
	if g.RequireHealthySensor {
		node := events.String(e, events.ExtNode)
		if t, ok := st.Loss[node]; ok && now.Sub(t) < c.opts.SensorLossWindow {
			return events.ResponseEscalate, fmt.Sprintf("escalated: the sensor on %s reported lost events at %s; this playbook requires a healthy sensor", node, t.UTC().Format(time.RFC3339))
		}
	}
	if g.DryRun {
		return events.ResponseDryRun, "dry run: steps report what they would do and change nothing"
	}
	return events.ResponseAct, "act: guardrails passed"
}

// Data is the data of classify's replies.
type Data struct {
	Incident    string   `json:"incident,omitempty"`
	Playbook    string   `json:"playbook"`
	Description string   `json:"description"`
	Score       int      `json:"score"`
	Severity    string   `json:"severity"`
	Response    string   `json:"response,omitempty"`
	Reasons     []string `json:"reasons"`
}

func (c *Classifier) reply(e cloudevents.Event, typ string, pb playbook.Compiled, inc string, score int, response string, reasons []string) (step.Reply, error) {
	sev := scoreSeverity(score)
	ext := map[string]string{
		events.ExtIncident: inc, events.ExtPlaybook: pb.Name, events.ExtSeverity: sev,
		events.ExtRule: pb.Name, events.ExtResponse: response, events.ExtScore: strconv.Itoa(score),
	}
	if inc != "" {
		// The seal binds the incident to this playbook and this pod; the
		// steps refuse an incident without it.
		ext[events.ExtIncidentSeal] = step.Seal(c.opts.IncidentKey, inc, pb.Name, events.String(e, events.ExtPodUID),
			events.String(e, events.ExtPodNamespace), events.String(e, events.ExtPodName))
	}
	if typ != events.TypeIncidentJoined {
		ext[events.ExtDescription] = pb.Description
	}
	return step.Reply{
		Type: typ, Key: pb.Name, Extensions: ext,
		Data: Data{Incident: inc, Playbook: pb.Name, Description: pb.Description, Score: score, Severity: sev, Response: response, Reasons: reasons},
	}, nil
}

// incidentID derives from the first event and the playbook, so a
// redelivered first event names the same incident.
func incidentID(e cloudevents.Event, playbook string) string {
	h := sha256.Sum256([]byte(e.Source() + "\x00" + e.ID() + "\x00" + playbook))
	return "inc-" + hex.EncodeToString(h[:10])
}

func severityRank(s string) int { return slices.Index(playbook.Severities, s) }

// severityPoints are the base points of a playbook's severity: medium and
// above open at the default threshold on their own; low needs anomalies.
func severityPoints(s string) int {
	switch s {
	case "critical":
		return 90
	case "high":
		return 70
	case "medium":
		return 40
	}
	return 20
}

func scoreSeverity(score int) string {
	switch {
	case score >= 90:
		return "critical"
	case score >= 70:
		return "high"
	case score >= 40:
		return "medium"
	}
	return "low"
}

var hostRE = regexp.MustCompile(`^(?:[a-zA-Z0-9-]{1,63}\.)+[a-zA-Z]{2,63}$`)

// hostNames finds host names in a command line: URLs' hosts and bare
// host[:port] arguments.
func hostNames(args []string) []string {
	var out []string
	for _, a := range args {
		for _, tok := range strings.FieldsFunc(a, func(r rune) bool { return r == ' ' || r == '=' || r == '@' }) {
			h := tok
			if u, err := url.Parse(tok); err == nil && u.Host != "" {
				h = u.Hostname()
			} else if host, _, ok := strings.Cut(tok, ":"); ok {
				h = host
			}
			if hostRE.MatchString(h) {
				out = append(out, strings.ToLower(h))
			}
		}
	}
	return out
}

// hostEntropy is the Shannon entropy (bits per character) of the longest
// label below the registered domain, where generated names put their
// randomness.
func hostEntropy(host string) float64 {
	labels := strings.Split(host, ".")
	if len(labels) > 2 {
		labels = labels[:len(labels)-2]
	} else {
		labels = labels[:1]
	}
	longest := ""
	for _, l := range labels {
		if len(l) > len(longest) {
			longest = l
		}
	}
	return entropy(longest)
}

func entropy(s string) float64 {
	if s == "" {
		return 0
	}
	counts := map[rune]int{}
	for _, r := range s {
		counts[r]++
	}
	n := float64(len([]rune(s)))
	h := 0.0
	for _, c := range counts {
		p := float64(c) / n
		h -= p * math.Log2(p)
	}
	return h
}
