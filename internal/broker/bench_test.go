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

// benchTriggers returns n Triggers in every dialect, of which exactly one
// matches the benchmark's events: the broker evaluates all of them per event.
func benchTriggers(n int) string {
	var b strings.Builder
	specs := []string{
		`filters: [{exact: {type: dev.parry.sensor.process.exec.v%d}}]`,
		`filters: [{prefix: {type: dev.parry.other%d.}}]`,
		`filters: [{cesql: "type = 'dev.parry.sensor.network.connect.v1' AND dport = '%d'"}]`,
		`filters: [{all: [{exact: {type: dev.parry.sensor.network.connect.v1}}, {suffix: {exe: /miner%d}}]}]`,
		`filters: [{any: [{exact: {podns: ns%d}}, {exact: {rule: r%d}}]}]`,
		`filters: [{not: {prefix: {type: dev.}}}, {exact: {node: n%d}}]`,
		`filter: {attributes: {type: dev.parry.sensor.file.open.v1, poduid: u%d}}`,
	}
	for i := range n - 1 {
		spec := specs[i%len(specs)]
		spec = strings.ReplaceAll(spec, "%d", strconv.Itoa(i+10000))
		fmt.Fprintf(&b, "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t%d, namespace: parry-system}\nspec:\n  broker: parry\n  %s\n  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: sink}}\n", i, spec)
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
