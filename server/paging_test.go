package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/server"
	"github.com/tablemq/tablemq/sqlstore"
)

// pageRows returns the rows of a page log.
func pageRows(t *testing.T, drv sqlstore.Driver, log string) []sqlstore.PageRow {
	t.Helper()
	rows, err := drv.PageScan(context.Background(), &sqlstore.PageScanParams{Log: log, Limit: 100000})
	require.NoError(t, err)
	return rows
}

func publishAddr(t *testing.T, srv *server.Server, addr string, bodies ...string) {
	t.Helper()
	msgs := make([]server.Message, len(bodies))
	for i, b := range bodies {
		msgs[i] = server.Message{Body: []byte(b)}
	}
	res, err := srv.PublishAddress(context.Background(), addr, msgs)
	require.NoError(t, err)
	for _, r := range res {
		require.NoError(t, r.Err)
		require.False(t, r.Dropped)
	}
}

// consumeAll receives and acks until the queue is empty and returns the bodies.
func consumeAll(t *testing.T, srv *server.Server, queue string, max int) []string {
	t.Helper()
	var got []string
	for {
		ds := receive(t, srv, queue, server.ReceiveParams{Max: max, Wait: 200 * time.Millisecond})
		if len(ds) == 0 {
			return got
		}
		got = append(got, bodies(ds)...)
		ack(t, srv, queue, receipts(ds)...)
	}
}

// TestPagingFanOut publishes to a multicast address far past its max size: the
// overflow goes to the address's page log, one row per message however many queues
// are bound; every queue reads it all in order, across a restart in the middle; the
// page rows are trimmed once every queue passed them.
func TestPagingFanOut(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		const n, size, limit = 120, 100, 1000
		b := setupURL(t, url, server.Config{WindowSize: 8})
		ctx := context.Background()
		_, err := b.srv.AddressCreate(ctx, "news", server.AddressConfig{Routing: server.Multicast,
			Limits: server.Limits{MaxSizeBytes: limit, FullPolicy: server.PolicyPage}})
		require.NoError(t, err)
		qs := []string{"q1", "q2", "q3"}
		for _, q := range qs {
			mustCreateQueue(t, b.srv, q, server.QueueConfig{})
			_, err := b.srv.BindingCreate(ctx, "news", q)
			require.NoError(t, err)
		}
		body := func(i int) string { return fmt.Sprintf("%03d", i) + strings.Repeat("p", size-3) }
		var want []string
		for i := range n {
			want = append(want, body(i))
			publishAddr(t, b.srv, "news", body(i))
		}
		ai, err := b.srv.AddressGet(ctx, "news")
		require.NoError(t, err)
		require.True(t, ai.Paging)
		// The size counts a fanned-out message once per queue: 4 publishes reach the
		// limit (3*4*100 >= 1000), the rest are paged.
		const direct = 4
		require.Equal(t, int64(3*direct*size), ai.Bytes)
		paged := pageRows(t, b.drv, "@news")
		require.Len(t, paged, n-direct, "a paged message is stored once")
		for _, q := range qs {
			qi := info(t, b.srv, q)
			require.Equal(t, int64(n), qi.Depth, q)
			require.Equal(t, int64(n-direct), qi.Paged, q)
			stored, err := b.drv.MessageCount(ctx, q)
			require.NoError(t, err)
			require.Equal(t, int64(direct), stored, q)
		}

		// q1 reads half, then a restart; then everything.
		var got1 []string
		for len(got1) < n/2 {
			ds := receive(t, b.srv, "q1", server.ReceiveParams{Max: 9})
			require.NotEmpty(t, ds)
			got1 = append(got1, bodies(ds)...)
			ack(t, b.srv, "q1", receipts(ds)...)
		}
		b.restart(t)
		require.Equal(t, int64(n-len(got1)), info(t, b.srv, "q1").Depth)
		require.Equal(t, int64(n), info(t, b.srv, "q2").Depth)
		got1 = append(got1, consumeAll(t, b.srv, "q1", 9)...)
		require.Equal(t, want, got1)
		require.NotEmpty(t, pageRows(t, b.drv, "@news"), "q2 and q3 have not read the log")
		for _, q := range qs[1:] {
			require.Equal(t, want, consumeAll(t, b.srv, q, 13), q)
		}
		for _, q := range qs {
			qi := info(t, b.srv, q)
			require.Zero(t, qi.Depth, q)
			require.Zero(t, qi.Paged, q)
		}
		eventually(t, 5*time.Second, func() bool { return len(pageRows(t, b.drv, "@news")) == 0 }, "page rows trimmed")
		ai, err = b.srv.AddressGet(ctx, "news")
		require.NoError(t, err)
		require.False(t, ai.Paging)
		require.Zero(t, ai.Bytes)

		// Not paging any more: the next publish goes to the queues directly.
		publishAddr(t, b.srv, "news", "direct")
		require.Empty(t, pageRows(t, b.drv, "@news"))
		require.Equal(t, []string{"direct"}, consumeAll(t, b.srv, "q3", 5))
	})
}

