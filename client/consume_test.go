package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/client"
)

// consumeRun runs Consume in a goroutine; stop cancels it and returns its error.
type consumeRun struct {
	cancel context.CancelFunc
	done   chan error
}

func startConsume(t *testing.T, c *client.Client, queue string, h client.Handler, opts client.ConsumeOptions) *consumeRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &consumeRun{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Consume(ctx, queue, h, opts) }()
	t.Cleanup(func() { _ = r.stop(t) })
	return r
}

// stop cancels the consumer and waits for Consume to return (at most 15s).
func (r *consumeRun) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if !ok {
			return nil
		}
		close(r.done)
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("Consume did not return after its ctx ended")
		return nil
	}
}

// seenSet records deliveries per message id.
type seenSet struct {
	mu sync.Mutex
	ds map[string][]client.Delivery
}

func (s *seenSet) add(d client.Delivery) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ds == nil {
		s.ds = map[string][]client.Delivery{}
	}
	s.ds[d.ID] = append(s.ds[d.ID], d)
	return len(s.ds[d.ID])
}

func (s *seenSet) snapshot() map[string][]client.Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]client.Delivery, len(s.ds))
	for k, v := range s.ds {
		out[k] = append([]client.Delivery(nil), v...)
	}
	return out
}

func (s *seenSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ds)
}

// publishN publishes n messages to queue and returns their ids.
func publishN(t *testing.T, c *client.Client, queue string, n int) []string {
	t.Helper()
	msgs := make([]client.Message, n)
	for i := range msgs {
		msgs[i] = client.Message{Body: fmt.Appendf(nil, "m%03d", i)}
	}
	res, err := c.PublishBatch(ctxT(t), queue, msgs)
	require.NoError(t, err)
	ids := make([]string, n)
	for i, r := range res {
		require.NoError(t, r.Err)
		ids[i] = r.ID
	}
	return ids
}

// TestConsumeExactlyOnce: handlers that succeed see each message once, and every
// message is acked.
func TestConsumeExactlyOnce(t *testing.T) {
	t.Parallel()
	b := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{b.url})
	_, err := c.CreateQueue(ctxT(t), "q", client.QueueConfig{})
	require.NoError(t, err)
	const n = 60
	ids := publishN(t, c, "q", n)

	var seen seenSet
	r := startConsume(t, c, "q", func(ctx context.Context, d client.Delivery) error {
		seen.add(d)
		return nil
	}, client.ConsumeOptions{Max: 7, Wait: time.Second, Concurrency: 4})
	eventually(t, 20*time.Second, func() bool { return seen.len() == n }, "not every message was handled")
	eventually(t, 20*time.Second, func() bool { return depthNow(c, "q") == 0 }, "not every message was acked")
	require.NoError(t, r.stop(t))

	got := seen.snapshot()
	require.Len(t, got, n)
	for _, id := range ids {
		require.Len(t, got[id], 1, "message %s handled more than once", id)
		require.False(t, got[id][0].Redelivered)
	}
}

// TestConsumeRedeliversOnError: a handler error nacks; the message comes back,
// redelivered, and is acked the second time.
func TestConsumeRedeliversOnError(t *testing.T) {
	t.Parallel()
	b := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{b.url})
	_, err := c.CreateQueue(ctxT(t), "q", client.QueueConfig{})
	require.NoError(t, err)
	const n = 10
	ids := publishN(t, c, "q", n)

	var seen seenSet
	r := startConsume(t, c, "q", func(ctx context.Context, d client.Delivery) error {
		if seen.add(d) == 1 {
			return errors.New("first time fails")
		}
		return nil
	}, client.ConsumeOptions{Wait: time.Second, Concurrency: 2, NackDelay: 10 * time.Millisecond})
	eventually(t, 20*time.Second, func() bool {
		got := seen.snapshot()
		if len(got) < n {
			return false
		}
		for _, ds := range got {
			if len(ds) < 2 {
				return false
			}
		}
		return true
	}, "failed messages were not delivered again")
	eventually(t, 20*time.Second, func() bool { return depthNow(c, "q") == 0 }, "not every message was acked")
	require.NoError(t, r.stop(t))

	got := seen.snapshot()
	for _, id := range ids {
		require.Len(t, got[id], 2, id)
		require.False(t, got[id][0].Redelivered)
		require.True(t, got[id][1].Redelivered)
		require.Equal(t, 2, got[id][1].DeliveryCount)
	}
}

