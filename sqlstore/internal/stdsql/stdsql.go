// Package stdsql holds the parts of the SQLite and MySQL drivers that are the same SQL
// over database/sql with "?" placeholders. Each driver package supplies a Dialect (the
// statements that differ, its error mapping and its retry rule) and keeps its own
// Config, Open and documentation. The PostgreSQL driver speaks pgx natively and uses
// only the dialect-neutral lease helpers of lease.go (the lease-state query, parameter
// checks, assembling a LeaseState).
//
// Lease statements (LeaseStore, lease.go) run on a third pool given to New, each as one
// transaction that locks the state row first (Dialect.LockRow), then the live-lock row,
// then the epoch row, with every time comparison written in SQL against Dialect.NowUS.
package stdsql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
)

// ScanLimitDefault is the number of rows MessageScan returns when Limit <= 0.
const ScanLimitDefault = 1000

// Dialect is what differs between the databases served by Core.
type Dialect struct {
	// Name is "sqlite" or "mysql".
	Name string
	// FenceLock is appended to the fence read inside a write transaction (" LOCK IN
	// SHARE MODE" on MySQL; "" on SQLite, whose BEGIN IMMEDIATE already holds the
	// database write lock).
	FenceLock string
	// BindingUpsertSuffix follows the VALUES of a binding put and turns it into an
	// insert-or-replace (ON CONFLICT ... DO UPDATE / ON DUPLICATE KEY UPDATE).
	BindingUpsertSuffix string
	// RowIn renders n pairs for "(queue, id) IN (...)": "VALUES (?,?),..." on SQLite,
	// "(?,?),..." on MySQL.
	RowIn func(n int) string
	// MaxPlaceholders bounds the placeholders of one statement.
	MaxPlaceholders int
	// MaxStatementBytes bounds the payload bytes of one multi-row insert.
	MaxStatementBytes int
	// UpdateJoin, when true, applies message updates in chunks with one
	// UPDATE ... JOIN (SELECT ... UNION ALL ...) statement (MySQL); otherwise one
	// prepared UPDATE per row (SQLite, where a statement is a function call).
	UpdateJoin bool
	// InterpretError maps a driver error to the sqlstore sentinels; it returns err
	// itself when none fits. It is called with non-nil errors only.
	InterpretError func(err error) error
	// Retryable reports whether a whole transaction may be retried after err
	// (deadlock, lock wait timeout, busy).
	Retryable func(err error) bool
	// TxAttempts is how many times a retryable transaction is tried.
	TxAttempts int

	// NowUS is an SQL expression for the database clock in Unix microseconds, the only
	// clock the lease statements use.
	NowUS string
	// LockRow is appended to the read of the state row that starts a lease transaction
	// (" FOR UPDATE" on MySQL; "" on SQLite, whose lease connection begins IMMEDIATE).
	LockRow string
	// MemberUpsertSuffix follows the VALUES of a member-row insert and turns it into an
	// insert-or-refresh of state, holder_id, holder_name, expires_us and updated_us.
	MemberUpsertSuffix string
	// LeaseTxOptions are the options of every lease transaction (nil for the default).
	LeaseTxOptions *sql.TxOptions
	// SerializeWrites makes the write transactions of one process (batches and lease
	// statements) queue on a Go mutex before they ask the database for its write lock
	// (SQLite): the database's busy handler polls and is not fair, so under a steady
	// stream of batches a lease renewal could lose every race for the lock until its
	// deadline. The mutex hands the lock over in arrival order.
	SerializeWrites bool
}

// Core implements sqlstore.Driver over a write pool, a read pool and a lease pool.
type Core struct {
	d      Dialect
	write  *sql.DB
	read   *sql.DB
	lease  *sql.DB
	lq     leaseQueries
	t      migrations.Tables
	q      queries
	closed atomic.Bool
	// writeMu queues the write transactions of this process when
	// Dialect.SerializeWrites is set.
	writeMu sync.Mutex
	// Migrate is called by Driver.Migrate; the driver package sets it.
	migrate func(ctx context.Context) error
}

