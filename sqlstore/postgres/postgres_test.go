package postgres_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/postgres"
	"github.com/tablemq/tablemq/sqlstore/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Exercise(t, storetest.Harness{
		NewURL: testdb.Postgres,
		Open: func(t testing.TB, url string, tables migrations.Tables) sqlstore.Driver {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			d, err := postgres.Open(ctx, postgres.Config{DSN: url, Tables: tables, Logger: slog.New(slog.DiscardHandler), MaxConns: 8})
			require.NoError(t, err)
			t.Cleanup(func() { _ = d.Close() })
			return d
		},
		Exec: func(t testing.TB, url string, stmt string) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := pgx.Connect(ctx, url)
			require.NoError(t, err)
			defer conn.Close(context.Background())
			_, err = conn.Exec(ctx, stmt)
			require.NoError(t, err)
		},
		QueryInt: func(t testing.TB, url string, query string) int64 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := pgx.Connect(ctx, url)
			require.NoError(t, err)
			defer conn.Close(context.Background())
			var n int64
			require.NoError(t, conn.QueryRow(ctx, query).Scan(&n))
			return n
		},
		MigrateTo: func(t testing.TB, url string, tables migrations.Tables, version uint) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cfg, err := pgx.ParseConfig(url)
			require.NoError(t, err)
			// UpWithOptions closes the handle.
			require.NoError(t, migrations.UpWithOptions(ctx, stdlib.OpenDB(*cfg), migrations.DialectPostgres, tables,
				migrations.Options{Logger: slog.New(slog.DiscardHandler), Version: version}))
		},
	})
}

func TestOpenUnreachable(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := postgres.Open(ctx, postgres.Config{DSN: "postgres://u:secret@127.0.0.1:1/db?connect_timeout=2"})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "secret")
}

// TestLeaseWatchConnectionLoss kills the watch's connection on the server: the channel
// closes (the node manager then polls) and the goroutine ends.
func TestLeaseWatchConnectionLoss(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := testdb.Postgres(t)
	tables := migrations.WithPrefix(fmt.Sprintf("wl%d_", time.Now().UnixNano()%1_000_000_000))
	d, err := postgres.Open(ctx, postgres.Config{DSN: url, Tables: tables, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.Migrate(ctx))
	ch, err := d.LeaseWatch(ctx)
	require.NoError(t, err)

	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	listen := "LISTEN " + pgx.Identifier{tables.WithDefaults().NodeManager}.Sanitize()
	var killed int
	require.NoError(t, conn.QueryRow(ctx,
		"SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1) k", listen).Scan(&killed))
	require.Equal(t, 1, killed, "one connection listens on the channel")

	deadline := time.After(10 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-ch:
		case <-deadline:
			t.Fatal("the watch did not end after its connection was killed")
		}
	}
	// The driver itself is unaffected.
	_, err = d.LeaseGet(ctx)
	require.NoError(t, err)
}
