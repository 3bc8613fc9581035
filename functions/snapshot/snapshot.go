package snapshot

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"parry.dev/parry/internal/binhash"
	"parry.dev/parry/internal/redact"
	"parry.dev/parry/internal/step"
)

// Name is the step's name.
const Name = "snapshot"

// ManifestFile lists every file of a bundle with its SHA-256 digest.
const ManifestFile = "manifest.json"

// Definition declares the step and builds it, storing bundles in the
// evidence store Deps.Getenv names (EnvStore; by default the directory
// Deps.StateDir/evidence) and signing their manifests with the ed25519 key
// Deps.StateDir/evidence.key (KeyFile; created when missing). Deps.Meta
// reads the owner chain, whatever kind each owner is. Kube and Meta may be
// nil without a cluster: the bundle then holds the flight recorder only,
// and says why. Building starts the pruning of bundles older than the
// retention (EnvRetention, DefaultRetention), for as long as ctx lasts.
func Definition() step.Definition {
	s := spec()
	s.Secret = SecretName // the signing key in a cluster
	s.EnvSecret = EnvSecretName
	s.Volume = step.Volume{Claim: ClaimName, Dir: "evidence"}
	return step.Definition{Spec: s, New: func(ctx context.Context, d step.Deps) (step.Action, error) {
		getenv := d.Getenv
		if getenv == nil {
			getenv = func(string) string { return "" }
		}
		key, err := loadKey(d.SecretDir, d.StateDir)
		if err != nil {
			return nil, fmt.Errorf("the evidence signing key: %w", err)
		}
		names, err := readNames(filepath.Join(d.StateDir, RedactNamesFile))
		if err != nil {
			return nil, err
		}
		retention, err := ParseRetention(getenv(EnvRetention))
		if err != nil {
			return nil, err
		}
		store, err := OpenStore(getenv(EnvStore), d.StateDir, getenv)
		if err != nil {
			return nil, err
		}
		if s3, ok := store.(*S3Store); ok {
			if err := s3.CheckWrites(ctx); err != nil {
				return nil, err
			}
			if !s3.Conditional() {
				d.Log.Warn().Str("store", s3.Location("", "")).Msg("the S3 server ignores conditional writes (If-None-Match: *): a bundle is checked for before it is written, so two snapshots of one pod at the same instant could race")
			}
		}
		if retention > 0 {
			go pruneEvery(ctx, store, retention, pruneInterval, d.Log)
		}
		return (&snapshotter{kube: d.Kube, meta: d.Meta, sensors: d.Sensors, store: store,
			key: key, redact: redact.New(names...), proc: "/proc"}).act, nil
	}}
}

// ClaimName is the PersistentVolumeClaim that holds the evidence
// directory in a cluster.
const ClaimName = "parry-evidence"

// RedactNamesFile, in the state directory, adds names to the redaction
// rules' defaults (internal/redact): one per line or comma-separated, '#'
// starts a comment. It is optional; in a cluster a ConfigMap can be mounted
// there.
const RedactNamesFile = "redact-names"

func readNames(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for line := range strings.Lines(string(data)) {
		line, _, _ = strings.Cut(line, "#")
		for n := range strings.SplitSeq(line, ",") {
			if n = strings.TrimSpace(n); n != "" {
				names = append(names, n)
			}
		}
	}
	return names, nil
}

func spec() step.Spec {
	return step.Spec{
		Name:        Name,
		Description: "Save an evidence bundle (pod spec/status, owners, events, logs, the sensor's flight recorder, binary hashes) with a SHA-256 manifest.",
		Params: []step.Param{
			{Name: "logLines", Type: step.Int, Default: "2000", Description: "container log lines to keep per container"},
		},
		ClusterRules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
			// The pod's events, by a field selector on its UID.
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"list"}},
			{APIGroups: []string{""}, Resources: []string{"pods/log"}, Verbs: []string{"get"}},
			{APIGroups: []string{"apps"}, Resources: []string{"replicasets", "deployments", "statefulsets", "daemonsets"}, Verbs: []string{"get"}},
			{APIGroups: []string{"batch"}, Resources: []string{"jobs", "cronjobs"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
			// The node sensor's flight recorder (sensor/api: the sensor asks the API server).
			{APIGroups: []string{"parry.dev"}, Resources: []string{"sensors/history"}, Verbs: []string{"get"}},
		},
		Example: `- name: snapshot
  function: snapshot
  after: [isolate]`,
		Target:   step.TargetPod,
		Playbook: true,
		DryRun:   true,
		Sensors:  true,
		State:    true,
		// An attempt reads logs (10 s per container) and the recorder.
		Delivery: step.Delivery{Retry: 6, Backoff: 500 * time.Millisecond, Timeout: time.Minute},
	}
}

