package server_test

import (
	"context"
	"sync"
	"testing"

	"github.com/tablemq/tablemq/server"
)

// BenchmarkPublishReceiveAck measures confirmed publishes followed by receive and ack
// of 1 KiB messages on SQLite, 16 clients at once.
func BenchmarkPublishReceiveAck(b *testing.B) {
	bb := setupB(b)
	ctx := context.Background()
	body := make([]byte, 1024)
	const clients = 16
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/clients + 1
	for range clients {
		wg.Go(func() {
			for range per {
				if _, err := bb.PublishQueue(ctx, "q", []server.Message{{Body: body}}); err != nil {
					b.Error(err)
					return
				}
				ds, err := bb.Receive(ctx, "q", server.ReceiveParams{Max: 1})
				if err != nil {
					b.Error(err)
					return
				}
				if len(ds) > 0 {
					if _, err := bb.Ack(ctx, "q", []string{ds[0].Receipt}); err != nil {
						b.Error(err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}
