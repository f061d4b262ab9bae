// Package postgres is the PostgreSQL dialect of sqlstore, speaking pgx/v5 natively
// through a pgxpool.
//
// A BatchCommit is one transaction sent as one pipeline (one pgx.Batch, one Sync) on
// one connection: BEGIN, the fence check, one statement per part of the batch (rows
// travel as arrays through unnest, or as VALUES for up to ValuesMaxRows messages, so
// no row costs a statement of its own), COMMIT. It costs one network round trip
// whatever its size, except that batches of CopyThresholdDefault message rows or more
// send the messages by COPY, between a first pipeline (BEGIN, fence, binding puts) and
// a last one (the rest, COMMIT): three round trips. Statements are prepared and cached
// per connection by pgx (after a failed batch pgx forgets that batch's statements, so
// the next batch on the connection prepares them again, once). See batch.go.
//
// The parts of schema v2 travel in the same pipeline. Page inserts go through unnest;
// what the inserts add to the counters and to chunk references is one upsert and one
// UPDATE (whose count check raises inside the server when a large row names a message
// without chunks, like the fence check). Message deletes, queue purges and page trims
// are each one statement with data-modifying CTEs: DELETE ... RETURNING the rows really
// deleted, an upsert of their counters on the batch's slot, and the drop of their
// references (lock the chunk-0 rows, lower the ones still referenced, delete every
// chunk of the others). So an ordinary publish or ack batch is still one round trip,
// and so is a batch with large messages, purges or trims. LargePut, LargeDelete and
// LargeSweep are fenced pipelines of their own (BEGIN, fence, one statement, COMMIT).
//
// Fencing: the fence check reads the epoch row with FOR SHARE, before any write of the
// transaction, and raises an error inside the server when the epoch is not the
// writer's, so every statement queued after it in the pipeline is skipped and the
// transaction never commits. FOR SHARE conflicts with the row lock EpochBump's UPDATE
// takes. A bump waits for every batch holding the share lock; a batch that asks after
// the bump re-reads the row once the bump commits (READ COMMITTED re-evaluates a locked
// row) and sees the new epoch.
//
// Lease statements (sqlstore.LeaseStore) run on a second pool of LeaseConnsDefault
// connections, in READ COMMITTED transactions that lock the state row first (SELECT ...
// FOR UPDATE) and then update the live-lock and epoch rows; all their time arithmetic
// is on the server clock (NowUS, clock_timestamp()). A renewal is one round trip. A
// release notifies the channel named after the node-manager table (pg_notify in the
// same transaction), and LeaseWatch (sqlstore.LeaseWatcher) listens on it over a
// connection of its own. Groups in different schemas of one database with the same
// node-manager table name share that channel: they wake each other spuriously, which
// costs a poll and nothing else.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/jackc/puddle/v2"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/internal/stdsql"
)

// IdleInTxTimeoutDefault is the idle_in_transaction_session_timeout of every session
// (unless the DSN sets one): how long a broker stopped in the middle of a transaction
// can delay a takeover.
const IdleInTxTimeoutDefault = 2 * time.Second

// Defaults.
const (
	// ValuesMaxRows is the largest number of message rows inserted by an INSERT ...
	// VALUES statement with a parameter per field (one prepared statement per row
	// count); more rows go through unnest arrays (or COPY). Measured (2026-11-22, 1 KiB
	// messages, one client): VALUES commits 10-15 % faster than unnest up to 10 rows,
	// about the same at 20, slower at 40.
	ValuesMaxRows = 16
	// CopyThresholdDefault is the number of message rows from which a batch inserts its
	// messages by COPY rather than by one multi-row INSERT inside the pipeline. Measured
	// (BenchmarkBatchCommit and alternating runs, 1 KiB messages, 2026-11-22): COPY costs
	// two more round trips, so the INSERT wins below about 40 rows (by 10-20 % at 20-32),
	// COPY above (by 10-30 % at 50-100, about 1.6x at 1000).
	CopyThresholdDefault = 40
	// ScanLimitDefault is the number of rows MessageScan returns when Limit <= 0.
	ScanLimitDefault = 1000
	// TxAttemptsDefault is how often a transaction that hit a deadlock or a
	// serialization failure is tried.
	TxAttemptsDefault = 3
	// MaxConnsDefault bounds the main pool (batches and reads) unless Config.MaxConns
	// or pool_max_conns in the DSN says otherwise: the writer's lanes
	// (sqlstore.LanesDefault) plus refills, scans and large-message reads.
	MaxConnsDefault = 16
)

