package admission_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"parry.dev/parry/tests/devenv"
)

// configDocs returns every document of config/*.yaml.
func configDocs(t *testing.T) [][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("config/: %v", err)
	}
	var docs [][]byte
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for doc := range bytes.SplitSeq(data, []byte("\n---\n")) {
			docs = append(docs, doc)
		}
	}
	return docs
}

// The API server's own Pod Security admission agrees with config/: each
// namespace of config/ is made here with its labels (under a test name),
// and every pod config/ runs (the steps' Knative Services, the sensor's
// DaemonSet) is created in it with a server-side dry run and admitted;
// the sensor's pod is refused by parry-system's level.
func TestConfigPodsPassPodSecurity(t *testing.T) {
	env := devenv.Require(t)
	ctx := t.Context()
	admin, err := kubernetes.NewForConfig(env.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	type doc struct {
		Kind     string
		Metadata metav1.ObjectMeta
		Spec     struct {
			Template struct {
				Metadata metav1.ObjectMeta
				Spec     *corev1.PodSpec
			}
		}
	}
	var docs []doc
	for _, data := range configDocs(t) {
		var d doc
		if err := yaml.Unmarshal(data, &d); err != nil {
			t.Fatal(err)
		}
		docs = append(docs, d)
	}
	// config's namespace -> this test's namespace with the same labels.
	testNS := map[string]string{}
	for _, d := range docs {
		if d.Kind != "Namespace" {
			continue
		}
		ns, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "psa-" + d.Metadata.Name + "-", Labels: d.Metadata.Labels}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		testNS[d.Metadata.Name] = ns.Name
		t.Cleanup(func() { _ = admin.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	}
	create := func(ns string, d doc) error {
		spec := d.Spec.Template.Spec.DeepCopy()
		for i := range spec.Containers {
			if spec.Containers[i].Name == "" {
				spec.Containers[i].Name = "user-container" // Knative's name
			}
		}
		if sa := spec.ServiceAccountName; sa != "" {
			_, _ = admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		}
		_, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: strings.ToLower(d.Kind) + "-" + d.Metadata.Name}, Spec: *spec},
			metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err
	}
	pods := 0
	for _, d := range docs {
		if d.Spec.Template.Spec == nil || len(d.Spec.Template.Spec.Containers) == 0 {
			continue
		}
		pods++
		ns, ok := testNS[d.Metadata.Namespace]
		if !ok {
			t.Errorf("%s %s: namespace %q is not in config/", d.Kind, d.Metadata.Name, d.Metadata.Namespace)
			continue
		}
		if err := create(ns, d); err != nil {
			t.Errorf("%s %s/%s refused in its namespace: %v", d.Kind, d.Metadata.Namespace, d.Metadata.Name, err)
		}
		if d.Kind == "DaemonSet" && d.Metadata.Name == "parry-sensor" {
			if err := create(testNS["parry-system"], d); err == nil || !strings.Contains(err.Error(), "violates PodSecurity") {
				t.Errorf("the sensor's pod in parry-system: %v, want refused by Pod Security", err)
			}
		}
	}
	if pods < 7 {
		t.Fatalf("%d pod templates in config/, want the steps' and the sensor's", pods)
	}
}
