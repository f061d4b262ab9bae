package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // database/sql driver "mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/server"
	"github.com/tablemq/tablemq/sqlstore"
)

// Settings of the large-message tests: small chunks, so that a few MiB make many
// chunks and several LargePut transactions (4 MiB each) and LargeScan calls.
const (
	testThreshold = 100 << 10
	testChunk     = 64 << 10
)

func largeConfig(cfg server.Config) server.Config {
	if cfg.LargeMessageThreshold == 0 {
		cfg.LargeMessageThreshold = testThreshold
	}
	if cfg.LargeChunkSize == 0 {
		cfg.LargeChunkSize = testChunk
	}
	return cfg
}

// largeBundle is a live server on one backend plus a raw SQL view of its store.
type largeBundle struct {
	*bundle
	db *sql.DB
}

func setupLarge(t *testing.T, url string, cfg server.Config) *largeBundle {
	t.Helper()
	return &largeBundle{bundle: setupURL(t, url, largeConfig(cfg)), db: openRawSQL(t, url)}
}

// openRawSQL opens the store at url with its database/sql driver, to count rows.
func openRawSQL(t *testing.T, store string) *sql.DB {
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

// chunkRows returns the number of chunk rows and of distinct messages in the
// large-messages table.
func (b *largeBundle) chunkRows(t *testing.T) (rows, messages int64) {
	t.Helper()
	q := fmt.Sprintf("SELECT COUNT(*), COUNT(DISTINCT message_id) FROM %s", migrations.LargeMessagesDefault)
	require.NoError(t, b.db.QueryRowContext(context.Background(), q).Scan(&rows, &messages))
	return rows, messages
}

func (b *largeBundle) requireNoChunks(t *testing.T) {
	t.Helper()
	rows, _ := b.chunkRows(t)
	require.Zero(t, rows, "chunk rows left in the large-messages table")
}

// payload returns n pseudo-random bytes drawn from seed.
func payload(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// slowReader hands out at most step bytes per Read, so that uploads read in pieces.
type slowReader struct {
	r    io.Reader
	step int
}

func (s *slowReader) Read(p []byte) (int, error) {
	if len(p) > s.step {
		p = p[:s.step]
	}
	return s.r.Read(p)
}

// failingReader yields n bytes of data, then fails.
type failingReader struct {
	n   int
	err error
}

var errClientGone = errors.New("client went away")

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, f.err
	}
	k := min(len(p), f.n)
	for i := range p[:k] {
		p[i] = byte(i)
	}
	f.n -= k
	return k, nil
}

func publishStream(t *testing.T, srv *server.Server, queue string, body []byte, m server.Message) server.PublishResult {
	t.Helper()
	res, err := srv.PublishStream(context.Background(), queue, m, &slowReader{r: bytes.NewReader(body), step: 7000})
	require.NoError(t, err)
	require.NotEmpty(t, res.ID)
	return res
}

// readBody reads the body of a delivery through Server.Body and returns its checksum.
func readBody(t *testing.T, srv *server.Server, queue string, d server.Delivery) [32]byte {
	t.Helper()
	br, err := srv.Body(context.Background(), queue, d.ID, d.Receipt)
	require.NoError(t, err)
	defer br.Close()
	require.Equal(t, d.Size, br.Size)
	h := sha256.New()
	n, err := io.Copy(h, br)
	require.NoError(t, err)
	require.Equal(t, d.Size, n)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// TestLargeRoundTrip publishes bodies around the threshold and of several MiB with
// PublishStream and reads them back byte for byte; only bodies above the threshold
// become large, and acks leave no chunk behind.
func TestLargeRoundTrip(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupLarge(t, url, server.Config{})
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		sizes := []int{0, testThreshold - 1, testThreshold, testThreshold + 1, 2 * testChunk, 5<<20 + 3}
		sums := map[string][32]byte{}
		for i, n := range sizes {
			body := payload(uint64(i+1), n)
			res := publishStream(t, b.srv, "q", body, server.Message{ContentType: "application/x-test", Headers: map[string]string{"n": fmt.Sprint(n)}})
			sums[res.ID] = sha256.Sum256(body)
		}
		rows, msgs := b.chunkRows(t)
		require.Equal(t, int64(3), msgs, "the three bodies above the threshold are chunked")
		require.Equal(t, int64(2+2+81), rows)

		ds := drain(t, b.srv, "q", 10)
		require.Len(t, ds, len(sizes))
		for i, d := range ds {
			n := sizes[i]
			require.Equal(t, fmt.Sprint(n), d.Headers["n"])
			require.Equal(t, int64(n), d.Size)
			require.Equal(t, n > testThreshold, d.Large, "size %d", n)
			if d.Large {
				require.Nil(t, d.Body)
			} else {
				require.Equal(t, sums[d.ID], sha256.Sum256(d.Body))
			}
			require.Equal(t, sums[d.ID], readBody(t, b.srv, "q", d), "size %d", n)
		}
		// A body reader reads in small steps as well.
		br, err := b.srv.Body(context.Background(), "q", ds[5].ID, ds[5].Receipt)
		require.NoError(t, err)
		require.Equal(t, "application/x-test", br.ContentType)
		require.True(t, br.Large)
		got, err := io.ReadAll(&slowReader{r: br, step: 1000})
		require.NoError(t, err)
		require.NoError(t, br.Close())
		require.Equal(t, sums[ds[5].ID], sha256.Sum256(got))

		ack(t, b.srv, "q", receipts(ds)...)
		b.requireNoChunks(t)
		require.Zero(t, info(t, b.srv, "q").Depth)
	})
}

