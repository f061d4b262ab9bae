// Package testdb hands tests a fresh, empty database on each backend tablemq supports,
// as a store URL that sqlstore/opener understands.
//
//   - SQLite: a file in t.TempDir().
//   - PostgreSQL: a fresh schema tmqt_<random> in the server named by
//     TABLEMQ_TEST_POSTGRES_DSN (default postgres://postgres@127.0.0.1:5432/test), selected
//     with a search_path parameter in the URL; dropped (CASCADE) at cleanup.
//   - MySQL/MariaDB: a fresh database tmqt_<random> in the server named by
//     TABLEMQ_TEST_MYSQL_DSN (default mysql://root:@tcp(127.0.0.1:3306)/test); dropped at
//     cleanup.
//
// When a server is not reachable and a Docker engine answers, one container per test
// binary is started with testcontainers-go (PostgreSQL 15, MariaDB 10.11) and used
// instead. When neither works the test is skipped with the reason, unless the backend
// is listed in TABLEMQ_TEST_REQUIRE (comma-separated, e.g. "postgres,mysql"); then it
// fails.
package testdb

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
)

// Backend names, as used in TABLEMQ_TEST_REQUIRE.
const (
	BackendSQLite   = "sqlite"
	BackendPostgres = "postgres"
	BackendMySQL    = "mysql"
)

// Environment variables.
const (
	EnvRequire     = "TABLEMQ_TEST_REQUIRE"
	EnvPostgresDSN = "TABLEMQ_TEST_POSTGRES_DSN"
	EnvMySQLDSN    = "TABLEMQ_TEST_MYSQL_DSN"
)

// Default servers (the ones a developer machine and CI run).
const (
	PostgresDSNDefault = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	MySQLDSNDefault    = "mysql://root:@tcp(127.0.0.1:3306)/test"
)

const probeTimeout = 5 * time.Second

// SQLite returns the store URL of a new SQLite file in a temporary directory of t.
func SQLite(t testing.TB) string {
	t.Helper()
	return "sqlite:" + filepath.Join(t.TempDir(), "tablemq.db")
}

