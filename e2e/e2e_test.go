package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // database/sql driver "mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/migrations"
)

// forEachBackend runs fn as a parallel subtest per backend, with a fresh store.
func forEachBackend(t *testing.T, fn func(t *testing.T, store string)) {
	t.Helper()
	backends := testdb.All(t)
	names := make([]string, 0, len(backends))
	for name := range backends {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		newStore := backends[name]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, newStore(t))
		})
	}
}

// TestE2EKillRestart publishes, acks part, kills the broker with SIGKILL and restarts
// it on the same store: every message that got 201 and was not acked comes back
// (in-flight ones included), nothing acked returns, and queue, address and binding
// survive.
func TestE2EKillRestart(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) { killRestart(t, store) })
}

// TestE2EKillRestartPaged is TestE2EKillRestart with a small address limit and window,
// so that most messages go through the page logs (and the kill lands in the middle of
// reading them): page cursors, counters and windows survive a crash.
func TestE2EKillRestartPaged(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) {
		killRestart(t, store, "--max-size-bytes", "256", "--window-size", "8")
	})
}

func killRestart(t *testing.T, store string, extra ...string) {
	{
		const (
			total    = 200
			toAck    = 80
			inFlight = 20 // received but not acked before the kill
			queue    = "orders"
			address  = "orders.created"
		)
		ctx := deadline(t)
		a := startBroker(ctx, t, "first", store, extra...)

		a.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, map[string]any{}, nil, http.StatusCreated)
		a.mustJSON(ctx, http.MethodPut, "/v1/addresses/"+address, map[string]any{"routing": "multicast"}, nil, http.StatusCreated)
		a.mustJSON(ctx, http.MethodPut, "/v1/addresses/"+address+"/bindings/"+queue, nil, nil, http.StatusCreated)

		// Publish concurrently, half through the address and half to the queue, and
		// record every id that got 201.
		var mu sync.Mutex
		published := map[string]string{} // id -> body
		var wg sync.WaitGroup
		work := make(chan int)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range work {
					path := "/v1/queues/" + queue + "/messages"
					if i%2 == 0 {
						path = "/v1/addresses/" + address + "/messages"
					}
					body := fmt.Sprintf("message %d", i)
					st, id, data := a.publish(ctx, path, body, "")
					if st != http.StatusCreated {
						t.Errorf("publish %d: %d %s", i, st, data)
						continue
					}
					mu.Lock()
					published[id] = body
					mu.Unlock()
				}
			}()
		}
		for i := range total {
			work <- i
		}
		close(work)
		wg.Wait()
		require.Len(t, published, total, "every publish got its own id")
		if len(extra) > 0 {
			require.Greater(t, a.queue(ctx, queue).Paged, int64(total/2), "most messages are paged")
		}

		// Ack toAck messages, then lease inFlight more and leave them unacked.
		acked := map[string]bool{}
		for len(acked) < toAck {
			msgs := a.receive(ctx, queue, min(25, toAck-len(acked)), "1s", "5m")
			receipts := make([]string, 0, len(msgs))
			for _, m := range msgs {
				require.Contains(t, published, m.ID)
				require.Equal(t, published[m.ID], m.body(t))
				require.False(t, acked[m.ID], "delivered twice: %s", m.ID)
				acked[m.ID] = true
				receipts = append(receipts, m.Receipt)
			}
			a.ack(ctx, queue, receipts)
		}
		leased := map[string]bool{}
		for len(leased) < inFlight {
			for _, m := range a.receive(ctx, queue, inFlight-len(leased), "1s", "5m") {
				require.False(t, acked[m.ID] || leased[m.ID], "delivered twice: %s", m.ID)
				leased[m.ID] = true
			}
		}

		a.kill()
		b := startBroker(ctx, t, "second", store, extra...)

		// Queue, address and binding survived.
		qi := b.queue(ctx, queue)
		require.Equal(t, int64(total-toAck), qi.Depth, "depth after restart")
		require.Contains(t, qi.Addresses, address)
		var ai struct {
			Routing string   `json:"routing"`
			Queues  []string `json:"queues"`
		}
		b.mustJSON(ctx, http.MethodGet, "/v1/addresses/"+address, nil, &ai, http.StatusOK)
		require.Equal(t, "multicast", ai.Routing)
		require.Equal(t, []string{queue}, ai.Queues)

		// Everything not acked comes back, once each (the lease is long), and
		// nothing acked does.
		want := map[string]bool{}
		for id := range published {
			if !acked[id] {
				want[id] = true
			}
		}
		got := map[string]bool{}
		empties := 0
		for len(got) < len(want) && empties < 5 {
			msgs := b.receive(ctx, queue, 100, "1s", "5m")
			if len(msgs) == 0 {
				empties++
				continue
			}
			empties = 0
			receipts := make([]string, 0, len(msgs))
			for _, m := range msgs {
				require.False(t, acked[m.ID], "an acked message came back: %s", m.ID)
				require.Contains(t, published, m.ID, "a message nobody published: %s", m.ID)
				require.False(t, got[m.ID], "delivered twice in one lease: %s", m.ID)
				require.Equal(t, published[m.ID], m.body(t))
				if !leased[m.ID] {
					require.Equal(t, 1, m.DeliveryCount, "never delivered before: %s", m.ID)
					require.False(t, m.Redelivered, "never delivered before: %s", m.ID)
				}
				got[m.ID] = true
				receipts = append(receipts, m.Receipt)
			}
			b.ack(ctx, queue, receipts)
		}
		require.Equal(t, sortedKeys(want), sortedKeys(got), "unacked messages after the restart")
		require.Empty(t, b.receive(ctx, queue, 10, "500ms", "5m"), "nothing more")
		require.Equal(t, int64(0), b.queue(ctx, queue).Depth)

		require.Equal(t, 0, b.stop(ctx), "exit code after SIGTERM")
	}
}