// TestConsumePanicNacks: a panicking handler is recovered and its message nacked.
func TestConsumePanicNacks(t *testing.T) {
	t.Parallel()
	b := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{b.url})
	_, err := c.CreateQueue(ctxT(t), "q", client.QueueConfig{})
	require.NoError(t, err)
	publishN(t, c, "q", 1)

	var seen seenSet
	r := startConsume(t, c, "q", func(ctx context.Context, d client.Delivery) error {
		if seen.add(d) == 1 {
			panic("boom")
		}
		return nil
	}, client.ConsumeOptions{Wait: time.Second})
	eventually(t, 20*time.Second, func() bool { return depthNow(c, "q") == 0 }, "the message was not acked after the panic")
	require.NoError(t, r.stop(t))
	for _, ds := range seen.snapshot() {
		require.Len(t, ds, 2)
	}
}

// TestConsumeExtendsLease: a handler that runs for several leases keeps its message:
// no other handler slot gets it again.
func TestConsumeExtendsLease(t *testing.T) {
	t.Parallel()
	b := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{b.url})
	_, err := c.CreateQueue(ctxT(t), "q", client.QueueConfig{})
	require.NoError(t, err)
	ids := publishN(t, c, "q", 1)

	const lease = time.Second
	var seen seenSet
	finished := make(chan struct{})
	r := startConsume(t, c, "q", func(ctx context.Context, d client.Delivery) error {
		if seen.add(d) > 1 {
			return nil
		}
		// Work for three leases (a timer, not a wait for something to happen).
		work := time.NewTimer(3 * lease)
		defer work.Stop()
		select {
		case <-work.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		close(finished)
		return nil
	}, client.ConsumeOptions{Wait: 200 * time.Millisecond, Lease: lease, Concurrency: 3})
	select {
	case <-finished:
	case <-time.After(20 * time.Second):
		t.Fatal("the long handler did not finish")
	}
	eventually(t, 10*time.Second, func() bool { return depthNow(c, "q") == 0 }, "the message was not acked")
	require.NoError(t, r.stop(t))
	got := seen.snapshot()
	require.Len(t, got[ids[0]], 1, "the message was delivered again while its handler ran")
}

// TestConsumeStopsOnCancel: Consume returns soon after its ctx ends, while a long
// poll waits and while a handler runs; the running handler's message is handed
// back (nacked) because the handler returned the ctx error. goleak in TestMain
// checks that nothing is left running.
func TestConsumeStopsOnCancel(t *testing.T) {
	t.Parallel()
	b := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{b.url})
	_, err := c.CreateQueue(ctxT(t), "q", client.QueueConfig{})
	require.NoError(t, err)

	// Idle: a 20s long poll is under way.
	r := startConsume(t, c, "q", func(ctx context.Context, d client.Delivery) error { return nil },
		client.ConsumeOptions{Wait: 20 * time.Second})
	eventually(t, 10*time.Second, func() bool {
		qi, err := c.GetQueue(ctxT(t), "q")
		return err == nil && qi.WaitingReceivers == 1
	}, "the consumer never started waiting")
	start := time.Now()
	require.NoError(t, r.stop(t))
	require.Less(t, time.Since(start), 5*time.Second)

	// Busy: a handler blocks until its ctx ends. Publish only once the broker has
	// seen the cancelled long poll go: a message handed to it would be leased to a
	// receiver that is gone (and come back only when that lease ends).
	eventually(t, 10*time.Second, func() bool {
		qi, err := c.GetQueue(ctxT(t), "q")
		return err == nil && qi.WaitingReceivers == 0
	}, "the cancelled long poll is still waiting on the broker")
	ids := publishN(t, c, "q", 1)
	started := make(chan struct{})
	r = startConsume(t, c, "q", func(ctx context.Context, d client.Delivery) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}, client.ConsumeOptions{Wait: time.Second, Lease: time.Hour})
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("the handler never started")
	}
	require.NoError(t, r.stop(t))

	// The nack made the message deliverable again at once, despite its 1h lease.
	ds, err := c.Receive(ctxT(t), "q", client.ReceiveOptions{Wait: 5 * time.Second})
	require.NoError(t, err)
	require.Len(t, ds, 1)
	require.Equal(t, ids[0], ds[0].ID)
	require.True(t, ds[0].Redelivered)
}

