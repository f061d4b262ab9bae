package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/server"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/opener"
)

// newTestMetrics returns metrics on a registry of their own.
func newTestMetrics(t *testing.T) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	require.NoError(t, err)
	return m, reg
}

// metricValue returns the value of the series name{labels} (a counter, gauge, or a
// histogram's sample count), and whether it exists.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue series
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(m.GetHistogram().GetSampleCount()), true
			default:
				t.Fatalf("%s: unexpected type %s", name, mf.GetType())
			}
		}
	}
	return 0, false
}

func requireMetric(t *testing.T, reg *prometheus.Registry, want float64, name string, labels map[string]string) {
	t.Helper()
	got, ok := metricValue(t, reg, name, labels)
	require.True(t, ok, "no series %s%v", name, labels)
	require.Equal(t, want, got, "%s%v", name, labels)
}

// scrape GETs /metrics and checks the answer is the text format.
func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	r := do(t, h, http.MethodGet, "/metrics", nil)
	require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
	require.True(t, strings.HasPrefix(r.Header.Get("Content-Type"), "text/plain"), r.Header.Get("Content-Type"))
	return string(r.Body)
}

// TestMetricsRealServer publishes, receives and acks on the real broker over SQLite
// and checks the series at /metrics, live and after stepping down.
func TestMetricsRealServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	log := testLogger(t)
	m, reg := newTestMetrics(t)
	drv, err := opener.Open(ctx, testdb.SQLite(t), opener.Options{Tables: migrations.Tables{}, Logger: log})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, drv.Close()) })
	require.NoError(t, drv.Migrate(ctx))
	epoch, err := drv.EpochBump(ctx)
	require.NoError(t, err)
	srv, err := server.New(drv, server.Config{
		NodeName: "metrics-test",
		Writer:   sqlstore.WriterConfig{OnCommit: m.ObserveCommit},
		Logger:   log,
	})
	require.NoError(t, err)
	require.NoError(t, srv.Activate(ctx, epoch))
	t.Cleanup(srv.Deactivate)
	h := New(srv, Config{Logger: log, Metrics: m})

	createQueue(t, h, "orders")
	publish(t, h, "orders", "one")
	publish(t, h, "orders", "two")
	got := receive(t, h, "orders", `{"max":1}`)
	require.Len(t, got.Messages, 1)
	r := do(t, h, http.MethodPost, "/v1/queues/orders/ack", map[string]any{"receipts": []string{got.Messages[0].Receipt}})
	require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)

	body := scrape(t, h)
	for _, s := range []string{
		"# HELP tablemq_messages_published_total ",
		"# TYPE tablemq_messages_published_total counter",
		"tablemq_messages_published_total 2",
		"tablemq_messages_delivered_total 1",
		"tablemq_messages_acked_total 1",
		`tablemq_role{role="live"} 1`,
		`tablemq_role{role="backup"} 0`,
		`tablemq_queue_depth{queue="orders"} 1`,
		`tablemq_queue_in_flight{queue="orders"} 0`,
		"tablemq_queues 1",
		"# TYPE tablemq_commit_batch_rows histogram",
		"# TYPE tablemq_commit_duration_seconds histogram",
		"# HELP tablemq_lock_renew_duration_seconds ",
		"go_goroutines ",
		"process_cpu_seconds_total ",
	} {
		require.Contains(t, body, s)
	}
	requireMetric(t, reg, float64(epoch), "tablemq_epoch", nil)
	for _, name := range []string{"tablemq_messages_nacked_total", "tablemq_messages_redelivered_total",
		"tablemq_leases_expired_total", "tablemq_messages_expired_total", "tablemq_messages_dead_lettered_total",
		"tablemq_publishes_duplicate_total", "tablemq_commit_errors_total"} {
		requireMetric(t, reg, 0, name, nil)
	}
	commits, ok := metricValue(t, reg, "tablemq_commit_duration_seconds", nil)
	require.True(t, ok)
	require.GreaterOrEqual(t, commits, 1.0, "the writer's commits reach the histogram")
	requireMetric(t, reg, 2, "tablemq_http_request_duration_seconds",
		map[string]string{"method": "POST", "route": "/v1/queues/{queue}/messages", "code": "2xx"})
	requireMetric(t, reg, 1, "tablemq_http_request_duration_seconds",
		map[string]string{"method": "POST", "route": "/v1/queues/{queue}/ack", "code": "2xx"})

	// Not live: /metrics still answers, without the queue series.
	srv.Deactivate()
	requireError(t, do(t, h, http.MethodGet, "/v1/queues", nil), http.StatusServiceUnavailable, CodeNotLive)
	body = scrape(t, h)
	require.Contains(t, body, `tablemq_role{role="live"} 0`)
	require.Contains(t, body, "tablemq_messages_published_total 2")
	require.NotContains(t, body, "tablemq_queue_depth")
	require.NotContains(t, body, "tablemq_queues ")
}

