package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/sqlstore"
)

// planDriver opens a migrated driver on a fresh test database for a plan test, with a
// context that bounds the test.
func planDriver(t *testing.T) (context.Context, *Driver) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	d, err := Open(ctx, Config{DSN: testdb.Postgres(t), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Close() })
	require.NoError(t, d.Migrate(ctx))
	return ctx, d
}

// TestLanePlans fills one queue with 200,000 messages (mixed priorities, a quarter of
// them scheduled) beside other queues, and checks with EXPLAIN ANALYZE that every lane
// scan reads the lane index (or the primary key for LaneID) in order, with no
// sequential scan, no bitmap scan and no sort of the queue, and stops after a few
// hundred rows: first before the table has statistics (a new live right after a bulk
// load, autovacuum off or not yet run), then after ANALYZE.
func TestLanePlans(t *testing.T) {
	t.Parallel()
	ctx, d := planDriver(t)
	tables := d.Tables()
	var err error

	const n = 200_000
	_, err = d.pool.CopyFrom(ctx, pgx.Identifier{tables.Messages},
		[]string{"queue", "id", "priority", "deliver_at", "created_at", "body", "size"},
		pgx.CopyFromSlice(n+20_000, func(i int) ([]any, error) {
			q, id := "big", int64(i+1)
			if i >= n {
				q = fmt.Sprintf("other%d", i%7)
			}
			var da int64
			if i%4 == 0 {
				da = 1_700_000_000_000 + int64(i%5000)*1000
			}
			return []any{q, id, int16(i % 10), da, int64(1), []byte("0123456789abcdef"), int64(16)}, nil
		}))
	require.NoError(t, err)
	_, err = d.pool.Exec(ctx, "ALTER TABLE "+tables.Messages+" SET (autovacuum_enabled = false)")
	require.NoError(t, err)
	checkLanePlans(ctx, t, d, "no statistics")
	_, err = d.pool.Exec(ctx, "ANALYZE "+tables.Messages)
	require.NoError(t, err)
	checkLanePlans(ctx, t, d, "analyzed")
}

func checkLanePlans(ctx context.Context, t *testing.T, d *Driver, stage string) {
	t.Helper()
	tables := d.Tables()
	const limit = 100
	for _, tc := range []struct {
		name  string
		p     sqlstore.MessageScanParams
		index string
	}{
		{"id", sqlstore.MessageScanParams{Lane: sqlstore.LaneID, AfterID: 150_000}, tables.Messages + "_pkey"},
		{"ready head", sqlstore.MessageScanParams{Lane: sqlstore.LaneReady}, tables.Messages + "_lane_idx"},
		{"ready from", sqlstore.MessageScanParams{Lane: sqlstore.LaneReady, From: &sqlstore.ScanKey{Priority: 5, ID: 150_005}}, tables.Messages + "_lane_idx"},
		{"scheduled head", sqlstore.MessageScanParams{Lane: sqlstore.LaneScheduled}, tables.Messages + "_lane_idx"},
		{"scheduled from", sqlstore.MessageScanParams{Lane: sqlstore.LaneScheduled,
			From: &sqlstore.ScanKey{DeliverAt: 1_700_000_000_000 + 2500*1000, Priority: 0, ID: 2_500}}, tables.Messages + "_lane_idx"},
	} {
		p := tc.p
		p.Queue, p.Limit = "big", limit
		query, args, err := d.r.Scan(&p, limit)
		require.NoError(t, err)
		rows, err := d.pool.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "+query, args...)
		require.NoError(t, err)
		var lines []string
		for rows.Next() {
			var l string
			require.NoError(t, rows.Scan(&l))
			lines = append(lines, l)
		}
		require.NoError(t, rows.Err())
		plan := strings.Join(lines, "\n")
		name := stage + ": " + tc.name
		t.Logf("%s:\n%s", name, plan)
		require.Contains(t, plan, "Index Scan using "+tc.index, name)
		require.NotContains(t, plan, "Seq Scan", name)
		require.NotContains(t, plan, "Bitmap", name)
		if p.From == nil {
			require.NotContains(t, plan, "Sort", name)
		}
		got, err := d.MessageScan(ctx, &p)
		require.NoError(t, err)
		require.Len(t, got, limit, name)
	}
}

// TestDeletePlan checks that the delete statement of an ordinary ack (which also
// drops chunk references) reads the large-messages table by its key, not by a scan,
// when that table holds many chunks.
func TestDeletePlan(t *testing.T) {
	t.Parallel()
	ctx, d := planDriver(t)
	tables := d.Tables()
	var err error
	_, err = d.pool.CopyFrom(ctx, pgx.Identifier{tables.LargeMessages}, []string{"message_id", "chunk_no", "data", "refs"},
		pgx.CopyFromSlice(50_000, func(i int) ([]any, error) {
			return []any{int64(i / 10), int32(i % 10), []byte("chunk"), int64(1)}, nil
		}))
	require.NoError(t, err)
	_, err = d.pool.CopyFrom(ctx, pgx.Identifier{tables.Messages}, []string{"queue", "id", "created_at", "body", "size", "large"},
		pgx.CopyFromSlice(20_000, func(i int) ([]any, error) {
			large := int16(0)
			if i < 5000 {
				large = 1
			}
			return []any{"q", int64(i), int64(1), []byte("x"), int64(1), large}, nil
		}))
	require.NoError(t, err)
	_, err = d.pool.Exec(ctx, "ANALYZE")
	require.NoError(t, err)

	for _, tc := range []struct {
		name string
		ids  []int64
	}{{"ordinary", []int64{10_000, 10_001, 10_002}}, {"large", []int64{1, 2, 3}}} {
		tx, err := d.pool.Begin(ctx)
		require.NoError(t, err)
		rows, err := tx.Query(ctx, "EXPLAIN (ANALYZE, COSTS OFF) "+d.v2.msgDelete, []string{"q", "q", "q"}, tc.ids, int32(0))
		require.NoError(t, err)
		var lines []string
		for rows.Next() {
			var l string
			require.NoError(t, rows.Scan(&l))
			lines = append(lines, l)
		}
		require.NoError(t, rows.Err())
		require.NoError(t, tx.Rollback(ctx))
		plan := strings.Join(lines, "\n")
		t.Logf("%s:\n%s", tc.name, plan)
		require.NotContains(t, plan, "Seq Scan on "+tables.LargeMessages, tc.name)
		require.NotContains(t, plan, "Seq Scan on "+tables.Messages, tc.name)
	}
}
