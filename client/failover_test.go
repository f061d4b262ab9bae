package client_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/client"
)

// TestFailoverNotLive: the first URL is a backup of the same store (503 not_live),
// the second the live broker: calls succeed on the second, and the client then goes
// there first.
func TestFailoverNotLive(t *testing.T) {
	t.Parallel()
	var backupHits counter
	live := newBroker(t, nil, brokerConfig{name: "live"})
	backup := newBroker(t, live.drv, brokerConfig{name: "backup", backup: true, wrap: backupHits.wrap})
	c := newClient(t, []string{backup.url, live.url})
	ctx := ctxT(t)

	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)
	require.Equal(t, live.url, c.LiveURL())
	require.Equal(t, 1, backupHits.get("total"))

	res, err := c.Publish(ctx, "q", client.Message{Body: []byte("x")})
	require.NoError(t, err)
	require.NotEmpty(t, res.ID)
	require.EqualValues(t, 1, depth(t, c, "q"))
	require.Equal(t, 1, backupHits.get("total"), "the live broker is remembered")
}

// TestFailoverConnectionRefused: the first URL refuses connections.
func TestFailoverConnectionRefused(t *testing.T) {
	t.Parallel()
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	live := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{deadURL, live.url})
	ctx := ctxT(t)

	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)
	require.Equal(t, live.url, c.LiveURL())
}

// TestFailoverTimeout: the first URL accepts the request and never answers; after
// the request timeout the call goes to the second.
func TestFailoverTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	hang := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release) }) // runs before hang.Close
	live := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{hang.URL, live.url}, client.WithRequestTimeout(200*time.Millisecond))
	ctx := ctxT(t)

	start := time.Now()
	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
	require.Equal(t, live.url, c.LiveURL())
}

// TestRetryAfterHonoured: a single broker answers 503 with Retry-After: 1 once; the
// client waits about a second before it asks again.
func TestRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	nl := &notLiveHandler{retryAfter: "1"}
	b := newBroker(t, nil, brokerConfig{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if nl.hits.Load() == 0 {
				nl.ServeHTTP(w, r)
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	c := newClient(t, []string{b.url})
	ctx := ctxT(t)

	start := time.Now()
	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond, "Retry-After: 1 was not honoured")
	require.EqualValues(t, 1, nl.hits.Load())

	// With a cap, a Retry-After holds the broker back no longer than the cap.
	nl.hits.Store(0)
	c = newClient(t, []string{b.url}, client.WithRetryAfterCap(50*time.Millisecond))
	start = time.Now()
	_, err = c.CreateQueue(ctx, "q2", client.QueueConfig{})
	require.NoError(t, err)
	require.Less(t, time.Since(start), 800*time.Millisecond, "the cap was not applied")
	require.EqualValues(t, 1, nl.hits.Load())
}

// TestGiveUp: no broker is live; the call gives up at its retry deadline with the
// last error, ErrNotLive, after several rounds with backoff.
func TestGiveUp(t *testing.T) {
	t.Parallel()
	a, b := &notLiveHandler{}, &notLiveHandler{}
	sa, sb := startHandler(t, a), startHandler(t, b)
	c := newClient(t, []string{sa.URL, sb.URL}, client.WithRetryDeadline(300*time.Millisecond),
		client.WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	ctx := ctxT(t)

	start := time.Now()
	_, err := c.Publish(ctx, "q", client.Message{Body: []byte("x")})
	elapsed := time.Since(start)
	require.ErrorIs(t, err, client.ErrNotLive)
	require.Contains(t, err.Error(), "no live broker after")
	require.Less(t, elapsed, 5*time.Second)
	require.GreaterOrEqual(t, a.hits.Load(), int64(2), "several rounds")
	require.GreaterOrEqual(t, b.hits.Load(), int64(2), "several rounds")

	// Unreachable brokers give ErrUnavailable.
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	c2 := newClient(t, []string{deadURL}, client.WithRetryDeadline(100*time.Millisecond))
	_, err = c2.ListQueues(ctx)
	require.ErrorIs(t, err, client.ErrUnavailable)
}

// TestCancelDuringBackoff: the call's ctx ends while the client waits out a
// Retry-After; it returns at once with the ctx's error.
func TestCancelDuringBackoff(t *testing.T) {
	t.Parallel()
	s := startHandler(t, &notLiveHandler{retryAfter: "5"})
	c := newClient(t, []string{s.URL})
	ctx, cancel := context.WithTimeout(ctxT(t), 200*time.Millisecond)
	defer cancel()

	start := time.Now()
	_, err := c.ListQueues(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 5*time.Second)
}

// TestPublishLostAnswer: the broker commits a publish and the connection drops
// before the answer; the retry carries the same key and the message is stored once,
// under the first id.
func TestPublishLostAnswer(t *testing.T) {
	t.Parallel()
	var d *dropper
	b := newBroker(t, nil, brokerConfig{wrap: func(h http.Handler) http.Handler {
		d = &dropper{next: h, drop: func(r *http.Request, n int) bool {
			return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/messages") && n == 0
		}}
		return d
	}})
	c := newClient(t, []string{b.url})
	ctx := ctxT(t)
	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)
	d.mu.Lock()
	d.keys, d.seen = nil, 0
	d.mu.Unlock()

	res, err := c.Publish(ctx, "q", client.Message{Body: []byte("once")})
	require.NoError(t, err)

	d.mu.Lock()
	keys, dropped := append([]string(nil), d.keys...), d.dropped
	d.mu.Unlock()
	require.Len(t, dropped, 1, "the first answer was dropped")
	require.GreaterOrEqual(t, len(keys), 2, "the publish was retried")
	for _, k := range keys {
		require.Equal(t, res.IdempotencyKey, k, "every attempt carries the same key")
	}
	var first struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal(dropped[0], &first))
	require.Equal(t, first.ID, res.ID, "the retry answers the first id")
	require.True(t, res.Duplicate)
	require.EqualValues(t, 1, depth(t, c, "q"), "stored once")
}