type queries struct {
	fence, epochGet, epochBump, bindingList, scan, count, dupGet          string
	bindingPut, msgUpdate, purge, bindingDelete, dupBefore, msgInsertHead string
	dupInsertHead, msgDeleteHead, updateJoinHead                          string
}

// New returns a Core. write should be limited as the dialect needs (one connection for
// SQLite); read may be the same pool. lease is a small pool of its own for the lease
// statements (LeaseStore), so that they never queue behind batches for a connection.
// Close closes all three.
func New(d Dialect, write, read, lease *sql.DB, t migrations.Tables, migrate func(ctx context.Context) error) *Core {
	b, m, n, dup := t.Bindings, t.Messages, t.NodeManager, t.DuplicateIDs
	return &Core{
		d: d, write: write, read: read, lease: lease, t: t, migrate: migrate,
		lq: newLeaseQueries(d, n),
		q: queries{
			fence:          fmt.Sprintf("SELECT epoch FROM %s WHERE id = %d%s", n, sqlstore.NodeRowFence, d.FenceLock),
			epochGet:       fmt.Sprintf("SELECT epoch FROM %s WHERE id = %d", n, sqlstore.NodeRowFence),
			epochBump:      fmt.Sprintf("UPDATE %s SET epoch = epoch + 1 WHERE id = %d", n, sqlstore.NodeRowFence),
			bindingList:    fmt.Sprintf("SELECT kind, name, target, config, created_at FROM %s ORDER BY kind, name, target", b),
			scan:           fmt.Sprintf("SELECT queue, id, priority, deliver_at, expires_at, delivery_count, created_at, content_type, headers, body FROM %s WHERE queue = ? AND id > ? ORDER BY id LIMIT ?", m),
			count:          fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE queue = ?", m),
			dupGet:         fmt.Sprintf("SELECT message_id FROM %s WHERE queue = ? AND idem_key = ?", dup),
			bindingPut:     fmt.Sprintf("INSERT INTO %s (kind, name, target, config, created_at) VALUES (?, ?, ?, ?, ?)%s", b, d.BindingUpsertSuffix),
			msgUpdate:      fmt.Sprintf("UPDATE %s SET delivery_count = ?, deliver_at = ? WHERE queue = ? AND id = ?", m),
			purge:          fmt.Sprintf("DELETE FROM %s WHERE queue = ?", m),
			bindingDelete:  fmt.Sprintf("DELETE FROM %s WHERE kind = ? AND name = ? AND target = ?", b),
			dupBefore:      fmt.Sprintf("DELETE FROM %s WHERE created_at < ?", dup),
			msgInsertHead:  fmt.Sprintf("INSERT INTO %s (queue, id, priority, deliver_at, expires_at, delivery_count, created_at, content_type, headers, body) VALUES ", m),
			dupInsertHead:  fmt.Sprintf("INSERT INTO %s (queue, idem_key, message_id, created_at) VALUES ", dup),
			msgDeleteHead:  fmt.Sprintf("DELETE FROM %s WHERE (queue, id) IN (", m),
			updateJoinHead: fmt.Sprintf("UPDATE %s AS m JOIN (", m),
		},
	}
}

// Dialect implements sqlstore.Driver.
func (c *Core) Dialect() string { return c.d.Name }

// Tables implements sqlstore.Driver.
func (c *Core) Tables() migrations.Tables { return c.t }

// Migrate implements sqlstore.Driver.
func (c *Core) Migrate(ctx context.Context) error {
	if c.closed.Load() {
		return fmt.Errorf("%s: migrate: %w", c.d.Name, sqlstore.ErrClosed)
	}
	return c.migrate(ctx)
}

// Close implements sqlstore.Driver.
func (c *Core) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := c.write.Close()
	if c.read != c.write {
		err = errors.Join(err, c.read.Close())
	}
	if c.lease != nil && c.lease != c.write && c.lease != c.read {
		err = errors.Join(err, c.lease.Close())
	}
	if err != nil {
		return fmt.Errorf("%s: close: %w", c.d.Name, err)
	}
	return nil
}

