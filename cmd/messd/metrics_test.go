package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads url's metrics in the text format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/plain") // the text format, not protobuf
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return fams
}

// value is the value of the series of name whose labels include want; 0
// when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
			}
		}
		if !match {
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

func TestMetrics_workload(t *testing.T) {
	ts := startServer(t)
	metricsURL := ts.URL + "/metrics"
	key := ts.register(t, "mx", "alice")

	before := scrape(t, metricsURL)
	createdRoute := map[string]string{"method": "POST", "route": "/api/v1/exchanges/{exchange_id}/requests", "code": "201"}
	const n = 7
	for range n {
		ts.create(t, "mx", key, map[string]any{"intent": "count me"})
	}
	// A 404 for an unknown thread is counted under the pattern, not the
	// raw path with its ref.
	if code := ts.do(t, "GET", ts.api("mx")+"/requests/nope-123", key, nil, nil); code != http.StatusNotFound {
		t.Fatalf("unknown thread: %d", code)
	}
	lc := leaseClient(t, ts, "mx", "bob")
	if _, err := lc.Acquire(context.Background(), "metrics/held", time.Minute); err != nil {
		t.Fatal(err)
	}
	after := scrape(t, metricsURL)

	if d := value(after, "mess_http_requests_total", createdRoute) - value(before, "mess_http_requests_total", createdRoute); d != n {
		t.Errorf("requests for %v moved by %v, want %d", createdRoute, d, n)
	}
	notFound := map[string]string{"method": "GET", "route": "/api/v1/exchanges/{exchange_id}/requests/{ref}", "code": "404"}
	if got := value(after, "mess_http_requests_total", notFound); got != 1 {
		t.Errorf("requests for %v = %v, want 1", notFound, got)
	}
	for _, m := range after["mess_http_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "route" && (strings.Contains(l.GetValue(), "/mx/") || strings.Contains(l.GetValue(), "nope-123")) {
				t.Errorf("a route label holds a raw path: %q", l.GetValue())
			}
		}
	}
	createdLatency := map[string]string{"method": "POST", "route": createdRoute["route"]}
	if d := value(after, "mess_http_request_duration_seconds", createdLatency) - value(before, "mess_http_request_duration_seconds", createdLatency); d != n {
		t.Errorf("latency observations moved by %v, want %d", d, n)
	}
	events := map[string]string{"log": "events"}
	if d := value(after, "mess_journal_records_total", events) - value(before, "mess_journal_records_total", events); d < n {
		t.Errorf("events committed moved by %v, want >= %d", d, n)
	}
	if got := value(after, "mess_journal_write_duration_seconds", events); got < 1 {
		t.Errorf("no durable write timed for events: %v", got)
	}
	if got := value(after, "mess_journal_batch_appends", events); got < 1 {
		t.Errorf("no group commit counted for events: %v", got)
	}
	if got := value(after, "mess_leases_held", nil); got != 1 {
		t.Errorf("mess_leases_held = %v, want 1", got)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "mess_build_info", "mess_mailbus_connections", "mess_mailbus_deliveries_total", "mess_notify_queued", "mess_lease_waiters", "mess_open_streams"} {
		if after[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
}

func TestMetrics_ownListener(t *testing.T) {
	addr := freeAddr(t)
	ts := startServer(t, withEnv("METRICS_ADDR", addr))
	if code := ts.do(t, "GET", ts.URL+"/metrics", "", nil, nil); code == http.StatusOK {
		t.Errorf("GET /metrics on the API listener = 200 with METRICS_ADDR set")
	}
	fams := scrape(t, "http://"+addr+"/metrics")
	if fams["mess_http_requests_total"] == nil {
		t.Error("mess_http_requests_total missing on METRICS_ADDR")
	}
}

func TestHealthBuildInfo(t *testing.T) {
	ts := startServer(t)
	var h map[string]string
	if code := ts.do(t, "GET", ts.URL+"/health", "", nil, &h); code != http.StatusOK {
		t.Fatalf("health: %d", code)
	}
	bi := readBuildInfo()
	if h["status"] != "ok" || h["version"] != bi.Version || h["go_version"] != bi.GoVersion || h["go_version"] == "" {
		t.Errorf("health = %v, want version %q and go_version %q", h, bi.Version, bi.GoVersion)
	}
	if _, ok := h["revision"]; !ok {
		t.Errorf("health has no revision field: %v", h)
	}
}