// TestPublishBatchLostAnswer: the same for a batch, a key per message.
func TestPublishBatchLostAnswer(t *testing.T) {
	t.Parallel()
	dropNext := false
	var d *dropper
	b := newBroker(t, nil, brokerConfig{wrap: func(h http.Handler) http.Handler {
		d = &dropper{next: h, drop: func(r *http.Request, _ int) bool {
			if dropNext && strings.HasSuffix(r.URL.Path, "/messages/batch") {
				dropNext = false // guarded by d.mu
				return true
			}
			return false
		}}
		return d
	}})
	c := newClient(t, []string{b.url})
	ctx := ctxT(t)
	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)
	d.mu.Lock()
	dropNext = true
	d.mu.Unlock()

	msgs := []client.Message{{Body: []byte("1")}, {Body: []byte("2")}, {Body: []byte("3"), IdempotencyKey: "mine"}}
	res, err := c.PublishBatch(ctx, "q", msgs)
	require.NoError(t, err)
	require.Len(t, res, 3)

	d.mu.Lock()
	dropped := d.dropped
	d.mu.Unlock()
	require.Len(t, dropped, 1)
	var first struct {
		Results []struct {
			ID string `json:"id"`
		} `json:"results"`
	}
	require.NoError(t, json.Unmarshal(dropped[0], &first))
	require.Len(t, first.Results, 3)
	for i, r := range res {
		require.NoError(t, r.Err)
		require.Equal(t, first.Results[i].ID, r.ID)
		require.True(t, r.Duplicate)
	}
	require.Equal(t, "mine", res[2].IdempotencyKey)
	require.EqualValues(t, 3, depth(t, c, "q"), "each message stored once")
}

// TestAckLostAnswer documents the per-receipt result of an ack retried after its
// answer was lost: the broker reports receipt_unknown (the first attempt acked it),
// and the client reports exactly that.
func TestAckLostAnswer(t *testing.T) {
	t.Parallel()
	dropNext := false
	var d *dropper
	b := newBroker(t, nil, brokerConfig{wrap: func(h http.Handler) http.Handler {
		d = &dropper{next: h, drop: func(r *http.Request, _ int) bool {
			if dropNext && strings.HasSuffix(r.URL.Path, "/ack") {
				dropNext = false
				return true
			}
			return false
		}}
		return d
	}})
	c := newClient(t, []string{b.url})
	ctx := ctxT(t)
	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)
	_, err = c.Publish(ctx, "q", client.Message{Body: []byte("x")})
	require.NoError(t, err)
	ds, err := c.Receive(ctx, "q", client.ReceiveOptions{Wait: time.Second})
	require.NoError(t, err)
	require.Len(t, ds, 1)

	d.mu.Lock()
	dropNext = true
	d.mu.Unlock()
	res, err := c.Ack(ctx, "q", ds[0].Receipt)
	require.NoError(t, err)
	require.Len(t, res, 1)
	require.False(t, res[0].OK)
	require.ErrorIs(t, res[0].Err, client.ErrReceiptUnknown)
	require.EqualValues(t, 0, depth(t, c, "q"), "the first attempt acked it")
}

