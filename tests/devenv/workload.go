package devenv

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// WebDeployment creates the namespace ns (if missing) and in it a
// Deployment "web" of replicas pods labelled app=web, and returns its
// Running pods once it is available (see WaitWeb).
func WebDeployment(t testing.TB, cs kubernetes.Interface, ns string, replicas int32) []corev1.Pod {
	t.Helper()
	ctx := context.Background()
	cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	labels := map[string]string{"app": "web"}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/web:1"}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return WaitWeb(t, cs, ns, replicas)
}

// WaitWeb waits until the Deployment ns/web has replicas available and as
// many Running pods labelled app=web that are not being deleted, and
// returns those pods.
func WaitWeb(t testing.TB, cs kubernetes.Interface, ns string, replicas int32) []corev1.Pod {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		d, err := cs.AppsV1().Deployments(ns).Get(context.Background(), "web", metav1.GetOptions{})
		if err != nil || d.Status.AvailableReplicas != replicas {
			continue
		}
		pods, _ := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=web"})
		var running []corev1.Pod
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				running = append(running, p)
			}
		}
		if int32(len(running)) == replicas {
			return running
		}
	}
	t.Fatalf("Deployment %s/web never had %d available replicas", ns, replicas)
	return nil
}
