package sqlite_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/sqlite"
)

// TestBatchShapes commits batches whose inserts and deletes are split into many
// multi-row statements, several times each, so that they run both before and after
// their statements are prepared and cached; the rows and the counters must come out
// exact, whatever the batch size.
func TestBatchShapes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := sqlite.Open(ctx, sqlite.Config{DSN: path(testdb.SQLite(t)), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.Migrate(ctx))
	epoch, err := d.EpochBump(ctx)
	require.NoError(t, err)
	next := int64(1)
	var stored int64
	for round := range 3 {
		for _, n := range []int{1, 2, 3, 63, 64, 65, 100, 255, 256, 257, 700} {
			ms := make([]sqlstore.Message, n)
			for i := range ms {
				ms[i] = sqlstore.Message{Queue: "q", ID: next, CreatedAt: 1, Body: make([]byte, i%7), Priority: int16(i % 3)}
				next++
			}
			require.NoError(t, d.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Batch: &sqlstore.Batch{MessageInserts: ms}}))
			stored += int64(n)
			// Delete every other message, each key twice, plus keys that do not exist.
			var ks []sqlstore.MessageKey
			for i := 0; i < n; i += 2 {
				k := sqlstore.MessageKey{Queue: "q", ID: ms[i].ID}
				ks = append(ks, k, k, sqlstore.MessageKey{Queue: "nope", ID: ms[i].ID})
				stored--
			}
			require.NoError(t, d.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Batch: &sqlstore.Batch{MessageDeletes: ks}}))
			count, err := d.MessageCount(ctx, "q")
			require.NoError(t, err)
			require.Equal(t, stored, count, "round %d, batch of %d", round, n)
			counters, err := d.CounterList(ctx)
			require.NoError(t, err)
			require.Len(t, counters, 1)
			require.Equal(t, stored, counters[0].Messages, "round %d, batch of %d", round, n)
		}
	}
	// The bytes counter is exact too.
	all, err := d.MessageScan(ctx, &sqlstore.MessageScanParams{Queue: "q", Lane: sqlstore.LaneID, Limit: int(stored) + 1})
	require.NoError(t, err)
	require.Len(t, all, int(stored))
	var bytes int64
	for _, m := range all {
		bytes += int64(len(m.Body))
	}
	counters, err := d.CounterList(ctx)
	require.NoError(t, err)
	require.Equal(t, bytes, counters[0].Bytes)
}
