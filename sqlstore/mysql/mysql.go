// Package mysql is the MySQL 8 / MariaDB 10.6+ dialect of sqlstore
// (go-sql-driver/mysql through database/sql).
//
// A BatchCommit is one InnoDB transaction: the fence read (SELECT epoch ... LOCK IN
// SHARE MODE, which MariaDB and MySQL both accept), then multi-row INSERTs chunked under
// the 65535-placeholder limit and a payload bound, updates as UPDATE ... JOIN over a
// derived table, and deletes by (queue, id) IN ((?,?),...) in chunks. A transaction
// that hits a deadlock (1213) or a lock wait timeout (1205) is retried whole a few
// times. MariaDB has no UPDATE ... RETURNING, so EpochBump updates and reads back in one
// transaction. MySQL 8 has no DELETE ... RETURNING: message deletes, purges and page
// trims first read the rows they remove (SELECT ... FOR UPDATE), delete exactly those,
// and take them off the counters and the chunk references (see stdsql.Core). A
// large-message chunk is one INSERT of its own, so max_allowed_packet bounds a chunk,
// not a LargePut.
//
// Lease statements (sqlstore.LeaseStore) run on a second pool of LeaseConnsDefault
// connections, in READ COMMITTED transactions that lock the state row first (SELECT ...
// FOR UPDATE) and then update the live-lock and epoch rows. All their time arithmetic
// is on the server clock (NowUS); a lease is never compared with the broker's clock.
// There is no push notification of a release: the node manager polls.
//
// The connection is forced to clientFoundRows=true, time_zone='+00:00' and
// interpolateParams=false (server-side placeholders, so no client-side escaping of
// binary bodies); maxAllowedPacket is read from the server unless the DSN sets it.
package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/internal/stdsql"
)

// SessionIdleTimeoutDefault is the wait_timeout of every session (unless the DSN sets
// one): how long a broker stopped in the middle of a transaction can delay a takeover.
const SessionIdleTimeoutDefault = 2 * time.Second

// Defaults.
const (
	MaxConnsDefault    = 16
	DialTimeoutDefault = 10 * time.Second
	// MaxStatementBytesDefault bounds the payload of one multi-row INSERT, well under
	// MariaDB's default max_allowed_packet of 16 MiB.
	MaxStatementBytesDefault = 4 << 20
	// TxAttemptsDefault is how often a transaction that hit a deadlock or lock wait
	// timeout is tried.
	TxAttemptsDefault = 4
	// LeaseConnsDefault bounds the separate pool of the lease statements.
	LeaseConnsDefault = 2
)

// NowUS is the database clock in Unix microseconds. UNIX_TIMESTAMP of a DATETIME reads
// it in the session time zone, which the driver forces to '+00:00', so no daylight
// saving or zone conversion can move it; NOW(6) has microsecond precision and is fixed
// for the duration of one statement.
const NowUS = "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)"

// MySQL error numbers the driver interprets.
const (
	errDupEntry        = 1062
	errLockWaitTimeout = 1205
	errDeadlock        = 1213
)

// Config configures a Driver. Zero values mean the defaults.
type Config struct {
	// DSN is the store URL form mysql://user:pass@tcp(host:port)/db?params, or a plain
	// go-sql-driver DSN (user:pass@tcp(host:port)/db).
	DSN string
	// Tables names the tables; zero fields mean the defaults.
	Tables migrations.Tables
	// Logger receives the driver's logs; nil means slog.Default().
	Logger *slog.Logger
	// MaxConns bounds the pool.
	MaxConns int
}

// Driver is the MySQL sqlstore.Driver.
type Driver struct {
	*stdsql.Core
	cfg    Config
	my     *gomysql.Config
	logger *slog.Logger
}

var _ sqlstore.Driver = (*Driver)(nil)

// ParseDSN parses the DSN forms of Config.DSN and forces the parameters the driver
// relies on.
func ParseDSN(dsn string) (*gomysql.Config, error) {
	my, err := gomysql.ParseDSN(strings.TrimPrefix(dsn, "mysql://"))
	if err != nil {
		return nil, err
	}
	if my.DBName == "" {
		return nil, errors.New("no database name in DSN")
	}
	my.ClientFoundRows = true
	my.InterpolateParams = false
	my.MultiStatements = false
	if my.Params == nil {
		my.Params = map[string]string{}
	}
	my.Params["time_zone"] = "'+00:00'"
	// A session idle this long is closed by the server, which rolls back its
	// transaction: a broker stopped (SIGSTOP, a VM pause) between the statements of a
	// transaction would otherwise keep its share lock on the fencing-epoch row and
	// hold up a takeover until it resumed. The pools drop idle connections sooner.
	if _, ok := my.Params["wait_timeout"]; !ok {
		my.Params["wait_timeout"] = fmt.Sprint(int(SessionIdleTimeoutDefault.Seconds()))
	}
	my.Loc = time.UTC
	if my.Timeout == 0 {
		my.Timeout = DialTimeoutDefault
	}
	return my, nil
}

