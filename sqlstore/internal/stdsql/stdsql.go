// Package stdsql holds the parts of the SQLite and MySQL drivers that are the same SQL
// over database/sql with "?" placeholders. Each driver package supplies a Dialect (the
// statements that differ, its error mapping and its retry rule) and keeps its own
// Config, Open and documentation. The PostgreSQL driver speaks pgx natively and uses
// only the dialect-neutral helpers: those of lease.go (the lease-state query, parameter
// checks, assembling a LeaseState), the row readers (ScanMessages and friends) and
// statements.go.
//
// statements.go holds what all three dialects share of schema v2, the PostgreSQL driver
// included: the read statements (lane scans, page and chunk scans, the counter list),
// rendered with each dialect's placeholders, and the counter and reference bookkeeping
// of a batch's inserts. Core applies a batch as a sequence of statements in one
// transaction (apply documents the order); counter changes are gathered in Go from the
// rows really written and upserted once, on the batch's slot. With
// Dialect.CacheStatements (SQLite) the statements of the write path are prepared once
// and reused by every transaction (stmtcache.go).
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
	// ForUpdate is appended to the reads that lock the rows a batch is about to change
	// (" FOR UPDATE" on MySQL; "" on SQLite, whose write transaction holds the database
	// lock).
	ForUpdate string
	// CounterUpsertSuffix follows the VALUES of a counter insert and turns it into an
	// add to the existing row (ON CONFLICT ... DO UPDATE / ON DUPLICATE KEY UPDATE).
	CounterUpsertSuffix string
	// SumInt renders the SUM of an integer column as a value that scans into an int64.
	SumInt func(col string) string
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
	// CacheStatements makes the write path reuse statements prepared once on the write
	// pool instead of preparing each statement in every transaction, and split
	// multi-row statements into runs of a power of two rows so that few shapes cover
	// every batch (SQLite, where preparing is parsing and costs as much as running a
	// multi-row insert). See stmtcache.go.
	CacheStatements bool
	// DeleteReturning makes a batch delete its messages with DELETE ... RETURNING, one
	// statement per queue and run of IDs that names the rows it deleted, instead of a
	// locking read and a DELETE of (queue, id) pairs (SQLite; MySQL has no DELETE ...
	// RETURNING).
	DeleteReturning bool
}

// Core implements sqlstore.Driver over a write pool, a read pool and a lease pool.
type Core struct {
	d      Dialect
	write  *sql.DB
	read   *sql.DB
	lease  *sql.DB
	lq     LeaseStatements
	t      migrations.Tables
	q      queries
	r      *Reads
	closed atomic.Bool
	// writeMu queues the write transactions of this process when
	// Dialect.SerializeWrites is set.
	writeMu sync.Mutex
	// stmts are the statements prepared on the write pool (Dialect.CacheStatements).
	stmts stmtCache
	// Migrate is called by Driver.Migrate; the driver package sets it.
	migrate func(ctx context.Context) error
}

type queries struct {
	fence, epochGet, epochBump, bindingList, count, dupGet                string
	bindingPut, msgUpdate, purge, bindingDelete, dupBefore, msgInsertHead string
	dupInsertHead, msgDeleteHead, updateJoinHead, msgLockHead             string
	delQueueHead, delQueueTail                                            string
	pageInsertHead, purgeLarge, purgeCounters, trimLarge, trim            string
	counterDelete, counterAddHead, refAdd, refHeadsHead, refSet           string
	chunksDeleteHead, chunkInsert, largeHead, largeDelete, sweepSelect    string
}