// TestConsumeRefusesBadInput: invalid options and an unknown queue end Consume.
func TestConsumeRefusesBadInput(t *testing.T) {
	t.Parallel()
	b := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{b.url})
	ctx := ctxT(t)
	h := func(context.Context, client.Delivery) error { return nil }

	require.ErrorIs(t, c.Consume(ctx, "q", h, client.ConsumeOptions{Max: 1001}), client.ErrInvalid)
	require.ErrorIs(t, c.Consume(ctx, "q", h, client.ConsumeOptions{Lease: time.Millisecond}), client.ErrInvalid)
	require.ErrorIs(t, c.Consume(ctx, "q", nil, client.ConsumeOptions{}), client.ErrInvalid)
	require.ErrorIs(t, c.Consume(ctx, "nope", h, client.ConsumeOptions{Wait: time.Second}), client.ErrQueueNotFound)
}

// TestConsumeAcrossFailover: a consumer keeps going while the live broker steps
// down and a backup of the same store takes over; every message is handled.
func TestConsumeAcrossFailover(t *testing.T) {
	t.Parallel()
	a := newBroker(t, nil, brokerConfig{name: "a"})
	b := newBroker(t, a.drv, brokerConfig{name: "b", backup: true})
	c := newClient(t, []string{a.url, b.url})
	_, err := c.CreateQueue(ctxT(t), "q", client.QueueConfig{})
	require.NoError(t, err)
	ids := publishN(t, c, "q", 20)

	var seen seenSet
	r := startConsume(t, c, "q", func(ctx context.Context, d client.Delivery) error {
		seen.add(d)
		return nil
	}, client.ConsumeOptions{Wait: 500 * time.Millisecond, Lease: 2 * time.Second, Concurrency: 2})
	eventually(t, 20*time.Second, func() bool { return seen.len() >= 5 }, "nothing handled before the failover")

	a.srv.Deactivate()
	b.activate()
	ids = append(ids, publishN(t, c, "q", 20)...)
	eventually(t, 30*time.Second, func() bool { return seen.len() == len(ids) }, "not every message was handled after the failover")
	eventually(t, 20*time.Second, func() bool { return depthNow(c, "q") == 0 }, "not every message was acked")
	require.NoError(t, r.stop(t))
	got := seen.snapshot()
	for _, id := range ids {
		require.NotEmpty(t, got[id], id)
	}
}

// TestConsumeWaitsForLive: while no broker is live, Consume keeps trying (its
// receives give up at their retry deadline and the loop backs off and goes on);
// once a broker is live again the messages are handled.
func TestConsumeWaitsForLive(t *testing.T) {
	t.Parallel()
	var cnt counter
	b := newBroker(t, nil, brokerConfig{wrap: cnt.wrap})
	c := newClient(t, []string{b.url}, client.WithRetryDeadline(100*time.Millisecond),
		client.WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	_, err := c.CreateQueue(ctxT(t), "q", client.QueueConfig{})
	require.NoError(t, err)
	b.srv.Deactivate()

	var seen seenSet
	r := startConsume(t, c, "q", func(ctx context.Context, d client.Delivery) error {
		seen.add(d)
		return nil
	}, client.ConsumeOptions{Wait: 200 * time.Millisecond})
	eventually(t, 10*time.Second, func() bool { return cnt.get("POST /v1/queues/q/receive") >= 10 },
		"Consume stopped trying while no broker was live")

	b.activate()
	ids := publishN(t, c, "q", 3)
	eventually(t, 20*time.Second, func() bool { return seen.len() == len(ids) }, "messages not handled once live again")
	require.NoError(t, r.stop(t))
}
