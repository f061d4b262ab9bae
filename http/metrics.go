package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tablemq/tablemq/server"
)

// Bounds of the metrics read from the broker at scrape time.
const (
	// MaxQueueSeries bounds the per-queue series (tablemq_queue_depth,
	// tablemq_queue_in_flight): with more queues than this only the totals are shown.
	MaxQueueSeries = 1000
	// queueScrapeTimeout bounds reading the queue list for one scrape.
	queueScrapeTimeout = 5 * time.Second
)

// CounterSource is implemented by a broker that keeps running totals (as
// *server.Server does). The metrics expose them when the Broker given to New
// implements it.
type CounterSource interface {
	Counters() server.Counters
}

var _ CounterSource = (*server.Server)(nil)

// Metrics holds tablemq's Prometheus metrics on one dedicated registry (never the
// global one). Create it with NewMetrics before the broker, pass ObserveCommit as
// sqlstore.WriterConfig.OnCommit and ObserveRenew as nodemanager.Config.OnRenew, and
// pass it in Config.Metrics: New then serves it at GET /metrics, observes every
// request, and reads the broker's counters, role, epoch and queues at scrape time.
// Its methods are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	commitRows    prometheus.Histogram
	commitSeconds prometheus.Histogram
	commitErrors  prometheus.Counter
	renewSeconds  prometheus.Histogram
	renewFailures prometheus.Counter
	httpSeconds   *prometheus.HistogramVec

	broker atomic.Pointer[Broker] // set by New; read at scrape time
}

// NewMetrics creates the metrics and registers them, with the Go runtime and process
// collectors, on reg. It fails if reg already holds metrics of the same names.
func NewMetrics(reg *prometheus.Registry) (*Metrics, error) {
	m := &Metrics{
		reg: reg,
		commitRows: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tablemq_commit_batch_rows",
			Help:    "Rows written per group commit of the store writer (every commit attempt).",
			Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000},
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tablemq_commit_duration_seconds",
			Help:    "Duration of a group commit of the store writer, failed ones included.",
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 16), // 0.25ms .. ~8s
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablemq_commit_errors_total",
			Help: "Group commits of the store writer that failed (fenced commits included).",
		}),
		renewSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tablemq_lock_renew_duration_seconds",
			Help:    "Duration of a renewal of the live lock, failed ones included.",
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 15), // 0.25ms .. ~4s
		}),
		renewFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablemq_lock_renew_failures_total",
			Help: "Renewals of the live lock that failed (refused, or an error of the store).",
		}),
		httpSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tablemq_http_request_duration_seconds",
			Help: "Duration of HTTP requests by method, route pattern and status class " +
				"(long-poll receives included, up to their wait).",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"method", "route", "code"}),
	}
	for _, c := range []prometheus.Collector{
		m.commitRows, m.commitSeconds, m.commitErrors, m.renewSeconds, m.renewFailures, m.httpSeconds,
		brokerCollector{m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("httpapi: registering metrics: %w", err)
		}
	}
	return m, nil
}

// ObserveCommit records one group commit; it has the signature of
// sqlstore.WriterConfig.OnCommit and does not block.
func (m *Metrics) ObserveCommit(rows int, took time.Duration, err error) {
	m.commitRows.Observe(float64(rows))
	m.commitSeconds.Observe(took.Seconds())
	if err != nil {
		m.commitErrors.Inc()
	}
}

// ObserveRenew records one renewal of the live lock; it has the signature of
// nodemanager.Config.OnRenew and does not block.
func (m *Metrics) ObserveRenew(took time.Duration, err error) {
	m.renewSeconds.Observe(took.Seconds())
	if err != nil {
		m.renewFailures.Inc()
	}
}

// setBroker makes the scrape read b.
func (m *Metrics) setBroker(b Broker) { m.broker.Store(&b) }

// handler serves the registry in the Prometheus text (or negotiated) format. A part
// that cannot be gathered is logged and left out; the rest is served.
func (m *Metrics) handler(log *slog.Logger) http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            m.reg, // promhttp_metric_handler_errors_total
		MaxRequestsInFlight: 4,
		Timeout:             2 * queueScrapeTimeout,
	})
}

// observeRequests records the duration of every request by method, chi route
// pattern (never the raw path, to bound the series) and status class.
func (m *Metrics) observeRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		defer func() {
			// A panic passed on by recoverPanics (http.ErrAbortHandler) is still timed.
			status := ww.Status()
			if status == 0 {
				status = http.StatusOK
			}
			m.httpSeconds.WithLabelValues(methodLabel(r.Method), routeLabel(r), statusClass(status)).
				Observe(time.Since(start).Seconds())
		}()
		next.ServeHTTP(ww, r)
	})
}

