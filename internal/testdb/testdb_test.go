package testdb_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/internal/testdb"
)

func TestSQLite(t *testing.T) {
	t.Parallel()
	u := testdb.SQLite(t)
	require.True(t, strings.HasPrefix(u, "sqlite:"), u)
	require.True(t, strings.HasSuffix(u, "/tablemq.db"), u)
	require.NotEqual(t, u, testdb.SQLite(t), "every call is a fresh database")
}

func TestPostgresFreshSchema(t *testing.T) {
	t.Parallel()
	var schema string
	t.Run("use", func(t *testing.T) {
		u := testdb.Postgres(t)
		require.Contains(t, u, "search_path=tmqt_")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, u)
		require.NoError(t, err)
		defer conn.Close(context.Background())
		require.NoError(t, conn.QueryRow(ctx, "SELECT current_schema()").Scan(&schema))
		require.True(t, strings.HasPrefix(schema, "tmqt_"), schema)
		_, err = conn.Exec(ctx, "CREATE TABLE t (x int)")
		require.NoError(t, err)
	})
	if schema == "" {
		return // skipped
	}
	// The schema is gone after the subtest's cleanup.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	base := testdb.PostgresDSNDefault
	if v := os.Getenv(testdb.EnvPostgresDSN); v != "" {
		base = v
	}
	conn, err := pgx.Connect(ctx, base)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema).Scan(&n))
	require.Zero(t, n)
}

func TestMySQLFreshDatabase(t *testing.T) {
	t.Parallel()
	u := testdb.MySQL(t)
	require.True(t, strings.HasPrefix(u, "mysql://"), u)
	require.Contains(t, u, "/tmqt_")
	require.NotEqual(t, u, testdb.MySQL(t))
}

func TestAll(t *testing.T) {
	t.Parallel()
	all := testdb.All(t)
	require.Len(t, all, 3)
	for _, name := range []string{"sqlite", "postgres", "mysql"} {
		require.Contains(t, all, name)
	}
}

func TestRequired(t *testing.T) {
	t.Setenv(testdb.EnvRequire, " Postgres ,mysql")
	require.True(t, testdb.Required("postgres"))
	require.True(t, testdb.Required("mysql"))
	require.False(t, testdb.Required("sqlite"))
}

func TestProbe(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	where, err := testdb.Probe(ctx, "sqlite")
	require.NoError(t, err)
	require.Empty(t, where)
	_, err = testdb.Probe(ctx, "oracle")
	require.Error(t, err)
}
