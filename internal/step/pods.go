package step

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
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

const byUID = "uid"

// WatchPods starts the index and waits until it holds every pod. It runs
// until ctx is done.
func WatchPods(ctx context.Context, kube kubernetes.Interface) (*PodIndex, error) {
	f := informers.NewSharedInformerFactory(kube, 0)
	inf := f.Core().V1().Pods().Informer()
	if err := inf.AddIndexers(cache.Indexers{byUID: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			return []string{string(p.UID)}, nil
		}
		return nil, nil
	}}); err != nil {
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

// ByUID returns the cached pod with uid.
func (x *PodIndex) ByUID(uid string) (*corev1.Pod, bool) {
	objs, err := x.informer.GetIndexer().ByIndex(byUID, uid)
	if err != nil || len(objs) == 0 {
		return nil, false
	}
	p, ok := objs[0].(*corev1.Pod)
	return p, ok
}