// TestLargeFanOut publishes a large message to a multicast address with two queues:
// the chunks are stored once, both queues read them, and they go with the last ack.
func TestLargeFanOut(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupLarge(t, url, server.Config{})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q1", server.QueueConfig{})
		mustCreateQueue(t, b.srv, "q2", server.QueueConfig{})
		_, err := b.srv.AddressCreate(ctx, "news", server.AddressConfig{Routing: server.Multicast})
		require.NoError(t, err)
		for _, q := range []string{"q1", "q2"} {
			_, err := b.srv.BindingCreate(ctx, "news", q)
			require.NoError(t, err)
		}
		body := payload(7, 1<<20+5)
		res, err := b.srv.PublishAddressStream(ctx, "news", server.Message{}, bytes.NewReader(body))
		require.NoError(t, err)
		rows, msgs := b.chunkRows(t)
		require.Equal(t, int64(1), msgs)
		require.Equal(t, int64(17), rows, "one copy of the chunks for both queues")

		var got []server.Delivery
		for _, q := range []string{"q1", "q2"} {
			ds := receive(t, b.srv, q, server.ReceiveParams{})
			require.Len(t, ds, 1)
			require.Equal(t, res.ID, ds[0].ID)
			require.True(t, ds[0].Large)
			require.Equal(t, sha256.Sum256(body), readBody(t, b.srv, q, ds[0]))
			got = append(got, ds[0])
		}
		ack(t, b.srv, "q1", got[0].Receipt)
		rows, _ = b.chunkRows(t)
		require.Equal(t, int64(17), rows, "q2 still references the chunks")
		require.Equal(t, sha256.Sum256(body), readBody(t, b.srv, "q2", got[1]))
		ack(t, b.srv, "q2", got[1].Receipt)
		b.requireNoChunks(t)
	})
}

// TestLargeFailedUploads: a body past max-message-size, a reader that fails, an
// upload whose context ends and a duplicate idempotency key leave no chunk and no
// message behind.
func TestLargeFailedUploads(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		const limit = 5 << 20
		b := setupLarge(t, url, server.Config{MaxMessageSize: limit})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})

		// Too large: found after the first 4 MiB of chunks were written.
		_, err := b.srv.PublishStream(ctx, "q", server.Message{}, bytes.NewReader(payload(1, limit+1)))
		require.ErrorIs(t, err, server.ErrTooLarge)
		b.requireNoChunks(t)
		// Exactly the limit is fine.
		res := publishStream(t, b.srv, "q", payload(2, limit), server.Message{})

		// The publisher's reader fails in the middle (after a first LargePut).
		_, err = b.srv.PublishStream(ctx, "q", server.Message{}, &failingReader{n: 4<<20 + 600<<10, err: errClientGone})
		require.ErrorIs(t, err, errClientGone)
		require.ErrorIs(t, err, server.ErrInvalid)

		// The publisher's context ends in the middle.
		cctx, cancel := context.WithCancel(ctx)
		pr, pw := io.Pipe()
		go func() {
			_, _ = pw.Write(payload(3, 4<<20+300<<10))
			cancel()
			_ = pw.CloseWithError(context.Canceled)
		}()
		_, err = b.srv.PublishStream(cctx, "q", server.Message{}, pr)
		require.Error(t, err)

		rows, msgs := b.chunkRows(t)
		require.Equal(t, int64(1), msgs, "only the published message has chunks")
		require.Equal(t, int64(80), rows)

		// A duplicate idempotency key: known before the upload, and found only when
		// publishing (two uploads at once).
		key := server.Message{IdempotencyKey: "k1"}
		first := publishStream(t, b.srv, "q", payload(4, 200<<10), key)
		again := publishStream(t, b.srv, "q", payload(5, 200<<10), key)
		require.True(t, again.Duplicate)
		require.Equal(t, first.ID, again.ID)

		pr1, pw1 := io.Pipe()
		pr2, pw2 := io.Pipe()
		type answer struct {
			res server.PublishResult
			err error
		}
		ans := make(chan answer, 2)
		for _, r := range []io.Reader{pr1, pr2} {
			go func() {
				res, err := b.srv.PublishStream(ctx, "q", server.Message{IdempotencyKey: "k2"}, r)
				ans <- answer{res, err}
			}()
		}
		// Both uploads are under way before either ends.
		_, err = pw1.Write(payload(6, 150<<10))
		require.NoError(t, err)
		_, err = pw2.Write(payload(6, 150<<10))
		require.NoError(t, err)
		require.NoError(t, pw1.Close())
		require.NoError(t, pw2.Close())
		a1, a2 := <-ans, <-ans
		require.NoError(t, a1.err)
		require.NoError(t, a2.err)
		require.Equal(t, a1.res.ID, a2.res.ID)
		require.True(t, a1.res.Duplicate != a2.res.Duplicate, "exactly one is the duplicate")

		ds := drain(t, b.srv, "q", 10)
		ids := make([]string, len(ds))
		for i, d := range ds {
			ids[i] = d.ID
		}
		require.ElementsMatch(t, []string{res.ID, first.ID, a1.res.ID}, ids)
		_, msgs = b.chunkRows(t)
		require.Equal(t, int64(3), msgs)
		ack(t, b.srv, "q", receipts(ds)...)
		b.requireNoChunks(t)
	})
}

