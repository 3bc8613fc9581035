package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
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
//
// The senders share the two cores with the broker, so what they cost is
// taken from the broker's throughput. sender=raw writes each binary-mode
// request with one syscall on a kept-alive connection and reads the answer
// line by line, as a lean load generator (wrk, hey) would;
// sender=nethttp uses net/http's client, whose two goroutines per
// connection cost about a fifth of the machine. Both keep one request in
// flight per connection: no pipelining.
//
// auth=on is the default: every request carries a bearer token, checked
// against the token file, and the event against the EventPolicies (the
// sensor's, as config/ ships it); auth=off is the insecure ingress
// (--insecure-ingress), for the cost of both side by side.
func BenchmarkIngressToHandler(b *testing.B) {
	for _, s := range []struct {
		name string
		send sender
	}{{"raw", rawSender}, {"nethttp", netHTTPSender}} {
		for _, secure := range []bool{false, true} {
			name := "sender=" + s.name + "/auth=off"
			if secure {
				name = "sender=" + s.name + "/auth=on"
			}
			b.Run(name, func(b *testing.B) { benchIngress(b, s.send, secure) })
		}
	}
}

// benchPolicy lets the benchmark's sender, as config/ lets the sensor, send
// sensor events.
const benchPolicy = `---
apiVersion: eventing.knative.dev/v1alpha1
kind: EventPolicy
metadata: {name: sensor, namespace: parry-system}
spec:
  to: [{ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: parry}}]
  from: [{sub: "` + sensorUser + `"}]
  filters: [{prefix: {type: dev.parry.sensor.}}]
`

// A sender posts events from one goroutine until pb is done, with token
// ("" for none); next gives the id and the send time of each.
type sender func(b *testing.B, url, token string, pb *testing.PB, next func() (id string, sentNs int64))

func benchIngress(b *testing.B, send sender, secure bool) {
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
		if sent, err := strconv.ParseInt(events.String(e, "sentns"), 10, 64); err != nil {
			b.Errorf("event %s: sentns: %v", e.ID(), err)
		} else {
			lat <- time.Now().UnixNano() - sent
		}
		delivered.Add(1)
		return nil, nil
	}
	options := []func(*broker.Options){limited(broker.Limits{SenderEvents: -1, SenderBytes: -1, TotalEvents: -1, TotalBytes: -1})}
	token := ""
	if secure {
		file, toks := tokens(b, sensorUser)
		token = toks[sensorUser]
		options = append(options, secured(file))
	}
	h := start(b, benchTriggers(50)+benchPolicy, map[string]events.Handler{"sink": sink}, options...)
	var seq atomic.Int64
	next := func() (string, int64) {
		return "bench-" + strconv.FormatInt(seq.Add(1), 10), time.Now().UnixNano()
	}

	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	began, cpu0 := time.Now(), processCPU()
	b.RunParallel(func(pb *testing.PB) { send(b, h.url, token, pb, next) })
	for delivered.Load() < seq.Load() {
		time.Sleep(100 * time.Microsecond)
	}
	elapsed, cpu := time.Since(began), processCPU()-cpu0
	b.StopTimer()
	close(lat)
	<-done
	slices.Sort(latencies)
	if n := len(latencies); n > 0 {
		b.ReportMetric(float64(n)/elapsed.Seconds(), "events/s")
		// What one event costs the machine, senders included: less
		// sensitive than events/s to how busy the host's other guests are.
		b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/event")
		b.ReportMetric(float64(latencies[n/2])/1e3, "p50-µs")
		b.ReportMetric(float64(latencies[n*99/100])/1e3, "p99-µs")
	}
}

// processCPU is the user and system time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rawSender(b *testing.B, target, token string, pb *testing.PB, next func() (string, int64)) {
	u, err := url.Parse(target)
	if err != nil {
		b.Error(err)
		return
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		b.Error(err)
		return
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	head := "POST " + u.Path + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nCe-Specversion: 1.0\r\nCe-Source: parry://sensor/bench\r\nCe-Type: " + events.TypeNetworkConnect +
		"\r\nCe-Dport: 3333\r\nCe-Poduid: 7f8e\r\nContent-Length: 0\r\nCe-Id: "
	if token != "" {
		head = strings.Replace(head, "\r\nCe-Specversion", "\r\nAuthorization: Bearer "+token+"\r\nCe-Specversion", 1)
	}
	var req []byte
	for pb.Next() {
		id, sent := next()
		req = append(req[:0], head...)
		req = append(req, id...)
		req = append(req, "\r\nCe-Sentns: "...)
		req = strconv.AppendInt(req, sent, 10)
		req = append(req, "\r\nCe-Time: "...)
		req = time.Unix(0, sent).UTC().AppendFormat(req, time.RFC3339Nano)
		req = append(req, "\r\n\r\n"...)
		if _, err := conn.Write(req); err != nil {
			b.Error(err)
			return
		}
		if err := readAccepted(r); err != nil {
			b.Error(err)
			return
		}
	}
}

// readAccepted reads one bodiless response and fails unless it is a 202.
func readAccepted(r *bufio.Reader) error {
	status, err := r.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 202 ")) {
		return fmt.Errorf("ingress answered %q", bytes.TrimSpace(status))
	}
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			return nil
		}
		if n, ok := bytes.CutPrefix(bytes.ToLower(line), []byte("content-length: ")); ok && string(bytes.TrimSpace(n)) != "0" {
			return fmt.Errorf("ingress answered 202 with a body (%s bytes)", bytes.TrimSpace(n))
		}
	}
}

func netHTTPSender(b *testing.B, url, token string, pb *testing.PB, next func() (string, int64)) {
	client := httpclient.New(10 * time.Second)
	for pb.Next() {
		id, sent := next()
		e := cloudevents.NewEvent()
		e.SetID(id)
		e.SetSource("parry://sensor/bench")
		e.SetType(events.TypeNetworkConnect)
		e.SetExtension("dport", "3333")
		e.SetExtension("poduid", "7f8e")
		e.SetExtension("sentns", strconv.FormatInt(sent, 10))
		e.SetTime(time.Unix(0, sent))
		req, err := http.NewRequest(http.MethodPost, url, nil)
		if err != nil {
			b.Error(err)
			return
		}
		if err := cehttp.WriteRequest(context.Background(), binding.ToMessage(&e), req); err != nil {
			b.Error(err)
			return
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
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
}
