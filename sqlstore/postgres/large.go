package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/internal/stdsql"
)

// refsMarker starts the text the reference check of a batch fails to cast when a
// large row names a message without chunk 0; the IDs follow it. See v2Queries.refAdd.
const refsMarker = "tablemq large message without chunks: "

// v2Queries are the statements of schema v2 (counters, page logs, large messages).
// Deletes that change counters or chunk references are single statements with
// data-modifying CTEs, so that they travel in the batch pipeline like the rest and
// every batch stays one round trip.
type v2Queries struct {
	counterAdd, refAdd, msgDelete, purge, trim, counterDelete, pageInsert string
	chunkInsert, largeDelete, largeSweep                                  string
}

func newV2Queries(t migrations.Tables) v2Queries {
	m, pg, l, c := t.Messages, t.Pages, t.LargeMessages, t.Counters
	upsert := "ON CONFLICT (kind, name, slot) DO UPDATE SET messages = cn.messages + EXCLUDED.messages, bytes = cn.bytes + EXCLUDED.bytes"
	// unref drops one reference from chunk 0 for every large row of CTE src (columns
	// id, large). h locks the heads first (FOR UPDATE returns the latest version, so
	// rest is computed from it); then u lowers the heads that keep references and z
	// deletes every chunk of the others. No row is both updated and deleted, which one
	// statement could not do.
	unref := func(src string) string {
		return fmt.Sprintf(", x AS (SELECT id, count(*) AS n FROM %[1]s WHERE large <> 0 GROUP BY id)"+
			", h AS MATERIALIZED (SELECT l.message_id, l.refs - x.n AS rest FROM %[2]s AS l JOIN x ON l.message_id = x.id WHERE l.chunk_no = 0 ORDER BY l.message_id FOR UPDATE OF l)"+
			", u AS (UPDATE %[2]s AS l SET refs = h.rest FROM h WHERE l.message_id = h.message_id AND l.chunk_no = 0 AND h.rest > 0)"+
			", z AS (DELETE FROM %[2]s AS l USING h WHERE l.message_id = h.message_id AND h.rest <= 0)", src, l)
	}
	return v2Queries{
		counterAdd: fmt.Sprintf("INSERT INTO %s AS cn (kind, name, slot, messages, bytes) "+
			"SELECT v.k, v.n, $5, v.m, v.b FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS v(k, n, m, b) %s", c, upsert),
		// The count check raises inside the server (see fenceSQL), so the rest of the
		// pipeline is skipped when a message has no chunks.
		refAdd: fmt.Sprintf("WITH v AS (SELECT * FROM unnest($1::bigint[], $2::bigint[]) AS v(id, n)), "+
			"u AS (UPDATE %s AS l SET refs = l.refs + v.n FROM v WHERE l.message_id = v.id AND l.chunk_no = 0 RETURNING l.message_id) "+
			"SELECT CASE WHEN (SELECT count(*) FROM u) = (SELECT count(*) FROM v) THEN 0 "+
			"ELSE ('%s' || (SELECT string_agg(v.id::text, ',' ORDER BY v.id) FROM v WHERE v.id NOT IN (SELECT message_id FROM u)))::bigint END", l, refsMarker),
		msgDelete: fmt.Sprintf("WITH d AS (DELETE FROM %s WHERE (queue, id) IN (SELECT * FROM unnest($1::text[], $2::bigint[])) RETURNING queue, id, size, large), "+
			"cq AS (INSERT INTO %s AS cn (kind, name, slot, messages, bytes) SELECT '%s', queue, $3, -count(*), -sum(size)::bigint FROM d GROUP BY queue ORDER BY queue %s)"+
			"%s SELECT count(*) FROM d", m, c, sqlstore.CounterQueue, upsert, unref("d")),
		purge: fmt.Sprintf("WITH d AS (DELETE FROM %s WHERE queue = ANY($1::text[]) RETURNING id, large), "+
			"cq AS (DELETE FROM %s WHERE kind = '%s' AND name = ANY($1::text[]))"+
			"%s SELECT count(*) FROM d", m, c, sqlstore.CounterQueue, unref("d")),
		trim: fmt.Sprintf("WITH d AS (DELETE FROM %s AS pg USING unnest($1::text[], $2::bigint[]) AS t(log, upto) "+
			"WHERE pg.address = t.log AND pg.id <= t.upto RETURNING pg.id, pg.large)"+
			"%s SELECT count(*) FROM d", pg, unref("d")),
		counterDelete: fmt.Sprintf("DELETE FROM %s WHERE (kind, name) IN (SELECT * FROM unnest($1::text[], $2::text[]))", c),
		pageInsert: fmt.Sprintf("INSERT INTO %s (%s) SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::bigint[], "+
			"$5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::bytea[], $10::bigint[], $11::smallint[])", pg, stdsql.PageColumns),
		chunkInsert: fmt.Sprintf("INSERT INTO %s (message_id, chunk_no, data, refs) SELECT $1, v.n, v.d, 0 FROM unnest($2::integer[], $3::bytea[]) AS v(n, d)", l),
		// h locks chunk 0 (if any) so that no reference is added meanwhile.
		largeDelete: fmt.Sprintf("WITH h AS MATERIALIZED (SELECT refs FROM %[1]s WHERE message_id = $1 AND chunk_no = 0 FOR UPDATE) "+
			"DELETE FROM %[1]s WHERE message_id = $1 AND NOT EXISTS (SELECT 1 FROM h WHERE refs > 0)", l),
		largeSweep: fmt.Sprintf("WITH s AS MATERIALIZED (SELECT message_id FROM %[1]s WHERE chunk_no = 0 AND refs <= 0 AND message_id < $1 "+
			"ORDER BY message_id LIMIT $2 FOR UPDATE), z AS (DELETE FROM %[1]s WHERE message_id IN (SELECT message_id FROM s)) "+
			"SELECT count(*) FROM s", l),
	}
}

