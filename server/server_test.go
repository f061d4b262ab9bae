package server_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/server"
	"github.com/tablemq/tablemq/sqlstore"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupURL(t, url, server.Config{})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "orders", server.QueueConfig{})

		ids := publishMsgs(t, b.srv, "orders", server.Message{
			Body: []byte("hello"), ContentType: "text/plain", Headers: map[string]string{"k": "v"},
		})
		require.Len(t, ids, 1)
		require.Equal(t, int64(1), info(t, b.srv, "orders").Depth)

		ds := receive(t, b.srv, "orders", server.ReceiveParams{Max: 10})
		require.Len(t, ds, 1)
		d := ds[0]
		require.Equal(t, ids[0], d.ID)
		require.Equal(t, "hello", string(d.Body))
		require.Equal(t, "text/plain", d.ContentType)
		require.Equal(t, map[string]string{"k": "v"}, d.Headers)
		require.Equal(t, 1, d.DeliveryCount)
		require.False(t, d.Redelivered)
		require.Equal(t, server.PriorityDefault, d.Priority)
		require.NotEmpty(t, d.Receipt)
		require.True(t, d.LeaseExpires.After(time.Now()))

		qi := info(t, b.srv, "orders")
		require.Equal(t, int64(1), qi.Depth)
		require.Equal(t, int64(1), qi.InFlight)

		ack(t, b.srv, "orders", d.Receipt)
		qi = info(t, b.srv, "orders")
		require.Equal(t, int64(0), qi.Depth)
		require.Equal(t, int64(0), qi.InFlight)
		require.Empty(t, receive(t, b.srv, "orders", server.ReceiveParams{}))

		// A second ack of the same receipt is reported per receipt.
		res, err := b.srv.Ack(ctx, "orders", []string{d.Receipt, "garbage"})
		require.NoError(t, err)
		require.ErrorIs(t, res[0].Err, server.ErrReceiptUnknown)
		require.ErrorIs(t, res[1].Err, server.ErrReceiptInvalid)

		n, err := b.drv.MessageCount(ctx, "orders")
		require.NoError(t, err)
		require.Zero(t, n)
		require.Equal(t, server.Counters{Published: 1, Delivered: 1, Acked: 1}, b.srv.Counters())
	})
}

func TestFIFOAndPriority(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	var want []string
	for i := range 20 {
		body := fmt.Sprintf("m%02d", i)
		publish(t, b.srv, "q", body)
		want = append(want, body)
	}
	ds := receive(t, b.srv, "q", server.ReceiveParams{Max: 100})
	require.Equal(t, want, bodies(ds))

	p := func(n int) *int { return &n }
	mustCreateQueue(t, b.srv, "prio", server.QueueConfig{})
	publishMsgs(t, b.srv, "prio",
		server.Message{Body: []byte("low"), Priority: p(1)},
		server.Message{Body: []byte("high-1"), Priority: p(9)},
		server.Message{Body: []byte("mid")},
		server.Message{Body: []byte("high-2"), Priority: p(9)},
	)
	ds = receive(t, b.srv, "prio", server.ReceiveParams{Max: 10})
	require.Equal(t, []string{"high-1", "high-2", "mid", "low"}, bodies(ds))
}

func TestLongPoll(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})

	// Times out empty.
	start := time.Now()
	ds := receive(t, b.srv, "q", server.ReceiveParams{Wait: 150 * time.Millisecond})
	require.Empty(t, ds)
	require.GreaterOrEqual(t, time.Since(start), 150*time.Millisecond)

	// Wakes on publish.
	got := make(chan []server.Delivery, 1)
	go func() {
		ds, _ := b.srv.Receive(context.Background(), "q", server.ReceiveParams{Wait: 10 * time.Second})
		got <- ds
	}()
	eventually(t, 5*time.Second, func() bool { return info(t, b.srv, "q").WaitingReceivers == 1 })
	start = time.Now()
	publish(t, b.srv, "q", "wake")
	select {
	case ds := <-got:
		require.Equal(t, []string{"wake"}, bodies(ds))
		require.Less(t, time.Since(start), 5*time.Second)
	case <-time.After(5 * time.Second):
		t.Fatal("long poll not woken by publish")
	}
	require.Equal(t, 0, info(t, b.srv, "q").WaitingReceivers)

	// Honours context cancellation.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := b.srv.Receive(ctx, "q", server.ReceiveParams{Wait: 10 * time.Second})
		errc <- err
	}()
	eventually(t, 5*time.Second, func() bool { return info(t, b.srv, "q").WaitingReceivers == 1 })
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
}

func TestLeaseExpiryRedelivers(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	publish(t, b.srv, "q", "x")

	first := receive(t, b.srv, "q", server.ReceiveParams{Lease: server.LeaseMin})
	require.Len(t, first, 1)
	var second []server.Delivery
	eventually(t, 5*time.Second, func() bool {
		second = receive(t, b.srv, "q", server.ReceiveParams{Wait: 200 * time.Millisecond})
		return len(second) == 1
	})
	require.Equal(t, first[0].ID, second[0].ID)
	require.Equal(t, 2, second[0].DeliveryCount)
	require.True(t, second[0].Redelivered)

	// The first receipt is stale now; the second acks.
	res, err := b.srv.Ack(ctx, "q", []string{first[0].Receipt})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, server.ErrReceiptStale)
	res, err = b.srv.Nack(ctx, "q", []string{first[0].Receipt}, 0)
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, server.ErrReceiptStale)
	ack(t, b.srv, "q", second[0].Receipt)
	require.Equal(t, int64(0), info(t, b.srv, "q").Depth)
}

