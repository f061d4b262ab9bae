package server_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/server"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/opener"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var quiet = slog.New(slog.DiscardHandler)

// openStore opens and migrates the store at url; it is closed when t ends.
func openStore(t testing.TB, url string) sqlstore.Driver {
	t.Helper()
	ctx := context.Background()
	drv, err := opener.Open(ctx, url, opener.Options{Tables: migrations.Tables{}, Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { _ = drv.Close() })
	require.NoError(t, drv.Migrate(ctx))
	return drv
}

// bundle is what setup returns.
type bundle struct {
	drv sqlstore.Driver
	srv *server.Server
	cfg server.Config
}

func testConfig(cfg server.Config) server.Config {
	if cfg.NodeName == "" {
		cfg.NodeName = "test"
	}
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	if cfg.ReaperInterval == 0 {
		cfg.ReaperInterval = 10 * time.Millisecond
	}
	return cfg
}

// setup starts a live server on a fresh SQLite store.
func setup(t testing.TB, cfg server.Config) *bundle {
	t.Helper()
	return setupURL(t, testdb.SQLite(t), cfg)
}

func setupURL(t testing.TB, url string, cfg server.Config) *bundle {
	t.Helper()
	drv := openStore(t, url)
	b := &bundle{drv: drv, cfg: testConfig(cfg)}
	b.srv = b.start(t)
	return b
}

// start activates a new server on the bundle's store under a freshly bumped epoch,
// as a takeover or restart does. It is deactivated when t ends.
func (b *bundle) start(t testing.TB) *server.Server {
	t.Helper()
	ctx := context.Background()
	epoch, err := b.drv.EpochBump(ctx)
	require.NoError(t, err)
	srv, err := server.New(b.drv, b.cfg)
	require.NoError(t, err)
	require.NoError(t, srv.Activate(ctx, epoch))
	t.Cleanup(srv.Deactivate)
	require.Equal(t, server.RoleLive, srv.Role())
	return srv
}

// eventually polls fn until it returns true or timeout passes.
func eventually(t testing.TB, timeout time.Duration, fn func() bool, msgAndArgs ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if fn() {
			return
		}
		if time.Now().After(deadline) {
			require.Fail(t, "condition not met in time", msgAndArgs...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func mustCreateQueue(t testing.TB, srv *server.Server, name string, cfg server.QueueConfig) {
	t.Helper()
	_, err := srv.QueueCreate(context.Background(), name, cfg)
	require.NoError(t, err)
}

// publish publishes bodies to a queue, one message each, in one call, and returns the
// ids.
func publish(t testing.TB, srv *server.Server, queue string, bodies ...string) []string {
	t.Helper()
	msgs := make([]server.Message, len(bodies))
	for i, b := range bodies {
		msgs[i] = server.Message{Body: []byte(b)}
	}
	return publishMsgs(t, srv, queue, msgs...)
}

func publishMsgs(t testing.TB, srv *server.Server, queue string, msgs ...server.Message) []string {
	t.Helper()
	res, err := srv.PublishQueue(context.Background(), queue, msgs)
	require.NoError(t, err)
	ids := make([]string, len(res))
	for i, r := range res {
		require.NoError(t, r.Err)
		ids[i] = r.ID
	}
	return ids
}

func receive(t testing.TB, srv *server.Server, queue string, p server.ReceiveParams) []server.Delivery {
	t.Helper()
	ds, err := srv.Receive(context.Background(), queue, p)
	require.NoError(t, err)
	return ds
}

func ack(t testing.TB, srv *server.Server, queue string, receipts ...string) {
	t.Helper()
	res, err := srv.Ack(context.Background(), queue, receipts)
	require.NoError(t, err)
	for _, r := range res {
		require.NoError(t, r.Err, r.Receipt)
	}
}

func bodies(ds []server.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = string(d.Body)
	}
	return out
}

func receipts(ds []server.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Receipt
	}
	return out
}

func info(t testing.TB, srv *server.Server, queue string) server.QueueInfo {
	t.Helper()
	qi, err := srv.QueueGet(context.Background(), queue)
	require.NoError(t, err)
	return qi
}

// drain receives until the queue stays empty for a short long poll.
func drain(t testing.TB, srv *server.Server, queue string, max int) []server.Delivery {
	t.Helper()
	var all []server.Delivery
	for {
		ds := receive(t, srv, queue, server.ReceiveParams{Max: max, Wait: 100 * time.Millisecond})
		if len(ds) == 0 {
			return all
		}
		all = append(all, ds...)
	}
}

// setupB starts a live server with a queue "q" on a fresh SQLite store for a benchmark.
func setupB(b *testing.B) *server.Server {
	b.Helper()
	drv := openStore(b, testdb.SQLite(b))
	ctx := context.Background()
	epoch, err := drv.EpochBump(ctx)
	require.NoError(b, err)
	srv, err := server.New(drv, testConfig(server.Config{}))
	require.NoError(b, err)
	require.NoError(b, srv.Activate(ctx, epoch))
	b.Cleanup(srv.Deactivate)
	_, err = srv.QueueCreate(ctx, "q", server.QueueConfig{})
	require.NoError(b, err)
	return srv
}

// eachBackend runs fn as a parallel subtest on a fresh store of every backend
// (backends that are not reachable are skipped, see testdb).
func eachBackend(t *testing.T, fn func(t *testing.T, url string)) {
	t.Helper()
	for name, newURL := range testdb.All(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, newURL(t))
		})
	}
}