// Open creates the pool and checks the database answers, bounded by ctx. It does not
// migrate: call Migrate.
func Open(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = MaxConnsDefault
	}
	cfg.Tables = cfg.Tables.WithDefaults()
	if err := cfg.Tables.Validate(); err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	my, err := ParseDSN(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("mysql: parse DSN: %w", err)
	}
	connector, err := gomysql.NewConnector(my)
	if err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(cfg.MaxConns)
	db.SetMaxIdleConns(cfg.MaxConns)
	db.SetConnMaxLifetime(30 * time.Minute)
	db.SetConnMaxIdleTime(SessionIdleTimeoutDefault / 2) // before the server's wait_timeout
	// Lease statements get a pool of their own, so a renewal never waits for a
	// connection behind batches. Their row-lock waits end on the server after a
	// second, so attempts abandoned by the client (a deadline) do not pile up there.
	lmy := my.Clone()
	lmy.Params["innodb_lock_wait_timeout"] = "1"
	leaseConnector, err := gomysql.NewConnector(lmy)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("mysql: %w", err)
	}
	lease := sql.OpenDB(leaseConnector)
	lease.SetMaxOpenConns(LeaseConnsDefault)
	lease.SetMaxIdleConns(LeaseConnsDefault)
	lease.SetConnMaxLifetime(30 * time.Minute)
	lease.SetConnMaxIdleTime(SessionIdleTimeoutDefault / 2)

	d := &Driver{cfg: cfg, my: my, logger: cfg.Logger}
	d.Core = stdsql.New(stdsql.Dialect{
		Name:                migrations.DialectMySQL,
		FenceLock:           " LOCK IN SHARE MODE",
		BindingUpsertSuffix: " ON DUPLICATE KEY UPDATE config = VALUES(config), created_at = VALUES(created_at)",
		RowIn:               func(n int) string { return stdsql.ValuesList(n, 2) },
		MaxPlaceholders:     60000,
		MaxStatementBytes:   MaxStatementBytesDefault,
		UpdateJoin:          true,
		ForUpdate:           " FOR UPDATE",
		CounterUpsertSuffix: " ON DUPLICATE KEY UPDATE messages = messages + VALUES(messages), bytes = bytes + VALUES(bytes)",
		SumInt:              func(col string) string { return "CAST(SUM(" + col + ") AS SIGNED)" },
		InterpretError:      interpretError,
		Retryable:           retryable,
		TxAttempts:          TxAttemptsDefault,
		NowUS:               NowUS,
		LockRow:             " FOR UPDATE",
		MemberUpsertSuffix: " ON DUPLICATE KEY UPDATE state = VALUES(state), holder_id = VALUES(holder_id), " +
			"holder_name = VALUES(holder_name), expires_us = VALUES(expires_us), updated_us = VALUES(updated_us)",
		LeaseTxOptions: &sql.TxOptions{Isolation: sql.LevelReadCommitted},
	}, db, db, lease, cfg.Tables, d.migrate)
	if err := db.PingContext(ctx); err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("mysql: %w", interpretError(err))
	}
	return d, nil
}

// migrate applies the schema through a separate handle with multiStatements=true.
func (d *Driver) migrate(ctx context.Context) error {
	my := d.my.Clone()
	my.MultiStatements = true
	connector, err := gomysql.NewConnector(my)
	if err != nil {
		return fmt.Errorf("mysql: migrate: %w", err)
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(2)
	// UpWithOptions closes db.
	if err := migrations.UpWithOptions(ctx, db, migrations.DialectMySQL, d.cfg.Tables, migrations.Options{Logger: d.logger}); err != nil {
		if errors.Is(err, migrations.ErrSchemaTooNew) {
			return err
		}
		return fmt.Errorf("mysql: migrate: %w", interpretError(err))
	}
	return nil
}

// interpretError maps MySQL errors to the sqlstore sentinels, keeping the original in
// the chain.
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
	var me *gomysql.MySQLError
	if errors.As(err, &me) && me.Number == errDupEntry {
		return fmt.Errorf("%w: %w", sqlstore.ErrConflict, err)
	}
	return err
}

// retryable reports a deadlock or lock wait timeout, after which the whole transaction
// may be tried again.
func retryable(err error) bool {
	var me *gomysql.MySQLError
	return errors.As(err, &me) && (me.Number == errDeadlock || me.Number == errLockWaitTimeout)
}
