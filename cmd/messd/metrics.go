package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/notify"
)

// metrics is messd's Prometheus registry. Only the HTTP middleware counts
// as requests happen; everything else is read from the services' Stats at
// scrape time, so their hot paths pay nothing for it.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	inFlight prometheus.Gauge
	open     *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mess_http_requests_total",
			Help: "HTTP requests answered, by method, route pattern and status code.",
		}, []string{"method", "route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mess_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by method and route pattern; streams and long-polls count their whole life.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"method", "route"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mess_http_requests_in_flight",
			Help: "HTTP requests being answered now.",
		}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mess_open_streams",
			Help: "Exchange requests that wait, open now: kind event_stream (GET .../events) or long_poll (GET with ?wait=).",
		}, []string{"kind"}),
	}
	bi := readBuildInfo()
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.requests, m.latency, m.inFlight, m.open,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "mess_build_info",
			Help:        "Always 1; the labels say which build of messd runs.",
			ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.Revision, "goversion": bi.GoVersion},
		}, func() float64 { return 1 }),
		journalCollector{},
	)
	// Both kinds exist from the start, so a query sees 0, not nothing.
	m.open.WithLabelValues("event_stream")
	m.open.WithLabelValues("long_poll")
	return m
}

// middleware counts requests by the route that matched: echo's pattern, or
// the pattern of the service's own mux behind a wildcard route (which
// http.ServeMux records on the request it is given). Never the raw path,
// whose identifiers would make a series per exchange and request.
func (m *metrics) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		start := time.Now()
		m.inFlight.Inc()
		defer m.inFlight.Dec()
		if kind := waitingKind(r); kind != "" {
			g := m.open.WithLabelValues(kind)
			g.Inc()
			defer g.Dec()
		}
		err := next(c)
		if err != nil {
			c.Error(err) // the status is only known once the error is answered
		}
		route := c.Path()
		if p := r.Pattern; p != "" && p != "/" {
			if _, path, ok := strings.Cut(p, " "); ok {
				p = path
			}
			route = p
		}
		if route == "" {
			route = "unmatched"
		}
		method := r.Method
		switch method {
		case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
		default:
			method = "other" // any token is a valid method: keep series few
		}
		m.requests.WithLabelValues(method, route, strconv.Itoa(c.Response().Status)).Inc()
		m.latency.WithLabelValues(method, route).Observe(time.Since(start).Seconds())
		return nil
	}
}

// waitingKind tells an exchange request that waits for news from one that
// does not, from the method, path and query alone.
func waitingKind(r *http.Request) string {
	if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, "/api/v1/exchanges/") {
		return ""
	}
	if strings.HasSuffix(r.URL.Path, "/events") {
		return "event_stream"
	}
	if r.URL.RawQuery != "" && r.URL.Query().Get("wait") != "" {
		return "long_poll"
	}
	return ""
}

// handler serves the registry in the Prometheus text or protobuf format.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// serve puts the registry on its own listener (METRICS_ADDR), apart from
// the API. It returns the Close function for shutdown.
func (m *metrics) serve(addr string, logger *slog.Logger) (func(context.Context) error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	logger.Info("metrics served", "addr", ln.Addr().String())
	return func(ctx context.Context) error {
		if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}, nil
}

// collectFunc is a Collector that reads a service's Stats once a scrape.
type collectFunc struct {
	descs   []*prometheus.Desc
	collect func(ch chan<- prometheus.Metric)
}