// TestPagingQueue pages the direct publishes of a queue past its limit, with
// priorities and idempotency keys, and reads them back in order.
func TestPagingQueue(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupURL(t, url, server.Config{WindowSize: 4, MaxSizeBytes: 50})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		var want []string
		for i := range 40 {
			s := fmt.Sprintf("m%02d-%s", i, strings.Repeat("z", 10))
			want = append(want, s)
			res, err := b.srv.PublishQueue(ctx, "q", []server.Message{{Body: []byte(s), IdempotencyKey: fmt.Sprint("k", i)}})
			require.NoError(t, err)
			require.NoError(t, res[0].Err)
		}
		// A retry of a paged publish is a duplicate.
		res, err := b.srv.PublishQueue(ctx, "q", []server.Message{{Body: []byte("again"), IdempotencyKey: "k30"}})
		require.NoError(t, err)
		require.True(t, res[0].Duplicate)
		require.NotEmpty(t, pageRows(t, b.drv, "q"))
		require.Equal(t, int64(40), info(t, b.srv, "q").Depth)
		b.restart(t)
		require.Equal(t, int64(40), info(t, b.srv, "q").Depth)
		require.Equal(t, want, consumeAll(t, b.srv, "q", 3))
		eventually(t, 5*time.Second, func() bool { return len(pageRows(t, b.drv, "q")) == 0 }, "page rows trimmed")
	})
}

// TestFullPolicies checks FAIL, DROP and BLOCK on a queue's limit and the global limit.
func TestFullPolicies(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupURL(t, url, server.Config{BlockTimeout: 300 * time.Millisecond, GlobalMaxSize: 1000})
		ctx := context.Background()
		hundred := strings.Repeat("h", 100)
		pub := func(q string) server.PublishResult {
			res, err := b.srv.PublishQueue(ctx, q, []server.Message{{Body: []byte(hundred)}})
			require.NoError(t, err)
			return res[0]
		}

		mustCreateQueue(t, b.srv, "fail", server.QueueConfig{Limits: server.Limits{MaxSizeBytes: 300, FullPolicy: server.PolicyFail}})
		for range 3 {
			require.NoError(t, pub("fail").Err)
		}
		r := pub("fail")
		require.ErrorIs(t, r.Err, server.ErrAddressFull)
		require.Equal(t, int64(3), info(t, b.srv, "fail").Depth, "nothing stored")
		ds := receive(t, b.srv, "fail", server.ReceiveParams{})
		ack(t, b.srv, "fail", ds[0].Receipt)
		require.NoError(t, pub("fail").Err, "room again after an ack")

		mustCreateQueue(t, b.srv, "drop", server.QueueConfig{Limits: server.Limits{MaxSizeBytes: 200, FullPolicy: server.PolicyDrop}})
		require.NoError(t, pub("drop").Err)
		require.NoError(t, pub("drop").Err)
		r = pub("drop")
		require.NoError(t, r.Err)
		require.True(t, r.Dropped)
		require.Empty(t, r.ID)
		require.Equal(t, int64(2), info(t, b.srv, "drop").Depth)
		require.Equal(t, int64(1), b.srv.Counters().FullDropped)

		mustCreateQueue(t, b.srv, "block", server.QueueConfig{Limits: server.Limits{MaxSizeBytes: 200, FullPolicy: server.PolicyBlock}})
		require.NoError(t, pub("block").Err)
		require.NoError(t, pub("block").Err)
		start := time.Now()
		r = pub("block")
		require.ErrorIs(t, r.Err, server.ErrPublishBlocked)
		require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)
		ds = receive(t, b.srv, "block", server.ReceiveParams{})
		done := make(chan server.PublishResult, 1)
		go func() { done <- pub("block") }()
		select {
		case r := <-done:
			t.Fatalf("publish did not block: %+v", r)
		case <-time.After(50 * time.Millisecond):
		}
		ack(t, b.srv, "block", ds[0].Receipt)
		select {
		case r := <-done:
			require.NoError(t, r.Err, "the ack made room")
		case <-time.After(5 * time.Second):
			t.Fatal("blocked publish not released by the ack")
		}

		// Global: 3+2+2 messages of 100 bytes are stored (700); the default policy
		// (PAGE) of an unlimited queue pages past the global limit.
		mustCreateQueue(t, b.srv, "g", server.QueueConfig{})
		for range 3 {
			require.NoError(t, pub("g").Err)
		}
		require.Empty(t, pageRows(t, b.drv, "g"))
		require.NoError(t, pub("g").Err)
		require.Len(t, pageRows(t, b.drv, "g"), 1, "past the global limit")
		require.Equal(t, int64(4), info(t, b.srv, "g").Depth)
		require.Len(t, consumeAll(t, b.srv, "g", 10), 4)

		_, err := b.srv.QueueCreate(ctx, "bad", server.QueueConfig{Limits: server.Limits{FullPolicy: "SPILL"}})
		require.ErrorIs(t, err, server.ErrInvalid)
	})
}

// TestPagingAnycast pages an anycast address into its queues' own logs: each message
// is still delivered to exactly one queue, in order within each queue.
func TestPagingAnycast(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupURL(t, url, server.Config{WindowSize: 4})
		ctx := context.Background()
		_, err := b.srv.AddressCreate(ctx, "work", server.AddressConfig{Routing: server.Anycast,
			Limits: server.Limits{MaxSizeBytes: 300}})
		require.NoError(t, err)
		for _, q := range []string{"w1", "w2"} {
			mustCreateQueue(t, b.srv, q, server.QueueConfig{})
			_, err := b.srv.BindingCreate(ctx, "work", q)
			require.NoError(t, err)
		}
		var all []string
		for i := range 30 {
			s := fmt.Sprintf("%02d", i) + strings.Repeat("a", 98)
			all = append(all, s)
			publishAddr(t, b.srv, "work", s)
		}
		require.Len(t, append(pageRows(t, b.drv, "w1"), pageRows(t, b.drv, "w2")...), 27)
		b.restart(t)
		got1, got2 := consumeAll(t, b.srv, "w1", 5), consumeAll(t, b.srv, "w2", 5)
		require.Len(t, append(got1, got2...), 30)
		require.ElementsMatch(t, all, append(got1, got2...))
		require.IsIncreasing(t, got1)
		require.IsIncreasing(t, got2)
	})
}