// Config configures a Driver. Zero values mean the defaults.
type Config struct {
	// DSN is a postgres:// or postgresql:// URL (or a pgx keyword/value string).
	// Unknown parameters, such as search_path, are sent as run-time parameters.
	DSN string
	// Tables names the tables; zero fields mean the defaults.
	Tables migrations.Tables
	// Logger receives the driver's logs; nil means slog.Default().
	Logger *slog.Logger
	// MaxConns bounds the main pool; 0 means pool_max_conns of the DSN, or
	// MaxConnsDefault.
	MaxConns int
	// CopyThreshold is the number of message rows from which a batch inserts its
	// messages by COPY; 0 means CopyThresholdDefault, a negative value never uses COPY.
	CopyThreshold int
}

// Driver is the PostgreSQL sqlstore.Driver.
type Driver struct {
	pool      *pgxpool.Pool
	leasePool *pgxpool.Pool // the lease statements only
	t         migrations.Tables
	logger    *slog.Logger
	q         queries
	v2        v2Queries
	r         *stdsql.Reads
	lq        leaseQueries
	closed    atomic.Bool
	copyMin   int // message rows from which BatchCommit uses COPY; 0 never

	connConfig *pgx.ConnConfig // for LeaseWatch connections
	closing    context.Context // cancelled by Close, ends every LeaseWatch
	cancel     context.CancelFunc
	watchMu    sync.Mutex // orders watchers.Add against Close
	watchers   sync.WaitGroup
}

var _ sqlstore.Driver = (*Driver)(nil)

type queries struct {
	fence, epochGet, epochBump, bindingList, count, dupGet     string
	bindingPut, msgInsert, dupInsert, msgUpdate, bindingDelete string
	dupBefore                                                  string
	messageCols                                                []string
	messagesTable                                              pgx.Identifier
	msgValues                                                  [ValuesMaxRows + 1]string // [n]: insert n rows by VALUES
}