// wrap maps err and adds context. It returns nil for nil.
func (c *Core) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if c.closed.Load() && !errors.Is(err, sqlstore.ErrClosed) {
		err = fmt.Errorf("%w: %w", sqlstore.ErrClosed, err)
	}
	mapped := c.d.InterpretError(err)
	return fmt.Errorf("%s: %s: %w", c.d.Name, op, mapped)
}

func (c *Core) checkOpen(op string) error {
	if c.closed.Load() {
		return fmt.Errorf("%s: %s: %w", c.d.Name, op, sqlstore.ErrClosed)
	}
	return nil
}

// EpochGet implements sqlstore.Driver.
func (c *Core) EpochGet(ctx context.Context) (int64, error) {
	if err := c.checkOpen("epoch get"); err != nil {
		return 0, err
	}
	var e int64
	if err := c.read.QueryRowContext(ctx, c.q.epochGet).Scan(&e); err != nil {
		return 0, c.wrap("epoch get", err)
	}
	return e, nil
}

// EpochBump implements sqlstore.Driver.
func (c *Core) EpochBump(ctx context.Context) (int64, error) {
	if err := c.checkOpen("epoch bump"); err != nil {
		return 0, err
	}
	var e int64
	err := c.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, c.q.epochBump)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err == nil && n == 0 {
			return sql.ErrNoRows
		}
		return tx.QueryRowContext(ctx, c.q.epochGet).Scan(&e)
	})
	if err != nil {
		return 0, c.wrap("epoch bump", err)
	}
	return e, nil
}

// inTx runs fn in a write transaction, retrying the whole transaction when the dialect
// says the error is transient.
func (c *Core) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	attempts := max(c.d.TxAttempts, 1)
	var err error
	for attempt := 1; attempt <= attempts; attempt++ {
		err = c.tryTx(ctx, fn)
		if err == nil || attempt == attempts || !c.d.Retryable(err) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt*attempt) * 5 * time.Millisecond):
		}
	}
	return err
}

// lockWrites takes the process-wide write mutex when the dialect asks for it and
// returns its release.
func (c *Core) lockWrites() func() {
	if !c.d.SerializeWrites {
		return func() {}
	}
	c.writeMu.Lock()
	return c.writeMu.Unlock
}

