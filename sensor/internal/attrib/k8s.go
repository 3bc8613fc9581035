package attrib

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"parry.dev/parry/internal/clients"
)

// Clientset builds a client from a kubeconfig file, or from the pod's
// service account when kubeconfig is "" and the sensor runs in a cluster. It
// returns nil, nil when there is no cluster to talk to.
func Clientset(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	cfg, err = clients.KubeConfig(kubeconfig)
	switch {
	case errors.Is(err, clients.ErrNoCluster):
		return nil, nil
	case err != nil:
		return nil, err
	}
	cfg.UserAgent = "parry-sensor"
	return kubernetes.NewForConfig(cfg)
}

// Informer keeps PodMeta for the pods of one node, and for a TTL after a
// pod is deleted, so a pod that lived a second is still named when its
// records are read.
type Informer struct {
	inf cache.SharedIndexInformer
	ttl time.Duration
	log zerolog.Logger

	mu   sync.RWMutex
	pods map[string]PodMeta
	gone map[string]time.Time // deletion time of pods kept as tombstones
}

// NewInformer watches the pods scheduled to node ("" watches every pod).
func NewInformer(cs kubernetes.Interface, node string, ttl time.Duration, log zerolog.Logger) *Informer {
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		if node != "" {
			o.FieldSelector = "spec.nodeName=" + node
		}
	}))
	i := &Informer{
		inf:  f.Core().V1().Pods().Informer(),
		ttl:  ttl,
		log:  log,
		pods: map[string]PodMeta{},
		gone: map[string]time.Time{},
	}
	// Only what attribution needs stays in memory.
	_ = i.inf.SetTransform(func(obj any) (any, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			p.ManagedFields = nil
			p.Annotations = nil
			p.Spec = corev1.PodSpec{NodeName: p.Spec.NodeName}
		}
		return obj, nil
	})
	_, _ = i.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { i.upsert(obj) },
		UpdateFunc: func(_, obj any) { i.upsert(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			p, ok := obj.(*corev1.Pod)
			if !ok {
				return
			}
			m := metaOf(p)
			m.Deleted = true
			i.mu.Lock()
			i.pods[m.UID] = m
			i.gone[m.UID] = time.Now()
			i.mu.Unlock()
		},
	})
	return i
}

func (i *Informer) upsert(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	m := metaOf(p)
	i.mu.Lock()
	i.pods[m.UID] = m
	delete(i.gone, m.UID)
	i.mu.Unlock()
}

// Run runs the informer and the tombstone sweep until ctx is done.
func (i *Informer) Run(ctx context.Context) {
	go i.inf.Run(ctx.Done())
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), i.inf.HasSynced) {
			i.log.Info().Int("pods", i.count()).Msg("pod informer synced")
		}
	}()
	t := time.NewTicker(i.ttl/4 + time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			i.sweep(now)
		}
	}
}

func (i *Informer) sweep(now time.Time) {
	i.mu.Lock()
	defer i.mu.Unlock()
	for uid, at := range i.gone {
		if now.Sub(at) > i.ttl {
			delete(i.gone, uid)
			delete(i.pods, uid)
		}
	}
}

func (i *Informer) count() int {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return len(i.pods)
}

// Pod implements PodSource.
func (i *Informer) Pod(uid string) (PodMeta, bool) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	m, ok := i.pods[uid]
	return m, ok
}

// Synced implements PodSource.
func (i *Informer) Synced() bool { return i.inf.HasSynced() }

func metaOf(p *corev1.Pod) PodMeta {
	m := PodMeta{
		UID:        string(p.UID),
		Namespace:  p.Namespace,
		Name:       p.Name,
		Owner:      owner(p),
		Containers: map[string]ContainerMeta{},
	}
	for _, list := range [][]corev1.ContainerStatus{
		p.Status.InitContainerStatuses, p.Status.ContainerStatuses, p.Status.EphemeralContainerStatuses,
	} {
		for _, cs := range list {
			if cs.ContainerID == "" {
				continue
			}
			_, id, _ := strings.Cut(cs.ContainerID, "://")
			m.Containers[id] = ContainerMeta{Name: cs.Name, Image: cs.Image, ImageID: cs.ImageID}
		}
	}
	return m
}

// owner names the pod's controller. A ReplicaSet named <deployment>-<pod-template-hash>
// is reported as its Deployment: that is what a person recognises.
func owner(p *corev1.Pod) string {
	ref := metav1.GetControllerOf(p)
	if ref == nil {
		return ""
	}
	if ref.Kind == "ReplicaSet" {
		if h := p.Labels["pod-template-hash"]; h != "" && strings.HasSuffix(ref.Name, "-"+h) {
			return "Deployment/" + strings.TrimSuffix(ref.Name, "-"+h)
		}
	}
	return ref.Kind + "/" + ref.Name
}