func TestLeaseExpiredReceiptStillAcksUntilRedelivered(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	publish(t, b.srv, "q", "x")
	ds := receive(t, b.srv, "q", server.ReceiveParams{Lease: server.LeaseMin})
	require.Len(t, ds, 1)
	eventually(t, 5*time.Second, func() bool { return info(t, b.srv, "q").InFlight == 0 })
	ack(t, b.srv, "q", ds[0].Receipt)
	require.Equal(t, int64(0), info(t, b.srv, "q").Depth)
	require.Empty(t, receive(t, b.srv, "q", server.ReceiveParams{}))
}

func TestNack(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	publish(t, b.srv, "q", "a", "b")

	ds := receive(t, b.srv, "q", server.ReceiveParams{})
	require.Equal(t, []string{"a"}, bodies(ds))
	res, err := b.srv.Nack(ctx, "q", receipts(ds), 0)
	require.NoError(t, err)
	require.NoError(t, res[0].Err)

	// Back at its place, before b, with its count raised.
	ds = receive(t, b.srv, "q", server.ReceiveParams{Max: 10})
	require.Equal(t, []string{"a", "b"}, bodies(ds))
	require.Equal(t, 2, ds[0].DeliveryCount)
	require.True(t, ds[0].Redelivered)
	require.Equal(t, 1, ds[1].DeliveryCount)

	// With a delay: invisible until then.
	res, err = b.srv.Nack(ctx, "q", receipts(ds), 300*time.Millisecond)
	require.NoError(t, err)
	for _, r := range res {
		require.NoError(t, r.Err)
	}
	require.Equal(t, int64(2), info(t, b.srv, "q").Delayed)
	require.Empty(t, receive(t, b.srv, "q", server.ReceiveParams{Max: 10}))
	ds = receive(t, b.srv, "q", server.ReceiveParams{Max: 10, Wait: 5 * time.Second})
	if len(ds) < 2 {
		ds = append(ds, receive(t, b.srv, "q", server.ReceiveParams{Max: 10, Wait: 5 * time.Second})...)
	}
	require.Equal(t, []string{"a", "b"}, bodies(ds))
	require.Equal(t, []int{3, 2}, []int{ds[0].DeliveryCount, ds[1].DeliveryCount})

	// The counts were persisted when the messages went back.
	rows, err := b.drv.MessageScan(ctx, scanAll("q"))
	require.NoError(t, err)
	require.Len(t, rows, 2)
	require.Equal(t, int32(2), rows[0].DeliveryCount)
}

func TestExtend(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	publish(t, b.srv, "q", "x")
	ds := receive(t, b.srv, "q", server.ReceiveParams{Lease: 200 * time.Millisecond})
	require.Len(t, ds, 1)
	res, err := b.srv.Extend(ctx, "q", receipts(ds), 10*time.Second)
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	// Well past the first lease, the message is still leased.
	require.Empty(t, receive(t, b.srv, "q", server.ReceiveParams{Wait: 500 * time.Millisecond}))
	require.Equal(t, int64(1), info(t, b.srv, "q").InFlight)
	ack(t, b.srv, "q", ds[0].Receipt)

	_, err = b.srv.Extend(ctx, "q", receipts(ds), time.Millisecond)
	require.ErrorIs(t, err, server.ErrInvalid)
	res, err = b.srv.Extend(ctx, "q", receipts(ds), time.Second)
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, server.ErrReceiptUnknown)
}

