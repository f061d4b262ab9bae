package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tablemq/tablemq/client"
	httpapi "github.com/tablemq/tablemq/http"
	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/server"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/opener"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testLogger discards logs unless TABLEMQ_TEST_LOG is set (then they go to stderr).
// It never writes through t: goroutines may log after a test ended.
func testLogger() *slog.Logger {
	if os.Getenv("TABLEMQ_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// openStore opens and migrates a fresh SQLite store, closed at cleanup.
func openStore(t *testing.T) sqlstore.Driver {
	t.Helper()
	ctx := context.Background()
	drv, err := opener.Open(ctx, testdb.SQLite(t), opener.Options{Tables: migrations.Tables{}, Logger: testLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, drv.Close()) })
	require.NoError(t, drv.Migrate(ctx))
	return drv
}

// broker is one in-process tablemq instance behind a real HTTP server.
type broker struct {
	t   *testing.T
	drv sqlstore.Driver
	srv *server.Server
	h   http.Handler
	ts  *httptest.Server
	url string
}

// brokerConfig tunes newBroker.
type brokerConfig struct {
	name           string
	maxMessageSize int64
	backup         bool                              // do not activate
	wrap           func(h http.Handler) http.Handler // wraps the API handler
	now            func() time.Time                  // server clock
}

// newBroker starts a broker on drv (a fresh store when nil); it is live unless
// cfg.backup.
func newBroker(t *testing.T, drv sqlstore.Driver, cfg brokerConfig) *broker {
	t.Helper()
	if drv == nil {
		drv = openStore(t)
	}
	if cfg.name == "" {
		cfg.name = "node"
	}
	srv, err := server.New(drv, server.Config{NodeName: cfg.name, MaxMessageSize: cfg.maxMessageSize, Logger: testLogger(), Now: cfg.now})
	require.NoError(t, err)
	b := &broker{t: t, drv: drv, srv: srv}
	b.h = httpapi.New(srv, httpapi.Config{MaxBodyBytes: cfg.maxMessageSize, Logger: testLogger()})
	h := b.h
	if cfg.wrap != nil {
		h = cfg.wrap(h)
	}
	b.ts = httptest.NewServer(h)
	b.url = b.ts.URL
	t.Cleanup(srv.Deactivate) // after ts.Close (cleanups run last-in first-out)
	t.Cleanup(b.ts.Close)
	if !cfg.backup {
		b.activate()
	}
	return b
}

// activate makes b live under a fresh epoch.
func (b *broker) activate() {
	b.t.Helper()
	ctx := context.Background()
	epoch, err := b.drv.EpochBump(ctx)
	require.NoError(b.t, err)
	require.NoError(b.t, b.srv.Activate(ctx, epoch))
}

// newClient returns a client for urls with fast test settings, closed at cleanup.
func newClient(t *testing.T, urls []string, opts ...client.Option) *client.Client {
	t.Helper()
	opts = append([]client.Option{
		client.WithLogger(testLogger()),
		client.WithBackoff(10*time.Millisecond, 200*time.Millisecond),
		client.WithRequestTimeout(5 * time.Second),
		client.WithRetryDeadline(15 * time.Second),
	}, opts...)
	c, err := client.New(urls, opts...)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

// ctxT returns a context ended at the test's cleanup or after 60s.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// counter counts the requests passing through it, per "METHOD path".
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		if c.n == nil {
			c.n = map[string]int{}
		}
		c.n[r.Method+" "+r.URL.Path]++
		c.n["total"]++
		c.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (c *counter) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// notLiveHandler answers every request 503 not_live, with Retry-After when
// retryAfter is not "", and counts them.
type notLiveHandler struct {
	retryAfter string
	hits       atomic.Int64
}

func (h *notLiveHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.hits.Add(1)
	if h.retryAfter != "" {
		w.Header().Set("Retry-After", h.retryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = io.WriteString(w, `{"error":{"code":"not_live","message":"this instance is a backup"}}`)
}

// startHandler serves h on a test server closed at cleanup.
func startHandler(t *testing.T, h http.Handler) *httptest.Server {
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts
}

// dropper passes requests to next, except those drop selects: these are served by
// next into a recorder (so the broker carries them out and commits) and then the
// connection is closed without an answer, as when a broker dies after committing.
type dropper struct {
	next http.Handler
	drop func(r *http.Request, n int) bool // n counts the matching requests so far

	// afterDrop, when set, runs after a dropped request was carried out and before
	// its connection is closed (e.g. to fail over to another broker).
	afterDrop func()

	mu      sync.Mutex
	seen    int
	keys    []string // Idempotency-Key of every request
	dropped [][]byte // the answers that were never sent
}

func (d *dropper) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	d.keys = append(d.keys, r.Header.Get("Idempotency-Key"))
	drop := d.drop(r, d.seen)
	d.seen++
	d.mu.Unlock()
	if !drop {
		d.next.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	d.next.ServeHTTP(rec, r)
	d.mu.Lock()
	d.dropped = append(d.dropped, rec.Body.Bytes())
	d.mu.Unlock()
	if d.afterDrop != nil {
		d.afterDrop()
	}
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(fmt.Sprintf("hijack: %v", err))
	}
	_ = conn.Close()
}

// eventually polls cond every 10ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	require.Eventually(t, cond, timeout, 10*time.Millisecond, append([]any{msg}, args...)...)
}

// depth returns the depth of queue.
func depth(t *testing.T, c *client.Client, queue string) int64 {
	t.Helper()
	qi, err := c.GetQueue(ctxT(t), queue)
	require.NoError(t, err)
	return qi.Depth
}

// depthNow returns the depth of queue, or -1 when it cannot be read. Unlike depth
// it may be called outside the test goroutine (in an eventually condition).
func depthNow(c *client.Client, queue string) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qi, err := c.GetQueue(ctx, queue)
	if err != nil {
		return -1
	}
	return qi.Depth
}