// Open creates the pool and checks the database answers, bounded by ctx. It does not
// migrate: call Migrate.
func Open(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := cfg.Tables.WithDefaults()
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	pcfg, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse DSN: %w", err)
	}
	switch {
	case cfg.MaxConns > 0:
		pcfg.MaxConns = int32(cfg.MaxConns)
	case !strings.Contains(cfg.DSN, "pool_max_conns"):
		// pgxpool's own default is max(4, CPUs): the writer's lanes alone
		// (sqlstore.LanesDefault) would take every connection from the reads.
		pcfg.MaxConns = MaxConnsDefault
	}
	// A session left idle inside a transaction is ended by the server: a broker
	// stopped (SIGSTOP, a VM pause) between the statements of a transaction would
	// otherwise keep its share lock on the fencing-epoch row and hold up a takeover
	// until it resumed. Healthy transactions are one pipelined round trip (three for
	// COPY batches), far below this.
	if _, ok := pcfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"]; !ok {
		pcfg.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = fmt.Sprint(IdleInTxTimeoutDefault.Milliseconds())
	}
	// Every statement of the broker is a read or write of a key range of an index, in
	// index order, with a LIMIT. Without table statistics (a table just bulk-loaded,
	// autovacuum off or not run yet) the planner takes a queue's backlog for a few
	// rows and reads it all with a bitmap scan and a sort (seconds at a million rows,
	// on the first receive after a takeover) instead of the first rows of the index.
	// With bitmap scans off it always reads the index in order.
	if _, ok := pcfg.ConnConfig.RuntimeParams["enable_bitmapscan"]; !ok {
		pcfg.ConnConfig.RuntimeParams["enable_bitmapscan"] = "off"
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: %w", interpretError(err))
	}
	leasePool, err := newLeasePool(ctx, pcfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: lease pool: %w", err)
	}
	copyMin := cfg.CopyThreshold
	switch {
	case copyMin == 0:
		copyMin = CopyThresholdDefault
	case copyMin < 0:
		copyMin = 0
	}
	closing, cancel := context.WithCancel(context.Background())
	b, m, n, d := t.Bindings, t.Messages, t.NodeManager, t.DuplicateIDs
	var msgValues [ValuesMaxRows + 1]string
	for rows := 1; rows <= ValuesMaxRows; rows++ {
		msgValues[rows] = valuesInsertSQL(m, rows)
	}
	fence := sqlstore.NodeRowFence
	return &Driver{
		pool: pool, leasePool: leasePool, t: t, logger: cfg.Logger, lq: newLeaseQueries(n), copyMin: copyMin,
		connConfig: pcfg.ConnConfig.Copy(), closing: closing, cancel: cancel,
		v2: newV2Queries(t),
		r: stdsql.NewReads(t, stdsql.Syntax{Param: stdsql.Dollar, ByteOrder: ` COLLATE "C"`,
			SumInt: func(col string) string { return "sum(" + col + ")::bigint" }}),
		q: queries{
			fence:       fenceSQL(n),
			epochGet:    fmt.Sprintf("SELECT epoch FROM %s WHERE id = %d", n, fence),
			epochBump:   fmt.Sprintf("UPDATE %s SET epoch = epoch + 1 WHERE id = %d RETURNING epoch", n, fence),
			bindingList: fmt.Sprintf("SELECT kind, name, target, config, created_at FROM %s ORDER BY kind, name, target", b),
			count:       fmt.Sprintf("SELECT count(*) FROM %s WHERE queue = $1", m),
			dupGet:      fmt.Sprintf("SELECT message_id FROM %s WHERE queue = $1 AND idem_key = $2", d),
			bindingPut: fmt.Sprintf("INSERT INTO %s (kind, name, target, config, created_at) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) "+
				"ON CONFLICT (kind, name, target) DO UPDATE SET config = EXCLUDED.config, created_at = EXCLUDED.created_at", b),
			msgInsert: fmt.Sprintf("INSERT INTO %s (%s) "+
				"SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::bigint[], $5::bigint[], $6::integer[], $7::bigint[], $8::text[], $9::text[], $10::bytea[], "+
				"$11::bigint[], $12::smallint[])", m, stdsql.MessageColumns),
			dupInsert: fmt.Sprintf("INSERT INTO %s (queue, idem_key, message_id, created_at) SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])", d),
			msgUpdate: fmt.Sprintf("UPDATE %s AS m SET delivery_count = v.dc, deliver_at = v.da FROM unnest($1::text[], $2::bigint[], $3::integer[], $4::bigint[]) AS v(q, i, dc, da) "+
				"WHERE m.queue = v.q AND m.id = v.i", m),
			bindingDelete: fmt.Sprintf("DELETE FROM %s WHERE (kind, name, target) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))", b),
			dupBefore:     fmt.Sprintf("DELETE FROM %s WHERE created_at < $1", d),
			msgValues:     msgValues,
			messagesTable: pgx.Identifier{strings.ToLower(m)}, // unquoted in the migrations: folded to lower case
			messageCols:   strings.Split(stdsql.MessageColumns, ", "),
		},
	}, nil
}

// Pool returns the driver's main pool (batches and reads; the lease statements have a
// pool of their own).
func (d *Driver) Pool() *pgxpool.Pool { return d.pool }