func TestMaxDeliveriesDeadLetter(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{MaxDeliveries: 2, DeadLetterQueue: "q.dlq"})
	// The dead-letter queue exists from the start, empty.
	dlqInfo, err := b.srv.QueueGet(ctx, "q.dlq")
	require.NoError(t, err)
	require.Zero(t, dlqInfo.Depth)
	ids := publishMsgs(t, b.srv, "q", server.Message{Body: []byte("poison"), Headers: map[string]string{"a": "b"}})

	for range 2 {
		ds := receive(t, b.srv, "q", server.ReceiveParams{})
		require.Len(t, ds, 1)
		_, err := b.srv.Nack(ctx, "q", receipts(ds), 0)
		require.NoError(t, err)
	}
	require.Empty(t, receive(t, b.srv, "q", server.ReceiveParams{}))
	require.Equal(t, int64(0), info(t, b.srv, "q").Depth)

	ds := receive(t, b.srv, "q.dlq", server.ReceiveParams{Wait: 5 * time.Second})
	require.Len(t, ds, 1)
	require.Equal(t, "poison", string(ds[0].Body))
	require.Equal(t, "q", ds[0].Headers[server.HeaderDeadLetterFrom])
	require.Equal(t, ids[0], ds[0].Headers[server.HeaderDeadLetterOriginalID])
	require.Equal(t, "b", ds[0].Headers["a"])
	require.Equal(t, 1, ds[0].DeliveryCount)

	n, err := b.drv.MessageCount(ctx, "q")
	require.NoError(t, err)
	require.Zero(t, n)
	n, err = b.drv.MessageCount(ctx, "q.dlq")
	require.NoError(t, err)
	require.Equal(t, int64(1), n)

	// Lease expiry counts as well; without a dead-letter queue the message is dropped.
	mustCreateQueue(t, b.srv, "nodlq", server.QueueConfig{MaxDeliveries: 1})
	publish(t, b.srv, "nodlq", "x")
	require.Len(t, receive(t, b.srv, "nodlq", server.ReceiveParams{Lease: server.LeaseMin}), 1)
	eventually(t, 5*time.Second, func() bool { return info(t, b.srv, "nodlq").Depth == 0 })
	n, err = b.drv.MessageCount(ctx, "nodlq")
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestOlderEpochReceipt(t *testing.T) {
	t.Parallel()
	for _, window := range []int{1, 100} {
		t.Run(fmt.Sprintf("window%d", window), func(t *testing.T) {
			t.Parallel()
			b := setup(t, server.Config{WindowSize: window})
			ctx := context.Background()
			mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
			publish(t, b.srv, "q", "m1", "m2", "m3")
			old := receive(t, b.srv, "q", server.ReceiveParams{Max: 3})
			require.Equal(t, []string{"m1", "m2", "m3"}, bodies(old))

			// A takeover: the new live bumps the epoch; the old one is fenced. The new
			// live's reads of the store are counted.
			first := b.srv
			reads := &readCounter{Driver: b.drv}
			b.drv = reads
			second := b.start(t)
			pres, err := first.PublishQueue(ctx, "q", []server.Message{{Body: []byte("late")}})
			if err == nil { // the call started before the fence was noticed
				err = pres[0].Err
			}
			require.ErrorIs(t, err, server.ErrNotLive)
			select {
			case <-first.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("fenced server did not deactivate")
			}
			eventually(t, 5*time.Second, func() bool { return first.Role() == server.RoleBackup })
			_, err = first.Receive(ctx, "q", server.ReceiveParams{})
			require.ErrorIs(t, err, server.ErrNotLive)

			// The new live redelivers m1; the old receipt of m1 is stale, those of m2
			// and m3 still ack.
			ds := receive(t, second, "q", server.ReceiveParams{})
			require.Equal(t, []string{"m1"}, bodies(ds))
			byID := reads.byID.Load()
			res, err := second.Ack(ctx, "q", receipts(old))
			require.NoError(t, err)
			require.ErrorIs(t, res[0].Err, server.ErrReceiptStale)
			require.NoError(t, res[1].Err)
			require.NoError(t, res[2].Err)
			if window == 1 { // m2 and m3 are past the window: one read for both
				require.Equal(t, byID+1, reads.byID.Load(), "receipts past the window are looked up in one read")
			}
			// Acking them again: gone.
			res, err = second.Ack(ctx, "q", receipts(old)[1:])
			require.NoError(t, err)
			require.ErrorIs(t, res[0].Err, server.ErrReceiptUnknown)
			require.ErrorIs(t, res[1].Err, server.ErrReceiptUnknown)

			require.Equal(t, int64(1), info(t, second, "q").Depth)
			ack(t, second, "q", ds[0].Receipt)
			require.Empty(t, drain(t, second, "q", 10))
			require.Equal(t, int64(0), info(t, second, "q").Depth)
			n, err := b.drv.MessageCount(ctx, "q")
			require.NoError(t, err)
			require.Zero(t, n)
		})
	}
}

// readCounter counts the MessagesByID calls of a driver.
type readCounter struct {
	sqlstore.Driver
	byID atomic.Int64
}

func (r *readCounter) MessagesByID(ctx context.Context, queue string, ids []int64) ([]sqlstore.Message, error) {
	r.byID.Add(1)
	return r.Driver.MessagesByID(ctx, queue, ids)
}

func TestIdempotency(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupURL(t, url, server.Config{})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		msg := server.Message{Body: []byte("x"), IdempotencyKey: "key-1"}

		res, err := b.srv.PublishQueue(ctx, "q", []server.Message{msg})
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
		require.False(t, res[0].Duplicate)
		id := res[0].ID

		res, err = b.srv.PublishQueue(ctx, "q", []server.Message{msg, msg})
		require.NoError(t, err)
		for _, r := range res {
			require.NoError(t, r.Err)
			require.True(t, r.Duplicate)
			require.Equal(t, id, r.ID)
		}
		require.Equal(t, int64(1), info(t, b.srv, "q").Depth)

		// Concurrent publishes of a new key: one stores, the others wait and answer its id.
		var wg sync.WaitGroup
		results := make([]server.PublishResult, 8)
		for i := range results {
			wg.Go(func() {
				res, err := b.srv.PublishQueue(ctx, "q", []server.Message{{Body: []byte("y"), IdempotencyKey: "key-2"}})
				if err == nil {
					results[i] = res[0]
				} else {
					results[i].Err = err
				}
			})
		}
		wg.Wait()
		fresh := 0
		for _, r := range results {
			require.NoError(t, r.Err)
			require.Equal(t, results[0].ID, r.ID)
			if !r.Duplicate {
				fresh++
			}
		}
		require.Equal(t, 1, fresh)
		require.Equal(t, int64(2), info(t, b.srv, "q").Depth)

		// After a restart the store remembers the key.
		b.srv.Deactivate()
		srv := b.start(t)
		res, err = srv.PublishQueue(ctx, "q", []server.Message{msg})
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
		require.True(t, res[0].Duplicate)
		require.Equal(t, id, res[0].ID)
		n, err := b.drv.MessageCount(ctx, "q")
		require.NoError(t, err)
		require.Equal(t, int64(2), n)
		require.Equal(t, int64(2), info(t, srv, "q").Depth)
	})
}