// routeLabel is the chi pattern that served r ("/v1/queues/{queue}/ack"; a 405 keeps
// the pattern its path matched), or "unmatched" for a path no route took (a pattern
// still ending in a mount's "/*" is a 404 below that mount).
func routeLabel(r *http.Request) string {
	rctx := chi.RouteContext(r.Context())
	if rctx == nil {
		return "unmatched"
	}
	p := rctx.RoutePattern()
	if p == "" || strings.HasSuffix(p, "/*") {
		return "unmatched"
	}
	return normalizeRoutePath(p)
}

// methodLabel bounds the method label to the standard methods.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

// statusClass is "2xx" for 200..299 and so on.
func statusClass(status int) string {
	if status < 100 || status > 599 {
		return "other"
	}
	return strconv.Itoa(status/100) + "xx"
}

// brokerCollector reads the broker at scrape time: its running totals, role and
// epoch, and (when live) its queues. Nothing is counted twice: the values are the
// broker's own.
type brokerCollector struct{ m *Metrics }

var (
	roles = []server.Role{server.RoleStarting, server.RoleLive, server.RoleBackup, server.RoleStopping}

	descRole = prometheus.NewDesc("tablemq_role",
		"1 for the role this instance is in (starting, live, backup, stopping), else 0.", []string{"role"}, nil)
	descEpoch = prometheus.NewDesc("tablemq_epoch",
		"Fencing epoch of the live lock as this instance last saw it.", nil, nil)
	descQueueDepth = prometheus.NewDesc("tablemq_queue_depth",
		"Messages stored in a queue and not acked, in flight included (live only; "+
			"left out above "+strconv.Itoa(MaxQueueSeries)+" queues).", []string{"queue"}, nil)
	descQueueInFlight = prometheus.NewDesc("tablemq_queue_in_flight",
		"Messages of a queue leased to a receiver and not yet acked (live only; "+
			"left out above "+strconv.Itoa(MaxQueueSeries)+" queues).", []string{"queue"}, nil)
	descQueueBytes = prometheus.NewDesc("tablemq_queue_bytes",
		"Body bytes of a queue's messages that are not paged: its size (live only; "+
			"left out above "+strconv.Itoa(MaxQueueSeries)+" queues).", []string{"queue"}, nil)
	descQueuePaged = prometheus.NewDesc("tablemq_queue_paged",
		"Messages waiting in page logs for a queue (live only; "+
			"left out above "+strconv.Itoa(MaxQueueSeries)+" queues).", []string{"queue"}, nil)
	descQueuesBytes = prometheus.NewDesc("tablemq_queues_bytes",
		"Body bytes of all queues' messages that are not paged: the global size (live only).", nil, nil)
	descQueues = prometheus.NewDesc("tablemq_queues",
		"Number of queues (live only).", nil, nil)
	descQueuesDepth = prometheus.NewDesc("tablemq_queues_depth",
		"Messages stored and not acked over all queues, in flight included (live only).", nil, nil)
	descQueuesInFlight = prometheus.NewDesc("tablemq_queues_in_flight",
		"Messages leased and not yet acked over all queues (live only).", nil, nil)

	// counterDescs are the broker's running totals, since the process started.
	counterDescs = []struct {
		desc *prometheus.Desc
		get  func(server.Counters) int64
	}{
		{prometheus.NewDesc("tablemq_messages_published_total",
			"Messages stored, one per queue they were routed to.", nil, nil),
			func(c server.Counters) int64 { return c.Published }},
		{prometheus.NewDesc("tablemq_publishes_duplicate_total",
			"Publishes answered as duplicates of an idempotency key (nothing stored).", nil, nil),
			func(c server.Counters) int64 { return c.Duplicates }},
		{prometheus.NewDesc("tablemq_messages_delivered_total",
			"Deliveries to receivers, redeliveries included.", nil, nil),
			func(c server.Counters) int64 { return c.Delivered }},
		{prometheus.NewDesc("tablemq_messages_redelivered_total",
			"Deliveries with a delivery count above 1.", nil, nil),
			func(c server.Counters) int64 { return c.Redelivered }},
		{prometheus.NewDesc("tablemq_messages_acked_total",
			"Messages acked.", nil, nil),
			func(c server.Counters) int64 { return c.Acked }},
		{prometheus.NewDesc("tablemq_messages_nacked_total",
			"Messages nacked.", nil, nil),
			func(c server.Counters) int64 { return c.Nacked }},
		{prometheus.NewDesc("tablemq_leases_expired_total",
			"Leases that ended without an ack or nack.", nil, nil),
			func(c server.Counters) int64 { return c.LeaseExpired }},
		{prometheus.NewDesc("tablemq_messages_expired_total",
			"Messages dropped past their time to live.", nil, nil),
			func(c server.Counters) int64 { return c.Expired }},
		{prometheus.NewDesc("tablemq_messages_dead_lettered_total",
			"Messages moved to a dead-letter queue.", nil, nil),
			func(c server.Counters) int64 { return c.DeadLettered }},
		{prometheus.NewDesc("tablemq_messages_dead_letter_dropped_total",
			"Messages dropped past max_deliveries with no dead-letter queue.", nil, nil),
			func(c server.Counters) int64 { return c.DeadLetterDropped }},
		{prometheus.NewDesc("tablemq_messages_paged_total",
			"Messages written to a page log (an address or queue past its max size, policy PAGE).", nil, nil),
			func(c server.Counters) int64 { return c.Paged }},
		{prometheus.NewDesc("tablemq_messages_depaged_total",
			"Messages moved from a page log into a queue.", nil, nil),
			func(c server.Counters) int64 { return c.Depaged }},
		{prometheus.NewDesc("tablemq_messages_full_dropped_total",
			"Messages dropped because their address was full (policy DROP).", nil, nil),
			func(c server.Counters) int64 { return c.FullDropped }},
		{prometheus.NewDesc("tablemq_publishes_full_refused_total",
			"Publishes refused because their address was full (policy FAIL, or a BLOCK timeout).", nil, nil),
			func(c server.Counters) int64 { return c.FullRefused }},
	}
)