// TestE2EIdempotencyAcrossRestart publishes twice with one Idempotency-Key, around a
// graceful restart: one message is stored, and both answers carry its id.
func TestE2EIdempotencyAcrossRestart(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) {
		ctx := deadline(t)
		const queue = "payments"
		a := startBroker(ctx, t, "first", store)
		a.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
		st, id, data := a.publish(ctx, "/v1/queues/"+queue+"/messages", "pay 42", "payment-42")
		require.Equal(t, http.StatusCreated, st, "%s", data)
		st, again, data := a.publish(ctx, "/v1/queues/"+queue+"/messages", "pay 42 (retry)", "payment-42")
		require.Equal(t, http.StatusCreated, st, "%s", data)
		require.Equal(t, id, again, "a duplicate answers the first id")
		require.Equal(t, 0, a.stop(ctx), "exit code after SIGTERM")

		b := startBroker(ctx, t, "second", store)
		st, again, data = b.publish(ctx, "/v1/queues/"+queue+"/messages", "pay 42 (after restart)", "payment-42")
		require.Equal(t, http.StatusCreated, st, "%s", data)
		require.Equal(t, id, again, "a duplicate after a restart answers the first id")
		require.Equal(t, int64(1), b.queue(ctx, queue).Depth)

		msgs := b.receive(ctx, queue, 10, "1s", "1m")
		require.Len(t, msgs, 1)
		require.Equal(t, id, msgs[0].ID)
		require.Equal(t, "pay 42", msgs[0].body(t))
		require.Equal(t, 0, b.stop(ctx), "exit code after SIGTERM")
	})
}