type snapshotter struct {
	kube    kubernetes.Interface
	meta    metadata.Interface
	sensors step.SensorLocator
	store   Store
	key     ed25519.PrivateKey // signs the manifests
	redact  *redact.Rules
	proc    string // where the host's /proc is
}

// Result is the reply's data.
type Result struct {
	Bundle         string            `json:"bundle"`
	ManifestSHA256 string            `json:"manifestSHA256"`
	Files          int               `json:"files"`
	PodGone        bool              `json:"podGone,omitempty"`
	Unavailable    map[string]string `json:"unavailable,omitempty"`
	DryRun         bool              `json:"dryRun,omitempty"`
	// PublicKey (base64 of the raw ed25519 key) and its Fingerprint
	// verify manifest.sig: parry evidence verify --key.
	PublicKey      string `json:"publicKey,omitempty"`
	KeyFingerprint string `json:"keyFingerprint,omitempty"`
}

// act saves the bundle of the pod an incident names.
func (s *snapshotter) act(ctx context.Context, r *step.Request) (any, error) {
	ns, uid := r.Pod.Namespace, r.Pod.UID
	// The ids name the bundle in the store: refuse what could leave it
	// ("..", "/") instead of rewriting it into another bundle's name.
	if err := checkIDs(r.Incident, uid); err != nil {
		return nil, step.Fail("%v", err)
	}
	pub := s.key.Public().(ed25519.PublicKey)
	res := Result{Bundle: s.store.Location(r.Incident, uid), Unavailable: map[string]string{}, DryRun: r.DryRun,
		PublicKey: base64.StdEncoding.EncodeToString(pub), KeyFingerprint: Fingerprint(pub)}
	// A redelivery, or a second snapshot of the pod: the bundle stored
	// first stands; reply as the first time.
	if m, sig, err := s.store.Head(ctx, r.Incident, uid); err == nil {
		return existing(res, m, sig)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if r.DryRun {
		return res, nil
	}

	b := &bundle{files: map[string][]byte{}}
	pod := r.Pod.Object
	switch {
	case s.kube == nil:
		res.Unavailable["pod.json"] = "no Kubernetes cluster (KUBECONFIG is unset): pod, owners, events and logs are not saved"
	case r.Pod.Gone:
		res.PodGone = true
		res.Unavailable["pod.json"] = "the pod no longer exists; the flight recorder holds what happened in it"
	default:
		b.json("pod.json", s.redactPod(pod))
		b.json("owners.json", s.owners(ctx, pod, res.Unavailable))
		s.logs(ctx, pod, int64(r.Params().Int("logLines")), b, res.Unavailable)
	}
	if s.kube != nil {
		evs, err := s.kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("involvedObject.uid", uid).String()})
		if err == nil {
			b.json("events.json", evs.Items)
		} else {
			res.Unavailable["events.json"] = err.Error()
		}
	}
	s.flightRecorder(ctx, r.Pod.Node, uid, b, res.Unavailable)

	files, digest, err := b.seal(s.key, res.Unavailable)
	if err != nil {
		return nil, err
	}
	if err := s.store.Put(ctx, r.Incident, uid, files); err != nil {
		var exists *ExistsError
		if !errors.As(err, &exists) {
			return nil, fmt.Errorf("storing the bundle at %s: %w", res.Bundle, err)
		}
		// another delivery stored it first
		m, sig, err := s.store.Head(ctx, r.Incident, uid)
		if err != nil {
			return nil, step.Fail("an evidence bundle is already stored at %s and cannot be read (%v): bundles are never overwritten; move it aside to take a new snapshot", res.Bundle, err)
		}
		return existing(res, m, sig)
	}
	res.ManifestSHA256, res.Files = digest, len(files)
	if len(res.Unavailable) == 0 {
		res.Unavailable = nil
	}
	return res, nil
}

