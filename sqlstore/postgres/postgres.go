// Package postgres is the PostgreSQL dialect of sqlstore, speaking pgx/v5 natively
// through a pgxpool.
//
// A BatchCommit is one transaction: the fence read (SELECT epoch ... FOR SHARE), then
// the message rows by COPY when there are many (a multi-row INSERT from unnest arrays
// otherwise), then every other part as one statement each, all sent in one pipelined
// pgx.Batch so a commit costs a handful of round trips whatever its size. Statements
// are prepared and cached per connection by pgx.
//
// Fencing: FOR SHARE on the epoch row conflicts with the row lock EpochBump's UPDATE
// takes. A bump waits for every batch holding the share lock; a batch that asks after
// the bump re-reads the row once the bump commits (READ COMMITTED re-evaluates a locked
// row) and sees the new epoch.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/jackc/puddle/v2"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
)

// Defaults.
const (
	// CopyThreshold is the number of message rows above which inserts use COPY.
	CopyThreshold = 8
	// ScanLimitDefault is the number of rows MessageScan returns when Limit <= 0.
	ScanLimitDefault = 1000
	// TxAttemptsDefault is how often a transaction that hit a deadlock or a
	// serialization failure is tried.
	TxAttemptsDefault = 3
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
	// MaxConns bounds the pool; 0 means pgxpool's default (or pool_max_conns in DSN).
	MaxConns int
}

// Driver is the PostgreSQL sqlstore.Driver.
type Driver struct {
	pool   *pgxpool.Pool
	t      migrations.Tables
	logger *slog.Logger
	q      queries
	closed atomic.Bool
}

var _ sqlstore.Driver = (*Driver)(nil)

type queries struct {
	fence, epochGet, epochBump, bindingList, scan, count, dupGet                 string
	bindingPut, msgInsert, dupInsert, msgUpdate, msgDelete, purge, bindingDelete string
	dupBefore                                                                    string
	messageCols                                                                  []string
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
	if cfg.MaxConns > 0 {
		pcfg.MaxConns = int32(cfg.MaxConns)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: %w", interpretError(err))
	}
	b, m, n, d := t.Bindings, t.Messages, t.NodeManager, t.DuplicateIDs
	fence := sqlstore.NodeRowFence
	return &Driver{
		pool: pool, t: t, logger: cfg.Logger,
		q: queries{
			fence:       fmt.Sprintf("SELECT epoch FROM %s WHERE id = %d FOR SHARE", n, fence),
			epochGet:    fmt.Sprintf("SELECT epoch FROM %s WHERE id = %d", n, fence),
			epochBump:   fmt.Sprintf("UPDATE %s SET epoch = epoch + 1 WHERE id = %d RETURNING epoch", n, fence),
			bindingList: fmt.Sprintf("SELECT kind, name, target, config, created_at FROM %s ORDER BY kind, name, target", b),
			scan:        fmt.Sprintf("SELECT queue, id, priority, deliver_at, expires_at, delivery_count, created_at, content_type, headers, body FROM %s WHERE queue = $1 AND id > $2 ORDER BY id LIMIT $3", m),
			count:       fmt.Sprintf("SELECT count(*) FROM %s WHERE queue = $1", m),
			dupGet:      fmt.Sprintf("SELECT message_id FROM %s WHERE queue = $1 AND idem_key = $2", d),
			bindingPut: fmt.Sprintf("INSERT INTO %s (kind, name, target, config, created_at) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) "+
				"ON CONFLICT (kind, name, target) DO UPDATE SET config = EXCLUDED.config, created_at = EXCLUDED.created_at", b),
			msgInsert: fmt.Sprintf("INSERT INTO %s (queue, id, priority, deliver_at, expires_at, delivery_count, created_at, content_type, headers, body) "+
				"SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::bigint[], $5::bigint[], $6::integer[], $7::bigint[], $8::text[], $9::text[], $10::bytea[])", m),
			dupInsert: fmt.Sprintf("INSERT INTO %s (queue, idem_key, message_id, created_at) SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])", d),
			msgUpdate: fmt.Sprintf("UPDATE %s AS m SET delivery_count = v.dc, deliver_at = v.da FROM unnest($1::text[], $2::bigint[], $3::integer[], $4::bigint[]) AS v(q, i, dc, da) "+
				"WHERE m.queue = v.q AND m.id = v.i", m),
			msgDelete:     fmt.Sprintf("DELETE FROM %s WHERE (queue, id) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))", m),
			purge:         fmt.Sprintf("DELETE FROM %s WHERE queue = ANY($1::text[])", m),
			bindingDelete: fmt.Sprintf("DELETE FROM %s WHERE (kind, name, target) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))", b),
			dupBefore:     fmt.Sprintf("DELETE FROM %s WHERE created_at < $1", d),
			messageCols:   []string{"queue", "id", "priority", "deliver_at", "expires_at", "delivery_count", "created_at", "content_type", "headers", "body"},
		},
	}, nil
}