// New returns a Core. write should be limited as the dialect needs (one connection for
// SQLite); read may be the same pool. lease is a small pool of its own for the lease
// statements (LeaseStore), so that they never queue behind batches for a connection.
// Close closes all three.
func New(d Dialect, write, read, lease *sql.DB, t migrations.Tables, migrate func(ctx context.Context) error) *Core {
	b, m, n, dup := t.Bindings, t.Messages, t.NodeManager, t.DuplicateIDs
	pg, cn, l := t.Pages, t.Counters, t.LargeMessages
	return &Core{
		d: d, write: write, read: read, lease: lease, t: t, migrate: migrate,
		lq: newLeaseQueries(d, n),
		r:  NewReads(t, Syntax{Param: Question, SumInt: d.SumInt}),
		q: queries{
			fence:            fmt.Sprintf("SELECT epoch FROM %s WHERE id = %d%s", n, sqlstore.NodeRowFence, d.FenceLock),
			epochGet:         fmt.Sprintf("SELECT epoch FROM %s WHERE id = %d", n, sqlstore.NodeRowFence),
			epochBump:        fmt.Sprintf("UPDATE %s SET epoch = epoch + 1 WHERE id = %d", n, sqlstore.NodeRowFence),
			bindingList:      fmt.Sprintf("SELECT kind, name, target, config, created_at FROM %s ORDER BY kind, name, target", b),
			count:            fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE queue = ?", m),
			dupGet:           fmt.Sprintf("SELECT message_id FROM %s WHERE queue = ? AND idem_key = ?", dup),
			bindingPut:       fmt.Sprintf("INSERT INTO %s (kind, name, target, config, created_at) VALUES (?, ?, ?, ?, ?)%s", b, d.BindingUpsertSuffix),
			msgUpdate:        fmt.Sprintf("UPDATE %s SET delivery_count = ?, deliver_at = ? WHERE queue = ? AND id = ?", m),
			purge:            fmt.Sprintf("DELETE FROM %s WHERE queue = ?", m),
			bindingDelete:    fmt.Sprintf("DELETE FROM %s WHERE kind = ? AND name = ? AND target = ?", b),
			dupBefore:        fmt.Sprintf("DELETE FROM %s WHERE created_at < ?", dup),
			msgInsertHead:    fmt.Sprintf("INSERT INTO %s (%s) VALUES ", m, MessageColumns),
			dupInsertHead:    fmt.Sprintf("INSERT INTO %s (queue, idem_key, message_id, created_at) VALUES ", dup),
			msgDeleteHead:    fmt.Sprintf("DELETE FROM %s WHERE (queue, id) IN (", m),
			delQueueHead:     fmt.Sprintf("DELETE FROM %s WHERE queue = ? AND id IN (", m),
			delQueueTail:     ") RETURNING id, size, large",
			updateJoinHead:   fmt.Sprintf("UPDATE %s AS m JOIN (", m),
			msgLockHead:      fmt.Sprintf("SELECT queue, id, size, large FROM %s WHERE (queue, id) IN (", m),
			pageInsertHead:   fmt.Sprintf("INSERT INTO %s (%s) VALUES ", pg, PageColumns),
			purgeLarge:       fmt.Sprintf("SELECT id FROM %s WHERE queue = ? AND large <> 0%s", m, d.ForUpdate),
			purgeCounters:    fmt.Sprintf("DELETE FROM %s WHERE kind = '%s' AND name = ?", cn, sqlstore.CounterQueue),
			trimLarge:        fmt.Sprintf("SELECT id FROM %s WHERE address = ? AND id <= ? AND large <> 0%s", pg, d.ForUpdate),
			trim:             fmt.Sprintf("DELETE FROM %s WHERE address = ? AND id <= ?", pg),
			counterDelete:    fmt.Sprintf("DELETE FROM %s WHERE kind = ? AND name = ?", cn),
			counterAddHead:   fmt.Sprintf("INSERT INTO %s (kind, name, slot, messages, bytes) VALUES ", cn),
			refAdd:           fmt.Sprintf("UPDATE %s SET refs = refs + ? WHERE message_id = ? AND chunk_no = 0", l),
			refHeadsHead:     fmt.Sprintf("SELECT message_id, refs FROM %s WHERE chunk_no = 0 AND message_id IN (", l),
			refSet:           fmt.Sprintf("UPDATE %s SET refs = ? WHERE message_id = ? AND chunk_no = 0", l),
			chunksDeleteHead: fmt.Sprintf("DELETE FROM %s WHERE message_id IN (", l),
			chunkInsert:      fmt.Sprintf("INSERT INTO %s (message_id, chunk_no, data, refs) VALUES (?, ?, ?, 0)", l),
			largeHead:        fmt.Sprintf("SELECT refs FROM %s WHERE message_id = ? AND chunk_no = 0%s", l, d.ForUpdate),
			largeDelete:      fmt.Sprintf("DELETE FROM %s WHERE message_id = ?", l),
			sweepSelect: fmt.Sprintf("SELECT message_id FROM %s WHERE chunk_no = 0 AND refs <= 0 AND message_id < ? ORDER BY message_id LIMIT ?%s",
				l, d.ForUpdate),
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
	err := errors.Join(c.stmts.close(), c.write.Close())
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
	if c.d.CacheStatements {
		// Between transactions: the write connection is free.
		c.stmts.prepareWanted(ctx, c.write)
	}
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
	if err := CheckSlot(p.Slot); err != nil {
		return fmt.Errorf("%s: batch commit: %w", c.d.Name, err)
	}
	return c.fenced(ctx, "batch commit", p.Epoch, func(tx *sql.Tx) error { return c.apply(ctx, tx, b, p.Slot) })
}

// fenced runs fn in a write transaction after the fence check: the epoch row read under
// a share lock must hold epoch, or the transaction ends with ErrFenced, writing nothing.
func (c *Core) fenced(ctx context.Context, op string, epoch int64, fn func(tx *sql.Tx) error) error {
	err := c.inTx(ctx, func(tx *sql.Tx) error {
		var cur int64
		if err := c.queryRow(ctx, tx, c.q.fence).Scan(&cur); err != nil {
			return fmt.Errorf("read fencing epoch: %w", err)
		}
		if cur != epoch {
			return fmt.Errorf("epoch in store is %d, writer holds %d: %w", cur, epoch, sqlstore.ErrFenced)
		}
		return fn(tx)
	})
	if err != nil {
		if errors.Is(err, sqlstore.ErrFenced) {
			return fmt.Errorf("%s: %s: %w", c.d.Name, op, err)
		}
		return c.wrap(op, err)
	}
	return nil
}

// apply writes the parts of b in the order documented on sqlstore.Batch. Counter
// changes are gathered on the way (inserts from the batch, deletes from the rows
// actually deleted) and written once at the end, on slot; a queue purge or counter
// delete drops what was gathered for its counters, as applying it first and deleting
// the row after would. Chunk references are added right after the inserts (so that a
// row inserted and deleted in one batch never takes a message's count to zero early)
// and dropped once after the deletes.
func (c *Core) apply(ctx context.Context, tx *sql.Tx, b *sqlstore.Batch, slot int) error {
	if len(b.BindingPuts) > 0 {
		if err := c.eachPrepared(ctx, tx, c.q.bindingPut, len(b.BindingPuts), func(i int) []any {
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
	if err := c.insertPages(ctx, tx, b.PageInserts); err != nil {
		return fmt.Errorf("insert page rows: %w", err)
	}
	deltas, adds := InsertEffects(b)
	if err := c.addRefs(ctx, tx, adds); err != nil {
		return fmt.Errorf("add large message references: %w", err)
	}
	if err := c.insertDuplicates(ctx, tx, b.DuplicateInserts); err != nil {
		return fmt.Errorf("insert duplicate ids: %w", err)
	}
	if err := c.updateMessages(ctx, tx, b.MessageUpdates); err != nil {
		return fmt.Errorf("update messages: %w", err)
	}
	drops := Refs{}
	if err := c.deleteMessages(ctx, tx, b.MessageDeletes, deltas, drops); err != nil {
		return fmt.Errorf("delete messages: %w", err)
	}
	for _, q := range b.QueuePurges {
		if err := c.purgeQueue(ctx, tx, q, drops); err != nil {
			return fmt.Errorf("purge queue %q: %w", q, err)
		}
		delete(deltas, sqlstore.CounterKey{Kind: sqlstore.CounterQueue, Name: q})
	}
	for _, tr := range b.PageTrims {
		if err := c.lockedIDs(ctx, tx, c.q.trimLarge, drops, tr.Log, tr.UpTo); err != nil {
			return fmt.Errorf("trim page log %q: %w", tr.Log, err)
		}
		if _, err := tx.ExecContext(ctx, c.q.trim, tr.Log, tr.UpTo); err != nil {
			return fmt.Errorf("trim page log %q: %w", tr.Log, err)
		}
	}
	if err := c.dropRefs(ctx, tx, drops); err != nil {
		return fmt.Errorf("drop large message references: %w", err)
	}
	if len(b.BindingDeletes) > 0 {
		if err := c.eachPrepared(ctx, tx, c.q.bindingDelete, len(b.BindingDeletes), func(i int) []any {
			k := &b.BindingDeletes[i]
			return []any{k.Kind, k.Name, k.Target}
		}); err != nil {
			return fmt.Errorf("delete bindings: %w", err)
		}
	}
	if len(b.CounterDeletes) > 0 {
		if err := c.eachPrepared(ctx, tx, c.q.counterDelete, len(b.CounterDeletes), func(i int) []any {
			k := &b.CounterDeletes[i]
			return []any{k.Kind, k.Name}
		}); err != nil {
			return fmt.Errorf("delete counters: %w", err)
		}
		for _, k := range b.CounterDeletes {
			delete(deltas, k)
		}
	}
	if err := c.addCounters(ctx, tx, deltas.Sorted(), slot); err != nil {
		return fmt.Errorf("update counters: %w", err)
	}
	if b.DuplicatesBefore > 0 {
		if _, err := tx.ExecContext(ctx, c.q.dupBefore, b.DuplicatesBefore); err != nil {
			return fmt.Errorf("expire duplicate ids: %w", err)
		}
	}
	return nil
}

// purgeQueue deletes every message of queue q and its counter rows, noting the
// references its large messages drop.
func (c *Core) purgeQueue(ctx context.Context, tx *sql.Tx, q string, drops Refs) error {
	if err := c.lockedIDs(ctx, tx, c.q.purgeLarge, drops, q); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, c.q.purge, q); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, c.q.purgeCounters, q)
	return err
}

// lockedIDs runs query (a locking read of the large rows a delete is about to remove)
// and counts one dropped reference for each ID it returns.
func (c *Core) lockedIDs(ctx context.Context, tx *sql.Tx, query string, drops Refs, args ...any) error {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return err
		}
		drops[id]++
	}
	return rows.Err()
}

// addRefs adds references to the chunk 0 of large messages; a message without chunks
// fails the batch.
func (c *Core) addRefs(ctx context.Context, tx *sql.Tx, adds Refs) error {
	if len(adds) == 0 {
		return nil
	}
	var missing []string
	st, err := tx.PrepareContext(ctx, c.q.refAdd)
	if err != nil {
		return err
	}
	defer st.Close()
	for _, r := range adds.Sorted() {
		res, err := st.ExecContext(ctx, r.N, r.ID)
		if err != nil {
			return err
		}
		// MySQL reports matched rows (clientFoundRows), SQLite changed rows: the same here.
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			missing = append(missing, fmt.Sprint(r.ID))
		}
	}
	if len(missing) > 0 {
		return MissingChunks(strings.Join(missing, ","))
	}
	return nil
}

