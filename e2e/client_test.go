package e2e

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/client"
)

// TestE2EClientAcrossFailovers runs the Go client against a primary-backup pair while
// the live is killed three times (each killed instance comes back as a backup on the
// same address): every publish the client confirmed is consumed, each logical publish
// is stored once (one message id per body, retries included), and the consumer sees a
// message more than once only as a redelivery of the same id.
func TestE2EClientAcrossFailovers(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) {
		heavy(t)
		ctx := deadline(t)
		const queue = "orders"
		addrs := []string{freeAddr(t), freeAddr(t)}
		names := []string{"a", "b"}
		nodes := []*broker{
			startPrimary(ctx, t, names[0], store, "--listen", addrs[0]),
			startBackup(ctx, t, names[1], store, "--listen", addrs[1]),
		}
		c, err := client.New([]string{"http://" + addrs[0], "http://" + addrs[1]},
			client.WithRetryAfterCap(100*time.Millisecond),
			client.WithBackoff(20*time.Millisecond, 200*time.Millisecond),
			client.WithRetryDeadline(30*time.Second),
			client.WithRequestTimeout(5*time.Second))
		require.NoError(t, err)
		_, err = c.CreateQueue(ctx, queue, client.QueueConfig{})
		require.NoError(t, err)

		var mu sync.Mutex
		confirmed := map[string]string{}        // body -> id answered to the publisher
		received := map[string]map[string]int{} // body -> id -> deliveries
		published, failed := 0, 0

		loadCtx, stopLoad := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { // publisher
			defer wg.Done()
			for i := 0; loadCtx.Err() == nil; i++ {
				body := fmt.Sprintf("m-%06d", i)
				res, err := c.Publish(loadCtx, queue, client.Message{Body: []byte(body)})
				mu.Lock()
				if err == nil {
					confirmed[body] = res.ID
					published++
				} else if loadCtx.Err() == nil {
					failed++
					t.Logf("publish %s failed after retries: %v", body, err)
				}
				mu.Unlock()
			}
		}()
		consumeCtx, stopConsume := context.WithCancel(ctx)
		go func() { // consumer
			defer wg.Done()
			err := c.Consume(consumeCtx, queue, func(_ context.Context, d client.Delivery) error {
				mu.Lock()
				defer mu.Unlock()
				ids := received[string(d.Body)]
				if ids == nil {
					ids = map[string]int{}
					received[string(d.Body)] = ids
				}
				ids[d.ID]++
				return nil
			}, client.ConsumeOptions{Max: 50, Wait: time.Second, Lease: 10 * time.Second, Concurrency: 4})
			if err != nil {
				t.Errorf("consume: %v", err)
			}
		}()
		awaitPublished := func(n int) {
			eventually(ctx, t, fmt.Sprintf("%d publishes confirmed", n), func() error {
				mu.Lock()
				defer mu.Unlock()
				if published < n {
					return fmt.Errorf("%d confirmed", published)
				}
				return nil
			})
		}

		for round := 1; round <= 3; round++ {
			awaitPublished(round * 150)
			live := -1
			eventually(ctx, t, "a live instance", func() error {
				for i, n := range nodes {
					if n.ready(ctx) == 200 {
						live = i
						return nil
					}
				}
				return fmt.Errorf("none ready")
			})
			other := 1 - live
			nodes[live].kill()
			nodes[other].awaitReady(ctx)
			// The killed instance comes back on its address as a backup.
			nodes[live] = startBackup(ctx, t, names[live], store, "--listen", addrs[live])
			t.Logf("round %d: killed %s, %s took over", round, names[live], names[other])
		}
		mu.Lock()
		target := published + 150
		mu.Unlock()
		awaitPublished(target)
		stopLoad()

		eventually(ctx, t, "every confirmed publish consumed", func() error {
			mu.Lock()
			defer mu.Unlock()
			missing := 0
			for body := range confirmed {
				if len(received[body]) == 0 {
					missing++
				}
			}
			if missing > 0 {
				return fmt.Errorf("%d of %d confirmed publishes not consumed yet", missing, len(confirmed))
			}
			return nil
		})
		stopConsume()
		wg.Wait()

		mu.Lock()
		defer mu.Unlock()
		redelivered := 0
		for body, ids := range received {
			require.Len(t, ids, 1, "body %s was stored more than once: ids %v", body, ids)
			for id, n := range ids {
				if want, ok := confirmed[body]; ok {
					require.Equal(t, want, id, "body %s: consumed id differs from the id the publish answered", body)
				}
				redelivered += n - 1
			}
		}
		require.Zero(t, failed, "the client gave up on publishes")
		t.Logf("%d publishes confirmed across 3 failovers, %d bodies consumed, %d redeliveries", published, len(received), redelivered)
	})
}

// freeAddr returns a loopback address with a port free right now, for an instance that
// must come back on the same address after a restart.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}
