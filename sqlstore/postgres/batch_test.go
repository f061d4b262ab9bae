package postgres_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/postgres"
)

// turnProxy forwards TCP connections to a PostgreSQL server and counts round trips:
// the times the client starts sending after the server has answered (or for the first
// time). A pipeline that pgx flushes in one write and the server answers as a whole is
// one turn.
type turnProxy struct {
	ln     net.Listener
	target string
	turns  atomic.Int64
	wg     sync.WaitGroup
}

func newTurnProxy(t testing.TB, target string) *turnProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &turnProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *turnProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		var mu sync.Mutex
		clientTurn := false // the last bytes went from the client to the server
		pipe := func(dst, src net.Conn, fromClient bool) {
			defer p.wg.Done()
			defer func() { _ = dst.Close(); _ = src.Close() }()
			buf := make([]byte, 64<<10)
			for {
				n, err := src.Read(buf)
				if n > 0 {
					mu.Lock()
					if fromClient && !clientTurn {
						p.turns.Add(1)
					}
					clientTurn = fromClient
					mu.Unlock()
					if _, werr := dst.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}
		p.wg.Add(2)
		go pipe(s, c, true)
		go pipe(c, s, false)
	}
}

// viaProxy returns url with its host replaced by the proxy's address.
func (p *turnProxy) url(t testing.TB, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	u.Host = p.ln.Addr().String()
	return u.String()
}

func openPG(t testing.TB, url string, cfg postgres.Config) *postgres.Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg.DSN = url
	cfg.Logger = slog.New(slog.DiscardHandler)
	d, err := postgres.Open(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Close() })
	require.NoError(t, d.Migrate(ctx))
	return d
}

func pgMsg(queue string, id int64, size int) sqlstore.Message {
	return sqlstore.Message{Queue: queue, ID: id, Priority: 4, CreatedAt: id, ContentType: "application/octet-stream",
		Headers: map[string]string{"k": "v"}, Body: bytes.Repeat([]byte{'x'}, size)}
}

// turnDriver opens a driver with one connection through a proxy that counts round
// trips, and takes the fencing epoch; the context bounds the test.
func turnDriver(t *testing.T) (context.Context, *turnProxy, *postgres.Driver, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	raw := testdb.Postgres(t)
	u, err := url.Parse(raw)
	require.NoError(t, err)
	proxy := newTurnProxy(t, u.Host)
	d := openPG(t, proxy.url(t, raw), postgres.Config{MaxConns: 1})
	epoch, err := d.EpochBump(ctx)
	require.NoError(t, err)
	return ctx, proxy, d, epoch
}

