package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/server"
	"github.com/tablemq/tablemq/sqlstore/opener"
)

// The flow tests also run on the real broker core over a real SQLite store.
func init() {
	factoriesMu.Lock()
	defer factoriesMu.Unlock()
	factories["sqlite"] = sqliteFactory
}

func sqliteFactory(t *testing.T, cfg Config) *bundle {
	t.Helper()
	return realServer(t, server.Config{NodeName: "http-test", MaxMessageSize: cfg.MaxBodyBytes,
		LargeMessageThreshold: cfg.LargeMessageThreshold, Logger: cfg.Logger}, cfg)
}

// realServer returns the API of a live broker core with scfg on a fresh SQLite store.
func realServer(t *testing.T, scfg server.Config, cfg Config) *bundle {
	t.Helper()
	ctx := context.Background()
	drv, err := opener.Open(ctx, testdb.SQLite(t), opener.Options{Tables: migrations.Tables{}, Logger: cfg.Logger})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, drv.Close()) })
	require.NoError(t, drv.Migrate(ctx))
	epoch, err := drv.EpochBump(ctx)
	require.NoError(t, err)

	srv, err := server.New(drv, scfg)
	require.NoError(t, err)
	require.NoError(t, srv.Activate(ctx, epoch))
	t.Cleanup(srv.Deactivate) // runs before drv.Close (cleanups run last-in first-out)
	return &bundle{h: New(srv, cfg), b: srv, deactivate: srv.Deactivate}
}

// TestRealLongPoll checks that a receive waiting with "wait" gets a message published
// while it waits, on the real broker.
func TestRealLongPoll(t *testing.T) {
	t.Parallel()
	b := sqliteFactory(t, Config{Logger: testLogger(t)})
	h := b.h
	createQueue(t, h, "lp")

	done := make(chan receiveAnswer, 1)
	go func() {
		r := do(t, h, http.MethodPost, "/v1/queues/lp/receive", `{"wait":"20s","max":5}`)
		var out receiveAnswer
		if r.Status == http.StatusOK {
			_ = json.Unmarshal(r.Body, &out)
		}
		done <- out
	}()
	require.Eventually(t, func() bool {
		r := do(t, h, http.MethodGet, "/v1/queues/lp", nil)
		return r.Status == http.StatusOK && r.JSON(t)["waiting_receivers"] == float64(1)
	}, 10*time.Second, 10*time.Millisecond, "the receiver never started waiting")

	start := time.Now()
	id := publish(t, h, "lp", "late")
	select {
	case got := <-done:
		require.Len(t, got.Messages, 1)
		require.Equal(t, id, got.Messages[0].ID)
		require.Less(t, time.Since(start), 10*time.Second)
	case <-time.After(15 * time.Second):
		t.Fatal("the waiting receive did not return after a publish")
	}
}

// TestRealDeactivateEndsLongPoll checks that a waiting receive returns when the
// broker steps down, and that the API then refuses with 503.
func TestRealDeactivateEndsLongPoll(t *testing.T) {
	t.Parallel()
	b := sqliteFactory(t, Config{Logger: testLogger(t)})
	h := b.h
	createQueue(t, h, "lp")

	done := make(chan resp, 1)
	go func() { done <- do(t, h, http.MethodPost, "/v1/queues/lp/receive", `{"wait":"25s"}`) }()
	require.Eventually(t, func() bool {
		r := do(t, h, http.MethodGet, "/v1/queues/lp", nil)
		return r.Status == http.StatusOK && r.JSON(t)["waiting_receivers"] == float64(1)
	}, 10*time.Second, 10*time.Millisecond)

	b.deactivate()
	select {
	case r := <-done:
		if r.Status != http.StatusOK {
			requireError(t, r, http.StatusServiceUnavailable, CodeNotLive)
		} else {
			require.JSONEq(t, `{"messages":[]}`, string(r.Body))
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the waiting receive did not return after Deactivate")
	}
	requireError(t, do(t, h, http.MethodGet, "/v1/queues/lp", nil), http.StatusServiceUnavailable, CodeNotLive)
	requireError(t, do(t, h, http.MethodGet, "/readyz", nil), http.StatusServiceUnavailable, CodeNotLive)
}