// Dialect implements sqlstore.Driver.
func (d *Driver) Dialect() string { return migrations.DialectPostgres }

// Tables implements sqlstore.Driver.
func (d *Driver) Tables() migrations.Tables { return d.t }

// Close implements sqlstore.Driver. It ends every LeaseWatch and waits for their
// goroutines, then for acquired connections to be released.
func (d *Driver) Close() error {
	d.watchMu.Lock()
	first := d.closed.CompareAndSwap(false, true)
	d.watchMu.Unlock()
	if first {
		d.cancel()
		d.watchers.Wait()
		d.leasePool.Close()
		d.pool.Close()
	}
	return nil
}

// Migrate implements sqlstore.Driver.
func (d *Driver) Migrate(ctx context.Context) error {
	if err := d.checkOpen("migrate"); err != nil {
		return err
	}
	db := stdlib.OpenDBFromPool(d.pool)
	// UpWithOptions closes db, which does not close the pool.
	if err := migrations.UpWithOptions(ctx, db, migrations.DialectPostgres, d.t, migrations.Options{Logger: d.logger}); err != nil {
		if errors.Is(err, migrations.ErrSchemaTooNew) {
			return err
		}
		return fmt.Errorf("postgres: migrate: %w", interpretError(err))
	}
	return nil
}

func (d *Driver) checkOpen(op string) error {
	if d.closed.Load() {
		return fmt.Errorf("postgres: %s: %w", op, sqlstore.ErrClosed)
	}
	return nil
}

func (d *Driver) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if d.closed.Load() && !errors.Is(err, sqlstore.ErrClosed) {
		err = fmt.Errorf("%w: %w", sqlstore.ErrClosed, err)
	}
	return fmt.Errorf("postgres: %s: %w", op, interpretError(err))
}

// EpochGet implements sqlstore.Driver.
func (d *Driver) EpochGet(ctx context.Context) (int64, error) {
	if err := d.checkOpen("epoch get"); err != nil {
		return 0, err
	}
	var e int64
	if err := d.pool.QueryRow(ctx, d.q.epochGet).Scan(&e); err != nil {
		return 0, d.wrap("epoch get", err)
	}
	return e, nil
}

// EpochBump implements sqlstore.Driver.
func (d *Driver) EpochBump(ctx context.Context) (int64, error) {
	if err := d.checkOpen("epoch bump"); err != nil {
		return 0, err
	}
	var e int64
	err := d.retry(ctx, func() error { return d.pool.QueryRow(ctx, d.q.epochBump).Scan(&e) })
	if err != nil {
		return 0, d.wrap("epoch bump", err)
	}
	return e, nil
}

// retry runs fn again after a deadlock or serialization failure.
func (d *Driver) retry(ctx context.Context, fn func() error) error {
	var err error
	for attempt := 1; attempt <= TxAttemptsDefault; attempt++ {
		err = fn()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		d.logger.Warn("postgres: transaction retried", "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt*attempt) * 5 * time.Millisecond):
		}
	}
	return err
}

// BatchCommit implements sqlstore.Driver.
func (d *Driver) BatchCommit(ctx context.Context, p *sqlstore.BatchCommitParams) error {
	if err := d.checkOpen("batch commit"); err != nil {
		return err
	}
	b := p.Batch
	if b == nil {
		b = &sqlstore.Batch{}
	}
	if err := stdsql.CheckSlot(p.Slot); err != nil {
		return fmt.Errorf("postgres: batch commit: %w", err)
	}
	err := d.retry(ctx, func() error { return d.batchCommit(ctx, p.Epoch, b, p.Slot) })
	if err != nil {
		if errors.Is(err, sqlstore.ErrFenced) {
			return fmt.Errorf("postgres: batch commit: %w", err)
		}
		return d.wrap("batch commit", err)
	}
	return nil
}

