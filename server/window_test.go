package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/server"
)

func prio(p int) *int { return &p }

// restart deactivates the bundle's server and activates a new one, as a takeover does.
func (b *bundle) restart(t *testing.T) {
	t.Helper()
	b.srv.Deactivate()
	b.srv = b.start(t)
}

// TestWindowLanes checks, after a restart (the window starts empty), that refills read
// in delivery order: a high-priority message far past the first window comes first,
// and scheduled messages neither fill the window nor get delivered early.
func TestWindowLanes(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		const window = 8
		b := setupURL(t, url, server.Config{WindowSize: window})
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		var want []string
		var msgs []server.Message
		for i := range 30 {
			msgs = append(msgs, server.Message{Body: fmt.Appendf(nil, "a%02d", i)})
		}
		for i := range 40 {
			msgs = append(msgs, server.Message{Body: fmt.Appendf(nil, "later%02d", i), Delay: time.Hour})
		}
		for i := range 3 {
			msgs = append(msgs, server.Message{Body: fmt.Appendf(nil, "high%d", i), Priority: prio(9)})
		}
		msgs = append(msgs, server.Message{Body: []byte("soon"), Delay: 300 * time.Millisecond, Priority: prio(0)})
		for i := range 5 {
			msgs = append(msgs, server.Message{Body: fmt.Appendf(nil, "b%d", i)})
		}
		publishMsgs(t, b.srv, "q", msgs...)
		b.restart(t)
		require.Equal(t, int64(79), info(t, b.srv, "q").Depth, "depth is exact before anything is read")
		require.Zero(t, info(t, b.srv, "q").InMemory, "activation reads no messages")

		ds := receive(t, b.srv, "q", server.ReceiveParams{Max: 3})
		require.Equal(t, []string{"high0", "high1", "high2"}, bodies(ds))
		ack(t, b.srv, "q", receipts(ds)...)
		for i := range 30 {
			want = append(want, fmt.Sprintf("a%02d", i))
		}
		for i := range 5 {
			want = append(want, fmt.Sprintf("b%d", i))
		}
		var got []string
		soon := 0 // due 300ms after the publish: may come among the others on a slow machine
		for len(got) < len(want) {
			ds := receive(t, b.srv, "q", server.ReceiveParams{Max: 4})
			require.NotEmpty(t, ds)
			for _, s := range bodies(ds) {
				if s == "soon" {
					soon++
				} else {
					got = append(got, s)
				}
			}
			ack(t, b.srv, "q", receipts(ds)...)
			require.NoError(t, server.CheckWindow(b.srv, "q"))
			qi := info(t, b.srv, "q")
			require.LessOrEqual(t, qi.InMemory, int64(3*window), "the window stays bounded")
			require.LessOrEqual(t, qi.Delayed, int64(window), "scheduled messages do not fill the window")
		}
		require.Equal(t, want, got)
		// The scheduled one comes when due; the hour-later ones do not.
		if soon == 0 {
			ds = receive(t, b.srv, "q", server.ReceiveParams{Max: 10, Wait: 5 * time.Second})
			require.Equal(t, []string{"soon"}, bodies(ds))
			ack(t, b.srv, "q", receipts(ds)...)
			soon++
		}
		require.Equal(t, 1, soon)
		require.Empty(t, receive(t, b.srv, "q", server.ReceiveParams{Max: 10, Wait: 100 * time.Millisecond}))
		qi := info(t, b.srv, "q")
		require.Equal(t, int64(40), qi.Depth)
		require.LessOrEqual(t, qi.InMemory, int64(window))
	})
}

// TestWindowNackDelay publishes past twice the window while messages move between the
// lanes (nacks with a delay make ready messages scheduled): the window's bookkeeping
// stays exact, it stays bounded, and every message comes once, the delayed ones when due.
func TestWindowNackDelay(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		const window = 8
		b := setupURL(t, url, server.Config{WindowSize: window})
		ctx := context.Background()
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		publish(t, b.srv, "q", "n0", "n1", "n2", "n3")
		ds := receive(t, b.srv, "q", server.ReceiveParams{Max: 2})
		require.Equal(t, []string{"n0", "n1"}, bodies(ds))
		_, err := b.srv.Nack(ctx, "q", receipts(ds), 200*time.Millisecond)
		require.NoError(t, err)
		require.NoError(t, server.CheckWindow(b.srv, "q"))
		var later []string
		for i := range 5 * window {
			later = append(later, fmt.Sprintf("m%02d", i))
		}
		for i := 0; i < len(later); i += 4 {
			publish(t, b.srv, "q", later[i:i+4]...)
			require.NoError(t, server.CheckWindow(b.srv, "q"))
		}
		require.LessOrEqual(t, info(t, b.srv, "q").InMemory, int64(2*window+4), "the window pages out")
		seen := map[string]int{}
		for len(seen) < 4+len(later) {
			ds := receive(t, b.srv, "q", server.ReceiveParams{Max: 5, Wait: 2 * time.Second})
			require.NotEmpty(t, ds, "after %d", len(seen))
			for _, s := range bodies(ds) {
				seen[s]++
			}
			ack(t, b.srv, "q", receipts(ds)...)
			require.NoError(t, server.CheckWindow(b.srv, "q"))
		}
		for k, n := range seen {
			require.Equal(t, 1, n, k)
		}
		require.Contains(t, seen, "n0")
		require.Contains(t, seen, "n1")
		require.Zero(t, info(t, b.srv, "q").Depth)
	})
}

