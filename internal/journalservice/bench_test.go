package journalservice_test

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"parry.dev/parry/internal/httpclient"
	"parry.dev/parry/internal/journalservice/journaltest"
)

// Deliveries through HTTP into PostgreSQL as the journal's Trigger makes
// them (binary mode, its token reviewed once and then cached), from 64
// concurrent senders: the service's intake, group commit included.
func BenchmarkDeliveries(b *testing.B) {
	f := start(b)
	hc := httpclient.New(0)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for range 64 {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				e := sensorEvent(b, fmt.Sprint("bench-", i))
				if code, body, err := journaltest.Deliver(b.Context(), hc, f.url, f.trigger, e, false); code != http.StatusAccepted {
					b.Errorf("%d %s %v", code, body, err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