func (c *Core) tryTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	defer c.lockWrites()()
	tx, err := c.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		if rbErr := tx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) && !errors.Is(err, sqlstore.ErrFenced) {
			return errors.Join(err, fmt.Errorf("rollback: %w", rbErr))
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// BatchCommit implements sqlstore.Driver.
func (c *Core) BatchCommit(ctx context.Context, p *sqlstore.BatchCommitParams) error {
	if err := c.checkOpen("batch commit"); err != nil {
		return err
	}
	b := p.Batch
	if b == nil {
		b = &sqlstore.Batch{}
	}
	err := c.inTx(ctx, func(tx *sql.Tx) error {
		var epoch int64
		if err := tx.QueryRowContext(ctx, c.q.fence).Scan(&epoch); err != nil {
			return fmt.Errorf("read fencing epoch: %w", err)
		}
		if epoch != p.Epoch {
			return fmt.Errorf("epoch in store is %d, writer holds %d: %w", epoch, p.Epoch, sqlstore.ErrFenced)
		}
		return c.apply(ctx, tx, b)
	})
	if err != nil {
		if errors.Is(err, sqlstore.ErrFenced) {
			return fmt.Errorf("%s: batch commit: %w", c.d.Name, err)
		}
		return c.wrap("batch commit", err)
	}
	return nil
}

func (c *Core) apply(ctx context.Context, tx *sql.Tx, b *sqlstore.Batch) error {
	if len(b.BindingPuts) > 0 {
		if err := eachPrepared(ctx, tx, c.q.bindingPut, len(b.BindingPuts), func(i int) []any {
			r := &b.BindingPuts[i]
			cfg := r.Config
			if cfg == "" {
				cfg = "{}"
			}
			return []any{r.Kind, r.Name, r.Target, cfg, r.CreatedAt}
		}); err != nil {
			return fmt.Errorf("put bindings: %w", err)
		}
	}
	if err := c.insertMessages(ctx, tx, b.MessageInserts); err != nil {
		return fmt.Errorf("insert messages: %w", err)
	}
	if err := c.insertDuplicates(ctx, tx, b.DuplicateInserts); err != nil {
		return fmt.Errorf("insert duplicate ids: %w", err)
	}
	if err := c.updateMessages(ctx, tx, b.MessageUpdates); err != nil {
		return fmt.Errorf("update messages: %w", err)
	}
	if err := c.deleteMessages(ctx, tx, b.MessageDeletes); err != nil {
		return fmt.Errorf("delete messages: %w", err)
	}
	for _, q := range b.QueuePurges {
		if _, err := tx.ExecContext(ctx, c.q.purge, q); err != nil {
			return fmt.Errorf("purge queue %q: %w", q, err)
		}
	}
	if len(b.BindingDeletes) > 0 {
		if err := eachPrepared(ctx, tx, c.q.bindingDelete, len(b.BindingDeletes), func(i int) []any {
			k := &b.BindingDeletes[i]
			return []any{k.Kind, k.Name, k.Target}
		}); err != nil {
			return fmt.Errorf("delete bindings: %w", err)
		}
	}
	if b.DuplicatesBefore > 0 {
		if _, err := tx.ExecContext(ctx, c.q.dupBefore, b.DuplicatesBefore); err != nil {
			return fmt.Errorf("expire duplicate ids: %w", err)
		}
	}
	return nil
}

// eachPrepared runs one prepared statement n times.
func eachPrepared(ctx context.Context, tx *sql.Tx, query string, n int, args func(i int) []any) error {
	if n == 1 {
		_, err := tx.ExecContext(ctx, query, args(0)...)
		return err
	}
	st, err := tx.PrepareContext(ctx, query)
	if err != nil {
		return err
	}
	defer st.Close()
	for i := 0; i < n; i++ {
		if _, err := st.ExecContext(ctx, args(i)...); err != nil {
			return err
		}
	}
	return nil
}

// chunks splits n rows of cols placeholders each into runs that respect the
// placeholder and payload bounds; size(i) is the payload bytes of row i.
func (c *Core) chunks(n, cols int, size func(i int) int) [][2]int {
	maxRows := max(c.d.MaxPlaceholders/cols, 1)
	var out [][2]int
	start, bytes := 0, 0
	for i := 0; i < n; i++ {
		s := size(i)
		if i > start && (i-start >= maxRows || bytes+s > c.d.MaxStatementBytes) {
			out = append(out, [2]int{start, i})
			start, bytes = i, 0
		}
		bytes += s
	}
	if n > start {
		out = append(out, [2]int{start, n})
	}
	return out
}

// valuesList renders n groups of cols placeholders: "(?,?),(?,?)".
func valuesList(n, cols int) string {
	group := "(" + strings.TrimSuffix(strings.Repeat("?,", cols), ",") + ")"
	var sb strings.Builder
	sb.Grow(n * (len(group) + 1))
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(group)
	}
	return sb.String()
}

func (c *Core) insertMessages(ctx context.Context, tx *sql.Tx, ms []sqlstore.Message) error {
	const cols = 10
	for _, ch := range c.chunks(len(ms), cols, func(i int) int { return len(ms[i].Body) + len(ms[i].ContentType) + 64 }) {
		rows := ms[ch[0]:ch[1]]
		args := make([]any, 0, len(rows)*cols)
		for i := range rows {
			m := &rows[i]
			body := m.Body
			if body == nil {
				body = []byte{}
			}
			args = append(args, m.Queue, m.ID, m.Priority, m.DeliverAt, m.ExpiresAt, m.DeliveryCount,
				m.CreatedAt, m.ContentType, sqlstore.EncodeHeaders(m.Headers), body)
		}
		if _, err := tx.ExecContext(ctx, c.q.msgInsertHead+valuesList(len(rows), cols), args...); err != nil {
			return err
		}
	}
	return nil
}