// Postgres returns the store URL of a fresh schema on the test PostgreSQL server; the
// schema is dropped when t ends.
func Postgres(t testing.TB) string {
	t.Helper()
	base, _, err := server(BackendPostgres)
	if err != nil {
		unavailable(t, BackendPostgres, err)
	}
	schema := "tmqt_" + randomSuffix()
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	if err := pgExec(ctx, base, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("testdb: create schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pgExec(ctx, base, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
			t.Logf("testdb: drop schema %s: %v", schema, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("testdb: postgres DSN: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// MySQL returns the store URL of a fresh database on the test MySQL/MariaDB server; the
// database is dropped when t ends.
func MySQL(t testing.TB) string {
	t.Helper()
	base, _, err := server(BackendMySQL)
	if err != nil {
		unavailable(t, BackendMySQL, err)
	}
	name := "tmqt_" + randomSuffix()
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	if err := myExec(ctx, base, "CREATE DATABASE "+name+" CHARACTER SET utf8mb4"); err != nil {
		t.Fatalf("testdb: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := myExec(ctx, base, "DROP DATABASE IF EXISTS "+name); err != nil {
			t.Logf("testdb: drop database %s: %v", name, err)
		}
	})
	cfg, err := mysqlConfig(base)
	if err != nil {
		t.Fatalf("testdb: mysql DSN: %v", err)
	}
	cfg.DBName = name
	return "mysql://" + cfg.FormatDSN()
}

// All returns the URL constructors of every backend, keyed by backend name.
func All(t testing.TB) map[string]func(testing.TB) string {
	t.Helper()
	return map[string]func(testing.TB) string{
		BackendSQLite:   SQLite,
		BackendPostgres: Postgres,
		BackendMySQL:    MySQL,
	}
}

// Required reports whether TABLEMQ_TEST_REQUIRE lists backend.
func Required(backend string) bool {
	for _, b := range strings.Split(os.Getenv(EnvRequire), ",") {
		if strings.EqualFold(strings.TrimSpace(b), backend) {
			return true
		}
	}
	return false
}

func unavailable(t testing.TB, backend string, err error) {
	t.Helper()
	if Required(backend) {
		t.Fatalf("testdb: %s is required (%s) but unavailable: %v", backend, EnvRequire, err)
	}
	t.Skipf("testdb: %s unavailable: %v", backend, err)
}

// Probe reports whether backend can be used, and where: the server address, or
// "testcontainers" when a container would be started. It starts no container.
func Probe(ctx context.Context, backend string) (where string, err error) {
	switch backend {
	case BackendSQLite:
		return "", nil
	case BackendPostgres, BackendMySQL:
	default:
		return "", fmt.Errorf("unknown backend %q", backend)
	}
	base, err := envOrDefault(backend)
	if err != nil {
		return "", err
	}
	if err := ping(ctx, backend, base); err == nil {
		return address(backend, base), nil
	} else if derr := dockerAvailable(ctx); derr == nil {
		return "testcontainers", nil
	} else {
		return "", fmt.Errorf("%s (and no container engine: %v)", err, derr)
	}
}

type serverResult struct {
	base, where string
	err         error
}

var (
	serverMu   sync.Mutex
	serverOnce = map[string]*serverResult{}
)

// server returns the base DSN of a reachable server for backend, starting a container
// if need be; the answer is computed once per process.
func server(backend string) (base, where string, err error) {
	serverMu.Lock()
	defer serverMu.Unlock()
	if r, ok := serverOnce[backend]; ok {
		return r.base, r.where, r.err
	}
	r := &serverResult{}
	serverOnce[backend] = r
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	r.base, r.err = envOrDefault(backend)
	if r.err != nil {
		return r.base, r.where, r.err
	}
	perr := ping(ctx, backend, r.base)
	if perr == nil {
		r.where = address(backend, r.base)
		return r.base, r.where, nil
	}
	if derr := dockerAvailable(ctx); derr != nil {
		r.err = fmt.Errorf("%w (and no container engine: %v)", perr, derr)
		return r.base, r.where, r.err
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer ccancel()
	r.base, r.err = startContainer(cctx, backend)
	if r.err != nil {
		r.err = fmt.Errorf("%w; starting a container failed too: %v", perr, r.err)
		return r.base, r.where, r.err
	}
	r.where = "testcontainers"
	return r.base, r.where, nil
}

func envOrDefault(backend string) (string, error) {
	switch backend {
	case BackendPostgres:
		if v := os.Getenv(EnvPostgresDSN); v != "" {
			return v, nil
		}
		return PostgresDSNDefault, nil
	case BackendMySQL:
		if v := os.Getenv(EnvMySQLDSN); v != "" {
			if !strings.HasPrefix(v, "mysql://") {
				v = "mysql://" + v
			}
			return v, nil
		}
		return MySQLDSNDefault, nil
	}
	return "", fmt.Errorf("unknown backend %q", backend)
}

func address(backend, base string) string {
	switch backend {
	case BackendPostgres:
		if cfg, err := pgx.ParseConfig(base); err == nil {
			return net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
		}
	case BackendMySQL:
		if cfg, err := mysqlConfig(base); err == nil {
			return cfg.Addr
		}
	}
	return "?"
}

func ping(ctx context.Context, backend, base string) error {
	switch backend {
	case BackendPostgres:
		return pgExec(ctx, base, "SELECT 1")
	case BackendMySQL:
		return myExec(ctx, base, "SELECT 1")
	}
	return fmt.Errorf("unknown backend %q", backend)
}

func pgExec(ctx context.Context, dsn, stmt string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("postgres %s: %w", address(BackendPostgres, dsn), err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("postgres: %s: %w", stmt, err)
	}
	return nil
}

func mysqlConfig(base string) (*mysql.Config, error) {
	return mysql.ParseDSN(strings.TrimPrefix(base, "mysql://"))
}

func myExec(ctx context.Context, base, stmt string) error {
	cfg, err := mysqlConfig(base)
	if err != nil {
		return err
	}
	cfg.Timeout = probeTimeout
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return err
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		return fmt.Errorf("mysql %s: %w", cfg.Addr, err)
	}
	return nil
}

func randomSuffix() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// errNoDocker is returned when no container engine socket is configured or present.
var errNoDocker = errors.New("no Docker engine found (DOCKER_HOST unset and /var/run/docker.sock absent)")
