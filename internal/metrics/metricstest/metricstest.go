// Package metricstest scrapes a /metrics endpoint in tests and reads
// samples out of it with the Prometheus text parser, the way Prometheus
// itself would see them.
package metricstest

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Samples maps a series, written name{label="value",...} with labels
// sorted, to its value. Histograms appear as name_count, name_sum and
// name_bucket{le="..."}.
type Samples map[string]float64

// Scrape fetches url and parses it as the Prometheus text format.
func Scrape(t testing.TB, url string) Samples {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape %s: %s: %s", url, resp.Status, body)
	}
	s, err := Parse(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return s
}

// Parse reads the Prometheus text format.
func Parse(r io.Reader) (Samples, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, err
	}
	s := Samples{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			labels := m.GetLabel()
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				s[key(name, labels)] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				s[key(name, labels)] = m.GetGauge().GetValue()
			case dto.MetricType_UNTYPED:
				s[key(name, labels)] = m.GetUntyped().GetValue()
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				s[key(name+"_count", labels)] = float64(h.GetSampleCount())
				s[key(name+"_sum", labels)] = h.GetSampleSum()
				for _, b := range h.GetBucket() {
					le := strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)
					s[key(name+"_bucket", labels, "le", le)] = float64(b.GetCumulativeCount())
				}
			}
		}
	}
	return s, nil
}

func key(name string, labels []*dto.LabelPair, extra ...string) string {
	var pairs []string
	for _, l := range labels {
		pairs = append(pairs, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	for i := 0; i+1 < len(extra); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", extra[i], extra[i+1]))
	}
	if len(pairs) == 0 {
		return name
	}
	slices.Sort(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// Series writes a series key: Series("lsmtp_messages_total", "result",
// "accepted", "reason", "accepted").
func Series(name string, labelPairs ...string) string {
	return key(name, nil, labelPairs...)
}

// Get returns a series' value and whether it is present.
func (s Samples) Get(name string, labelPairs ...string) (float64, bool) {
	v, ok := s[Series(name, labelPairs...)]
	return v, ok
}

// Value returns a series' value, 0 when absent (a counter that has not
// counted yet).
func (s Samples) Value(name string, labelPairs ...string) float64 {
	return s[Series(name, labelPairs...)]
}
