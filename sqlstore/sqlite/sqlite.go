// Package sqlite is the embedded SQLite dialect of sqlstore (modernc.org/sqlite, pure Go,
// no cgo).
//
// One file holds the whole broker state. The driver opens two pools on it: a write pool
// of exactly one connection whose transactions start with BEGIN IMMEDIATE (so a write
// transaction holds the database write lock from its first statement and never has to
// upgrade a read lock), and a read pool for scans. The file runs in WAL mode with
// synchronous=FULL, so a committed transaction (and so an answered publish) survives a
// power cut, readers never block the writer, and busy_timeout (10s) absorbs another
// process holding the lock.
//
// Statements: a statement is prepared (parsed) once and reused, because preparing costs
// about as much as running it. The write path caches its statements on the write
// connection and splits multi-row inserts and deletes into runs of a power of two rows
// (stdsql Dialect.CacheStatements), and a batch deletes its messages with one DELETE
// ... RETURNING (Dialect.DeleteReturning). The lane scans (scan.go) are SQLite's own:
// prepared once on the read pool, and written so that SQLite reads the lane index in
// order instead of sorting the rows.
//
// Checkpoints (checkpoint.go) run in the background on a connection of their own, so
// that the write connection only appends to the log and syncs it.
//
// Fencing: the epoch row is read inside the IMMEDIATE transaction. SQLite has one writer
// at a time, so an EpochBump (itself an IMMEDIATE transaction) is strictly before or
// after any batch, and a batch after it sees the new epoch and aborts with ErrFenced.
//
// Lease statements (sqlstore.LeaseStore) run on a third connection of their own, each
// as one BEGIN IMMEDIATE transaction, so they are serialised with each other and with
// every batch by the database write lock. SQLite has no server and so no clock of its
// own: the lease clock (NowUS) is the host clock of whichever process runs the
// statement. Processes sharing one file on one host therefore share one clock, and the
// lease works between them; across hosts (a network file system) it is only as good as
// their clock synchronisation, besides the file-locking hazards, so SQLite is meant for
// a single host. There is no push notification of a release: the node manager polls.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/internal/stdsql"
)

// Defaults.
const (
	BusyTimeoutDefault  = 10 * time.Second
	MaxReadConnsDefault = 4
)

// NowUS is the lease clock in Unix microseconds: SQLite's 'now', which is the host
// clock of the process running the statement, at millisecond precision.
const NowUS = "(CAST(ROUND(unixepoch('subsec') * 1000) AS INTEGER) * 1000)"

// Config configures a Driver. Zero values mean the defaults.
type Config struct {
	// DSN is the path of the database file (the PATH of a "sqlite:PATH" store URL). A
	// query string is not allowed; the driver sets its own pragmas.
	DSN string
	// Tables names the tables; zero fields mean the defaults.
	Tables migrations.Tables
	// Logger receives the driver's logs; nil means slog.Default().
	Logger *slog.Logger
	// BusyTimeout is how long a statement waits for another connection's lock.
	BusyTimeout time.Duration
	// MaxReadConns bounds the read pool.
	MaxReadConns int
}

// Driver is the SQLite sqlstore.Driver.
type Driver struct {
	*stdsql.Core
	cfg    Config
	logger *slog.Logger
	read   *sql.DB
	closed atomic.Bool
	scanMu sync.Mutex // guards scans
	scans  *scanStmts
	ckpt   *checkpointer // nil until Open succeeded
}

var _ sqlstore.Driver = (*Driver)(nil)