// TestE2EStartupErrors checks that start-up failures exit non-zero with one line on
// stderr.
func TestE2EStartupErrors(t *testing.T) {
	t.Parallel()

	t.Run("bad flags", func(t *testing.T) {
		t.Parallel()
		ctx := deadline(t)
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"serve", "--bogus"}, "unknown flag"},
			{[]string{"serve", "--lock-renew-period", "20s", "--lock-expiration", "10s"}, "lock-renew-period"},
			{[]string{"serve", "--ha-policy", "sometimes"}, "ha-policy"},
			{[]string{"serve", "--store", "oracle://scott:tiger@db/x"}, "store"},
			{[]string{"migrate", "up", "--store", "nosuch://x"}, "store"},
		} {
			code, stderr := runBinary(ctx, t, tc.args...)
			requireOneLineFailure(t, code, stderr, tc.want)
			require.NotContains(t, stderr, "tiger", "the password never shows")
		}
	})

	t.Run("env and config errors", func(t *testing.T) {
		t.Parallel()
		ctx := deadline(t)
		cmd := []string{"serve", "--config", "/nonexistent/tablemq.yaml"}
		code, stderr := runBinary(ctx, t, cmd...)
		requireOneLineFailure(t, code, stderr, "config file")
	})

	t.Run("unreachable store", func(t *testing.T) {
		t.Parallel()
		ctx := deadline(t)
		for _, store := range []string{
			"postgres://postgres:secretpw@127.0.0.1:1/x?sslmode=disable",
			"mysql://root:secretpw@tcp(127.0.0.1:1)/x",
		} {
			code, stderr := runBinary(ctx, t, "serve", "--store", store, "--listen", "127.0.0.1:0", "--network-timeout", "3s")
			requireOneLineFailure(t, code, stderr)
			require.NotContains(t, stderr, "secretpw", "the password never shows")
			code, stderr = runBinary(ctx, t, "migrate", "up", "--store", store, "--network-timeout", "3s")
			requireOneLineFailure(t, code, stderr)
		}
	})

	t.Run("schema newer than binary", func(t *testing.T) {
		t.Parallel()
		forEachBackend(t, func(t *testing.T, store string) {
			ctx := deadline(t)
			code, stderr := runBinary(ctx, t, "migrate", "up", "--store", store)
			require.Equal(t, 0, code, "migrate up: %s", stderr)
			code, stderr = runBinary(ctx, t, "migrate", "up", "--store", store)
			require.Equal(t, 0, code, "migrate up twice: %s", stderr)

			setSchemaVersion(ctx, t, store, 999)
			code, stderr = runBinary(ctx, t, "serve", "--store", store, "--listen", "127.0.0.1:0")
			requireOneLineFailure(t, code, stderr, "newer")
			code, stderr = runBinary(ctx, t, "migrate", "up", "--store", store)
			requireOneLineFailure(t, code, stderr, "newer")
		})
	})
}

// TestE2ELiveLockHeld starts a second instance with policy none on the store of a
// running one: it waits about one lock expiration for the live lock, then exits 1 with
// one line on stderr saying the lock is held; the first keeps serving under its epoch.
func TestE2ELiveLockHeld(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) {
		ctx := deadline(t)
		const queue = "jobs"
		a := startBroker(ctx, t, "first", store)
		a.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
		st, firstID, data := a.publish(ctx, "/v1/queues/"+queue+"/messages", "from first", "")
		require.Equal(t, http.StatusCreated, st, "%s", data)
		before, err := a.cluster(ctx)
		require.NoError(t, err)
		require.Equal(t, "live", before.Role)
		require.Equal(t, before.Epoch, epochOf(t, firstID), "the id carries the epoch")

		start := time.Now()
		code, stderr := runBinary(ctx, t, serveArgs("second", store)...)
		took := time.Since(start)
		t.Logf("the second instance gave up after %s", took.Round(time.Millisecond))
		requireOneLineFailure(t, code, stderr, "live lock", "held")
		require.Equal(t, 1, code)
		require.GreaterOrEqual(t, took, lockExpiration*9/10, "it waits one lock expiration for a crashed predecessor's lock")

		require.Equal(t, http.StatusOK, a.ready(ctx), "the first is still live")
		after, err := a.cluster(ctx)
		require.NoError(t, err)
		require.Equal(t, "live", after.Role)
		require.Equal(t, before.Epoch, after.Epoch, "the second never took the lock")
		st, secondID, data := a.publish(ctx, "/v1/queues/"+queue+"/messages", "from first, again", "")
		require.Equal(t, http.StatusCreated, st, "%s", data)
		require.Equal(t, before.Epoch, epochOf(t, secondID))
		require.Equal(t, int64(2), a.queue(ctx, queue).Depth)
		var ids []string
		for len(ids) < 2 {
			for _, m := range a.receive(ctx, queue, 10, "1s", "1m") {
				ids = append(ids, m.ID)
			}
		}
		require.ElementsMatch(t, []string{firstID, secondID}, ids)
		require.Equal(t, 0, a.stop(ctx), "exit code after SIGTERM")
	})
}

