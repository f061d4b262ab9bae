package opener_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore/opener"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url, password             string
		dialect, dsn, redacted, e string
	}{
		{url: "sqlite:data/tablemq.db", dialect: "sqlite", dsn: "data/tablemq.db", redacted: "sqlite:data/tablemq.db"},
		{url: "sqlite:/var/lib/tmq/x.db", dialect: "sqlite", dsn: "/var/lib/tmq/x.db", redacted: "sqlite:/var/lib/tmq/x.db"},
		{url: "sqlite:///abs/x.db", dialect: "sqlite", dsn: "/abs/x.db", redacted: "sqlite:/abs/x.db"},
		{url: "sqlite:", e: "needs a file path"},
		{url: "postgres://u:pw@h:5432/db?sslmode=disable", dialect: "postgres", dsn: "postgres://u:pw@h:5432/db?sslmode=disable", redacted: "postgres://u@h:5432/db?sslmode=disable"},
		{url: "postgresql://u@h/db", dialect: "postgres", dsn: "postgresql://u@h/db", redacted: "postgresql://u@h/db"},
		{url: "postgres://u:old@h/db", password: "n3w", dialect: "postgres", dsn: "postgres://u:n3w@h/db", redacted: "postgres://u@h/db"},
		{url: "postgres://u@h/db?password=qs", dialect: "postgres", dsn: "postgres://u@h/db?password=qs", redacted: "postgres://u@h/db"},
		{url: "postgres:///db", e: "no host"},
		{url: "mysql://root:pw@tcp(127.0.0.1:3306)/tmq", dialect: "mysql", dsn: "root:pw@tcp(127.0.0.1:3306)/tmq", redacted: "mysql://root@tcp(127.0.0.1:3306)/tmq"},
		{url: "mysql://root:@tcp(127.0.0.1:3306)/tmq", password: "s3cret", dialect: "mysql", dsn: "root:s3cret@tcp(127.0.0.1:3306)/tmq", redacted: "mysql://root@tcp(127.0.0.1:3306)/tmq"},
		{url: "mysql://root:pw@tcp(127.0.0.1:3306)/", e: "no database name"},
		{url: "mysql://root:pw@127.0.0.1:3306/x", e: "want mysql://user:pass@tcp(host:port)/db"},
		{url: "redis://h", e: `unknown scheme "redis"`},
		{url: "data/x.db", e: "unknown scheme"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			tg, err := opener.Parse(tc.url, tc.password)
			if tc.e != "" {
				require.ErrorContains(t, err, tc.e)
				require.NotContains(t, err.Error(), "pw@")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.dialect, tg.Dialect)
			require.Equal(t, tc.dsn, tg.DSN)
			require.Equal(t, tc.redacted, tg.Redacted)
		})
	}
}

func TestOpenErrorsHidePassword(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pwFile := filepath.Join(t.TempDir(), "pw")
	require.NoError(t, os.WriteFile(pwFile, []byte("  hunter2\n"), 0o600))
	for _, url := range []string{
		"postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=2",
		"mysql://u:hunter2@tcp(127.0.0.1:1)/db",
	} {
		_, err := opener.Open(ctx, url, opener.Options{})
		require.Error(t, err)
		msg := err.Error()
		require.True(t, strings.HasPrefix(msg, "open store "), msg)
		require.NotContains(t, msg, "hunter2")
		require.NotContains(t, msg, "\n")
		_, err = opener.Open(ctx, strings.Replace(url, "hunter2", "x", 1), opener.Options{PasswordFile: pwFile})
		require.Error(t, err)
		require.NotContains(t, err.Error(), "hunter2")
	}
	_, err := opener.Open(ctx, "sqlite:x.db", opener.Options{PasswordFile: filepath.Join(t.TempDir(), "missing")})
	require.ErrorContains(t, err, "store password file")
}

func TestOpenSQLiteCreatesDirs(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "a", "b", "tablemq.db")
	drv, err := opener.Open(ctx, "sqlite:"+path, opener.Options{Tables: migrations.WithPrefix("x_")})
	require.NoError(t, err)
	defer drv.Close()
	require.Equal(t, "sqlite", drv.Dialect())
	require.Equal(t, "x_tmq_messages", drv.Tables().Messages)
	require.NoError(t, drv.Migrate(ctx))
	_, err = os.Stat(path)
	require.NoError(t, err)
}

func TestOpenEveryBackend(t *testing.T) {
	t.Parallel()
	for name, newURL := range testdb.All(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			url := newURL(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			drv, err := opener.Open(ctx, url, opener.Options{MaxConns: 4})
			require.NoError(t, err)
			defer drv.Close()
			require.Equal(t, name, drv.Dialect())
			require.NoError(t, drv.Migrate(ctx))
			e, err := drv.EpochBump(ctx)
			require.NoError(t, err)
			require.Equal(t, int64(1), e)
		})
	}
}