// existing is the reply for a bundle the store already holds: its
// manifest's digest, and the key that signed it (an earlier key, if the
// step's key changed since). A stored bundle whose signature does not
// hold is a failure, never replaced.
func existing(res Result, manifest, sig []byte) (Result, error) {
	var m Manifest
	var c Check
	err := json.Unmarshal(manifest, &m)
	if err == nil {
		err = checkSignature(sig, manifest, nil, &c)
	}
	if err != nil {
		return Result{}, step.Fail("an evidence bundle is already stored at %s and does not verify (%v): bundles are never overwritten; check it with parry evidence get, and move it aside to take a new snapshot", res.Bundle, err)
	}
	sum := sha256.Sum256(manifest)
	res.ManifestSHA256, res.Files = hex.EncodeToString(sum[:]), len(m.Files)+2
	res.PublicKey, res.KeyFingerprint = c.SignedKey, c.SignedBy
	res.Unavailable = m.Unavailable
	return res, nil
}

// ownerResource maps the owner kinds a pod can have to their resources.
func ownerResource(kind string) (schema.GroupVersionResource, bool) {
	switch kind {
	case "ReplicaSet", "Deployment", "StatefulSet", "DaemonSet":
		return schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: strings.ToLower(kind) + "s"}, true
	case "Job", "CronJob":
		return schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: strings.ToLower(kind) + "s"}, true
	}
	return schema.GroupVersionResource{}, false
}

// owners follows the controller owner references up to the top (Pod →
// ReplicaSet → Deployment, Pod → Job → CronJob, ...).
func (s *snapshotter) owners(ctx context.Context, pod *corev1.Pod, unavailable map[string]string) []metav1.PartialObjectMetadata {
	var chain []metav1.PartialObjectMetadata
	refs := pod.OwnerReferences
	for depth := 0; len(refs) > 0 && depth < 5; depth++ {
		ref := refs[0]
		gvr, known := ownerResource(ref.Kind)
		if !known {
			chain = append(chain, metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: ref.APIVersion, Kind: ref.Kind}, ObjectMeta: metav1.ObjectMeta{Name: ref.Name, UID: ref.UID}})
			return chain
		}
		o, err := s.meta.Resource(gvr).Namespace(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			unavailable["owners.json"] = fmt.Sprintf("%s %s: %v", ref.Kind, ref.Name, err)
			return chain
		}
		o.ManagedFields = nil
		if v, ok := o.Annotations[lastApplied]; ok {
			o.Annotations[lastApplied] = redact.Value(v) // a copy of the spec, env values included
		}
		// The metadata client leaves TypeMeta empty; the bundle says what
		// each owner is.
		o.TypeMeta = metav1.TypeMeta{APIVersion: ref.APIVersion, Kind: ref.Kind}
		chain = append(chain, *o)
		refs = o.OwnerReferences
	}
	return chain
}

// logs saves each container's log through the API server; where the
// kubelet cannot serve them (or the node is fake), the reason is recorded.
func (s *snapshotter) logs(ctx context.Context, pod *corev1.Pod, lines int64, b *bundle, unavailable map[string]string) {
	for _, c := range pod.Spec.Containers {
		name := "logs/" + c.Name + ".log"
		logCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		stream, err := s.kube.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{Container: c.Name, TailLines: &lines}).Stream(logCtx)
		if err != nil {
			cancel()
			unavailable[name] = "the API server could not get the log from the kubelet: " + err.Error()
			continue
		}
		data, err := io.ReadAll(io.LimitReader(stream, 64<<20))
		stream.Close()
		cancel()
		if err != nil {
			unavailable[name] = err.Error()
			continue
		}
		b.files[name] = data
	}
}

