package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/internal/stdsql"
)

// rollbackTimeout bounds the ROLLBACK that cleans a connection after a failed batch.
const rollbackTimeout = 5 * time.Second

// fenceMarker starts the text the fence check fails to cast when the epoch differs;
// the stored epoch (or "missing") follows it. See fenceSQL.
const fenceMarker = "tablemq fenced, epoch in store: "

// fenceSQL returns the fence check of a BatchCommit on node-manager table n. It takes
// the writer's epoch as $1.
//
// It reads the epoch row under FOR SHARE and returns the epoch when it equals $1.
// Otherwise it raises an error inside the server, by casting a text that is not a
// number to bigint (invalid_text_representation, SQLSTATE 22P02, whose message quotes
// the text: fenceMarker and the stored epoch). PostgreSQL has no RAISE in plain SQL, and
// the error must come from the server, not from the client after reading the result:
// the rest of the transaction is already on the wire behind this statement, so only an
// error here stops it. The aggregate returns one row even when the epoch row is
// missing (then max is NULL and the check fails too); the FOR SHARE sits in the
// subquery because a locking clause is not allowed beside an aggregate.
func fenceSQL(n string) string {
	return fmt.Sprintf("SELECT CASE WHEN max(epoch) = $1 THEN max(epoch) "+
		"ELSE ('%s' || coalesce(max(epoch)::text, 'missing'))::bigint END "+
		"FROM (SELECT epoch FROM %s WHERE id = %d FOR SHARE) AS fence", fenceMarker, n, sqlstore.NodeRowFence)
}

// Names of the steps of a batch pipeline, used in errors; stepFence is recognised by
// name when mapping errors.
const (
	stepBegin  = "begin"
	stepFence  = "read fencing epoch"
	stepRefs   = "add large message references"
	stepCommit = "commit"
)

// pipeline is a pgx.Batch with a name for each queued statement.
type pipeline struct {
	batch pgx.Batch
	steps []step
}

// step is one statement of a pipeline: its name for errors and, for a statement whose
// one row is read, where to scan it.
type step struct {
	name string
	dest []any
}

func (p *pipeline) add(name, sql string, args ...any) {
	p.batch.Queue(sql, args...)
	p.steps = append(p.steps, step{name: name})
}

// addScan queues a statement that returns one row, scanned into dest.
func (p *pipeline) addScan(name string, dest []any, sql string, args ...any) {
	p.batch.Queue(sql, args...)
	p.steps = append(p.steps, step{name: name, dest: dest})
}

// send sends every queued statement in one round trip (pgx sends them as one pipeline
// with a single Sync; statements not yet prepared on this connection cost one more
// round trip, once) and reads their results in order. The first error stops it: the
// server has skipped every statement after the failed one. epoch is the writer's, for
// the fencing error.
func (p *pipeline) send(ctx context.Context, conn *pgxpool.Conn, epoch int64) error {
	res := conn.SendBatch(ctx, &p.batch)
	for _, st := range p.steps {
		var tag pgconn.CommandTag
		var err error
		if st.dest != nil {
			err = res.QueryRow().Scan(st.dest...)
		} else {
			tag, err = res.Exec()
		}
		if err != nil {
			_ = res.Close()
			switch st.name {
			case stepFence:
				return fenceError(err, epoch)
			case stepRefs:
				return refsError(err)
			}
			return fmt.Errorf("%s: %w", st.name, err)
		}
		// COMMIT of a transaction that failed answers ROLLBACK without an error. It
		// cannot happen here (the server skips the COMMIT after an error), but a batch
		// is reported committed only on the word of the server.
		if st.name == stepCommit && tag.String() != "COMMIT" {
			_ = res.Close()
			return fmt.Errorf("commit: the server answered %q: %w", tag.String(), pgx.ErrTxCommitRollback)
		}
	}
	if err := res.Close(); err != nil {
		return fmt.Errorf("batch: %w", err)
	}
	return nil
}

// fenceError maps the error of the fence check. The invalid_text_representation error
// carrying fenceMarker can only come from that statement's cast, so it is ErrFenced
// (or ErrNotFound when the epoch row is missing); anything else passes through.
func fenceError(err error, epoch int64) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "22P02" {
		if i := strings.Index(pgErr.Message, fenceMarker); i >= 0 {
			cur := strings.TrimSuffix(pgErr.Message[i+len(fenceMarker):], `"`)
			if _, convErr := strconv.ParseInt(cur, 10, 64); convErr != nil {
				return fmt.Errorf("%s: row %d of the node-manager table is %s: %w", stepFence, sqlstore.NodeRowFence, cur, sqlstore.ErrNotFound)
			}
			return fmt.Errorf("epoch in store is %s, writer holds %d: %w", cur, epoch, sqlstore.ErrFenced)
		}
	}
	return fmt.Errorf("%s: %w", stepFence, err)
}