// dropRefs removes references from the chunk 0 of large messages, and deletes every
// chunk of a message whose last reference goes. A message whose chunk 0 does not exist
// is left alone.
func (c *Core) dropRefs(ctx context.Context, tx *sql.Tx, drops Refs) error {
	if len(drops) == 0 {
		return nil
	}
	all := drops.Sorted()
	var gone []any
	for _, ch := range c.chunks(len(all), 1, func(int) int { return 8 }) {
		part := all[ch[0]:ch[1]]
		args := make([]any, len(part))
		for i, r := range part {
			args[i] = r.ID
		}
		rows, err := tx.QueryContext(ctx, c.q.refHeadsHead+marks(len(part))+")"+c.d.ForUpdate, args...)
		if err != nil {
			return err
		}
		heads := map[int64]int64{}
		for rows.Next() {
			var id, refs int64
			if err := rows.Scan(&id, &refs); err != nil {
				rows.Close()
				return err
			}
			heads[id] = refs
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range part {
			refs, ok := heads[r.ID]
			switch {
			case !ok:
			case refs-r.N > 0:
				if _, err := tx.ExecContext(ctx, c.q.refSet, refs-r.N, r.ID); err != nil {
					return err
				}
			default:
				gone = append(gone, r.ID)
			}
		}
	}
	return c.deleteChunks(ctx, tx, gone)
}

// deleteChunks deletes every chunk of the messages ids.
func (c *Core) deleteChunks(ctx context.Context, tx *sql.Tx, ids []any) error {
	for _, ch := range c.chunks(len(ids), 1, func(int) int { return 8 }) {
		part := ids[ch[0]:ch[1]]
		if _, err := tx.ExecContext(ctx, c.q.chunksDeleteHead+marks(len(part))+")", part...); err != nil {
			return err
		}
	}
	return nil
}

// addCounters adds ds to the counter rows of slot.
func (c *Core) addCounters(ctx context.Context, tx *sql.Tx, ds []CounterDelta, slot int) error {
	const cols = 5
	for _, ch := range c.chunks(len(ds), cols, func(int) int { return 64 }) {
		rows := ds[ch[0]:ch[1]]
		args := make([]any, 0, len(rows)*cols)
		for _, d := range rows {
			args = append(args, d.Kind, d.Name, slot, d.Messages, d.Bytes)
		}
		if _, err := c.exec(ctx, tx, c.q.counterAddHead+valuesList(len(rows), cols)+c.d.CounterUpsertSuffix, args...); err != nil {
			return err
		}
	}
	return nil
}

// marks renders n comma-separated placeholders.
func marks(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

// eachPrepared runs one prepared statement n times.
func (c *Core) eachPrepared(ctx context.Context, tx *sql.Tx, query string, n int, args func(i int) []any) error {
	st := c.stmt(ctx, tx, query)
	if st == nil && n == 1 {
		_, err := tx.ExecContext(ctx, query, args(0)...)
		return err
	}
	if st == nil {
		var err error
		if st, err = tx.PrepareContext(ctx, query); err != nil {
			return err
		}
		defer st.Close()
	}
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
	if c.d.CacheStatements {
		var runs [][2]int
		for _, ch := range out {
			runs = ladder(runs, ch[0], ch[1])
		}
		out = runs
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
	const cols = 12
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
				m.CreatedAt, m.ContentType, sqlstore.EncodeHeaders(m.Headers), body, MessageSize(m), Flag(m.Large))
		}
		if _, err := c.exec(ctx, tx, c.q.msgInsertHead+valuesList(len(rows), cols), args...); err != nil {
			return err
		}
	}
	return nil
}