func TestNonPersistentLostOnRestart(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	publishMsgs(t, b.srv, "q",
		server.Message{Body: []byte("durable")},
		server.Message{Body: []byte("fleeting"), NonPersistent: true},
	)
	require.Equal(t, int64(2), info(t, b.srv, "q").Depth)
	b.srv.Deactivate()
	srv := b.start(t)
	ds := drain(t, srv, "q", 10)
	require.Equal(t, []string{"durable"}, bodies(ds))

	// Non-persistent messages are delivered and acked like the others.
	publishMsgs(t, srv, "q", server.Message{Body: []byte("np"), NonPersistent: true})
	ds2 := receive(t, srv, "q", server.ReceiveParams{})
	require.Equal(t, []string{"np"}, bodies(ds2))
	ack(t, srv, "q", ds2[0].Receipt)
	ack(t, srv, "q", ds[0].Receipt)
	require.Equal(t, int64(0), info(t, srv, "q").Depth)
}

func TestWindowRefill(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupURL(t, url, server.Config{WindowSize: 10})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		var want []string
		for i := 0; i < 95; i += 5 {
			var batch []string
			for j := i; j < i+5; j++ {
				batch = append(batch, fmt.Sprintf("m%03d", j))
			}
			publish(t, b.srv, "q", batch...)
			want = append(want, batch...)
		}
		require.Equal(t, int64(95), info(t, b.srv, "q").Depth)

		check := func(srv *server.Server, ackThem bool) {
			var got []server.Delivery
			for {
				ds := receive(t, srv, "q", server.ReceiveParams{Max: 7})
				if len(ds) == 0 {
					break
				}
				got = append(got, ds...)
			}
			require.Equal(t, want, bodies(got))
			if ackThem {
				for i := 0; i < len(got); i += 20 {
					ack(t, srv, "q", receipts(got[i:min(i+20, len(got))])...)
				}
			}
		}
		check(b.srv, false)

		// On a restart, the window is refilled from the store.
		b.srv.Deactivate()
		srv := b.start(t)
		require.Equal(t, int64(95), info(t, srv, "q").Depth)
		check(srv, true)
		require.Equal(t, int64(0), info(t, srv, "q").Depth)
		n, err := b.drv.MessageCount(ctx, "q")
		require.NoError(t, err)
		require.Zero(t, n)
	})
}