func (c collectFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c collectFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// addLeases exposes the lease manager's Stats.
func (m *metrics) addLeases(l *lease.Manager) {
	held := desc("mess_leases_held", "Leases live now.")
	waiters := desc("mess_lease_waiters", "Acquire calls waiting in line for a held lease.")
	expired := desc("mess_lease_expiries_total", "Leases that ran out without release or renewal.")
	m.reg.MustRegister(collectFunc{descs: []*prometheus.Desc{held, waiters, expired}, collect: func(ch chan<- prometheus.Metric) {
		st := l.Stats()
		ch <- prometheus.MustNewConstMetric(held, prometheus.GaugeValue, float64(st.Held))
		ch <- prometheus.MustNewConstMetric(waiters, prometheus.GaugeValue, float64(st.Waiters))
		ch <- prometheus.MustNewConstMetric(expired, prometheus.CounterValue, float64(st.Expired))
	}})
}

// addBus exposes the mail bus's Stats.
func (m *metrics) addBus(b *mailbus.Bus) {
	conns := desc("mess_mailbus_connections", "Live mail bus sessions (WebSocket connections and local clients).")
	agents := desc("mess_mailbus_agents", "Agents known in the exchanges loaded.")
	depth := desc("mess_mailbus_inbox_depth", "Durable inbox messages not yet handed to a session, over every agent.")
	unacked := desc("mess_mailbus_awaiting_ack", "Delivered ackRequired messages not yet acknowledged.")
	redeliver := desc("mess_mailbus_redeliveries_queued", "Overdue ackRequired messages queued to be sent again.")
	delivered := desc("mess_mailbus_deliveries_total", "Messages handed to sessions since start; one message to N sessions counts N.")
	redelivered := desc("mess_mailbus_redeliveries_total", "Unacknowledged ackRequired messages sent again since start.")
	m.reg.MustRegister(collectFunc{descs: []*prometheus.Desc{conns, agents, depth, unacked, redeliver, delivered, redelivered}, collect: func(ch chan<- prometheus.Metric) {
		st := b.Stats()
		ch <- prometheus.MustNewConstMetric(conns, prometheus.GaugeValue, float64(st.Connections))
		ch <- prometheus.MustNewConstMetric(agents, prometheus.GaugeValue, float64(st.Agents))
		ch <- prometheus.MustNewConstMetric(depth, prometheus.GaugeValue, float64(st.InboxDepth))
		ch <- prometheus.MustNewConstMetric(unacked, prometheus.GaugeValue, float64(st.AwaitingAck))
		ch <- prometheus.MustNewConstMetric(redeliver, prometheus.GaugeValue, float64(st.Redeliveries))
		ch <- prometheus.MustNewConstMetric(delivered, prometheus.CounterValue, float64(st.Delivered))
		ch <- prometheus.MustNewConstMetric(redelivered, prometheus.CounterValue, float64(st.Redelivered))
	}})
}

// addNotify exposes the notification outbox's Stats.
func (m *metrics) addNotify(n *notify.Service) {
	queued := desc("mess_notify_queued", "Exchange events not yet turned into recorded deliveries.")
	pending := desc("mess_notify_pending", "Recorded deliveries not yet sent or given up, by channel type.", "type")
	attempts := desc("mess_notify_attempts_total", "Delivery attempts since start, by channel type and result (sent, retried, failed: given up).", "type", "result")
	m.reg.MustRegister(collectFunc{descs: []*prometheus.Desc{queued, pending, attempts}, collect: func(ch chan<- prometheus.Metric) {
		ch <- prometheus.MustNewConstMetric(queued, prometheus.GaugeValue, float64(n.Stats().Queued))
		for _, c := range n.ChannelStats() {
			ch <- prometheus.MustNewConstMetric(pending, prometheus.GaugeValue, float64(c.Pending), c.Type)
			ch <- prometheus.MustNewConstMetric(attempts, prometheus.CounterValue, float64(c.Sent), c.Type, "sent")
			ch <- prometheus.MustNewConstMetric(attempts, prometheus.CounterValue, float64(c.Retried), c.Type, "retried")
			ch <- prometheus.MustNewConstMetric(attempts, prometheus.CounterValue, float64(c.Failed), c.Type, "failed")
		}
	}})
}

var (
	journalRecords  = desc("mess_journal_records_total", "Records made durable, by log (events: exchange events committed; leases; mailbus; notify).", "log")
	journalWrites   = desc("mess_journal_writes_total", "Durable writes (group commits), by log.", "log")
	journalFailures = desc("mess_journal_write_failures_total", "Durable writes that failed, by log.", "log")
	journalBatch    = desc("mess_journal_batch_appends", "Appends carried by one durable write (group commit size), by log.", "log")
	journalSeconds  = desc("mess_journal_write_duration_seconds", "Time one durable write took, by log.", "log")
)

// journalCollector exposes journal.Totals, which every Journal in the
// process adds to.
type journalCollector struct{}

func (journalCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{journalRecords, journalWrites, journalFailures, journalBatch, journalSeconds} {
		ch <- d
	}
}

func (journalCollector) Collect(ch chan<- prometheus.Metric) {
	hist := func(d *prometheus.Desc, h journal.Histogram, log string) prometheus.Metric {
		buckets := make(map[float64]uint64, len(h.Bounds))
		for i, b := range h.Bounds {
			buckets[b] = h.Counts[i]
		}
		return prometheus.MustNewConstHistogram(d, h.Count, h.Sum, buckets, log)
	}
	for _, st := range journal.Totals() {
		ch <- prometheus.MustNewConstMetric(journalRecords, prometheus.CounterValue, float64(st.Records), st.Log)
		ch <- prometheus.MustNewConstMetric(journalWrites, prometheus.CounterValue, float64(st.Writes), st.Log)
		ch <- prometheus.MustNewConstMetric(journalFailures, prometheus.CounterValue, float64(st.Failures), st.Log)
		ch <- hist(journalBatch, st.BatchSize, st.Log)
		ch <- hist(journalSeconds, st.WriteSeconds, st.Log)
	}
}
