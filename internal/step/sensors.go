package step

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"parry.dev/parry/sensor/client"
)

// NodeSensors finds a node's sensor at its InternalIP: the sensor DaemonSet
// runs on the host network and serves its API on port.
func NodeSensors(kube kubernetes.Interface, hc *http.Client, port string) SensorLocator {
	return func(ctx context.Context, node string) (*client.Client, error) {
		if node == "" {
			return nil, errors.New("the event names no node, so its sensor cannot be found")
		}
		n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("finding the sensor of node %s: %w", node, err)
		}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				return client.New("http://"+net.JoinHostPort(a.Address, port), hc), nil
			}
		}
		return nil, fmt.Errorf("node %s has no InternalIP to reach its sensor at", node)
	}
}

// SensorAt is the locator of a single-node process (parry run): the one
// sensor at addr, whatever node an event names.
func SensorAt(addr string, hc *http.Client) SensorLocator {
	return func(context.Context, string) (*client.Client, error) {
		return client.New("http://"+addr, hc), nil
	}
}