func TestConcurrentPublishReceive(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupURL(t, url, server.Config{WindowSize: 8})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		const publishers, each = 4, 50
		var wg sync.WaitGroup
		for p := range publishers {
			wg.Go(func() {
				for i := range each {
					_, err := b.srv.PublishQueue(ctx, "q", []server.Message{{Body: fmt.Appendf(nil, "%d-%d", p, i)}})
					if err != nil {
						t.Error(err)
					}
				}
			})
		}
		seen := map[string]int{}
		var mu sync.Mutex
		for range 3 {
			wg.Go(func() {
				for {
					ds, err := b.srv.Receive(ctx, "q", server.ReceiveParams{Max: 5, Wait: 300 * time.Millisecond})
					if err != nil {
						t.Error(err)
						return
					}
					if len(ds) == 0 {
						mu.Lock()
						done := len(seen) == publishers*each
						mu.Unlock()
						if done {
							return
						}
						continue
					}
					mu.Lock()
					for _, d := range ds {
						seen[string(d.Body)]++
					}
					mu.Unlock()
					if _, err := b.srv.Ack(ctx, "q", receipts(ds)); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
		require.Len(t, seen, publishers*each)
		for k, n := range seen {
			require.Equal(t, 1, n, k)
		}
		require.Equal(t, int64(0), info(t, b.srv, "q").Depth)
	})
}

func TestRouting(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupURL(t, url, server.Config{})
		ctx := context.Background()
		for _, q := range []string{"a", "b"} {
			mustCreateQueue(t, b.srv, q, server.QueueConfig{})
		}

		created, err := b.srv.AddressCreate(ctx, "events", server.AddressConfig{Routing: server.Multicast})
		require.NoError(t, err)
		require.True(t, created)
		created, err = b.srv.AddressCreate(ctx, "events", server.AddressConfig{Routing: server.Multicast})
		require.NoError(t, err)
		require.False(t, created)
		_, err = b.srv.AddressCreate(ctx, "events", server.AddressConfig{Routing: server.Anycast})
		require.ErrorIs(t, err, server.ErrConflict)

		// No bound queue: nothing stored, an explicit error.
		_, err = b.srv.PublishAddress(ctx, "events", []server.Message{{Body: []byte("lost")}})
		require.ErrorIs(t, err, server.ErrConflict)

		for _, q := range []string{"a", "b"} {
			created, err := b.srv.BindingCreate(ctx, "events", q)
			require.NoError(t, err)
			require.True(t, created)
		}
		created, err = b.srv.BindingCreate(ctx, "events", "a")
		require.NoError(t, err)
		require.False(t, created)
		_, err = b.srv.BindingCreate(ctx, "events", "nope")
		require.ErrorIs(t, err, server.ErrQueueNotFound)
		_, err = b.srv.BindingCreate(ctx, "nope", "a")
		require.ErrorIs(t, err, server.ErrAddressNotFound)

		res, err := b.srv.PublishAddress(ctx, "events", []server.Message{{Body: []byte("fan")}})
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
		for _, q := range []string{"a", "b"} {
			ds := receive(t, b.srv, q, server.ReceiveParams{})
			require.Equal(t, []string{"fan"}, bodies(ds))
			require.Equal(t, res[0].ID, ds[0].ID)
			ack(t, b.srv, q, ds[0].Receipt)
		}
		ai, err := b.srv.AddressGet(ctx, "events")
		require.NoError(t, err)
		require.Equal(t, []string{"a", "b"}, ai.Queues)
		require.Equal(t, []string{"events"}, info(t, b.srv, "a").Addresses)

		// Idempotency on an address.
		m := server.Message{Body: []byte("once"), IdempotencyKey: "k"}
		res1, err := b.srv.PublishAddress(ctx, "events", []server.Message{m})
		require.NoError(t, err)
		res2, err := b.srv.PublishAddress(ctx, "events", []server.Message{m})
		require.NoError(t, err)
		require.True(t, res2[0].Duplicate)
		require.Equal(t, res1[0].ID, res2[0].ID)
		require.Equal(t, int64(1), info(t, b.srv, "a").Depth)
		drainAck := func(q string) []string {
			ds := drain(t, b.srv, q, 100)
			if len(ds) > 0 {
				ack(t, b.srv, q, receipts(ds)...)
			}
			return bodies(ds)
		}
		drainAck("a")
		drainAck("b")

		// Anycast: round robin over the bound queues.
		_, err = b.srv.AddressCreate(ctx, "work", server.AddressConfig{Routing: server.Anycast})
		require.NoError(t, err)
		for _, q := range []string{"a", "b"} {
			_, err := b.srv.BindingCreate(ctx, "work", q)
			require.NoError(t, err)
		}
		msgs := make([]server.Message, 4)
		for i := range msgs {
			msgs[i] = server.Message{Body: fmt.Appendf(nil, "w%d", i)}
		}
		res, err = b.srv.PublishAddress(ctx, "work", msgs)
		require.NoError(t, err)
		for _, r := range res {
			require.NoError(t, r.Err)
		}
		ga, gb := drainAck("a"), drainAck("b")
		require.Len(t, ga, 2)
		require.Len(t, gb, 2)
		require.ElementsMatch(t, []string{"w0", "w1", "w2", "w3"}, append(ga, gb...))

		// Bindings survive a restart; unbinding and address deletion.
		b.srv.Deactivate()
		srv := b.start(t)
		ai, err = srv.AddressGet(ctx, "work")
		require.NoError(t, err)
		require.Equal(t, server.Anycast, ai.Routing)
		require.Equal(t, []string{"a", "b"}, ai.Queues)
		require.NoError(t, srv.BindingDelete(ctx, "work", "a"))
		require.ErrorIs(t, srv.BindingDelete(ctx, "work", "a"), server.ErrBindingNotFound)
		require.NoError(t, srv.AddressDelete(ctx, "work"))
		_, err = srv.AddressGet(ctx, "work")
		require.ErrorIs(t, err, server.ErrAddressNotFound)
		list, err := srv.AddressList(ctx)
		require.NoError(t, err)
		require.Len(t, list, 1)
		rows, err := b.drv.BindingList(ctx)
		require.NoError(t, err)
		require.Len(t, rows, 5) // queues a, b; address events; its two bindings
	})
}