// Describe implements prometheus.Collector.
func (c brokerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range counterDescs {
		ch <- d.desc
	}
	for _, d := range []*prometheus.Desc{descRole, descEpoch, descQueueDepth, descQueueInFlight,
		descQueueBytes, descQueuePaged, descQueues, descQueuesDepth, descQueuesInFlight, descQueuesBytes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c brokerCollector) Collect(ch chan<- prometheus.Metric) {
	bp := c.m.broker.Load()
	if bp == nil {
		return
	}
	b := *bp
	if cs, ok := b.(CounterSource); ok {
		ctr := cs.Counters()
		for _, d := range counterDescs {
			ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(d.get(ctr)))
		}
	}
	st := b.ClusterStatus()
	for _, r := range roles {
		v := 0.0
		if st.Role == r {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descRole, prometheus.GaugeValue, v, string(r))
	}
	ch <- prometheus.MustNewConstMetric(descEpoch, prometheus.GaugeValue, float64(st.Epoch))

	if b.Role() != server.RoleLive {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), queueScrapeTimeout)
	defer cancel()
	qs, err := b.QueueList(ctx)
	if errors.Is(err, server.ErrNotLive) {
		return // stepped down meanwhile
	}
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descQueues, fmt.Errorf("listing the queues: %w", err))
		return
	}
	var depth, inFlight, size int64
	for _, q := range qs {
		depth += q.Depth
		inFlight += q.InFlight
		size += q.Bytes
	}
	ch <- prometheus.MustNewConstMetric(descQueues, prometheus.GaugeValue, float64(len(qs)))
	ch <- prometheus.MustNewConstMetric(descQueuesDepth, prometheus.GaugeValue, float64(depth))
	ch <- prometheus.MustNewConstMetric(descQueuesInFlight, prometheus.GaugeValue, float64(inFlight))
	ch <- prometheus.MustNewConstMetric(descQueuesBytes, prometheus.GaugeValue, float64(size))
	if len(qs) > MaxQueueSeries {
		return
	}
	for _, q := range qs {
		ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(q.Depth), q.Name)
		ch <- prometheus.MustNewConstMetric(descQueueInFlight, prometheus.GaugeValue, float64(q.InFlight), q.Name)
		ch <- prometheus.MustNewConstMetric(descQueueBytes, prometheus.GaugeValue, float64(q.Bytes), q.Name)
		ch <- prometheus.MustNewConstMetric(descQueuePaged, prometheus.GaugeValue, float64(q.Paged), q.Name)
	}
}
