package sqlite

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/sqlstore"
)

// TestScanPlans checks that every lane scan reads the lane index in order: no
// temporary b-tree (a sort of the rows, bodies included) and no scan of the table.
func TestScanPlans(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := Open(ctx, Config{DSN: filepath.Join(t.TempDir(), "plans.db"), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.Migrate(ctx))
	m := d.cfg.Tables.Messages
	for _, lane := range []sqlstore.Lane{sqlstore.LaneID, sqlstore.LaneReady, sqlstore.LaneScheduled} {
		for _, from := range []bool{false, true} {
			if lane == sqlstore.LaneID && from {
				continue
			}
			q := scanSQL(m, lane, from)
			n := strings.Count(q, "?")
			args := make([]any, n)
			for i := range args {
				args[i] = int64(1)
			}
			args[0] = "q"
			rows, err := d.read.QueryContext(ctx, "EXPLAIN QUERY PLAN "+q, args...)
			require.NoError(t, err)
			var plan []string
			for rows.Next() {
				var id, parent, unused int64
				var detail string
				require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
				plan = append(plan, detail)
			}
			require.NoError(t, rows.Err())
			require.NoError(t, rows.Close())
			all := strings.Join(plan, "\n")
			require.NotContains(t, all, "TEMP B-TREE", "lane %d from %v: %s\n%s", lane, from, q, all)
			require.NotContains(t, all, "SCAN "+m, "lane %d from %v: %s\n%s", lane, from, q, all)
			require.Contains(t, all, "SEARCH "+m+" USING INDEX", "lane %d from %v: %s\n%s", lane, from, q, all)
		}
	}
}
