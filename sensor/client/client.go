// Package client talks to a node's sensor over its HTTP API: the in-kernel
// egress block and the flight recorder. Response steps use it in a cluster,
// where the sensor of the pod's node is another process, and under
// `parry run` alike, where it is the in-process sensor's address.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"parry.dev/parry/sensor/api"
)

// ErrNoHistory is returned when the sensor holds no history of a pod.
var ErrNoHistory = errors.New("sensor has no history of the pod")

// Client is one sensor's API.
type Client struct {
	base string
	http *http.Client
}

// New returns a client of the sensor at base (e.g. http://10.0.0.7:9470).
func New(base string, hc *http.Client) *Client {
	return &Client{base: strings.TrimSuffix(base, "/"), http: hc}
}

// BlockPod makes the kernel refuse every connect() from the pod's cgroups.
func (c *Client) BlockPod(ctx context.Context, podUID string) error {
	_, err := c.do(ctx, http.MethodPut, api.BlockPath(podUID))
	return err
}

// UnblockPod lifts BlockPod.
func (c *Client) UnblockPod(ctx context.Context, podUID string) error {
	_, err := c.do(ctx, http.MethodDelete, api.BlockPath(podUID))
	return err
}

// PodHistory returns the flight recorder's history of a pod.
func (c *Client) PodHistory(ctx context.Context, podUID string) (api.PodHistory, []byte, error) {
	body, err := c.do(ctx, http.MethodGet, api.PodPath(podUID))
	if err != nil {
		return api.PodHistory{}, nil, err
	}
	var h api.PodHistory
	if err := json.Unmarshal(body, &h); err != nil {
		return h, nil, fmt.Errorf("sensor %s: malformed pod history: %w", c.base, err)
	}
	return h, body, nil
}

// PodBinaries returns the SHA-256 of each binary the pod's live processes
// run, hashed by the sensor (it sees the host's PIDs), keyed by path, with
// the reason for each one it could not hash.
func (c *Client) PodBinaries(ctx context.Context, podUID string) (api.Binaries, error) {
	body, err := c.do(ctx, http.MethodGet, api.BinariesPath(podUID))
	if err != nil {
		return nil, err
	}
	var b api.Binaries
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, fmt.Errorf("sensor %s: malformed binaries: %w", c.base, err)
	}
	if b == nil {
		b = api.Binaries{}
	}
	return b, nil
}

// Health returns the sensor's counters, as in its health events.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	body, err := c.do(ctx, http.MethodGet, api.RouteHealth)
	if err != nil {
		return api.Health{}, err
	}
	var h api.Health
	if err := json.Unmarshal(body, &h); err != nil {
		return h, fmt.Errorf("sensor %s: malformed health: %w", c.base, err)
	}
	return h, nil
}

func (c *Client) do(ctx context.Context, method, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("sensor %s unreachable: %w", c.base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("sensor %s: reading %s: %w", c.base, path, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound && method == http.MethodGet:
		return nil, fmt.Errorf("%w: %s", ErrNoHistory, strings.TrimSpace(string(body)))
	case resp.StatusCode/100 != 2:
		return nil, fmt.Errorf("sensor %s: %s %s answered %d: %s", c.base, method, path, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return body, nil
}