// BindingList implements sqlstore.Driver.
func (d *Driver) BindingList(ctx context.Context) ([]sqlstore.Binding, error) {
	if err := d.checkOpen("binding list"); err != nil {
		return nil, err
	}
	rows, err := d.pool.Query(ctx, d.q.bindingList)
	if err != nil {
		return nil, d.wrap("binding list", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (sqlstore.Binding, error) {
		var b sqlstore.Binding
		err := r.Scan(&b.Kind, &b.Name, &b.Target, &b.Config, &b.CreatedAt)
		return b, err
	})
	if err != nil {
		return nil, d.wrap("binding list", err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// MessageScan implements sqlstore.Driver. Limit <= 0 means ScanLimitDefault.
func (d *Driver) MessageScan(ctx context.Context, p *sqlstore.MessageScanParams) ([]sqlstore.Message, error) {
	// The operation's name is built only for an error: a scan is on the hot path.
	op := func() string { return "message scan of queue " + p.Queue }
	if d.closed.Load() {
		return nil, d.checkOpen(op())
	}
	limit := p.Limit
	if limit <= 0 {
		limit = ScanLimitDefault
	}
	query, args, err := d.r.Scan(p, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: %w", op(), err)
	}
	rows, err := d.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, d.wrap(op(), err)
	}
	defer rows.Close()
	out, err := stdsql.ScanMessages(rows, min(limit, 256))
	if err != nil {
		return nil, d.wrap(op(), err)
	}
	return out, nil
}

// MessagesByID implements sqlstore.Driver.
func (d *Driver) MessagesByID(ctx context.Context, queue string, ids []int64) ([]sqlstore.Message, error) {
	op := "messages by id of queue " + queue
	if err := d.checkOpen(op); err != nil {
		return nil, err
	}
	out, err := d.r.ByIDs(queue, ids, func(query string, args []any) ([]sqlstore.Message, error) {
		rows, err := d.pool.Query(ctx, query, args...)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		return stdsql.ScanMessages(rows, len(args)-1)
	})
	if err != nil {
		return nil, d.wrap(op, err)
	}
	return out, nil
}

// MessageCount implements sqlstore.Driver.
func (d *Driver) MessageCount(ctx context.Context, queue string) (int64, error) {
	op := "message count of queue " + queue
	if err := d.checkOpen(op); err != nil {
		return 0, err
	}
	var n int64
	if err := d.pool.QueryRow(ctx, d.q.count, queue).Scan(&n); err != nil {
		return 0, d.wrap(op, err)
	}
	return n, nil
}

// DuplicateGet implements sqlstore.Driver.
func (d *Driver) DuplicateGet(ctx context.Context, p *sqlstore.DuplicateGetParams) (int64, error) {
	if err := d.checkOpen("duplicate get"); err != nil {
		return 0, err
	}
	var id int64
	if err := d.pool.QueryRow(ctx, d.q.dupGet, p.Queue, p.Key).Scan(&id); err != nil {
		return 0, d.wrap("duplicate get", err)
	}
	return id, nil
}

// interpretError maps pgx errors to the sqlstore sentinels, keeping the original in
// the chain.
func interpretError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sqlstore.ErrNotFound), errors.Is(err, sqlstore.ErrConflict),
		errors.Is(err, sqlstore.ErrClosed), errors.Is(err, sqlstore.ErrFenced),
		errors.Is(err, sqlstore.ErrLeaseHeld), errors.Is(err, sqlstore.ErrLeaseLost):
		return err
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("%w: %w", sqlstore.ErrNotFound, err)
	case errors.Is(err, puddle.ErrClosedPool), strings.Contains(err.Error(), "closed pool"):
		return fmt.Errorf("%w: %w", sqlstore.ErrClosed, err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation
		return fmt.Errorf("%w: %w", sqlstore.ErrConflict, err)
	}
	return err
}

// retryable reports a deadlock or serialization failure, after which the whole
// transaction may be tried again.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001")
}