// Pool returns the driver's pool, for the node manager's statements.
func (d *Driver) Pool() *pgxpool.Pool { return d.pool }

// Dialect implements sqlstore.Driver.
func (d *Driver) Dialect() string { return migrations.DialectPostgres }

// Tables implements sqlstore.Driver.
func (d *Driver) Tables() migrations.Tables { return d.t }

// Close implements sqlstore.Driver. It waits for acquired connections to be released.
func (d *Driver) Close() error {
	if d.closed.CompareAndSwap(false, true) {
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
	err := d.retry(ctx, func() error { return d.batchCommit(ctx, p.Epoch, b) })
	if err != nil {
		if errors.Is(err, sqlstore.ErrFenced) {
			return fmt.Errorf("postgres: batch commit: %w", err)
		}
		return d.wrap("batch commit", err)
	}
	return nil
}

func (d *Driver) batchCommit(ctx context.Context, epoch int64, b *sqlstore.Batch) (err error) {
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	var cur int64
	if err := tx.QueryRow(ctx, d.q.fence).Scan(&cur); err != nil {
		return fmt.Errorf("read fencing epoch: %w", err)
	}
	if cur != epoch {
		return fmt.Errorf("epoch in store is %d, writer holds %d: %w", cur, epoch, sqlstore.ErrFenced)
	}

	// Messages by COPY first: no other part of a batch touches them before the
	// inserts, and bindings and duplicate ids live in other tables, so this keeps the
	// documented order.
	if len(b.MessageInserts) > CopyThreshold {
		rows := b.MessageInserts
		_, err := tx.CopyFrom(ctx, pgx.Identifier{d.t.Messages}, d.q.messageCols, pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
			m := &rows[i]
			return []any{m.Queue, m.ID, m.Priority, m.DeliverAt, m.ExpiresAt, m.DeliveryCount, m.CreatedAt,
				m.ContentType, sqlstore.EncodeHeaders(m.Headers), nonNil(m.Body)}, nil
		}))
		if err != nil {
			return fmt.Errorf("copy messages: %w", err)
		}
	}

	var batch pgx.Batch
	var what []string
	add := func(name, sql string, args ...any) {
		batch.Queue(sql, args...)
		what = append(what, name)
	}
	if len(b.BindingPuts) > 0 {
		puts := lastBindingPuts(b.BindingPuts)
		var kind, name, target, config []string
		var created []int64
		for i := range puts {
			r := &puts[i]
			cfg := r.Config
			if cfg == "" {
				cfg = "{}"
			}
			kind, name, target, config = append(kind, r.Kind), append(name, r.Name), append(target, r.Target), append(config, cfg)
			created = append(created, r.CreatedAt)
		}
		add("put bindings", d.q.bindingPut, kind, name, target, config, created)
	}
	if n := len(b.MessageInserts); n > 0 && n <= CopyThreshold {
		queue, ctype, headers := make([]string, n), make([]string, n), make([]string, n)
		id, deliverAt, expiresAt, createdAt := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		prio, dc, body := make([]int16, n), make([]int32, n), make([][]byte, n)
		for i := range b.MessageInserts {
			m := &b.MessageInserts[i]
			queue[i], id[i], prio[i], deliverAt[i], expiresAt[i] = m.Queue, m.ID, m.Priority, m.DeliverAt, m.ExpiresAt
			dc[i], createdAt[i], ctype[i], headers[i], body[i] = m.DeliveryCount, m.CreatedAt, m.ContentType, sqlstore.EncodeHeaders(m.Headers), nonNil(m.Body)
		}
		add("insert messages", d.q.msgInsert, queue, id, prio, deliverAt, expiresAt, dc, createdAt, ctype, headers, body)
	}
	if n := len(b.DuplicateInserts); n > 0 {
		queue, key, id, created := make([]string, n), make([]string, n), make([]int64, n), make([]int64, n)
		for i := range b.DuplicateInserts {
			r := &b.DuplicateInserts[i]
			queue[i], key[i], id[i], created[i] = r.Queue, r.Key, r.MessageID, r.CreatedAt
		}
		add("insert duplicate ids", d.q.dupInsert, queue, key, id, created)
	}
	if len(b.MessageUpdates) > 0 {
		ups := lastUpdates(b.MessageUpdates)
		n := len(ups)
		queue, id, dc, da := make([]string, n), make([]int64, n), make([]int32, n), make([]int64, n)
		for i := range ups {
			queue[i], id[i], dc[i], da[i] = ups[i].Queue, ups[i].ID, ups[i].DeliveryCount, ups[i].DeliverAt
		}
		add("update messages", d.q.msgUpdate, queue, id, dc, da)
	}
	if n := len(b.MessageDeletes); n > 0 {
		queue, id := make([]string, n), make([]int64, n)
		for i, k := range b.MessageDeletes {
			queue[i], id[i] = k.Queue, k.ID
		}
		add("delete messages", d.q.msgDelete, queue, id)
	}
	if len(b.QueuePurges) > 0 {
		add("purge queues", d.q.purge, b.QueuePurges)
	}
	if n := len(b.BindingDeletes); n > 0 {
		kind, name, target := make([]string, n), make([]string, n), make([]string, n)
		for i, k := range b.BindingDeletes {
			kind[i], name[i], target[i] = k.Kind, k.Name, k.Target
		}
		add("delete bindings", d.q.bindingDelete, kind, name, target)
	}
	if b.DuplicatesBefore > 0 {
		add("expire duplicate ids", d.q.dupBefore, b.DuplicatesBefore)
	}
	if batch.Len() > 0 {
		res := tx.SendBatch(ctx, &batch)
		for _, name := range what {
			if _, err := res.Exec(); err != nil {
				_ = res.Close()
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		if err := res.Close(); err != nil {
			return fmt.Errorf("batch: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// lastBindingPuts keeps the last put of each key (a merged batch may put one key
// twice; ON CONFLICT DO UPDATE may not touch a row twice in one statement).
func lastBindingPuts(puts []sqlstore.Binding) []sqlstore.Binding {
	if len(puts) < 2 {
		return puts
	}
	idx := make(map[sqlstore.BindingKey]int, len(puts))
	out := make([]sqlstore.Binding, 0, len(puts))
	for _, p := range puts {
		k := sqlstore.BindingKey{Kind: p.Kind, Name: p.Name, Target: p.Target}
		if i, ok := idx[k]; ok {
			out[i] = p
			continue
		}
		idx[k] = len(out)
		out = append(out, p)
	}
	return out
}

// lastUpdates keeps the last update of each message (UPDATE ... FROM applies only one
// of several matching rows, and not necessarily the last).
func lastUpdates(ups []sqlstore.MessageUpdate) []sqlstore.MessageUpdate {
	if len(ups) < 2 {
		return ups
	}
	idx := make(map[sqlstore.MessageKey]int, len(ups))
	out := make([]sqlstore.MessageUpdate, 0, len(ups))
	for _, u := range ups {
		k := sqlstore.MessageKey{Queue: u.Queue, ID: u.ID}
		if i, ok := idx[k]; ok {
			out[i] = u
			continue
		}
		idx[k] = len(out)
		out = append(out, u)
	}
	return out
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
	op := "message scan of queue " + p.Queue
	if err := d.checkOpen(op); err != nil {
		return nil, err
	}
	limit := p.Limit
	if limit <= 0 {
		limit = ScanLimitDefault
	}
	rows, err := d.pool.Query(ctx, d.q.scan, p.Queue, p.AfterID, limit)
	if err != nil {
		return nil, d.wrap(op, err)
	}
	defer rows.Close()
	out := make([]sqlstore.Message, 0, min(limit, 256))
	for rows.Next() {
		var m sqlstore.Message
		var headers string
		if err := rows.Scan(&m.Queue, &m.ID, &m.Priority, &m.DeliverAt, &m.ExpiresAt, &m.DeliveryCount,
			&m.CreatedAt, &m.ContentType, &headers, &m.Body); err != nil {
			return nil, d.wrap(op, err)
		}
		m.Body = nonNil(m.Body)
		if m.Headers, err = sqlstore.DecodeHeaders(headers); err != nil {
			return nil, fmt.Errorf("postgres: %s: message %d: %w", op, m.ID, err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
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
		errors.Is(err, sqlstore.ErrClosed), errors.Is(err, sqlstore.ErrFenced):
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