func (c *Core) insertDuplicates(ctx context.Context, tx *sql.Tx, ds []sqlstore.Duplicate) error {
	const cols = 4
	for _, ch := range c.chunks(len(ds), cols, func(int) int { return 64 }) {
		rows := ds[ch[0]:ch[1]]
		args := make([]any, 0, len(rows)*cols)
		for i := range rows {
			d := &rows[i]
			args = append(args, d.Queue, d.Key, d.MessageID, d.CreatedAt)
		}
		if _, err := tx.ExecContext(ctx, c.q.dupInsertHead+valuesList(len(rows), cols), args...); err != nil {
			return err
		}
	}
	return nil
}

func (c *Core) updateMessages(ctx context.Context, tx *sql.Tx, us []sqlstore.MessageUpdate) error {
	if len(us) == 0 {
		return nil
	}
	if !c.d.UpdateJoin || len(us) == 1 {
		return eachPrepared(ctx, tx, c.q.msgUpdate, len(us), func(i int) []any {
			u := &us[i]
			return []any{u.DeliveryCount, u.DeliverAt, u.Queue, u.ID}
		})
	}
	// One UPDATE ... JOIN changes each row once, with any one of several matching
	// derived rows: keep the last update of each message.
	us = LastByKey(us, MessageUpdateKey)
	const cols = 4
	for _, ch := range c.chunks(len(us), cols, func(int) int { return 32 }) {
		rows := us[ch[0]:ch[1]]
		var sb strings.Builder
		sb.WriteString(c.q.updateJoinHead)
		args := make([]any, 0, len(rows)*cols)
		for i := range rows {
			if i == 0 {
				sb.WriteString("SELECT ? AS q, ? AS i, ? AS dc, ? AS da")
			} else {
				sb.WriteString(" UNION ALL SELECT ?, ?, ?, ?")
			}
			u := &rows[i]
			args = append(args, u.Queue, u.ID, u.DeliveryCount, u.DeliverAt)
		}
		sb.WriteString(") AS v ON m.queue = v.q AND m.id = v.i SET m.delivery_count = v.dc, m.deliver_at = v.da")
		if _, err := tx.ExecContext(ctx, sb.String(), args...); err != nil {
			return err
		}
	}
	return nil
}

// LastByKey keeps the last element of each key, in the order keys were first seen. A
// merged batch may write one key twice (two puts of a binding, two updates of a
// message); the later write must win, and a single multi-row statement would apply
// only one of them, not necessarily the last.
func LastByKey[T any, K comparable](xs []T, key func(T) K) []T {
	if len(xs) < 2 {
		return xs
	}
	idx := make(map[K]int, len(xs))
	out := make([]T, 0, len(xs))
	for _, x := range xs {
		k := key(x)
		if i, ok := idx[k]; ok {
			out[i] = x
			continue
		}
		idx[k] = len(out)
		out = append(out, x)
	}
	return out
}

// MessageUpdateKey is the key of a message update, for LastByKey.
func MessageUpdateKey(u sqlstore.MessageUpdate) sqlstore.MessageKey {
	return sqlstore.MessageKey{Queue: u.Queue, ID: u.ID}
}

// BindingPutKey is the key of a binding put, for LastByKey.
func BindingPutKey(b sqlstore.Binding) sqlstore.BindingKey {
	return sqlstore.BindingKey{Kind: b.Kind, Name: b.Name, Target: b.Target}
}

func (c *Core) deleteMessages(ctx context.Context, tx *sql.Tx, ks []sqlstore.MessageKey) error {
	const cols = 2
	for _, ch := range c.chunks(len(ks), cols, func(int) int { return 32 }) {
		rows := ks[ch[0]:ch[1]]
		args := make([]any, 0, len(rows)*cols)
		for i := range rows {
			args = append(args, rows[i].Queue, rows[i].ID)
		}
		if _, err := tx.ExecContext(ctx, c.q.msgDeleteHead+c.d.RowIn(len(rows))+")", args...); err != nil {
			return err
		}
	}
	return nil
}

