package sqlite_test

import (
	"context"
	"database/sql"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/sqlite"
	"github.com/tablemq/tablemq/sqlstore/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func path(url string) string { return strings.TrimPrefix(url, "sqlite:") }

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Exercise(t, storetest.Harness{
		NewURL: testdb.SQLite,
		Open: func(t testing.TB, url string, tables migrations.Tables) sqlstore.Driver {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			d, err := sqlite.Open(ctx, sqlite.Config{DSN: path(url), Tables: tables, Logger: slog.New(slog.DiscardHandler)})
			require.NoError(t, err)
			t.Cleanup(func() { _ = d.Close() })
			return d
		},
		Exec: func(t testing.TB, url string, stmt string) {
			db := rawDB(t, url)
			defer db.Close()
			_, err := db.Exec(stmt)
			require.NoError(t, err)
		},
		QueryInt: func(t testing.TB, url string, query string) int64 {
			db := rawDB(t, url)
			defer db.Close()
			var n int64
			require.NoError(t, db.QueryRow(query).Scan(&n))
			return n
		},
		MigrateTo: func(t testing.TB, url string, tables migrations.Tables, version uint) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			// UpWithOptions closes the handle.
			require.NoError(t, migrations.UpWithOptions(ctx, rawDB(t, url), migrations.DialectSQLite, tables,
				migrations.Options{Logger: slog.New(slog.DiscardHandler), Version: version}))
		},
	})
}

func rawDB(t testing.TB, url string) *sql.DB {
	db, err := sql.Open("sqlite", "file:"+path(url)+"?_pragma=busy_timeout(10000)")
	require.NoError(t, err)
	return db
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, err := sqlite.Open(ctx, sqlite.Config{})
	require.Error(t, err)
	_, err = sqlite.Open(ctx, sqlite.Config{DSN: "/nonexistent-dir/x/y.db"})
	require.Error(t, err)
	require.Contains(t, err.Error(), "/nonexistent-dir/x/y.db")
	_, err = sqlite.Open(ctx, sqlite.Config{DSN: t.TempDir() + "/a.db", Tables: migrations.Tables{Messages: "bad name"}})
	require.ErrorContains(t, err, "message-table-name")
}

func TestFileSettings(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := path(testdb.SQLite(t))
	d, err := sqlite.Open(ctx, sqlite.Config{DSN: p})
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.Migrate(ctx))
	db, err := sql.Open("sqlite", "file:"+p)
	require.NoError(t, err)
	defer db.Close()
	var mode string
	require.NoError(t, db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode))
	require.Equal(t, "wal", mode, "the file runs in WAL mode")
}

func TestRelativePath(t *testing.T) {
	// Not parallel: changes the working directory.
	t.Chdir(t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := sqlite.Open(ctx, sqlite.Config{DSN: "rel.db"})
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.Migrate(ctx))
	_, err = os.Stat("rel.db")
	require.NoError(t, err)
}

// TestBackgroundCheckpoint checks that the driver copies the write-ahead log into the
// database file in the background: commits alone (their automatic checkpoint waits
// for a much longer log) would leave the file at its initial size.
func TestBackgroundCheckpoint(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := path(testdb.SQLite(t))
	d, err := sqlite.Open(ctx, sqlite.Config{DSN: p, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.Migrate(ctx))
	epoch, err := d.EpochBump(ctx)
	require.NoError(t, err)
	st, err := os.Stat(p)
	require.NoError(t, err)
	initial := st.Size()

	body := make([]byte, 1024)
	const rows = 4000 // about 1000 pages of 4 KiB, well below the automatic checkpoint
	for first := int64(1); first <= rows; first += 500 {
		ms := make([]sqlstore.Message, 500)
		for i := range ms {
			ms[i] = sqlstore.Message{Queue: "q", ID: first + int64(i), CreatedAt: 1, Body: body}
		}
		require.NoError(t, d.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Batch: &sqlstore.Batch{MessageInserts: ms}}))
	}
	require.Eventually(t, func() bool {
		st, err := os.Stat(p)
		return err == nil && st.Size() >= initial+rows*1024
	}, 10*time.Second, 10*time.Millisecond, "the database file takes in the log's pages")
	n, err := d.MessageCount(ctx, "q")
	require.NoError(t, err)
	require.Equal(t, int64(rows), n)
}
