package step

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"parry.dev/parry/internal/events"
)

// PodIndex finds pods by UID in an informer's cache of every pod in the
// cluster, kept current by a watch: the runtime resolves the pod an event
// names without an API round trip on the way to the in-kernel block (whose
// goal is 10 ms from the kernel event), and still while the API server is
// briefly away. A pod newer than the cache is read from the API server.
// The cache holds whole pods (managedFields included: snapshot's evidence
// keeps who changed the pod).
type PodIndex struct {
	informer cache.SharedIndexInformer
}

const (
	byUID       = "uid"
	byContainer = "container"
)

// ContainerIDs are the ids of a pod's containers (init, regular and
// ephemeral) in the containerid attribute's form (events.ContainerID).
func ContainerIDs(p *corev1.Pod) []string {
	var ids []string
	for _, statuses := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses, p.Status.EphemeralContainerStatuses} {
		for _, c := range statuses {
			if id, _ := events.ContainerID(c.ContainerID); id != "" {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// shortContainerID is the 12-character prefix tools such as Falco print.
const shortContainerID = 12

// WatchPods starts the index and waits until it holds every pod. It runs
// until ctx is done.
func WatchPods(ctx context.Context, kube kubernetes.Interface) (*PodIndex, error) {
	f := informers.NewSharedInformerFactory(kube, 0)
	inf := f.Core().V1().Pods().Informer()
	if err := inf.AddIndexers(cache.Indexers{
		byUID: func(obj any) ([]string, error) {
			if p, ok := obj.(*corev1.Pod); ok {
				return []string{string(p.UID)}, nil
			}
			return nil, nil
		},
		// Every container's id, whole and as its 12-character prefix.
		byContainer: func(obj any) ([]string, error) {
			p, ok := obj.(*corev1.Pod)
			if !ok {
				return nil, nil
			}
			var keys []string
			for _, id := range ContainerIDs(p) {
				keys = append(keys, id, id[:shortContainerID])
			}
			return keys, nil
		},
	}); err != nil {
		return nil, err
	}
	f.Start(ctx.Done())
	synced, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !cache.WaitForCacheSync(synced.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("listing the cluster's pods did not finish within a minute (the step's account needs list and watch on pods)")
	}
	return &PodIndex{informer: inf}, nil
}

// ByContainer returns the cached pod running the container with id, whole
// or its 12-character prefix, with or without the runtime's scheme, and
// the container's whole id.
func (x *PodIndex) ByContainer(id string) (*corev1.Pod, string, bool) {
	id = strings.ToLower(id)
	if _, rest, ok := strings.Cut(id, "://"); ok {
		id = rest
	}
	objs, err := x.informer.GetIndexer().ByIndex(byContainer, id)
	if err != nil || len(objs) != 1 {
		return nil, "", false // none, or a 12-character prefix two containers share
	}
	p, ok := objs[0].(*corev1.Pod)
	if !ok {
		return nil, "", false
	}
	for _, whole := range ContainerIDs(p) {
		if strings.HasPrefix(whole, id) {
			return p, whole, true
		}
	}
	return p, id, true
}

// ByName returns the cached pod namespace/name.
func (x *PodIndex) ByName(namespace, name string) (*corev1.Pod, bool) {
	obj, ok, err := x.informer.GetIndexer().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return nil, false
	}
	p, ok := obj.(*corev1.Pod)
	return p, ok
}

// ByUID returns the cached pod with uid.
func (x *PodIndex) ByUID(uid string) (*corev1.Pod, bool) {
	objs, err := x.informer.GetIndexer().ByIndex(byUID, uid)
	if err != nil || len(objs) == 0 {
		return nil, false
	}
	p, ok := objs[0].(*corev1.Pod)
	return p, ok
}