// TestE2EGracefulStop sends SIGTERM while publishers and a long poll are running: the
// broker exits 0 well before the long poll would have ended, the long poll is answered,
// and every publish that got 201 is there after a restart.
func TestE2EGracefulStop(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) {
		ctx := deadline(t)
		const queue, idle = "work", "idle"
		a := startBroker(ctx, t, "first", store)
		a.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
		a.mustJSON(ctx, http.MethodPut, "/v1/queues/"+idle, nil, nil, http.StatusCreated)

		pollStatus := make(chan int, 1)
		go func() {
			st, _ := a.request(ctx, http.MethodPost, "/v1/queues/"+idle+"/receive", []byte(`{"max": 1, "wait": "30s"}`), nil)
			pollStatus <- st
		}()

		var mu sync.Mutex
		published := map[string]bool{}
		enough := make(chan struct{})
		var once sync.Once
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					st, id, _ := a.publish(ctx, "/v1/queues/"+queue+"/messages", fmt.Sprintf("w%d-%d", w, i), "")
					if st != http.StatusCreated {
						return // stopping: 503, or the connection is gone
					}
					mu.Lock()
					published[id] = true
					if len(published) >= 100 {
						once.Do(func() { close(enough) })
					}
					mu.Unlock()
				}
			}()
		}
		select {
		case <-enough:
		case <-ctx.Done():
			t.Fatal("publishers too slow")
		}
		start := time.Now()
		require.Equal(t, 0, a.stop(ctx), "exit code after SIGTERM")
		require.Less(t, time.Since(start), 15*time.Second, "the long poll did not hold the stop")
		wg.Wait()
		select {
		case st := <-pollStatus:
			require.Contains(t, []int{http.StatusOK, http.StatusServiceUnavailable}, st, "the long poll was answered")
		case <-ctx.Done():
			t.Fatal("the long poll never returned")
		}

		b := startBroker(ctx, t, "second", store)
		got := map[string]bool{}
		for len(got) < len(published) {
			msgs := b.receive(ctx, queue, 100, "1s", "5m")
			if len(msgs) == 0 {
				break
			}
			for _, m := range msgs {
				got[m.ID] = true
			}
		}
		for id := range published {
			require.True(t, got[id], "a message that got 201 was lost in a graceful stop: %s", id)
		}
		require.Equal(t, 0, b.stop(ctx))
	})
}

// setSchemaVersion writes version into the migrations table of store, as a newer
// binary would have.
func setSchemaVersion(ctx context.Context, t *testing.T, store string, version int) {
	t.Helper()
	db := openSQL(t, store)
	res, err := db.ExecContext(ctx, fmt.Sprintf("UPDATE %s SET version = %d", migrations.MigrationsDefault, version))
	require.NoError(t, err)
	n, err := res.RowsAffected()
	require.NoError(t, err)
	require.Equal(t, int64(1), n, "one row in the version table")
}

// openSQL opens store with its database/sql driver, for the tests to look at the
// tables directly; it is closed at the end of t.
func openSQL(t *testing.T, store string) *sql.DB {
	t.Helper()
	var driver, dsn string
	switch {
	case strings.HasPrefix(store, "sqlite:"):
		driver, dsn = "sqlite", "file:"+strings.TrimPrefix(store, "sqlite:")+"?_pragma=busy_timeout(10000)"
	case strings.HasPrefix(store, "postgres://"), strings.HasPrefix(store, "postgresql://"):
		driver, dsn = "pgx", store
	case strings.HasPrefix(store, "mysql://"):
		driver, dsn = "mysql", strings.TrimPrefix(store, "mysql://")
	default:
		t.Fatalf("unknown store %s", store)
	}
	db, err := sql.Open(driver, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