// addInsertEffects queues what follows the message inserts of b: the page inserts,
// then what the inserts add to the counters (on slot) and to chunk references.
func (d *Driver) addInsertEffects(p *pipeline, b *sqlstore.Batch, slot int) {
	if n := len(b.PageInserts); n > 0 {
		p.add("insert page rows", d.v2.pageInsert, pageArrays(b.PageInserts)...)
	}
	deltas, refs := stdsql.InsertEffects(b)
	if ds := deltas.Sorted(); len(ds) > 0 {
		kind, name, msgs, bytes := make([]string, len(ds)), make([]string, len(ds)), make([]int64, len(ds)), make([]int64, len(ds))
		for i, c := range ds {
			kind[i], name[i], msgs[i], bytes[i] = c.Kind, c.Name, c.Messages, c.Bytes
		}
		p.add("update counters", d.v2.counterAdd, kind, name, msgs, bytes, int32(slot))
	}
	if rs := refs.Sorted(); len(rs) > 0 {
		id, n := make([]int64, len(rs)), make([]int64, len(rs))
		for i, r := range rs {
			id[i], n[i] = r.ID, r.N
		}
		p.add(stepRefs, d.v2.refAdd, id, n)
	}
}

// addV2Deletes queues the purges, page trims and counter deletes of b.
func (d *Driver) addV2Deletes(p *pipeline, b *sqlstore.Batch) {
	if len(b.QueuePurges) > 0 {
		p.add("purge queues", d.v2.purge, b.QueuePurges)
	}
	if n := len(b.PageTrims); n > 0 {
		log, upTo := make([]string, n), make([]int64, n)
		for i, t := range b.PageTrims {
			log[i], upTo[i] = t.Log, t.UpTo
		}
		p.add("trim page logs", d.v2.trim, log, upTo)
	}
}

// addCounterDeletes queues the counter deletes of b.
func (d *Driver) addCounterDeletes(p *pipeline, b *sqlstore.Batch) {
	if n := len(b.CounterDeletes); n > 0 {
		kind, name := make([]string, n), make([]string, n)
		for i, k := range b.CounterDeletes {
			kind[i], name[i] = k.Kind, k.Name
		}
		p.add("delete counters", d.v2.counterDelete, kind, name)
	}
}

// pageArrays returns the arguments of the page insert: one array per column.
func pageArrays(ps []sqlstore.PageRow) []any {
	n := len(ps)
	log, ctype, headers := make([]string, n), make([]string, n), make([]string, n)
	id, deliverAt, expiresAt, createdAt, size := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	prio, large, body := make([]int16, n), make([]int16, n), make([][]byte, n)
	for i := range ps {
		p := &ps[i]
		log[i], id[i], prio[i], deliverAt[i], expiresAt[i], createdAt[i] = p.Log, p.ID, p.Priority, p.DeliverAt, p.ExpiresAt, p.CreatedAt
		ctype[i], headers[i], body[i] = p.ContentType, sqlstore.EncodeHeaders(p.Headers), nonNil(p.Body)
		size[i], large[i] = stdsql.PageSize(p), stdsql.Flag(p.Large)
	}
	return []any{log, id, prio, deliverAt, expiresAt, createdAt, ctype, headers, body, size, large}
}

// refsError maps the error of the reference check: the cast of refsMarker can only
// come from it, so it is a message without chunks (ErrNotFound).
func refsError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "22P02" {
		if i := strings.Index(pgErr.Message, refsMarker); i >= 0 {
			return stdsql.MissingChunks(strings.TrimSuffix(pgErr.Message[i+len(refsMarker):], `"`))
		}
	}
	return fmt.Errorf("%s: %w", stepRefs, err)
}

