package server_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/server"
)

// TestBackends runs the core of the broker on every store backend: publish, receive,
// ack, nack, a window refill, idempotency, a takeover that fences the old live and
// honours its receipts, and a restart that redelivers exactly the unacked messages.
func TestBackends(t *testing.T) {
	t.Parallel()
	for name, url := range testdb.All(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setupURL(t, url(t), server.Config{WindowSize: 4})
			ctx := context.Background()
			mustCreateQueue(t, b.srv, "q", server.QueueConfig{MaxDeliveries: 2, DeadLetterQueue: "dlq"})

			var all []string
			for i := range 12 {
				all = append(all, fmt.Sprintf("m%02d", i))
			}
			ids := publish(t, b.srv, "q", all...)
			res, err := b.srv.PublishQueue(ctx, "q", []server.Message{{Body: []byte("k"), IdempotencyKey: "key"}})
			require.NoError(t, err)
			require.NoError(t, res[0].Err)
			keyID := res[0].ID
			require.Equal(t, int64(13), info(t, b.srv, "q").Depth)

			// Receive everything in order; ack the even ones, nack m01 twice (to the DLQ).
			ds := drain(t, b.srv, "q", 5)
			require.Equal(t, append(all, "k"), bodies(ds))
			require.Equal(t, ids[0], ds[0].ID)
			var acks []string
			for i := 0; i < 12; i += 2 {
				acks = append(acks, ds[i].Receipt)
			}
			ack(t, b.srv, "q", acks...)
			for range 2 {
				rr, err := b.srv.Nack(ctx, "q", []string{ds[1].Receipt}, 0)
				require.NoError(t, err)
				require.NoError(t, rr[0].Err)
				again := receive(t, b.srv, "q", server.ReceiveParams{})
				if len(again) == 0 {
					break
				}
				require.Equal(t, "m01", string(again[0].Body))
				ds[1] = again[0]
			}
			dl := receive(t, b.srv, "dlq", server.ReceiveParams{Wait: 5 * time.Second})
			require.Equal(t, []string{"m01"}, bodies(dl))
			ack(t, b.srv, "dlq", dl[0].Receipt)

			// Takeover: the old live is fenced; its receipts still ack what the new live
			// has not delivered.
			old := b.srv
			srv := b.start(t)
			pres, err := old.PublishQueue(ctx, "q", []server.Message{{Body: []byte("late")}})
			if err == nil {
				err = pres[0].Err
			}
			require.ErrorIs(t, err, server.ErrNotLive)
			select {
			case <-old.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("old live not fenced")
			}
			rr, err := srv.Ack(ctx, "q", []string{ds[3].Receipt, ds[0].Receipt})
			require.NoError(t, err)
			require.NoError(t, rr[0].Err)                           // m03: not delivered since
			require.ErrorIs(t, rr[1].Err, server.ErrReceiptUnknown) // m00: acked before

			// Idempotency survives the takeover.
			res, err = srv.PublishQueue(ctx, "q", []server.Message{{Body: []byte("k"), IdempotencyKey: "key"}})
			require.NoError(t, err)
			require.True(t, res[0].Duplicate)
			require.Equal(t, keyID, res[0].ID)

			// Restart: exactly the unacked messages come back.
			srv.Deactivate()
			srv = b.start(t)
			require.Equal(t, int64(5), info(t, srv, "q").Depth)
			again := drain(t, srv, "q", 3)
			require.Equal(t, []string{"m05", "m07", "m09", "m11", "k"}, bodies(again))
			ack(t, srv, "q", receipts(again)...)
			require.Equal(t, int64(0), info(t, srv, "q").Depth)
			n, err := b.drv.MessageCount(ctx, "q")
			require.NoError(t, err)
			require.Zero(t, n)
		})
	}
}