func TestPurgeAndDelete(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupURL(t, url, server.Config{WindowSize: 4})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		var bs []string
		for i := range 30 {
			bs = append(bs, fmt.Sprint(i))
		}
		publish(t, b.srv, "q", bs...)
		leased := receive(t, b.srv, "q", server.ReceiveParams{Max: 2})
		require.Len(t, leased, 2)

		n, err := b.srv.QueuePurge(ctx, "q")
		require.NoError(t, err)
		require.Equal(t, int64(28), n)
		qi := info(t, b.srv, "q")
		require.Equal(t, int64(2), qi.Depth)
		require.Equal(t, int64(2), qi.InFlight)
		stored, err := b.drv.MessageCount(ctx, "q")
		require.NoError(t, err)
		require.Equal(t, int64(2), stored)
		ack(t, b.srv, "q", receipts(leased)...)

		// Delete: messages, bindings and waiters go too.
		publish(t, b.srv, "q", "x")
		_, err = b.srv.AddressCreate(ctx, "addr", server.AddressConfig{})
		require.NoError(t, err)
		_, err = b.srv.BindingCreate(ctx, "addr", "q")
		require.NoError(t, err)
		mustCreateQueue(t, b.srv, "empty", server.QueueConfig{})
		errc2 := make(chan error, 1)
		go func() {
			_, err := b.srv.Receive(ctx, "empty", server.ReceiveParams{Wait: 10 * time.Second})
			errc2 <- err
		}()
		eventually(t, 5*time.Second, func() bool { return info(t, b.srv, "empty").WaitingReceivers == 1 })
		require.NoError(t, b.srv.QueueDelete(ctx, "empty"))
		require.ErrorIs(t, <-errc2, server.ErrQueueNotFound)

		require.NoError(t, b.srv.QueueDelete(ctx, "q"))
		_, err = b.srv.QueueGet(ctx, "q")
		require.ErrorIs(t, err, server.ErrQueueNotFound)
		require.ErrorIs(t, b.srv.QueueDelete(ctx, "q"), server.ErrQueueNotFound)
		_, err = b.srv.PublishQueue(ctx, "q", []server.Message{{Body: []byte("x")}})
		require.ErrorIs(t, err, server.ErrQueueNotFound)
		stored, err = b.drv.MessageCount(ctx, "q")
		require.NoError(t, err)
		require.Zero(t, stored)
		ai, err := b.srv.AddressGet(ctx, "addr")
		require.NoError(t, err)
		require.Empty(t, ai.Queues)

		// A new queue of the same name starts empty.
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		require.Equal(t, int64(0), info(t, b.srv, "q").Depth)
	})
}

func TestQueueCreateAndStats(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{MaxMessageSize: 1 << 20}) // the default is 1 GiB: too big to allocate here
	ctx := context.Background()
	cfg := server.QueueConfig{MaxDeliveries: 3, Lease: time.Second, TTL: time.Hour}
	created, err := b.srv.QueueCreate(ctx, "q", cfg)
	require.NoError(t, err)
	require.True(t, created)
	created, err = b.srv.QueueCreate(ctx, "q", cfg)
	require.NoError(t, err)
	require.False(t, created)
	_, err = b.srv.QueueCreate(ctx, "q", server.QueueConfig{})
	require.ErrorIs(t, err, server.ErrConflict)

	for _, bad := range []server.QueueConfig{
		{MaxDeliveries: -1}, {MaxDeliveries: server.MaxDeliveriesLimit + 1}, {Lease: time.Millisecond},
		{TTL: -time.Second}, {DeadLetterQueue: "bad name"}, {DeadLetterQueue: "x"},
	} {
		_, err := b.srv.QueueCreate(ctx, "x", bad)
		require.ErrorIs(t, err, server.ErrInvalid, "%+v", bad)
	}
	for _, bad := range []string{"", "-x", "a b", "ä", string(make([]byte, 201))} {
		_, err := b.srv.QueueCreate(ctx, bad, server.QueueConfig{})
		require.ErrorIs(t, err, server.ErrInvalid, bad)
	}
	require.NoError(t, server.ValidName("a.b-c_D9"))

	publishMsgs(t, b.srv, "q",
		server.Message{Body: []byte("1")},
		server.Message{Body: []byte("2")},
		server.Message{Body: []byte("later"), Delay: time.Hour},
	)
	receive(t, b.srv, "q", server.ReceiveParams{})
	qi := info(t, b.srv, "q")
	require.Equal(t, "q", qi.Name)
	require.Equal(t, cfg, qi.Config)
	require.Equal(t, int64(3), qi.Depth)
	require.Equal(t, int64(1), qi.InFlight)
	require.Equal(t, int64(1), qi.Delayed)
	require.False(t, qi.CreatedAt.IsZero())

	// Exact after a restart, too.
	b.srv.Deactivate()
	srv := b.start(t)
	qi = info(t, srv, "q")
	require.Equal(t, int64(3), qi.Depth)
	require.Equal(t, int64(0), qi.InFlight)
	require.Equal(t, int64(0), qi.InMemory, "GET reads nothing from the store")
	require.Len(t, receive(t, srv, "q", server.ReceiveParams{Max: 5}), 2)
	qi = info(t, srv, "q")
	require.Equal(t, int64(1), qi.Delayed, "delayed messages in the window")
	require.Equal(t, int64(3), qi.InMemory)
	list, err := srv.QueueList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, cfg, list[0].Config)

	// Publish validation is per message.
	big := make([]byte, 1<<20+1)
	prio := 10
	res, err := srv.PublishQueue(ctx, "q", []server.Message{
		{Body: big}, {Body: []byte("ok")}, {Priority: &prio}, {Delay: -time.Second},
		{IdempotencyKey: "bad\x01"}, {Headers: map[string]string{"": "x"}},
	})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, server.ErrTooLarge)
	require.NoError(t, res[1].Err)
	for _, r := range res[2:] {
		require.ErrorIs(t, r.Err, server.ErrInvalid)
	}
	_, err = srv.PublishQueue(ctx, "q", nil)
	require.ErrorIs(t, err, server.ErrInvalid)
	_, err = srv.PublishQueue(ctx, "nope", []server.Message{{}})
	require.ErrorIs(t, err, server.ErrQueueNotFound)
	_, err = srv.Receive(ctx, "q", server.ReceiveParams{Max: server.ReceiveMaxLimit + 1})
	require.ErrorIs(t, err, server.ErrInvalid)
	_, err = srv.Receive(ctx, "q", server.ReceiveParams{Wait: time.Minute})
	require.ErrorIs(t, err, server.ErrInvalid)
}