// fencedPipeline runs BEGIN, the fence check, the statements add queues and COMMIT as
// one pipeline on one connection: one round trip.
func (d *Driver) fencedPipeline(ctx context.Context, op string, epoch int64, add func(p *pipeline)) error {
	if err := d.checkOpen(op); err != nil {
		return err
	}
	err := d.retry(ctx, func() error {
		return d.inTx(ctx, func(conn *pgxpool.Conn) error {
			p := &pipeline{}
			p.add(stepBegin, "BEGIN")
			p.add(stepFence, d.q.fence, epoch)
			add(p)
			p.add(stepCommit, "COMMIT")
			return p.send(ctx, conn, epoch)
		})
	})
	if err != nil {
		if errors.Is(err, sqlstore.ErrFenced) {
			return fmt.Errorf("postgres: %s: %w", op, err)
		}
		return d.wrap(op, err)
	}
	return nil
}

// CounterList implements sqlstore.Driver.
func (d *Driver) CounterList(ctx context.Context) ([]sqlstore.Counter, error) {
	const op = "counter list"
	if err := d.checkOpen(op); err != nil {
		return nil, err
	}
	rows, err := d.pool.Query(ctx, d.r.CounterList())
	if err != nil {
		return nil, d.wrap(op, err)
	}
	defer rows.Close()
	out, err := stdsql.ScanCounters(rows)
	if err != nil {
		return nil, d.wrap(op, err)
	}
	return out, nil
}

// PageScan implements sqlstore.Driver. Limit <= 0 means ScanLimitDefault.
func (d *Driver) PageScan(ctx context.Context, p *sqlstore.PageScanParams) ([]sqlstore.PageRow, error) {
	op := "page scan of log " + p.Log
	if err := d.checkOpen(op); err != nil {
		return nil, err
	}
	limit := p.Limit
	if limit <= 0 {
		limit = ScanLimitDefault
	}
	rows, err := d.pool.Query(ctx, d.r.PageScan(), p.Log, p.AfterID, limit)
	if err != nil {
		return nil, d.wrap(op, err)
	}
	defer rows.Close()
	out, err := stdsql.ScanPages(rows, min(limit, 256))
	if err != nil {
		return nil, d.wrap(op, err)
	}
	return out, nil
}

// LargePut implements sqlstore.Driver: one INSERT of every chunk, in the fenced
// pipeline. Putting a chunk that exists is ErrConflict.
func (d *Driver) LargePut(ctx context.Context, p *sqlstore.LargePutParams) error {
	n := len(p.Chunks)
	nos, data := make([]int32, n), make([][]byte, n)
	for i, c := range p.Chunks {
		nos[i], data[i] = p.FirstChunk+int32(i), nonNil(c)
	}
	return d.fencedPipeline(ctx, fmt.Sprintf("large put of message %d", p.MessageID), p.Epoch, func(pl *pipeline) {
		if n > 0 {
			pl.add("insert chunks", d.v2.chunkInsert, p.MessageID, nos, data)
		}
	})
}

// LargeScan implements sqlstore.Driver. Limit <= 0 means stdsql.LargeScanLimitDefault.
func (d *Driver) LargeScan(ctx context.Context, p *sqlstore.LargeScanParams) ([][]byte, error) {
	op := fmt.Sprintf("large scan of message %d", p.MessageID)
	if err := d.checkOpen(op); err != nil {
		return nil, err
	}
	limit := p.Limit
	if limit <= 0 {
		limit = stdsql.LargeScanLimitDefault
	}
	rows, err := d.pool.Query(ctx, d.r.LargeScan(), p.MessageID, p.FromChunk, limit)
	if err != nil {
		return nil, d.wrap(op, err)
	}
	defer rows.Close()
	out, err := stdsql.ScanChunks(rows, min(limit, 16))
	if err != nil {
		return nil, d.wrap(op, err)
	}
	return out, nil
}

// LargeDelete implements sqlstore.Driver.
func (d *Driver) LargeDelete(ctx context.Context, epoch, messageID int64) error {
	return d.fencedPipeline(ctx, fmt.Sprintf("large delete of message %d", messageID), epoch, func(p *pipeline) {
		p.add("delete chunks", d.v2.largeDelete, messageID)
	})
}

// LargeSweep implements sqlstore.Driver.
func (d *Driver) LargeSweep(ctx context.Context, p *sqlstore.LargeSweepParams) (int64, error) {
	const op = "large sweep"
	if p.Limit <= 0 {
		return 0, fmt.Errorf("postgres: %s: limit %d is not positive", op, p.Limit)
	}
	var swept int64
	err := d.fencedPipeline(ctx, op, p.Epoch, func(pl *pipeline) {
		pl.addScan("sweep chunks", []any{&swept}, d.v2.largeSweep, p.Below, p.Limit)
	})
	if err != nil {
		return 0, err
	}
	return swept, nil
}