// TestBatchCommitRoundTrips checks that a fenced batch costs one round trip once its
// statements are prepared on the connection, that a fenced-out batch costs two (the
// pipeline and the ROLLBACK that cleans the connection) and writes nothing, and that
// the connection goes back to the pool instead of being replaced.
func TestBatchCommitRoundTrips(t *testing.T) {
	t.Parallel()
	ctx, proxy, d, epoch := turnDriver(t)

	full := func(id int64) *sqlstore.Batch {
		return &sqlstore.Batch{
			BindingPuts:      []sqlstore.Binding{{Kind: sqlstore.KindQueue, Name: fmt.Sprint("q", id), Config: "{}", CreatedAt: 1}},
			MessageInserts:   []sqlstore.Message{pgMsg("q", id, 100), pgMsg("q", id+1, 100)},
			DuplicateInserts: []sqlstore.Duplicate{{Queue: "q", Key: fmt.Sprint("k", id), MessageID: id, CreatedAt: 1}},
			MessageUpdates:   []sqlstore.MessageUpdate{{Queue: "q", ID: id, DeliveryCount: 1, DeliverAt: 5}},
			MessageDeletes:   []sqlstore.MessageKey{{Queue: "q", ID: id + 1}},
			DuplicatesBefore: 1,
		}
	}
	commit := func(epoch int64, b *sqlstore.Batch) (int64, error) {
		before := proxy.turns.Load()
		err := d.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Batch: b})
		return proxy.turns.Load() - before, err
	}
	// The first batch prepares its statements on the connection: one more round trip.
	turns, err := commit(epoch, full(1))
	require.NoError(t, err)
	require.LessOrEqual(t, turns, int64(2))
	newConns := d.Pool().Stat().NewConnsCount()

	// Back to back, so that pgxpool does not ping the idle connection before handing
	// it out (it does after a second of idleness).
	for i := int64(0); i < 3; i++ {
		turns, err = commit(epoch, full(10+10*i))
		require.NoError(t, err)
		require.Equal(t, int64(1), turns, "a batch that commits costs one round trip")

		turns, err = commit(epoch+1, full(1000+10*i))
		require.ErrorIs(t, err, sqlstore.ErrFenced)
		require.Contains(t, err.Error(), fmt.Sprintf("epoch in store is %d, writer holds %d", epoch, epoch+1))
		require.Equal(t, int64(2), turns, "a fenced batch costs the pipeline and a ROLLBACK")

		// pgx forgets the statements of a batch that failed: the next batch deallocates
		// and prepares them again, two more round trips, once.
		turns, err = commit(epoch, full(2000+10*i))
		require.NoError(t, err)
		require.LessOrEqual(t, turns, int64(3))
	}
	require.Equal(t, newConns, d.Pool().Stat().NewConnsCount(), "a connection was replaced: it went back to the pool dirty")

	for i := int64(0); i < 3; i++ {
		_, err := d.DuplicateGet(ctx, &sqlstore.DuplicateGetParams{Queue: "q", Key: fmt.Sprint("k", 1000+10*i)})
		require.ErrorIs(t, err, sqlstore.ErrNotFound, "a fenced batch wrote its duplicate id")
	}
	n, err := d.MessageCount(ctx, "q")
	require.NoError(t, err)
	require.Equal(t, int64(7), n, "one message of each of the seven committed batches")
}

// TestBatchCommitCopy runs the COPY path (a low threshold) on tables whose names have
// capitals: the migrations create them unquoted, so PostgreSQL folds the names to
// lower case, and COPY must name them the same way. A fenced batch over the threshold
// writes nothing either.
func TestBatchCommitCopy(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tables := migrations.WithPrefix("CopyCase_")
	d := openPG(t, testdb.Postgres(t), postgres.Config{Tables: tables, CopyThreshold: 3})
	epoch, err := d.EpochBump(ctx)
	require.NoError(t, err)
	batch := func(first int64, n int) *sqlstore.Batch {
		b := &sqlstore.Batch{BindingPuts: []sqlstore.Binding{{Kind: sqlstore.KindQueue, Name: fmt.Sprint("q", first), Config: "{}", CreatedAt: 1}}}
		for i := int64(0); i < int64(n); i++ {
			b.MessageInserts = append(b.MessageInserts, pgMsg("q", first+i, 10))
			b.DuplicateInserts = append(b.DuplicateInserts, sqlstore.Duplicate{Queue: "q", Key: fmt.Sprint("k", first+i), MessageID: first + i, CreatedAt: 1})
		}
		return b
	}
	require.NoError(t, d.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Batch: batch(1, 10)}))
	require.ErrorIs(t, d.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: epoch - 1, Batch: batch(100, 10)}), sqlstore.ErrFenced)
	ms, err := d.MessageScan(ctx, &sqlstore.MessageScanParams{Queue: "q"})
	require.NoError(t, err)
	require.Len(t, ms, 10)
	require.Equal(t, "v", ms[9].Headers["k"])
	bs, err := d.BindingList(ctx)
	require.NoError(t, err)
	require.Len(t, bs, 1)
}