func TestTTLExpiry(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	publishMsgs(t, b.srv, "q",
		server.Message{Body: []byte("short"), TTL: 50 * time.Millisecond},
		server.Message{Body: []byte("long")},
	)
	var ds []server.Delivery
	eventually(t, 5*time.Second, func() bool {
		ds = receive(t, b.srv, "q", server.ReceiveParams{Max: 10, Lease: server.LeaseMin})
		if len(ds) == 2 {
			// Not yet expired: put them back and try again.
			_, err := b.srv.Nack(ctx, "q", receipts(ds), 0)
			require.NoError(t, err)
			return false
		}
		return true
	})
	require.Equal(t, []string{"long"}, bodies(ds))
	ack(t, b.srv, "q", ds[0].Receipt)
	eventually(t, 5*time.Second, func() bool { return info(t, b.srv, "q").Depth == 0 })
	n, err := b.drv.MessageCount(ctx, "q")
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestDeactivateWakesWaiters(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{NodeName: "n1"})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	st := b.srv.ClusterStatus()
	require.Equal(t, server.RoleLive, st.Role)
	require.Equal(t, "n1", st.LiveNode)
	require.Positive(t, st.Epoch)

	type result struct {
		ds  []server.Delivery
		err error
	}
	got := make(chan result, 2)
	for range 2 {
		go func() {
			ds, err := b.srv.Receive(ctx, "q", server.ReceiveParams{Wait: 20 * time.Second})
			got <- result{ds, err}
		}()
	}
	eventually(t, 5*time.Second, func() bool { return info(t, b.srv, "q").WaitingReceivers == 2 })
	start := time.Now()
	b.srv.Deactivate()
	for range 2 {
		r := <-got
		require.NoError(t, r.err)
		require.Empty(t, r.ds)
	}
	require.Less(t, time.Since(start), 5*time.Second)
	require.Equal(t, server.RoleBackup, b.srv.Role())
	require.Empty(t, b.srv.ClusterStatus().LiveNode)
	_, err := b.srv.PublishQueue(ctx, "q", []server.Message{{}})
	require.ErrorIs(t, err, server.ErrNotLive)
	_, err = b.srv.QueueGet(ctx, "q")
	require.ErrorIs(t, err, server.ErrNotLive)
	b.srv.Deactivate() // idempotent
	select {
	case <-b.srv.Done():
		t.Fatal("Done closed on a requested deactivation")
	default:
	}
}

func TestRestartRedeliversUnacked(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		b := setupURL(t, url, server.Config{WindowSize: 3})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		var all []string
		for i := range 10 {
			all = append(all, fmt.Sprint(i))
		}
		publish(t, b.srv, "q", all...)
		ds := drain(t, b.srv, "q", 4)
		require.Equal(t, all, bodies(ds))
		var acked []string
		for i, d := range ds {
			if i%2 == 0 {
				ack(t, b.srv, "q", d.Receipt)
				acked = append(acked, string(d.Body))
			}
		}
		b.srv.Deactivate()

		srv := b.start(t)
		require.Equal(t, int64(5), info(t, srv, "q").Depth)
		again := drain(t, srv, "q", 4)
		require.Equal(t, []string{"1", "3", "5", "7", "9"}, bodies(again))
		for _, d := range again {
			require.NotContains(t, acked, string(d.Body))
			// A graceful deactivation persisted the counts of the messages in flight.
			require.Equal(t, 2, d.DeliveryCount, "message %s", d.Body)
			require.True(t, d.Redelivered, "message %s", d.Body)
		}
		// Old receipts of the unacked messages are stale: the new live delivered them.
		res, err := srv.Ack(ctx, "q", receipts(ds))
		require.NoError(t, err)
		for i, r := range res {
			if i%2 == 0 {
				require.ErrorIs(t, r.Err, server.ErrReceiptUnknown)
			} else {
				require.ErrorIs(t, r.Err, server.ErrReceiptStale)
			}
		}
		ack(t, srv, "q", receipts(again)...)
		require.Equal(t, int64(0), info(t, srv, "q").Depth)
	})
}

func TestReceiveCancelledPutsBack(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	publish(t, b.srv, "q", "x")
	_, err := b.srv.Receive(ctx, "q", server.ReceiveParams{})
	require.ErrorIs(t, err, context.Canceled)
	ds := receive(t, b.srv, "q", server.ReceiveParams{})
	require.Len(t, ds, 1)
	require.Equal(t, 1, ds[0].DeliveryCount)
	require.False(t, ds[0].Redelivered)
}

func scanAll(queue string) *sqlstore.MessageScanParams {
	return &sqlstore.MessageScanParams{Queue: queue, Limit: 10000}
}

