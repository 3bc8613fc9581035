package attrib

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"parry.dev/parry/sensor/internal/cgroups"
)

const (
	uid = "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6"
	us  = "0d1e2f3a_4b5c_6d7e_8f90_a1b2c3d4e5f6"
	cid = "4f3e2d1c0b0a09080706050403020100ffeeddccbbaa99887766554433221100"
)

type fakeRes map[uint64]string

func (f fakeRes) Path(id uint64) (string, error) {
	if p, ok := f[id]; ok {
		return p, nil
	}
	return "", cgroups.ErrGone
}

func TestIdentifyCachesAndOutlivesCgroup(t *testing.T) {
	res := fakeRes{7: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice/cri-containerd-" + cid + ".scope"}
	a := New(res, nil, time.Minute, 0)
	now := time.Now()
	id := a.Identify(7, "", "", now)
	if id.PodUID != uid || id.ContainerID != cid || id.CgroupPath == "" {
		t.Fatalf("%+v", id)
	}
	delete(res, 7) // the cgroup is removed: the cached identity stays
	if got := a.Identify(7, "", "", now.Add(30*time.Second)); got.PodUID != uid {
		t.Fatalf("lost after removal: %+v", got)
	}
	a.Sweep(now.Add(80 * time.Second))
	if a.Len() != 1 {
		t.Fatalf("swept an entry seen 50s ago (ttl 1m)")
	}
	a.Sweep(now.Add(2 * time.Minute))
	if a.Len() != 0 {
		t.Fatalf("kept an entry past its TTL")
	}
}

// A cgroup removed before its first record is read is attributed from the
// names the exec record carries.
func TestIdentifyFromExecNames(t *testing.T) {
	a := New(fakeRes{}, nil, time.Minute, 0)
	id := a.Identify(9, "cri-containerd-"+cid+".scope", "kubepods-besteffort-pod"+us+".slice", time.Now())
	if id.PodUID != uid || id.ContainerID != cid {
		t.Fatalf("%+v", id)
	}
	// an unresolved entry learns from a later exec's names
	a2 := New(fakeRes{}, nil, time.Minute, 0)
	if id := a2.Identify(9, "", "", time.Now()); id.PodUID != "" {
		t.Fatal(id)
	}
	if id := a2.Identify(9, "cri-containerd-"+cid+".scope", "kubepods-besteffort-pod"+us+".slice", time.Now()); id.PodUID != uid {
		t.Fatalf("not upgraded: %+v", id)
	}
	if got := a2.OfPod(uid); len(got) != 1 || got[0].CgroupID != 9 {
		t.Fatalf("OfPod: %+v", got)
	}
}

func TestIdentifyBounded(t *testing.T) {
	a := New(fakeRes{}, nil, time.Hour, 100)
	now := time.Now()
	for i := range 1000 {
		a.Identify(uint64(i), "", "", now.Add(time.Duration(i)))
	}
	if a.Len() > 100 {
		t.Fatalf("%d entries, max 100", a.Len())
	}
}

// TestInformerKeepsDeletedPods: a pod deleted from the API server is still
// named (with Deleted set) for the TTL.
func TestInformerKeepsDeletedPods(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-5d4f8b7c9-abcde", Namespace: "shop", UID: types.UID(uid),
			Labels: map[string]string{"pod-template-hash": "5d4f8b7c9"},
			OwnerReferences: []metav1.OwnerReference{{
				Kind: "ReplicaSet", Name: "web-5d4f8b7c9", Controller: ptr(true), APIVersion: "apps/v1", UID: "rs",
			}},
		},
		Spec: corev1.PodSpec{NodeName: "node-a"},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{
			Name: "app", Image: "registry/web:1.2", ImageID: "registry/web@sha256:ab", ContainerID: "containerd://" + cid,
		}}},
	}
	cs := fake.NewClientset(pod)
	inf := NewInformer(cs, "", 300*time.Millisecond, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go inf.Run(ctx)
	waitFor(t, func() bool { _, ok := inf.Pod(uid); return ok })

	a := New(fakeRes{1: "/kubepods/besteffort/pod" + uid + "/" + cid}, inf, time.Minute, 0)
	pm, cm, ok := a.Meta(a.Identify(1, "", "", time.Now()))
	if !ok || pm.Namespace != "shop" || pm.Name != "web-5d4f8b7c9-abcde" || pm.Owner != "Deployment/web" || cm.Name != "app" || cm.Image != "registry/web:1.2" {
		t.Fatalf("meta %+v %+v %v", pm, cm, ok)
	}

	if err := cs.CoreV1().Pods("shop").Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { m, _ := inf.Pod(uid); return m.Deleted })
	if m, ok := inf.Pod(uid); !ok || m.Name != pod.Name {
		t.Fatalf("deleted pod forgotten at once: %+v", m)
	}
	inf.sweep(time.Now().Add(time.Second))
	if _, ok := inf.Pod(uid); ok {
		t.Fatal("tombstone kept past its TTL")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 5s")
}

func ptr[T any](v T) *T { return &v }