// BenchmarkBatchCommit commits batches of 1 KiB messages, by COPY or by the multi-row
// INSERT in the pipeline, to choose postgres.CopyThresholdDefault:
//
//	TABLEMQ_TEST_REQUIRE=postgres go test ./sqlstore/postgres/ -run '^$' -bench BatchCommit -benchtime 3s
func BenchmarkBatchCommit(b *testing.B) {
	for _, n := range []int{1, 10, 100, 500, 1000, 2000} {
		for _, mode := range []struct {
			name      string
			threshold int
		}{{"insert", -1}, {"copy", 1}} {
			if n == 1 && mode.name == "copy" {
				continue
			}
			b.Run(fmt.Sprintf("rows=%d/%s", n, mode.name), func(b *testing.B) {
				ctx := context.Background()
				d := openPG(b, testdb.Postgres(b), postgres.Config{CopyThreshold: mode.threshold})
				epoch, err := d.EpochBump(ctx)
				require.NoError(b, err)
				var next int64
				b.SetBytes(int64(n) * 1024)
				b.ResetTimer()
				for range b.N {
					batch := &sqlstore.Batch{MessageInserts: make([]sqlstore.Message, n)}
					for i := range batch.MessageInserts {
						next++
						batch.MessageInserts[i] = pgMsg("q", next, 1024)
					}
					if err := d.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Batch: batch}); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "rows/s")
			})
		}
	}
}

// TestV2BatchRoundTrips checks that batches with the parts of schema v2 (large rows and
// their references, page inserts and trims, purges, counter deletes) and the fenced
// large-message writes stay one round trip once their statements are prepared.
func TestV2BatchRoundTrips(t *testing.T) {
	t.Parallel()
	ctx, proxy, d, epoch := turnDriver(t)
	turns := func(fn func() error) int64 {
		t.Helper()
		before := proxy.turns.Load()
		require.NoError(t, fn())
		return proxy.turns.Load() - before
	}
	put := func(id int64) int64 {
		return turns(func() error {
			return d.LargePut(ctx, &sqlstore.LargePutParams{Epoch: epoch, MessageID: id, Chunks: [][]byte{[]byte("a"), []byte("b")}})
		})
	}
	batch := func(id int64) int64 {
		large := sqlstore.Message{Queue: "q", ID: id, CreatedAt: 1, Large: true, Size: 2}
		return turns(func() error {
			return d.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Slot: 1, Batch: &sqlstore.Batch{
				MessageInserts: []sqlstore.Message{large, pgMsg("q", id+1, 10)},
				PageInserts:    []sqlstore.PageRow{{Log: "@a", ID: id, Large: true, Size: 2}},
				MessageDeletes: []sqlstore.MessageKey{{Queue: "q", ID: id - 10, Large: true}},
				QueuePurges:    []string{"p"},
				PageTrims:      []sqlstore.PageTrim{{Log: "@a", UpTo: id - 10}},
				CounterDeletes: []sqlstore.CounterKey{{Kind: sqlstore.CounterPages, Name: "@b"}},
			}})
		})
	}
	require.LessOrEqual(t, put(10), int64(2))
	require.LessOrEqual(t, batch(10), int64(2))
	for id := int64(20); id <= 40; id += 10 {
		require.Equal(t, int64(1), put(id), "LargePut")
		require.Equal(t, int64(1), batch(id), "batch")
	}
	n, err := d.LargeSweep(ctx, &sqlstore.LargeSweepParams{Epoch: epoch, Below: 100, Limit: 10})
	require.NoError(t, err)
	require.Zero(t, n)
	require.LessOrEqual(t, turns(func() error { return d.LargeDelete(ctx, epoch, 999) }), int64(2))
	require.Equal(t, int64(1), turns(func() error { return d.LargeDelete(ctx, epoch, 40) }), "LargeDelete")
	// Messages 10, 20 and 30 lost both references (row and page row): no chunks left.
	for _, id := range []int64{10, 20, 30} {
		cs, err := d.LargeScan(ctx, &sqlstore.LargeScanParams{MessageID: id, Limit: 5})
		require.NoError(t, err)
		require.Empty(t, cs, "message %d", id)
	}
	cs, err := d.LargeScan(ctx, &sqlstore.LargeScanParams{MessageID: 40, Limit: 5})
	require.NoError(t, err)
	require.Len(t, cs, 2, "referenced chunks stay")
}
