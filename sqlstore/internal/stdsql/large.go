package stdsql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/tablemq/tablemq/sqlstore"
)

// CounterList implements sqlstore.Driver.
func (c *Core) CounterList(ctx context.Context) ([]sqlstore.Counter, error) {
	const op = "counter list"
	if err := c.checkOpen(op); err != nil {
		return nil, err
	}
	rows, err := c.read.QueryContext(ctx, c.r.CounterList())
	if err != nil {
		return nil, c.wrap(op, err)
	}
	defer rows.Close()
	out, err := ScanCounters(rows)
	if err != nil {
		return nil, c.wrap(op, err)
	}
	return out, nil
}

// PageScan implements sqlstore.Driver. Limit <= 0 means ScanLimitDefault.
func (c *Core) PageScan(ctx context.Context, p *sqlstore.PageScanParams) ([]sqlstore.PageRow, error) {
	op := "page scan of log " + p.Log
	if err := c.checkOpen(op); err != nil {
		return nil, err
	}
	limit := p.Limit
	if limit <= 0 {
		limit = ScanLimitDefault
	}
	rows, err := c.read.QueryContext(ctx, c.r.PageScan(), p.Log, p.AfterID, limit)
	if err != nil {
		return nil, c.wrap(op, err)
	}
	defer rows.Close()
	out, err := ScanPages(rows, min(limit, 256))
	if err != nil {
		return nil, c.wrap(op, err)
	}
	return out, nil
}

// LargePut implements sqlstore.Driver: one INSERT per chunk (so a chunk, not the
// call, is bounded by MySQL's max_allowed_packet), chunk 0 with no reference.
// Putting a chunk that exists is ErrConflict.
func (c *Core) LargePut(ctx context.Context, p *sqlstore.LargePutParams) error {
	op := fmt.Sprintf("large put of message %d", p.MessageID)
	if err := c.checkOpen(op); err != nil {
		return err
	}
	return c.fenced(ctx, op, p.Epoch, func(tx *sql.Tx) error {
		return c.eachPrepared(ctx, tx, c.q.chunkInsert, len(p.Chunks), func(i int) []any {
			data := p.Chunks[i]
			if data == nil {
				data = []byte{}
			}
			return []any{p.MessageID, p.FirstChunk + int32(i), data}
		})
	})
}

// LargeScan implements sqlstore.Driver. Limit <= 0 means LargeScanLimitDefault.
func (c *Core) LargeScan(ctx context.Context, p *sqlstore.LargeScanParams) ([][]byte, error) {
	op := fmt.Sprintf("large scan of message %d", p.MessageID)
	if err := c.checkOpen(op); err != nil {
		return nil, err
	}
	limit := p.Limit
	if limit <= 0 {
		limit = LargeScanLimitDefault
	}
	rows, err := c.read.QueryContext(ctx, c.r.LargeScan(), p.MessageID, p.FromChunk, limit)
	if err != nil {
		return nil, c.wrap(op, err)
	}
	defer rows.Close()
	out, err := ScanChunks(rows, min(limit, 16))
	if err != nil {
		return nil, c.wrap(op, err)
	}
	return out, nil
}

// LargeDelete implements sqlstore.Driver. It locks chunk 0 and deletes the chunks
// unless chunk 0 holds a reference; chunks without a chunk 0 are deleted too (nothing
// can reference them).
func (c *Core) LargeDelete(ctx context.Context, epoch, messageID int64) error {
	op := fmt.Sprintf("large delete of message %d", messageID)
	if err := c.checkOpen(op); err != nil {
		return err
	}
	return c.fenced(ctx, op, epoch, func(tx *sql.Tx) error {
		var refs int64
		err := tx.QueryRowContext(ctx, c.q.largeHead, messageID).Scan(&refs)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		case refs > 0:
			return nil
		}
		_, err = tx.ExecContext(ctx, c.q.largeDelete, messageID)
		return err
	})
}

// LargeSweep implements sqlstore.Driver.
func (c *Core) LargeSweep(ctx context.Context, p *sqlstore.LargeSweepParams) (int64, error) {
	const op = "large sweep"
	if err := c.checkOpen(op); err != nil {
		return 0, err
	}
	if p.Limit <= 0 {
		return 0, fmt.Errorf("%s: %s: limit %d is not positive", c.d.Name, op, p.Limit)
	}
	var swept int64
	err := c.fenced(ctx, op, p.Epoch, func(tx *sql.Tx) error {
		swept = 0
		rows, err := tx.QueryContext(ctx, c.q.sweepSelect, p.Below, p.Limit)
		if err != nil {
			return err
		}
		var ids []any
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		swept = int64(len(ids))
		return c.deleteChunks(ctx, tx, ids)
	})
	return swept, err
}