// TestBacklogLargerThanWindow publishes a backlog many times the window (in messages
// and bytes), restarts, and consumes it in order with nothing lost, the window staying
// bounded, and the depth and size exact throughout.
func TestBacklogLargerThanWindow(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		const window, n, size = 16, 600, 512
		b := setupURL(t, url, server.Config{WindowSize: window, WindowBytes: 4 << 10})
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		body := func(i int) string { return fmt.Sprintf("%04d", i) + strings.Repeat("x", size-4) }
		for i := 0; i < n; i += 100 {
			var bs []string
			for j := i; j < i+100; j++ {
				bs = append(bs, body(j))
			}
			publish(t, b.srv, "q", bs...)
		}
		b.restart(t)
		qi := info(t, b.srv, "q")
		require.Equal(t, int64(n), qi.Depth)
		require.Equal(t, int64(n*size), qi.Bytes)
		next := 0
		for next < n {
			ds := receive(t, b.srv, "q", server.ReceiveParams{Max: 7})
			require.NotEmpty(t, ds, "after %d", next)
			for _, d := range ds {
				require.Equal(t, body(next), string(d.Body))
				next++
			}
			ack(t, b.srv, "q", receipts(ds)...)
			qi := info(t, b.srv, "q")
			require.LessOrEqual(t, qi.InMemory, int64(2*window+7))
			require.Equal(t, int64(n-next), qi.Depth)
			require.Equal(t, int64((n-next)*size), qi.Bytes)
		}
		require.Empty(t, receive(t, b.srv, "q", server.ReceiveParams{Max: 10}))
		b.restart(t)
		require.Zero(t, info(t, b.srv, "q").Depth)
		cnt, err := b.drv.MessageCount(context.Background(), "q")
		require.NoError(t, err)
		require.Zero(t, cnt)
	})
}

// TestWindowReadAhead checks that a receive leaving less than half a window of ready
// messages starts a read of the next ones in the background: the window fills up
// again with no further receive, and the queue still delivers everything once, in
// order.
func TestWindowReadAhead(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		const window = 10
		b := setupURL(t, url, server.Config{WindowSize: window})
		mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
		var want []string
		var msgs []server.Message
		for i := range 100 {
			want = append(want, fmt.Sprintf("m%03d", i))
			msgs = append(msgs, server.Message{Body: []byte(want[i])})
		}
		publishMsgs(t, b.srv, "q", msgs...)
		b.restart(t) // the window starts empty
		require.Zero(t, info(t, b.srv, "q").InMemory)

		got := bodies(receive(t, b.srv, "q", server.ReceiveParams{Max: 1}))
		require.Equal(t, int64(window), info(t, b.srv, "q").InMemory, "the receive read one window")
		got = append(got, bodies(receive(t, b.srv, "q", server.ReceiveParams{Max: 5}))...)
		// 4 ready left, fewer than half a window: the next window comes by itself.
		require.Eventually(t, func() bool { return info(t, b.srv, "q").InMemory == 2*window },
			10*time.Second, 5*time.Millisecond, "read-ahead of the next window")
		require.NoError(t, server.CheckWindow(b.srv, "q"))
		for len(got) < len(want) {
			ds := receive(t, b.srv, "q", server.ReceiveParams{Max: 7})
			require.NotEmpty(t, ds)
			got = append(got, bodies(ds)...)
			ack(t, b.srv, "q", receipts(ds)...)
			require.LessOrEqual(t, info(t, b.srv, "q").InMemory, int64(3*window), "the window stays bounded")
		}
		require.Equal(t, want, got)
		require.NoError(t, server.CheckWindow(b.srv, "q"))
	})
}
