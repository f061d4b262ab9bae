package mysql_test

import (
	"context"
	"database/sql"
	"log/slog"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/mysql"
	"github.com/tablemq/tablemq/sqlstore/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Exercise(t, storetest.Harness{
		NewURL: testdb.MySQL,
		Open: func(t testing.TB, url string, tables migrations.Tables) sqlstore.Driver {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			d, err := mysql.Open(ctx, mysql.Config{DSN: url, Tables: tables, Logger: slog.New(slog.DiscardHandler), MaxConns: 8})
			require.NoError(t, err)
			t.Cleanup(func() { _ = d.Close() })
			return d
		},
		Exec: func(t testing.TB, url string, stmt string) {
			db := rawDB(t, url, false)
			defer db.Close()
			_, err := db.Exec(stmt)
			require.NoError(t, err)
		},
		QueryInt: func(t testing.TB, url string, query string) int64 {
			db := rawDB(t, url, false)
			defer db.Close()
			var n int64
			require.NoError(t, db.QueryRow(query).Scan(&n))
			return n
		},
		MigrateTo: func(t testing.TB, url string, tables migrations.Tables, version uint) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			// UpWithOptions closes the handle.
			require.NoError(t, migrations.UpWithOptions(ctx, rawDB(t, url, true), migrations.DialectMySQL, tables,
				migrations.Options{Logger: slog.New(slog.DiscardHandler), Version: version}))
		},
	})
}

func rawDB(t testing.TB, url string, multi bool) *sql.DB {
	cfg, err := mysql.ParseDSN(url)
	require.NoError(t, err)
	cfg.MultiStatements = multi
	connector, err := gomysql.NewConnector(cfg)
	require.NoError(t, err)
	return sql.OpenDB(connector)
}

func TestParseDSN(t *testing.T) {
	t.Parallel()
	cfg, err := mysql.ParseDSN("mysql://u:p@tcp(db:3306)/tmq?interpolateParams=true&clientFoundRows=false")
	require.NoError(t, err)
	require.Equal(t, "u", cfg.User)
	require.Equal(t, "p", cfg.Passwd)
	require.Equal(t, "db:3306", cfg.Addr)
	require.Equal(t, "tmq", cfg.DBName)
	require.True(t, cfg.ClientFoundRows)
	require.False(t, cfg.InterpolateParams)
	require.Equal(t, "'+00:00'", cfg.Params["time_zone"])
	require.Contains(t, cfg.FormatDSN(), "time_zone=%27%2B00%3A00%27")
	_, err = mysql.ParseDSN("mysql://u:p@tcp(db:3306)/")
	require.Error(t, err)
}