// TestLargeBodyReceipts checks which receipts Body accepts, before and after a
// takeover.
func TestLargeBodyReceipts(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupLarge(t, url, server.Config{})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		body := payload(9, 300<<10)
		publishStream(t, b.srv, "q", body, server.Message{})
		small := publish(t, b.srv, "q", "small")[0]
		ds := receive(t, b.srv, "q", server.ReceiveParams{Max: 2})
		require.Len(t, ds, 2)
		d := ds[0]

		_, err := b.srv.Body(ctx, "nope", d.ID, d.Receipt)
		require.ErrorIs(t, err, server.ErrQueueNotFound)
		_, err = b.srv.Body(ctx, "q", d.ID, "garbage")
		require.ErrorIs(t, err, server.ErrReceiptInvalid)
		_, err = b.srv.Body(ctx, "q", small, d.Receipt)
		require.ErrorIs(t, err, server.ErrReceiptInvalid, "a receipt of another message")
		_, err = b.srv.Body(ctx, "q", "x", d.Receipt)
		require.ErrorIs(t, err, server.ErrInvalid)

		// The small message's body is served too.
		br, err := b.srv.Body(ctx, "q", ds[1].ID, ds[1].Receipt)
		require.NoError(t, err)
		got, err := io.ReadAll(br)
		require.NoError(t, err)
		require.Equal(t, "small", string(got))
		require.False(t, br.Large)
		require.Equal(t, int64(5), br.Size)

		// Delivered again: the first receipt is stale.
		rr, err := b.srv.Nack(ctx, "q", []string{d.Receipt}, 0)
		require.NoError(t, err)
		require.NoError(t, rr[0].Err)
		again := receive(t, b.srv, "q", server.ReceiveParams{})
		require.Len(t, again, 1)
		_, err = b.srv.Body(ctx, "q", d.ID, d.Receipt)
		require.ErrorIs(t, err, server.ErrReceiptStale)
		require.Equal(t, sha256.Sum256(body), readBody(t, b.srv, "q", again[0]))

		// Takeover: the old live's receipt reads the body while the new live has not
		// delivered the message; once it has, the old receipt is stale.
		srv := b.start(t)
		require.Equal(t, sha256.Sum256(body), readBody(t, srv, "q", again[0]))
		redo := receive(t, srv, "q", server.ReceiveParams{Max: 2})
		require.Len(t, redo, 2)
		_, err = srv.Body(ctx, "q", again[0].ID, again[0].Receipt)
		require.ErrorIs(t, err, server.ErrReceiptStale)

		// Acked: the receipt is unknown and the chunks are gone.
		for _, r := range redo {
			if r.Large {
				require.Equal(t, sha256.Sum256(body), readBody(t, srv, "q", r))
			}
		}
		ack(t, srv, "q", receipts(redo)...)
		_, err = srv.Body(ctx, "q", redo[0].ID, redo[0].Receipt)
		require.ErrorIs(t, err, server.ErrReceiptUnknown)
		b.requireNoChunks(t)
	})
}