func TestDelayedPublish(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	publishMsgs(t, b.srv, "q",
		server.Message{Body: []byte("later"), Delay: 300 * time.Millisecond},
		server.Message{Body: []byte("now")},
	)
	ds := receive(t, b.srv, "q", server.ReceiveParams{Max: 10})
	require.Equal(t, []string{"now"}, bodies(ds))
	start := time.Now()
	ds = receive(t, b.srv, "q", server.ReceiveParams{Max: 10, Wait: 5 * time.Second})
	require.Equal(t, []string{"later"}, bodies(ds))
	require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
}

func TestDeliveryCountSurvivesRestart(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	publish(t, b.srv, "q", "x")
	ds := receive(t, b.srv, "q", server.ReceiveParams{})
	_, err := b.srv.Nack(ctx, "q", receipts(ds), 0)
	require.NoError(t, err)
	b.srv.Deactivate()
	srv := b.start(t)
	ds = receive(t, srv, "q", server.ReceiveParams{})
	require.Len(t, ds, 1)
	require.Equal(t, 2, ds[0].DeliveryCount)
	require.True(t, ds[0].Redelivered)
}

func TestIdempotencyKeysInOppositeOrder(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 20 {
		ka, kb := fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)
		var wg sync.WaitGroup
		for _, order := range [][]string{{ka, kb}, {kb, ka}} {
			wg.Go(func() {
				res, err := b.srv.PublishQueue(ctx, "q", []server.Message{
					{Body: []byte(order[0]), IdempotencyKey: order[0]},
					{Body: []byte(order[1]), IdempotencyKey: order[1]},
				})
				if err != nil {
					t.Error(err)
					return
				}
				for _, r := range res {
					if r.Err != nil {
						t.Error(r.Err)
					}
				}
			})
		}
		wg.Wait()
	}
	require.Equal(t, int64(40), info(t, b.srv, "q").Depth)
}

func TestReactivate(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	publish(t, b.srv, "q", "a")

	// Fenced by another server, then active again after that one stops.
	other := b.start(t)
	res, err := b.srv.PublishQueue(ctx, "q", []server.Message{{Body: []byte("x")}}) // a write notices the fence
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, server.ErrNotLive)
	<-b.srv.Done()
	eventually(t, 5*time.Second, func() bool { return b.srv.Role() == server.RoleBackup })
	other.Deactivate()

	epoch, err := b.drv.EpochBump(ctx)
	require.NoError(t, err)
	require.NoError(t, b.srv.Activate(ctx, epoch))
	require.Equal(t, server.RoleLive, b.srv.Role())
	require.Equal(t, epoch, b.srv.ClusterStatus().Epoch)
	select {
	case <-b.srv.Done():
		t.Fatal("Done still closed after a new activation")
	default:
	}
	ds := receive(t, b.srv, "q", server.ReceiveParams{Max: 10})
	require.Equal(t, []string{"a"}, bodies(ds))
	ack(t, b.srv, "q", ds[0].Receipt)
	require.NoError(t, b.srv.Activate(ctx, epoch)) // same epoch: nothing to do
	require.ErrorIs(t, b.srv.Activate(ctx, epoch+1), server.ErrConflict)
}

func TestIdempotencyWindowExpires(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{DuplicateWindow: time.Second, DuplicateCleanupInterval: 20 * time.Millisecond})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	m := server.Message{Body: []byte("x"), IdempotencyKey: "k"}
	first := publishMsgs(t, b.srv, "q", m)[0]
	res, err := b.srv.PublishQueue(ctx, "q", []server.Message{m})
	require.NoError(t, err)
	require.True(t, res[0].Duplicate)

	// Past the window the key is forgotten, in the store as in memory.
	eventually(t, 10*time.Second, func() bool {
		res, err := b.srv.PublishQueue(ctx, "q", []server.Message{m})
		require.NoError(t, err)
		require.NoError(t, res[0].Err)
		if res[0].Duplicate {
			require.Equal(t, first, res[0].ID)
			return false
		}
		require.NotEqual(t, first, res[0].ID)
		return true
	})
	require.Equal(t, int64(2), info(t, b.srv, "q").Depth)
	// And the new key is remembered again.
	res, err = b.srv.PublishQueue(ctx, "q", []server.Message{m})
	require.NoError(t, err)
	require.True(t, res[0].Duplicate)
}

func TestManyAckedLongLeases(t *testing.T) {
	t.Parallel()
	b := setup(t, server.Config{})
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	bs := make([]string, 1000)
	for i := range bs {
		bs[i] = fmt.Sprint(i)
	}
	for range 2 {
		publish(t, b.srv, "q", bs...)
		ds := receive(t, b.srv, "q", server.ReceiveParams{Max: 1000, Lease: server.LeaseMax})
		require.Len(t, ds, 1000)
		ack(t, b.srv, "q", receipts(ds)...)
	}
	// The lease bookkeeping of the acked deliveries is compacted away; leases still end.
	publish(t, b.srv, "q", "short")
	first := receive(t, b.srv, "q", server.ReceiveParams{Lease: server.LeaseMin})
	require.Len(t, first, 1)
	again := receive(t, b.srv, "q", server.ReceiveParams{Wait: 5 * time.Second})
	require.Len(t, again, 1)
	require.Equal(t, 2, again[0].DeliveryCount)
}