func (c *Core) insertPages(ctx context.Context, tx *sql.Tx, ps []sqlstore.PageRow) error {
	const cols = 11
	for _, ch := range c.chunks(len(ps), cols, func(i int) int { return len(ps[i].Body) + len(ps[i].ContentType) + 64 }) {
		rows := ps[ch[0]:ch[1]]
		args := make([]any, 0, len(rows)*cols)
		for i := range rows {
			p := &rows[i]
			body := p.Body
			if body == nil {
				body = []byte{}
			}
			args = append(args, p.Log, p.ID, p.Priority, p.DeliverAt, p.ExpiresAt, p.CreatedAt, p.ContentType,
				sqlstore.EncodeHeaders(p.Headers), body, PageSize(p), Flag(p.Large))
		}
		if _, err := c.exec(ctx, tx, c.q.pageInsertHead+valuesList(len(rows), cols), args...); err != nil {
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
		if _, err := c.exec(ctx, tx, c.q.dupInsertHead+valuesList(len(rows), cols), args...); err != nil {
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
		return c.eachPrepared(ctx, tx, c.q.msgUpdate, len(us), func(i int) []any {
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

// deleteMessages deletes the messages of ks that exist and takes their sizes off the
// counters and their references off the chunks of large ones. With
// Dialect.DeleteReturning see deleteReturning; otherwise (MySQL has no DELETE ...
// RETURNING) it reads them first under a lock, then deletes exactly the rows it read.
func (c *Core) deleteMessages(ctx context.Context, tx *sql.Tx, ks []sqlstore.MessageKey, deltas Deltas, drops Refs) error {
	const cols = 2
	if c.d.DeleteReturning {
		return c.deleteReturning(ctx, tx, ks, deltas, drops)
	}
	for _, ch := range c.chunks(len(ks), cols, func(int) int { return 32 }) {
		rows := ks[ch[0]:ch[1]]
		args := make([]any, 0, len(rows)*cols)
		for i := range rows {
			args = append(args, rows[i].Queue, rows[i].ID)
		}
		found, err := tx.QueryContext(ctx, c.q.msgLockHead+c.d.RowIn(len(rows))+")"+c.d.ForUpdate, args...)
		if err != nil {
			return err
		}
		args = args[:0]
		if err := lockedRows(found, deltas, drops, &args); err != nil {
			return err
		}
		if len(args) == 0 {
			continue
		}
		if _, err := tx.ExecContext(ctx, c.q.msgDeleteHead+c.d.RowIn(len(args)/cols)+")", args...); err != nil {
			return err
		}
	}
	return nil
}

// deleteReturning is deleteMessages with DELETE ... RETURNING: for each queue, in
// the order queues first appear in ks, one statement per run of its IDs deletes them
// and names the rows it deleted. An ID listed twice is deleted (and counted) once, as
// by the locking read.
func (c *Core) deleteReturning(ctx context.Context, tx *sql.Tx, ks []sqlstore.MessageKey, deltas Deltas, drops Refs) error {
	var queues []string
	ids := map[string][]any{}
	for _, k := range ks {
		if _, ok := ids[k.Queue]; !ok {
			queues = append(queues, k.Queue)
		}
		ids[k.Queue] = append(ids[k.Queue], k.ID)
	}
	for _, q := range queues {
		qids := ids[q]
		// Two columns per row bound the placeholders: the queue and an ID each.
		for _, ch := range c.chunks(len(qids), 2, func(int) int { return 16 }) {
			run := qids[ch[0]:ch[1]]
			args := make([]any, 0, len(run)+1)
			args = append(args, q)
			args = append(args, run...)
			rows, err := c.query(ctx, tx, c.q.delQueueHead+marks(len(run))+c.q.delQueueTail, args...)
			if err != nil {
				return err
			}
			for rows.Next() {
				var id, size, large int64
				if err := rows.Scan(&id, &size, &large); err != nil {
					rows.Close()
					return err
				}
				deltas.Add(sqlstore.CounterQueue, q, -1, -size)
				if large != 0 {
					drops[id]++
				}
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
	}
	return nil
}

// lockedRows reads rows of (queue, id, size, large) about to be deleted, takes them
// off deltas and their references off drops, appends their keys to keys, and closes
// rows.
func lockedRows(rows *sql.Rows, deltas Deltas, drops Refs, keys *[]any) error {
	defer rows.Close()
	for rows.Next() {
		var q string
		var id, size, large int64
		if err := rows.Scan(&q, &id, &size, &large); err != nil {
			return err
		}
		*keys = append(*keys, q, id)
		deltas.Add(sqlstore.CounterQueue, q, -1, -size)
		if large != 0 {
			drops[id]++
		}
	}
	return rows.Err()
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
	query, args, err := c.r.Scan(p, limit)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", c.d.Name, op, err)
	}
	rows, err := c.read.QueryContext(ctx, query, args...)
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

// MessagesByID implements sqlstore.Driver.
func (c *Core) MessagesByID(ctx context.Context, queue string, ids []int64) ([]sqlstore.Message, error) {
	op := "messages by id of queue " + queue
	if err := c.checkOpen(op); err != nil {
		return nil, err
	}
	out, err := c.r.ByIDs(queue, ids, func(query string, args []any) ([]sqlstore.Message, error) {
		rows, err := c.read.QueryContext(ctx, query, args...)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		return ScanMessages(rows, len(args)-1)
	})
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

// ScanMessages reads message rows selected in the order of MessageColumns. Every
// dialect uses it, so all return the same values: a non-nil empty body for an empty
// one, and decoded headers.
func ScanMessages(rows Rows, capHint int) ([]sqlstore.Message, error) {
	out := make([]sqlstore.Message, 0, capHint)
	for rows.Next() {
		var m sqlstore.Message
		var headers string
		var large int64
		if err := rows.Scan(&m.Queue, &m.ID, &m.Priority, &m.DeliverAt, &m.ExpiresAt, &m.DeliveryCount,
			&m.CreatedAt, &m.ContentType, &headers, &m.Body, &m.Size, &large); err != nil {
			return nil, err
		}
		m.Large = large != 0
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