// TestRealFailover: two brokers on one store; the live one steps down and the
// backup takes over (a new epoch). The client follows, and every published message
// is delivered.
func TestRealFailover(t *testing.T) {
	t.Parallel()
	a := newBroker(t, nil, brokerConfig{name: "a"})
	b := newBroker(t, a.drv, brokerConfig{name: "b", backup: true})
	c := newClient(t, []string{a.url, b.url})
	ctx := ctxT(t)

	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)
	ids := map[string]bool{}
	for range 5 {
		res, err := c.Publish(ctx, "q", client.Message{Body: []byte("before")})
		require.NoError(t, err)
		ids[res.ID] = true
	}
	// Lease one message on a: after the failover it is delivered again.
	ds, err := c.Receive(ctx, "q", client.ReceiveOptions{Wait: time.Second, Lease: time.Hour})
	require.NoError(t, err)
	require.Len(t, ds, 1)

	a.srv.Deactivate()
	// Activate b a little later, while the client is already failing over.
	done := make(chan struct{})
	go func() {
		defer close(done)
		timer := time.NewTimer(100 * time.Millisecond)
		defer timer.Stop()
		<-timer.C
		b.activate()
	}()
	for range 5 {
		res, err := c.Publish(ctx, "q", client.Message{Body: []byte("after")})
		require.NoError(t, err)
		ids[res.ID] = true
	}
	<-done
	require.Equal(t, b.url, c.LiveURL())
	require.Len(t, ids, 10)

	got := map[string]bool{}
	deadline := time.Now().Add(20 * time.Second)
	for len(got) < 10 && time.Now().Before(deadline) {
		ds, err := c.Receive(ctx, "q", client.ReceiveOptions{Max: 100, Wait: 100 * time.Millisecond})
		require.NoError(t, err)
		for _, d := range ds {
			got[d.ID] = true
			res, err := c.Ack(ctx, "q", d.Receipt)
			require.NoError(t, err)
			require.True(t, res[0].OK)
		}
	}
	require.Len(t, got, 10, "every message is delivered after the failover, the leased one again")
	for id := range ids {
		require.True(t, got[id], id)
	}
}

// TestPublishLostAnswerAcrossFailover: the live broker commits a publish, fails
// over to the backup and never answers; the client retries on the new live broker
// with the same key, which finds the key in the store: one message, the first id.
func TestPublishLostAnswerAcrossFailover(t *testing.T) {
	t.Parallel()
	var d *dropper
	a := newBroker(t, nil, brokerConfig{name: "a", wrap: func(h http.Handler) http.Handler {
		d = &dropper{next: h, drop: func(r *http.Request, n int) bool {
			// Request 0 is the PUT of the queue, request 1 the publish.
			return r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/messages") && n == 1
		}}
		return d
	}})
	b := newBroker(t, a.drv, brokerConfig{name: "b", backup: true})
	failover := make(chan error, 1)
	d.afterDrop = func() {
		a.srv.Deactivate()
		epoch, err := b.drv.EpochBump(context.Background())
		if err == nil {
			err = b.srv.Activate(context.Background(), epoch)
		}
		failover <- err
	}
	c := newClient(t, []string{a.url, b.url})
	ctx := ctxT(t)
	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)

	res, err := c.Publish(ctx, "q", client.Message{Body: []byte("once")})
	require.NoError(t, err)
	require.NoError(t, <-failover)
	require.Equal(t, b.url, c.LiveURL())

	d.mu.Lock()
	dropped := d.dropped
	d.mu.Unlock()
	require.Len(t, dropped, 1)
	var first struct {
		ID string `json:"id"`
	}
	require.NoError(t, json.Unmarshal(dropped[0], &first))
	require.NotEmpty(t, first.ID)
	require.Equal(t, first.ID, res.ID, "the new live broker answers the first id")
	require.True(t, res.Duplicate)
	require.EqualValues(t, 1, depth(t, c, "q"), "stored once")
}