// batchCommit runs one attempt of a BatchCommit on one connection of the pool.
//
// The transaction is BEGIN; the fence check; the parts of b in the order documented on
// sqlstore.Batch, with what the message and page inserts add to the counters (on slot)
// and to chunk references right after the page inserts, and the counters and
// references of deleted rows inside each delete statement (see v2Queries); COMMIT, all
// queued in one pipeline. Fencing holds as with a fence
// read followed by writes in separate round trips (see the sqlstore package
// documentation): the server executes the statements of a pipeline one after the
// other, in order, in the one transaction BEGIN opened, so the share lock on the epoch
// row is taken before any write and held until COMMIT; and when the epoch differs
// (or the row is missing) the fence check fails inside the server, which then skips
// every later statement of the pipeline, COMMIT included, leaving the transaction
// aborted. Nothing of it is ever committed: the connection is rolled back before it
// goes back to the pool.
//
// With COPY (b has copyMin message rows or more) the pipeline is cut in two around
// the COPY, which pgx cannot pipeline: BEGIN, fence, binding puts; COPY; the rest and
// COMMIT. The fence still comes first, and the COPY is only sent once it passed.
func (d *Driver) batchCommit(ctx context.Context, epoch int64, b *sqlstore.Batch, slot int) error {
	return d.inTx(ctx, func(conn *pgxpool.Conn) error { return d.batchPipeline(ctx, conn, epoch, b, slot) })
}

// inTx runs fn, which runs one transaction, on a pooled connection; when fn fails it
// rolls back whatever the transaction left open before the connection goes back.
func (d *Driver) inTx(ctx context.Context, fn func(conn *pgxpool.Conn) error) (err error) {
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire connection: %w", err)
	}
	defer func() {
		if err != nil {
			err = rollback(ctx, conn, err)
		}
		conn.Release()
	}()
	return fn(conn)
}

// batchPipeline sends the statements of batchCommit on conn.
func (d *Driver) batchPipeline(ctx context.Context, conn *pgxpool.Conn, epoch int64, b *sqlstore.Batch, slot int) error {

	p := &pipeline{}
	p.add(stepBegin, "BEGIN")
	p.add(stepFence, d.q.fence, epoch)
	if len(b.BindingPuts) > 0 {
		puts := stdsql.LastByKey(b.BindingPuts, stdsql.BindingPutKey)
		n := len(puts)
		kind, name, target, config := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		created := make([]int64, n)
		for i := range puts {
			r := &puts[i]
			cfg := r.Config
			if cfg == "" {
				cfg = "{}"
			}
			kind[i], name[i], target[i], config[i], created[i] = r.Kind, r.Name, r.Target, cfg, r.CreatedAt
		}
		p.add("put bindings", d.q.bindingPut, kind, name, target, config, created)
	}
	if n := len(b.MessageInserts); n > 0 {
		if d.copyMin > 0 && n >= d.copyMin {
			if err := p.send(ctx, conn, epoch); err != nil {
				return err
			}
			if err := d.copyMessages(ctx, conn, b.MessageInserts); err != nil {
				return err
			}
			p = &pipeline{}
		} else if n <= ValuesMaxRows {
			p.add("insert messages", d.q.msgValues[n], messageValues(b.MessageInserts)...)
		} else {
			p.add("insert messages", d.q.msgInsert, messageArrays(b.MessageInserts)...)
		}
	}
	d.addInsertEffects(p, b, slot)
	if n := len(b.DuplicateInserts); n > 0 {
		queue, key, id, created := make([]string, n), make([]string, n), make([]int64, n), make([]int64, n)
		for i := range b.DuplicateInserts {
			r := &b.DuplicateInserts[i]
			queue[i], key[i], id[i], created[i] = r.Queue, r.Key, r.MessageID, r.CreatedAt
		}
		p.add("insert duplicate ids", d.q.dupInsert, queue, key, id, created)
	}
	if len(b.MessageUpdates) > 0 {
		ups := stdsql.LastByKey(b.MessageUpdates, stdsql.MessageUpdateKey)
		n := len(ups)
		queue, id, dc, da := make([]string, n), make([]int64, n), make([]int32, n), make([]int64, n)
		for i := range ups {
			queue[i], id[i], dc[i], da[i] = ups[i].Queue, ups[i].ID, ups[i].DeliveryCount, ups[i].DeliverAt
		}
		p.add("update messages", d.q.msgUpdate, queue, id, dc, da)
	}
	if n := len(b.MessageDeletes); n > 0 {
		queue, id := make([]string, n), make([]int64, n)
		for i, k := range b.MessageDeletes {
			queue[i], id[i] = k.Queue, k.ID
		}
		p.add("delete messages", d.v2.msgDelete, queue, id, int32(slot))
	}
	d.addV2Deletes(p, b)
	if n := len(b.BindingDeletes); n > 0 {
		kind, name, target := make([]string, n), make([]string, n), make([]string, n)
		for i, k := range b.BindingDeletes {
			kind[i], name[i], target[i] = k.Kind, k.Name, k.Target
		}
		p.add("delete bindings", d.q.bindingDelete, kind, name, target)
	}
	d.addCounterDeletes(p, b)
	if b.DuplicatesBefore > 0 {
		p.add("expire duplicate ids", d.q.dupBefore, b.DuplicatesBefore)
	}
	p.add(stepCommit, "COMMIT")
	return p.send(ctx, conn, epoch)
}

