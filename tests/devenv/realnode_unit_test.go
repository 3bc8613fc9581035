package devenv

import (
	"archive/tar"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Pieces of the real node that need neither root nor the cluster tools.

func TestKwokAndRealNodeExcludeEachOther(t *testing.T) {
	err := Check(Options{Components: Kubernetes | RealNode})
	if err == nil || !strings.Contains(err.Error(), "exclude each other") {
		t.Fatalf("Kwok|RealNode: want a refusal naming the choice, got %v", err)
	}
	if got := (Knative).withDeps(); got&(RealNode|APIServer|Etcd|ControllerManager|Scheduler) != RealNode|APIServer|Etcd|ControllerManager|Scheduler {
		t.Fatalf("Knative's dependencies = %b, want the real node and the control plane", got)
	}
	if All&(RealNode|Knative) != 0 {
		t.Fatal("All includes the real node: the default environment must stay kwok's")
	}
}

func testTar(t *testing.T, files map[string]string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	f.Close()
	return p
}

func TestKnativeManifestsRewriteImagesAndSplitCRDs(t *testing.T) {
	e := &Env{Images: map[string]string{"knative/filter": "127.0.0.1:5000/knative/filter@sha256:aa"}}
	e.bins.knativeConfig = testTar(t, map[string]string{
		"config/brokers/mt-channel-broker/deployments/broker-filter.yaml": "# licence\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: mt-broker-filter, namespace: knative-eventing}\nspec:\n  template:\n    spec:\n      containers:\n      - image: ko://knative.dev/eventing/cmd/broker/filter\n",
		"config/core/100-namespace.yaml":                                  "apiVersion: v1\nkind: Namespace\nmetadata: {name: knative-eventing}\n",
		"config/core/resources/broker.yaml":                               "# only a comment\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: brokers.eventing.knative.dev}\n",
	})
	crds, rest, err := e.knativeManifests()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(crds, "brokers.eventing.knative.dev") || strings.Contains(crds, "kind: Deployment") {
		t.Errorf("CRDs part:\n%s", crds)
	}
	if strings.Contains(rest, "ko://") || !strings.Contains(rest, "image: 127.0.0.1:5000/knative/filter@sha256:aa") {
		t.Errorf("images not rewritten:\n%s", rest)
	}
	if strings.Index(rest, "kind: Namespace") > strings.Index(rest, "kind: Deployment") {
		t.Errorf("the namespace must come before what lives in it:\n%s", rest)
	}
	if strings.Count(rest, "---\n") != 2 {
		t.Errorf("want 2 documents besides the CRD (comment-only ones dropped), got:\n%s", rest)
	}

	// An image the YAML names that tools/eventing does not build.
	e.bins.knativeConfig = testTar(t, map[string]string{"config/core/x.yaml": "image: ko://knative.dev/eventing/cmd/newthing\n"})
	if _, _, err := e.knativeManifests(); err == nil || !strings.Contains(err.Error(), "cmd/newthing") || !strings.Contains(err.Error(), "tools/eventing") {
		t.Fatalf("want an error naming the unbuilt image and tools/eventing, got %v", err)
	}
}

func TestLayerIsDeterministicAndCached(t *testing.T) {
	t.Setenv("PARRY_IMAGES_CACHE", t.TempDir())
	src := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho one\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := []layerFile{{path: "app", dir: true, mode: 0o755}, {path: "app/bin", from: src, mode: 0o755}, {path: "etc/x", data: []byte("x"), mode: 0o644}}
	a, err := buildLayer(files)
	if err != nil {
		t.Fatal(err)
	}
	// Built afresh (cache entry removed): the same bytes.
	os.RemoveAll(filepath.Join(imageCache(), "layers"))
	b, err := buildLayer(files)
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Fatalf("the same files gave two layers: %+v, %+v", a, b)
	}
	if _, err := os.Stat(blobPath(imageCache(), a.Digest)); err != nil {
		t.Fatalf("the layer is not in the registry's blob directory: %v", err)
	}
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho two, longer\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := buildLayer(files)
	if err != nil {
		t.Fatal(err)
	}
	if c.Digest == a.Digest || c.DiffID == a.DiffID {
		t.Fatal("a changed file did not change the layer")
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/tmp/a\040b/c`); got != "/tmp/a b/c" {
		t.Fatalf("got %q", got)
	}
}
