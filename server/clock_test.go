package server_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/server"
)

// fakeClock is a settable clock for Config.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestFakeClockLeasesDelaysTTL(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	b := setup(t, server.Config{Now: clk.Now})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	publishMsgs(t, b.srv, "q",
		server.Message{Body: []byte("leased")},
		server.Message{Body: []byte("delayed"), Delay: 2 * time.Hour},
		server.Message{Body: []byte("expiring"), TTL: 90 * time.Minute},
	)
	ds := receive(t, b.srv, "q", server.ReceiveParams{Lease: time.Hour})
	require.Equal(t, []string{"leased"}, bodies(ds))
	require.Equal(t, clk.Now().Add(time.Hour), ds[0].LeaseExpires)

	// An hour later the lease has ended; the expiring message is still there.
	clk.Advance(time.Hour + time.Second)
	eventually(t, 5*time.Second, func() bool { return info(t, b.srv, "q").InFlight == 0 })
	ds = receive(t, b.srv, "q", server.ReceiveParams{Max: 10, Lease: time.Hour})
	require.Equal(t, []string{"leased", "expiring"}, bodies(ds))
	require.Equal(t, 2, ds[0].DeliveryCount)
	_, err := b.srv.Nack(ctx, "q", receipts(ds), 0)
	require.NoError(t, err)

	// Past its TTL the message is dropped; past its delay the other one arrives.
	clk.Advance(time.Hour)
	eventually(t, 5*time.Second, func() bool { return info(t, b.srv, "q").Delayed == 0 })
	ds = receive(t, b.srv, "q", server.ReceiveParams{Max: 10})
	require.Equal(t, []string{"leased", "delayed"}, bodies(ds))
	ack(t, b.srv, "q", receipts(ds)...)
	require.Equal(t, int64(0), info(t, b.srv, "q").Depth)
	n, err := b.drv.MessageCount(ctx, "q")
	require.NoError(t, err)
	require.Zero(t, n)
}