// TestMetricsNotLive checks /metrics in every role that is not live, and HEAD.
func TestMetricsNotLive(t *testing.T) {
	t.Parallel()
	for _, role := range []server.Role{server.RoleStarting, server.RoleBackup, server.RoleStopping} {
		t.Run(string(role), func(t *testing.T) {
			t.Parallel()
			f := newFakeBroker()
			f.setRole(role)
			m, reg := newTestMetrics(t)
			h := New(f, Config{Logger: testLogger(t), Metrics: m})
			body := scrape(t, h)
			require.Contains(t, body, fmt.Sprintf("tablemq_role{role=%q} 1", role))
			require.Contains(t, body, `tablemq_role{role="live"} 0`)
			require.NotContains(t, body, "tablemq_queues ")
			require.Equal(t, http.StatusOK, do(t, h, http.MethodHead, "/metrics", nil).Status)
			// The fake keeps no counters: those series are simply absent.
			_, ok := metricValue(t, reg, "tablemq_messages_published_total", nil)
			require.False(t, ok)
		})
	}
}

// TestMetricsRouteLabel checks that requests are labelled by route pattern, never by
// raw path, and that unrouted requests share one label.
func TestMetricsRouteLabel(t *testing.T) {
	t.Parallel()
	m, reg := newTestMetrics(t)
	h := New(newFakeBroker(), Config{Logger: testLogger(t), Metrics: m})
	createQueue(t, h, "a")
	createQueue(t, h, "b")
	require.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/v1/queues/a", nil).Status)
	require.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/v1/queues/b", nil).Status)
	require.Equal(t, http.StatusNotFound, do(t, h, http.MethodGet, "/v1/queues/c", nil).Status)
	require.Equal(t, http.StatusNotFound, do(t, h, http.MethodGet, "/no/such/path", nil).Status)
	require.Equal(t, http.StatusNotFound, do(t, h, http.MethodGet, "/v1/no/such/path", nil).Status)
	require.Equal(t, http.StatusMethodNotAllowed, do(t, h, http.MethodPatch, "/v1/queues/a", nil).Status)
	do(t, h, "BREW", "/livez", nil) // an unknown method is labelled "other"

	requireMetric(t, reg, 2, "tablemq_http_request_duration_seconds",
		map[string]string{"method": "PUT", "route": "/v1/queues/{queue}", "code": "2xx"})
	requireMetric(t, reg, 2, "tablemq_http_request_duration_seconds",
		map[string]string{"method": "GET", "route": "/v1/queues/{queue}", "code": "2xx"})
	requireMetric(t, reg, 1, "tablemq_http_request_duration_seconds",
		map[string]string{"method": "GET", "route": "/v1/queues/{queue}", "code": "4xx"})
	requireMetric(t, reg, 2, "tablemq_http_request_duration_seconds",
		map[string]string{"method": "GET", "route": "unmatched", "code": "4xx"})
	requireMetric(t, reg, 1, "tablemq_http_request_duration_seconds",
		map[string]string{"method": "PATCH", "route": "/v1/queues/{queue}", "code": "4xx"})
	_, ok := metricValue(t, reg, "tablemq_http_request_duration_seconds", map[string]string{"method": "other"})
	require.True(t, ok)

	body := scrape(t, h)
	for _, raw := range []string{`route="/v1/queues/a"`, `route="/v1/queues/b"`, `/no/such/path`, `route="/v1"`, `method="BREW"`} {
		require.NotContains(t, body, raw)
	}
	require.Contains(t, body, "# HELP tablemq_http_request_duration_seconds ")
}

// manyQueues is a broker with more queues than MaxQueueSeries.
type manyQueues struct {
	*fakeBroker
	n int
}

func (b manyQueues) QueueList(context.Context) ([]server.QueueInfo, error) {
	out := make([]server.QueueInfo, b.n)
	for i := range out {
		out[i] = server.QueueInfo{Name: fmt.Sprintf("q%d", i), Depth: 2, InFlight: 1}
	}
	return out, nil
}

// TestMetricsQueueBound checks that per-queue series stop above MaxQueueSeries and
// the totals remain.
func TestMetricsQueueBound(t *testing.T) {
	t.Parallel()
	for _, n := range []int{MaxQueueSeries, MaxQueueSeries + 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			m, reg := newTestMetrics(t)
			New(manyQueues{newFakeBroker(), n}, Config{Logger: testLogger(t), Metrics: m})
			requireMetric(t, reg, float64(n), "tablemq_queues", nil)
			requireMetric(t, reg, float64(2*n), "tablemq_queues_depth", nil)
			requireMetric(t, reg, float64(n), "tablemq_queues_in_flight", nil)
			_, perQueue := metricValue(t, reg, "tablemq_queue_depth", map[string]string{"queue": "q0"})
			require.Equal(t, n <= MaxQueueSeries, perQueue)
		})
	}
}

// TestMetricsObserve checks the callbacks cmd wires to the writer and node manager.
func TestMetricsObserve(t *testing.T) {
	t.Parallel()
	m, reg := newTestMetrics(t)
	m.ObserveCommit(10, 0, nil)
	m.ObserveCommit(3, 0, fmt.Errorf("boom"))
	m.ObserveRenew(0, nil)
	m.ObserveRenew(0, fmt.Errorf("boom"))
	m.ObserveRenew(0, fmt.Errorf("boom"))
	requireMetric(t, reg, 2, "tablemq_commit_batch_rows", nil)
	requireMetric(t, reg, 2, "tablemq_commit_duration_seconds", nil)
	requireMetric(t, reg, 1, "tablemq_commit_errors_total", nil)
	requireMetric(t, reg, 3, "tablemq_lock_renew_duration_seconds", nil)
	requireMetric(t, reg, 2, "tablemq_lock_renew_failures_total", nil)

	// A second set on the same registry is refused, not a panic.
	_, err := NewMetrics(reg)
	require.Error(t, err)
}
