package broker_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"parry.dev/parry/internal/broker"
	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/httpclient"
)

// benchTriggers returns n Triggers shaped like the ones parry's playbooks
// compile to — an exact type plus a playbook-specific condition in every
// dialect — spread over the sensor's event types, of which exactly one
// matches the benchmark's events. Each event is evaluated with Knative's
// filter code against every Trigger of its type (about a fifth of them).
func benchTriggers(n int) string {
	var b strings.Builder
	types := []string{events.TypeProcessExec, events.TypeNetworkConnect, events.TypeFileOpen, events.TypePrivilege, events.TypeIncidentOpened}
	conditions := []string{
		`{exact: {exe: /usr/bin/x%d}}`,
		`{prefix: {exe: /tmp/%d/}}`,
		`{cesql: "dport = '%d' OR exe LIKE '%%/miner%d'"}`,
		`{all: [{exact: {podns: ns%d}}, {suffix: {exe: /sh%d}}]}`,
		`{any: [{exact: {podns: ns%d}}, {exact: {rule: r%d}}]}`,
		`{not: {prefix: {exe: /usr/%d/}}}, {exact: {node: n%d}}`,
	}
	for i := range n - 1 {
		cond := strings.ReplaceAll(conditions[i%len(conditions)], "%d", strconv.Itoa(i+10000))
		fmt.Fprintf(&b, "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t%d, namespace: parry-system}\nspec:\n  broker: parry\n  filters: [{exact: {type: %s}}, %s]\n  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: sink}}\n",
			i, types[i%len(types)], cond)
	}
	fmt.Fprintf(&b, "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: match, namespace: parry-system}\nspec:\n  broker: parry\n  filters: [{exact: {type: %s}}, {cesql: \"dport = '3333'\"}]\n  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: sink}}\n", events.TypeNetworkConnect)
	return b.String()
}

// BenchmarkIngressToHandler measures the embedded default's hot path: HTTP
// ingress over loopback → 50 Triggers filtered with Knative's code → the
// journal (group-committed SQLite) → an in-process subscriber. It reports
// events/s and the p50/p99 latency from the sender's POST to the handler.
func BenchmarkIngressToHandler(b *testing.B) {
	var delivered atomic.Int64
	latencies := make([]int64, 0, 1<<20)
	lat := make(chan int64, 1<<16)
	done := make(chan struct{})
	go func() {
		for l := range lat {
			latencies = append(latencies, l)
		}
		close(done)
	}()
	sink := func(_ context.Context, e cloudevents.Event) (*cloudevents.Event, error) {
		sent, _ := strconv.ParseInt(events.String(e, "sentns"), 10, 64)
		lat <- time.Now().UnixNano() - sent
		delivered.Add(1)
		return nil, nil
	}
	h := start(b, benchTriggers(50), map[string]broker.Handler{"sink": sink})
	client := httpclient.New(10 * time.Second)
	var seq atomic.Int64

	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	began := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			e := cloudevents.NewEvent()
			e.SetID("bench-" + strconv.FormatInt(i, 10))
			e.SetSource("parry://sensor/bench")
			e.SetType(events.TypeNetworkConnect)
			e.SetExtension("dport", "3333")
			e.SetExtension("poduid", "7f8e")
			e.SetExtension("sentns", strconv.FormatInt(time.Now().UnixNano(), 10))
			req, _ := http.NewRequest(http.MethodPost, h.url, nil)
			if err := cehttp.WriteRequest(context.Background(), binding.ToMessage(&e), req); err != nil {
				b.Error(err)
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				b.Errorf("ingress answered %d", resp.StatusCode)
				return
			}
		}
	})
	for delivered.Load() < seq.Load() {
		time.Sleep(100 * time.Microsecond)
	}
	elapsed := time.Since(began)
	b.StopTimer()
	close(lat)
	<-done
	slices.Sort(latencies)
	if n := len(latencies); n > 0 {
		b.ReportMetric(float64(n)/elapsed.Seconds(), "events/s")
		b.ReportMetric(float64(latencies[n/2])/1e3, "p50-µs")
		b.ReportMetric(float64(latencies[n*99/100])/1e3, "p99-µs")
	}
}
