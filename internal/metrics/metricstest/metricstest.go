// Package metricstest scrapes a /metrics endpoint over HTTP and parses it
// with Prometheus's own text parser, for tests that assert by how much a
// counter or a histogram moved.
package metricstest

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape is one scrape: the parsed families and the raw text.
type Scrape struct {
	Families map[string]*dto.MetricFamily
	Text     string
}

// Get scrapes url (a /metrics endpoint) or fails the test.
func Get(t testing.TB, url string) Scrape {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("GET %s: not the Prometheus text format: %v", url, err)
	}
	return Scrape{Families: fams, Text: string(body)}
}

// Value is the value of the counter or gauge name with exactly labels, or
// a histogram's sample count; 0 when there is no such series (a counter
// not yet incremented).
func (s Scrape) Value(name string, labels map[string]string) float64 {
	fam := s.Families[name]
	if fam == nil {
		return 0
	}
	for _, m := range fam.GetMetric() {
		if !sameLabels(m.GetLabel(), labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return 0
}

func sameLabels(got []*dto.LabelPair, want map[string]string) bool {
	n := 0
	for _, l := range got {
		if l.GetValue() == "" {
			continue // an empty label is no label in Prometheus
		}
		if want[l.GetName()] != l.GetValue() {
			return false
		}
		n++
	}
	for _, v := range want {
		if v == "" {
			n++
		}
	}
	return n == len(want)
}