// rollback ends whatever transaction a failed batch left open on conn (aborted after a
// failed statement, or still open when the failure came from the client side), so the
// pool gets the connection back clean; pgxpool destroys a connection released inside a
// transaction, which is where one ends up when the ROLLBACK fails too. err is the
// batch's error, returned with a failed rollback's error joined to it.
func rollback(ctx context.Context, conn *pgxpool.Conn, err error) error {
	pc := conn.Conn().PgConn()
	if conn.Conn().IsClosed() || pc.TxStatus() == 'I' {
		return err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	// Exec on the PgConn: the simple protocol, nothing to prepare, one round trip.
	if _, rbErr := pc.Exec(rctx, "ROLLBACK").ReadAll(); rbErr != nil {
		return errors.Join(err, fmt.Errorf("rollback: %w", rbErr))
	}
	return err
}

// valuesInsertSQL returns the INSERT of rows message rows into table m by VALUES, the
// parameters in the order of messageValues.
func valuesInsertSQL(m string, rows int) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "INSERT INTO %s (%s) VALUES ", m, stdsql.MessageColumns)
	for r := range rows {
		if r > 0 {
			sb.WriteString(", ")
		}
		sb.WriteByte('(')
		for c := range messageFields {
			if c > 0 {
				sb.WriteString(", ")
			}
			fmt.Fprintf(&sb, "$%d", r*messageFields+c+1)
		}
		sb.WriteByte(')')
	}
	return sb.String()
}

// messageFields is the number of columns of a message row.
const messageFields = 12

// messageValues returns the arguments of valuesInsertSQL for ms.
func messageValues(ms []sqlstore.Message) []any {
	args := make([]any, 0, len(ms)*messageFields)
	for i := range ms {
		m := &ms[i]
		args = append(args, m.Queue, m.ID, m.Priority, m.DeliverAt, m.ExpiresAt, m.DeliveryCount, m.CreatedAt,
			m.ContentType, sqlstore.EncodeHeaders(m.Headers), nonNil(m.Body), stdsql.MessageSize(m), stdsql.Flag(m.Large))
	}
	return args
}

// messageArrays returns the arguments of the multi-row message INSERT: one array per
// column, in the column order of queries.msgInsert.
func messageArrays(ms []sqlstore.Message) []any {
	n := len(ms)
	queue, ctype, headers := make([]string, n), make([]string, n), make([]string, n)
	id, deliverAt, expiresAt, createdAt := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	prio, dc, body := make([]int16, n), make([]int32, n), make([][]byte, n)
	size, large := make([]int64, n), make([]int16, n)
	for i := range ms {
		m := &ms[i]
		queue[i], id[i], prio[i], deliverAt[i], expiresAt[i] = m.Queue, m.ID, m.Priority, m.DeliverAt, m.ExpiresAt
		dc[i], createdAt[i], ctype[i], headers[i], body[i] = m.DeliveryCount, m.CreatedAt, m.ContentType, sqlstore.EncodeHeaders(m.Headers), nonNil(m.Body)
		size[i], large[i] = stdsql.MessageSize(m), stdsql.Flag(m.Large)
	}
	return []any{queue, id, prio, deliverAt, expiresAt, dc, createdAt, ctype, headers, body, size, large}
}

// copyMessages inserts ms by COPY in the transaction open on conn: one round trip (the
// column types come from pgx's statement cache after the first time).
func (d *Driver) copyMessages(ctx context.Context, conn *pgxpool.Conn, ms []sqlstore.Message) error {
	_, err := conn.CopyFrom(ctx, d.q.messagesTable, d.q.messageCols, pgx.CopyFromSlice(len(ms), func(i int) ([]any, error) {
		m := &ms[i]
		return []any{m.Queue, m.ID, m.Priority, m.DeliverAt, m.ExpiresAt, m.DeliveryCount, m.CreatedAt,
			m.ContentType, sqlstore.EncodeHeaders(m.Headers), nonNil(m.Body), stdsql.MessageSize(m), stdsql.Flag(m.Large)}, nil
	}))
	if err != nil {
		return fmt.Errorf("copy messages: %w", err)
	}
	return nil
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