// flightRecorder saves the sensor's history of the pod and the hashes of
// the binaries its processes run, as the sensor answers them (it sees the
// host's PIDs), else as this process's /proc gives them.
func (s *snapshotter) flightRecorder(ctx context.Context, node, uid string, b *bundle, unavailable map[string]string) {
	if s.sensors == nil {
		unavailable["flight-recorder.json"] = "no sensor is configured"
		return
	}
	c, err := s.sensors(ctx, node)
	if err != nil {
		unavailable["flight-recorder.json"] = err.Error()
		return
	}
	h, _, err := c.PodHistory(ctx, uid)
	if err != nil {
		unavailable["flight-recorder.json"] = err.Error()
		return
	}
	// The sensor redacts with its own rules; these apply again, so a
	// sensor with fewer names leaks nothing into the bundle.
	for i := range h.Cgroups {
		cg := &h.Cgroups[i]
		for j := range cg.Processes {
			cg.Processes[j].Args = s.redact.Args(cg.Processes[j].Args)
		}
		for j := range cg.Events {
			cg.Events[j].Args = s.redact.Args(cg.Events[j].Args)
		}
	}
	b.json("flight-recorder.json", h)
	// The sensor hashes the binaries: it sees the host's PIDs, which this
	// step does not in a cluster (no hostPID). A sensor that does not serve
	// them (an older one) leaves it to this process's /proc, as before.
	if bins, err := c.PodBinaries(ctx, uid); err == nil {
		b.json("binaries.json", bins)
		return
	}
	var procs []binhash.Process
	for _, cg := range h.Cgroups {
		for _, p := range cg.Processes {
			procs = append(procs, binhash.Process{PID: p.PID, Exe: p.Exe})
		}
	}
	b.json("binaries.json", binhash.Pod(s.proc, uid, procs))
}

type bundle struct{ files map[string][]byte }

func (b *bundle) json(name string, v any) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		data = []byte(fmt.Sprintf("{\"error\": %q}", err.Error()))
	}
	b.files[name] = data
}

// Manifest is manifest.json.
type Manifest struct {
	Files       map[string]string `json:"files"` // path → hex SHA-256
	Unavailable map[string]string `json:"unavailable,omitempty"`
	Written     time.Time         `json:"written"`
}

// seal is the bundle's files with its manifest and the manifest's
// signature, and the manifest's SHA-256.
func (b *bundle) seal(key ed25519.PrivateKey, unavailable map[string]string) (map[string][]byte, string, error) {
	m := Manifest{Files: map[string]string{}, Unavailable: unavailable, Written: time.Now().UTC()}
	files := make(map[string][]byte, len(b.files)+2)
	for n, data := range b.files {
		sum := sha256.Sum256(data)
		m.Files[n] = hex.EncodeToString(sum[:])
		files[n] = data
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, "", err
	}
	sig, err := sign(key, data)
	if err != nil {
		return nil, "", err
	}
	files[ManifestFile], files[SignatureFile] = data, sig
	sum := sha256.Sum256(data)
	return files, hex.EncodeToString(sum[:]), nil
}

// Verify checks every file of the bundle in dir against its manifest, and
// the manifest against its signature by the key manifest.sig names, and
// returns the manifest's own SHA-256 (compare it with the one in the
// snapshot step's reply). To check who signed it, use VerifySigned with
// the trusted key.
func Verify(dir string) (string, error) {
	c, err := VerifySigned(dir, nil)
	return c.ManifestSHA256, err
}

// redactPod is the pod as the bundle keeps it: the values of environment
// variables named like secrets, and secrets in the containers' commands
// and arguments, redacted (internal/redact); kubectl's
// last-applied-configuration annotation, a copy of the spec, is replaced
// by its hash.
func (s *snapshotter) redactPod(pod *corev1.Pod) *corev1.Pod {
	p := pod.DeepCopy()
	if v, ok := p.Annotations[lastApplied]; ok {
		p.Annotations[lastApplied] = redact.Value(v)
	}
	fix := func(c *corev1.Container) {
		c.Command, c.Args = s.redact.Args(c.Command), s.redact.Args(c.Args)
		for i := range c.Env {
			c.Env[i].Value = s.redact.Env(c.Env[i].Name, c.Env[i].Value)
		}
	}
	for i := range p.Spec.InitContainers {
		fix(&p.Spec.InitContainers[i])
	}
	for i := range p.Spec.Containers {
		fix(&p.Spec.Containers[i])
	}
	for i := range p.Spec.EphemeralContainers {
		fix((*corev1.Container)(&p.Spec.EphemeralContainers[i].EphemeralContainerCommon))
	}
	return p
}

const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// Applied says what snapshot saved, for the trace.
func (r Result) Applied() []string {
	if r.DryRun || r.ManifestSHA256 == "" {
		return nil
	}
	return []string{fmt.Sprintf("evidence bundle %s: %d files, manifest sha256 %s, signed by key %s", r.Bundle, r.Files, r.ManifestSHA256, r.KeyFingerprint)}
}