// TestLargeDeadLetter: a large message moved to the dead-letter queue keeps its body.
func TestLargeDeadLetter(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupLarge(t, url, server.Config{})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{MaxDeliveries: 1, DeadLetterQueue: "dlq"})
		body := payload(11, 700<<10)
		res := publishStream(t, b.srv, "q", body, server.Message{})
		ds := receive(t, b.srv, "q", server.ReceiveParams{})
		require.Len(t, ds, 1)
		rr, err := b.srv.Nack(ctx, "q", []string{ds[0].Receipt}, 0)
		require.NoError(t, err)
		require.NoError(t, rr[0].Err)

		dl := receive(t, b.srv, "dlq", server.ReceiveParams{Wait: 5 * time.Second})
		require.Len(t, dl, 1)
		require.True(t, dl[0].Large)
		require.Equal(t, res.ID, dl[0].Headers[server.HeaderDeadLetterOriginalID])
		require.Equal(t, sha256.Sum256(body), readBody(t, b.srv, "dlq", dl[0]))
		require.Zero(t, info(t, b.srv, "q").Depth)
		rows, _ := b.chunkRows(t)
		require.Equal(t, int64(11), rows)

		// Still readable after a restart.
		srv := b.start(t)
		dl = receive(t, srv, "dlq", server.ReceiveParams{Wait: 5 * time.Second})
		require.Len(t, dl, 1)
		require.Equal(t, sha256.Sum256(body), readBody(t, srv, "dlq", dl[0]))
		ack(t, srv, "dlq", dl[0].Receipt)
		b.requireNoChunks(t)
	})
}

// TestLargeSweep: chunks an earlier live wrote without publishing them are deleted
// by the next live; chunks of published messages stay.
func TestLargeSweep(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupLarge(t, url, server.Config{})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		body := payload(12, 200<<10)
		publishStream(t, b.srv, "q", body, server.Message{})

		// An upload cut by the death of its live: chunks under an id of its epoch.
		epoch, err := b.drv.EpochGet(ctx)
		require.NoError(t, err)
		orphan := epoch<<43 | 1<<40
		require.NoError(t, b.drv.LargePut(ctx, &sqlstore.LargePutParams{
			Epoch: epoch, MessageID: orphan, Chunks: [][]byte{[]byte("abc"), []byte("def")},
		}))
		_, msgs := b.chunkRows(t)
		require.Equal(t, int64(2), msgs)

		srv := b.start(t)
		eventually(t, 10*time.Second, func() bool {
			_, msgs := b.chunkRows(t)
			return msgs == 1
		}, "the abandoned upload is swept")
		ds := receive(t, srv, "q", server.ReceiveParams{})
		require.Len(t, ds, 1)
		require.Equal(t, sha256.Sum256(body), readBody(t, srv, "q", ds[0]))
	})
}

// TestLargeConfig checks the validation of the large-message settings.
func TestLargeConfig(t *testing.T) {
	t.Parallel()
	c := server.Config{}.WithDefaults()
	require.Equal(t, int64(server.LargeMessageThresholdDefault), c.LargeMessageThreshold)
	require.Equal(t, server.LargeChunkSizeDefault, c.LargeChunkSize)
	require.Equal(t, int64(1<<30), c.MaxMessageSize)
	_, err := server.New(nil, server.Config{LargeChunkSize: 100})
	require.ErrorContains(t, err, "large-chunk-size")
	_, err = server.New(nil, server.Config{LargeMessageThreshold: 1 << 30})
	require.ErrorContains(t, err, "large-message-threshold")
}

// TestLargeDeleteExpirePurge: chunks go with their messages however the messages go:
// purge, expiry, queue delete.
func TestLargeDeleteExpirePurge(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		now := time.Now()
		var offset atomic.Int64
		b := setupLarge(t, url, server.Config{Now: func() time.Time { return now.Add(time.Duration(offset.Load())) }})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		for i := range 2 {
			publishStream(t, b.srv, "q", payload(uint64(20+i), 300<<10), server.Message{})
		}
		n, err := b.srv.QueuePurge(ctx, "q")
		require.NoError(t, err)
		require.Equal(t, int64(2), n)
		b.requireNoChunks(t)

		publishStream(t, b.srv, "q", payload(22, 300<<10), server.Message{TTL: time.Minute})
		offset.Store(int64(2 * time.Minute))
		require.Empty(t, receive(t, b.srv, "q", server.ReceiveParams{}), "expired")
		eventually(t, 10*time.Second, func() bool { rows, _ := b.chunkRows(t); return rows == 0 }, "expired chunks deleted")

		publishStream(t, b.srv, "q", payload(23, 300<<10), server.Message{})
		require.NoError(t, b.srv.QueueDelete(ctx, "q"))
		b.requireNoChunks(t)
	})
}