// Open opens (creating if needed) the database file and checks that it answers, bounded
// by ctx. It does not migrate: call Migrate.
func Open(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.BusyTimeout <= 0 {
		cfg.BusyTimeout = BusyTimeoutDefault
	}
	if cfg.MaxReadConns <= 0 {
		cfg.MaxReadConns = MaxReadConnsDefault
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Tables = cfg.Tables.WithDefaults()
	if err := cfg.Tables.Validate(); err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	if cfg.DSN == "" {
		return nil, errors.New("sqlite: no database file given")
	}
	if strings.ContainsAny(cfg.DSN, "?#") {
		return nil, fmt.Errorf("sqlite: database path %q must not contain '?' or '#'", cfg.DSN)
	}
	writeDSN := dsn(cfg, roleWrite)
	write, err := openOne(writeDSN)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", cfg.DSN, err)
	}
	read, err := sql.Open("sqlite", dsn(cfg, roleRead))
	if err != nil {
		_ = write.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", cfg.DSN, err)
	}
	read.SetMaxOpenConns(cfg.MaxReadConns)
	read.SetMaxIdleConns(cfg.MaxReadConns)
	// The lease statements have a connection of their own (also BEGIN IMMEDIATE), so
	// they never wait for the write connection to be free in the pool; they still wait
	// (busy_timeout) for the database write lock while a batch commits.
	lease, err := openOne(writeDSN)
	if err != nil {
		_ = write.Close()
		_ = read.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", cfg.DSN, err)
	}

	d := &Driver{cfg: cfg, logger: cfg.Logger, read: read}
	d.Core = stdsql.New(stdsql.Dialect{
		Name:                "sqlite",
		SerializeWrites:     true,
		CacheStatements:     true,
		DeleteReturning:     true,
		FenceLock:           "",
		BindingUpsertSuffix: " ON CONFLICT (kind, name, target) DO UPDATE SET config = excluded.config, created_at = excluded.created_at",
		RowIn:               func(n int) string { return "VALUES " + stdsql.ValuesList(n, 2) },
		MaxPlaceholders:     30000,
		MaxStatementBytes:   64 << 20,
		ForUpdate:           "",
		CounterUpsertSuffix: " ON CONFLICT (kind, name, slot) DO UPDATE SET messages = messages + excluded.messages, bytes = bytes + excluded.bytes",
		SumInt:              func(col string) string { return "SUM(" + col + ")" },
		InterpretError:      interpretError,
		Retryable:           retryable,
		TxAttempts:          3,
		NowUS:               NowUS,
		LockRow:             "",
		MemberUpsertSuffix: " ON CONFLICT (id) DO UPDATE SET state = excluded.state, holder_id = excluded.holder_id, " +
			"holder_name = excluded.holder_name, expires_us = excluded.expires_us, updated_us = excluded.updated_us",
	}, write, read, lease, cfg.Tables, func(ctx context.Context) error {
		return d.migrate(ctx, writeDSN)
	})
	// The write connection sets journal_mode=WAL on the file first, so the read pool
	// never races it.
	if err := write.PingContext(ctx); err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", cfg.DSN, interpretError(err))
	}
	if err := read.PingContext(ctx); err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", cfg.DSN, interpretError(err))
	}
	ckpt, err := openOne(dsn(cfg, roleCheckpoint))
	if err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", cfg.DSN, err)
	}
	d.ckpt = startCheckpointer(ckpt, cfg.Logger)
	return d, nil
}

// openOne opens a pool of exactly one connection, kept open for the pool's life.
func openOne(dsn string) (*sql.DB, error) {
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	return db, nil
}

// connRole is what a pool of connections is for; dsn sets each one up accordingly.
type connRole int

const (
	roleWrite      connRole = iota // batches and lease statements: BEGIN IMMEDIATE
	roleRead                       // scans: query-only
	roleCheckpoint                 // the background checkpoints (checkpoint.go)
)

// dsn renders the modernc DSN: WAL, synchronous=FULL, busy_timeout, no foreign keys;
// BEGIN IMMEDIATE and the backstop automatic checkpoint for writing connections, a
// query-only read pool, and no automatic checkpoint on the checkpointer's own connection.
func dsn(cfg Config, role connRole) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", cfg.BusyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(0)")
	switch role {
	case roleWrite:
		q.Set("_txlock", "immediate")
		q.Add("_pragma", fmt.Sprintf("wal_autocheckpoint(%d)", autoCheckpointPages))
	case roleRead:
		q.Add("_pragma", "query_only(1)")
	case roleCheckpoint:
		q.Add("_pragma", "wal_autocheckpoint(0)")
	}
	return "file:" + cfg.DSN + "?" + q.Encode()
}

func (d *Driver) migrate(ctx context.Context, writeDSN string) error {
	db, err := sql.Open("sqlite", writeDSN)
	if err != nil {
		return fmt.Errorf("sqlite: migrate %s: %w", d.cfg.DSN, err)
	}
	db.SetMaxOpenConns(1)
	// UpWithOptions closes db.
	if err := migrations.UpWithOptions(ctx, db, migrations.DialectSQLite, d.cfg.Tables, migrations.Options{Logger: d.logger}); err != nil {
		if errors.Is(err, migrations.ErrSchemaTooNew) {
			return err
		}
		return fmt.Errorf("sqlite: migrate %s: %w", d.cfg.DSN, interpretError(err))
	}
	return nil
}

// interpretError maps SQLite errors to the sqlstore sentinels, keeping the original
// in the chain.
func interpretError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sqlstore.ErrNotFound), errors.Is(err, sqlstore.ErrConflict),
		errors.Is(err, sqlstore.ErrClosed), errors.Is(err, sqlstore.ErrFenced),
		errors.Is(err, sqlstore.ErrLeaseHeld), errors.Is(err, sqlstore.ErrLeaseLost):
		return err
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("%w: %w", sqlstore.ErrNotFound, err)
	case errors.Is(err, sql.ErrConnDone), strings.Contains(err.Error(), "sql: database is closed"):
		return fmt.Errorf("%w: %w", sqlstore.ErrClosed, err)
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE:
			return fmt.Errorf("%w: %w", sqlstore.ErrConflict, err)
		}
	}
	return err
}

// retryable reports a transaction that failed only because another connection held a
// lock longer than busy_timeout.
func retryable(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return true
		}
	}
	return false
}