// ValuesList is valuesList for the dialects' RowIn functions.
func ValuesList(n, cols int) string { return valuesList(n, cols) }

// BindingList implements sqlstore.Driver.
func (c *Core) BindingList(ctx context.Context) ([]sqlstore.Binding, error) {
	if err := c.checkOpen("binding list"); err != nil {
		return nil, err
	}
	rows, err := c.read.QueryContext(ctx, c.q.bindingList)
	if err != nil {
		return nil, c.wrap("binding list", err)
	}
	defer rows.Close()
	var out []sqlstore.Binding
	for rows.Next() {
		var b sqlstore.Binding
		if err := rows.Scan(&b.Kind, &b.Name, &b.Target, &b.Config, &b.CreatedAt); err != nil {
			return nil, c.wrap("binding list", err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, c.wrap("binding list", err)
	}
	return out, nil
}

// MessageScan implements sqlstore.Driver. Limit <= 0 means ScanLimitDefault.
func (c *Core) MessageScan(ctx context.Context, p *sqlstore.MessageScanParams) ([]sqlstore.Message, error) {
	op := "message scan of queue " + p.Queue
	if err := c.checkOpen(op); err != nil {
		return nil, err
	}
	limit := p.Limit
	if limit <= 0 {
		limit = ScanLimitDefault
	}
	rows, err := c.read.QueryContext(ctx, c.q.scan, p.Queue, p.AfterID, limit)
	if err != nil {
		return nil, c.wrap(op, err)
	}
	defer rows.Close()
	out, err := ScanMessages(rows, min(limit, 256))
	if err != nil {
		return nil, c.wrap(op, err)
	}
	return out, nil
}

// Rows is what ScanMessages reads: *sql.Rows and pgx.Rows both have it.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// ScanMessages reads message rows selected in the column order of the scan statements
// (queue, id, priority, deliver_at, expires_at, delivery_count, created_at,
// content_type, headers, body). Every dialect uses it, so all return the same values:
// a non-nil empty body for an empty one, and decoded headers.
func ScanMessages(rows Rows, capHint int) ([]sqlstore.Message, error) {
	out := make([]sqlstore.Message, 0, capHint)
	for rows.Next() {
		var m sqlstore.Message
		var headers string
		if err := rows.Scan(&m.Queue, &m.ID, &m.Priority, &m.DeliverAt, &m.ExpiresAt, &m.DeliveryCount,
			&m.CreatedAt, &m.ContentType, &headers, &m.Body); err != nil {
			return nil, err
		}
		if m.Body == nil {
			m.Body = []byte{}
		}
		var err error
		if m.Headers, err = sqlstore.DecodeHeaders(headers); err != nil {
			return nil, fmt.Errorf("message %d: %w", m.ID, err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// MessageCount implements sqlstore.Driver.
func (c *Core) MessageCount(ctx context.Context, queue string) (int64, error) {
	op := "message count of queue " + queue
	if err := c.checkOpen(op); err != nil {
		return 0, err
	}
	var n int64
	if err := c.read.QueryRowContext(ctx, c.q.count, queue).Scan(&n); err != nil {
		return 0, c.wrap(op, err)
	}
	return n, nil
}

// DuplicateGet implements sqlstore.Driver.
func (c *Core) DuplicateGet(ctx context.Context, p *sqlstore.DuplicateGetParams) (int64, error) {
	op := "duplicate get"
	if err := c.checkOpen(op); err != nil {
		return 0, err
	}
	var id int64
	if err := c.read.QueryRowContext(ctx, c.q.dupGet, p.Queue, p.Key).Scan(&id); err != nil {
		return 0, c.wrap(op, err)
	}
	return id, nil
}

var _ sqlstore.Driver = (*Core)(nil)
