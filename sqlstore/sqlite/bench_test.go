//go:build unix

package sqlite_test

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/sqlite"
)

// benchDriver opens a migrated driver on a fresh file and returns it with its epoch.
func benchDriver(b *testing.B) (*sqlite.Driver, int64) {
	b.Helper()
	ctx := context.Background()
	d, err := sqlite.Open(ctx, sqlite.Config{DSN: path(testdb.SQLite(b)), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(b, err)
	b.Cleanup(func() { _ = d.Close() })
	require.NoError(b, d.Migrate(ctx))
	epoch, err := d.EpochBump(ctx)
	require.NoError(b, err)
	return d, epoch
}

// cpuTime is the CPU time (user and system) the process used so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time per op since start, which the other users of a shared
// machine disturb less than the wall time.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

func benchMessages(queue string, first int64, n int, body []byte) []sqlstore.Message {
	ms := make([]sqlstore.Message, n)
	now := time.Now().UnixMilli()
	for i := range ms {
		ms[i] = sqlstore.Message{Queue: queue, ID: first + int64(i), CreatedAt: now, Body: body}
	}
	return ms
}

// BenchmarkBatchCommit commits what the broker commits under batched publish+ack: each
// transaction inserts rows messages of 1 KiB and deletes as many older ones, lag
// transactions behind (a queue with a backlog of lag*rows messages). One op is one
// transaction (durable commit included).
func BenchmarkBatchCommit(b *testing.B) {
	for _, c := range []struct{ rows, lag int }{{100, 1}, {200, 100}, {400, 1}} {
		b.Run(fmt.Sprintf("rows=%d/backlog=%d", c.rows, c.rows*c.lag), func(b *testing.B) {
			d, epoch := benchDriver(b)
			ctx := context.Background()
			body := make([]byte, 1024)
			var pending [][]sqlstore.MessageKey
			next := int64(1)
			commit := func() {
				ms := benchMessages("q", next, c.rows, body)
				next += int64(c.rows)
				batch := &sqlstore.Batch{MessageInserts: ms}
				if len(pending) >= c.lag {
					batch.MessageDeletes = pending[0]
					pending = pending[1:]
				}
				require.NoError(b, d.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Batch: batch}))
				keys := make([]sqlstore.MessageKey, len(ms))
				for i := range ms {
					keys[i] = sqlstore.MessageKey{Queue: ms[i].Queue, ID: ms[i].ID}
				}
				pending = append(pending, keys)
			}
			for range c.lag {
				commit()
			}
			b.ReportAllocs()
			b.ResetTimer()
			defer reportCPU(b, cpuTime(b))
			for range b.N {
				commit()
			}
		})
	}
}

// BenchmarkMessageScan reads the ready lane of a queue with a backlog 1000 rows at a
// time after a key, as a window refill does. One op is one scan.
func BenchmarkMessageScan(b *testing.B) {
	d, epoch := benchDriver(b)
	ctx := context.Background()
	body := make([]byte, 1024)
	const backlog = 20000
	for i := int64(0); i < backlog; i += 1000 {
		batch := &sqlstore.Batch{MessageInserts: benchMessages("q", i+1, 1000, body)}
		require.NoError(b, d.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Batch: batch}))
	}
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPU(b, cpuTime(b))
	after := int64(0)
	for range b.N {
		rows, err := d.MessageScan(ctx, &sqlstore.MessageScanParams{
			Queue: "q", Lane: sqlstore.LaneReady, From: &sqlstore.ScanKey{ID: after}, Limit: 1000,
		})
		require.NoError(b, err)
		require.Len(b, rows, 1000)
		after = rows[len(rows)-1].ID
		if after >= backlog {
			after = 0
		}
	}
}
