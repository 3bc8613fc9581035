package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"parry.dev/parry/internal/labels"
	"parry.dev/parry/internal/step"
)

// Name is the step's name.
const Name = "snapshot"

// ManifestFile lists every file of a bundle with its SHA-256 digest.
const ManifestFile = "manifest.json"

// Definition declares the step and builds it, writing bundles below
// Deps.StateDir/evidence. Deps.Meta reads the owner chain, whatever kind
// each owner is. Kube and Meta may be nil without a cluster: the bundle then
// holds the flight recorder only, and says why.
func Definition() step.Definition {
	return step.Definition{Spec: spec(), New: func(_ context.Context, d step.Deps) (step.Action, error) {
		return (&snapshotter{kube: d.Kube, meta: d.Meta, sensors: d.Sensors, store: filepath.Join(d.StateDir, "evidence")}).act, nil
	}}
}

func spec() step.Spec {
	return step.Spec{
		Name:        Name,
		Description: "Save an evidence bundle (pod spec/status, owners, events, logs, the sensor's flight recorder, binary hashes) with a SHA-256 manifest.",
		Params: []step.Param{
			{Name: "logLines", Type: step.Int, Default: "2000", Description: "container log lines to keep per container"},
		},
		ClusterRules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods", "events"}, Verbs: []string{"get", "list"}},
			{APIGroups: []string{""}, Resources: []string{"pods/log"}, Verbs: []string{"get"}},
			{APIGroups: []string{"apps"}, Resources: []string{"replicasets", "deployments", "statefulsets", "daemonsets"}, Verbs: []string{"get"}},
			{APIGroups: []string{"batch"}, Resources: []string{"jobs", "cronjobs"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
		},
		Example: `- name: snapshot
  function: snapshot
  after: [isolate]`,
		Target:   step.TargetPodUID,
		Playbook: true,
		DryRun:   true,
		Sensors:  true,
		State:    true,
	}
}

type snapshotter struct {
	kube    kubernetes.Interface
	meta    metadata.Interface
	sensors step.SensorLocator
	store   string
}

// Result is the reply's data.
type Result struct {
	Bundle         string            `json:"bundle"`
	ManifestSHA256 string            `json:"manifestSHA256"`
	Files          int               `json:"files"`
	PodGone        bool              `json:"podGone,omitempty"`
	Unavailable    map[string]string `json:"unavailable,omitempty"`
	DryRun         bool              `json:"dryRun,omitempty"`
}

// act saves the bundle of the pod an incident names.
func (s *snapshotter) act(ctx context.Context, r *step.Request) (any, error) {
	ns, name, uid := r.Pod.Namespace, r.Pod.Name, r.Pod.UID
	dir := filepath.Join(s.store, labels.Sanitize(r.Incident, '_'), labels.Sanitize(uid, '_'))
	res := Result{Bundle: dir, Unavailable: map[string]string{}, DryRun: r.DryRun}
	if m, err := Verify(dir); err == nil {
		// Redelivery: the bundle is complete; reply as the first time.
		res.ManifestSHA256, res.Files = m, countFiles(dir)
		return res, nil
	}
	if r.DryRun {
		return res, nil
	}

	var err error
	b := &bundle{files: map[string][]byte{}}
	var pod *corev1.Pod
	if s.kube != nil {
		pod, err = s.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	}
	switch {
	case s.kube == nil:
		res.Unavailable["pod.json"] = "no Kubernetes cluster (KUBECONFIG is unset): pod, owners, events and logs are not saved"
	case apierrors.IsNotFound(err) || (err == nil && string(pod.UID) != uid):
		res.PodGone = true
		res.Unavailable["pod.json"] = "the pod no longer exists; the flight recorder holds what happened in it"
		pod = nil
	case apierrors.IsForbidden(err):
		return nil, step.Fail("RBAC: %v", err)
	case err != nil:
		return nil, fmt.Errorf("reading pod %s/%s: %w (retried per the Trigger's delivery spec)", ns, name, err)
	default:
		b.json("pod.json", pod)
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
	node := r.Node
	if node == "" && pod != nil {
		node = pod.Spec.NodeName
	}
	s.flightRecorder(ctx, node, uid, b, res.Unavailable)

	m, err := b.write(dir, res.Unavailable)
	if err != nil {
		return nil, fmt.Errorf("writing the bundle to %s: %w", dir, err)
	}
	res.ManifestSHA256, res.Files = m, len(b.files)+1
	if len(res.Unavailable) == 0 {
		res.Unavailable = nil
	}
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

// flightRecorder saves the sensor's history of the pod and hashes the
// binaries it executed, where this process can read them.
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
	h, raw, err := c.PodHistory(ctx, uid)
	if err != nil {
		unavailable["flight-recorder.json"] = err.Error()
		return
	}
	b.files["flight-recorder.json"] = raw
	hashes := map[string]string{}
	for _, cg := range h.Cgroups {
		for _, p := range cg.Processes {
			if _, done := hashes[p.Exe]; done || p.Exe == "" {
				continue
			}
			hashes[p.Exe] = hashBinary(p.PID, p.Exe)
		}
	}
	b.json("binaries.json", hashes)
}

// hashBinary hashes the executable of a live process (which survives the
// file's deletion) or else the path; the result says which, or why neither.
func hashBinary(pid uint32, exe string) string {
	for _, path := range []string{"/proc/" + strconv.Itoa(int(pid)) + "/exe", exe} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err == nil {
			return "sha256:" + hex.EncodeToString(h.Sum(nil)) + " (" + path + ")"
		}
	}
	return "unreadable: the process has exited and " + exe + " is not readable from here"
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

// write stores the files, then the manifest last, each via a temporary
// file and rename, so a crash leaves no bundle that verifies but is partial.
func (b *bundle) write(dir string, unavailable map[string]string) (string, error) {
	m := Manifest{Files: map[string]string{}, Unavailable: unavailable, Written: time.Now().UTC()}
	names := make([]string, 0, len(b.files))
	for n := range b.files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		sum := sha256.Sum256(b.files[n])
		m.Files[n] = hex.EncodeToString(sum[:])
		if err := writeFile(filepath.Join(dir, n), b.files[n]); err != nil {
			return "", err
		}
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return "", err
	}
	if err := writeFile(filepath.Join(dir, ManifestFile), data); err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o400)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Verify checks every file of the bundle in dir against its manifest and
// returns the manifest's own SHA-256 (compare it with the one in the
// snapshot step's reply).
func Verify(dir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return "", err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return "", fmt.Errorf("%s: malformed manifest: %w", dir, err)
	}
	var errs []error
	for name, want := range m.Files {
		content, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sum := sha256.Sum256(content)
		if got := hex.EncodeToString(sum[:]); got != want {
			errs = append(errs, fmt.Errorf("%s: SHA-256 %s, the manifest says %s: the file was changed", name, got, want))
		}
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), errors.Join(errs...)
}

func countFiles(dir string) int {
	n := 0
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}
