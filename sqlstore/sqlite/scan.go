package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/internal/stdsql"
)

// The lane scans of SQLite. The shared statements (stdsql.Reads) write a scan after a
// key as a UNION ALL of parenthesised parts, each with its own ORDER BY and LIMIT, then
// an outer ORDER BY: SQLite runs each part as a co-routine whose order it does not
// know, and sorts the rows of every part in a temporary b-tree (bodies included)
// before it merges them, which costs three times as much as reading the index (a
// refill of 1000 rows of 1 KiB: 21 ms of CPU against 6.4 ms, BenchmarkMessageScan).
// Here the parts are plain SELECTs of one compound whose ORDER BY is the lane's: each
// part is one range of the lane index, read in index order, and SQLite merges them as
// they come and stops at the LIMIT ("MERGE (UNION ALL)" in the query plan, no
// temporary b-tree; TestScanPlans checks it). The parts are disjoint and every row of
// a part sorts before every row of the next, so the rows are those of the shared
// statement. The statements are prepared once on the read pool.

// scanStmts holds the prepared lane scans. They are prepared on first use: Open does
// not migrate, so the tables may not exist before.
type scanStmts struct {
	// lanes[lane][from]: from is 1 when the statement starts after a key.
	lanes [3][2]*sql.Stmt
}

// scanSQL renders the scan of one lane of table m; see the comment above.
func scanSQL(m string, lane sqlstore.Lane, from bool) string {
	sel := "SELECT " + stdsql.MessageColumns + " FROM " + m + " WHERE queue = ? AND "
	var conds []string
	var order string
	switch lane {
	case sqlstore.LaneID:
		conds, order = []string{"id > ?"}, "id"
	case sqlstore.LaneReady:
		order = "priority DESC, id"
		if from {
			conds = []string{"deliver_at = 0 AND priority = ? AND id > ?", "deliver_at = 0 AND priority < ?"}
		} else {
			conds = []string{"deliver_at = 0"}
		}
	case sqlstore.LaneScheduled:
		order = "deliver_at, priority DESC, id"
		if from {
			conds = []string{
				"deliver_at = ? AND priority = ? AND id > ?",
				"deliver_at = ? AND priority < ?",
				"deliver_at > ?",
			}
		} else {
			conds = []string{"deliver_at > 0"}
		}
	}
	parts := make([]string, len(conds))
	for i, c := range conds {
		parts[i] = sel + c
	}
	return strings.Join(parts, " UNION ALL ") + " ORDER BY " + order + " LIMIT ?"
}

// prepareScans prepares the lane scans on db.
func prepareScans(ctx context.Context, db *sql.DB, m string) (*scanStmts, error) {
	s := &scanStmts{}
	for _, lane := range []sqlstore.Lane{sqlstore.LaneID, sqlstore.LaneReady, sqlstore.LaneScheduled} {
		for _, from := range []bool{false, true} {
			if lane == sqlstore.LaneID && from {
				continue
			}
			st, err := db.PrepareContext(ctx, scanSQL(m, lane, from))
			if err != nil {
				s.close()
				return nil, err
			}
			s.lanes[lane][b2i(from)] = st
		}
	}
	return s, nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// close closes the statements.
func (s *scanStmts) close() error {
	var err error
	for i := range s.lanes {
		for j := range s.lanes[i] {
			if st := s.lanes[i][j]; st != nil {
				err = errors.Join(err, st.Close())
				s.lanes[i][j] = nil
			}
		}
	}
	return err
}

// scan returns the statement and arguments of a MessageScan with the given limit.
func (s *scanStmts) scan(p *sqlstore.MessageScanParams, limit int) (*sql.Stmt, []any, error) {
	lim := int64(limit)
	switch p.Lane {
	case sqlstore.LaneID:
		return s.lanes[sqlstore.LaneID][0], []any{p.Queue, p.AfterID, lim}, nil
	case sqlstore.LaneReady:
		if p.From == nil {
			return s.lanes[sqlstore.LaneReady][0], []any{p.Queue, lim}, nil
		}
		k := p.From
		return s.lanes[sqlstore.LaneReady][1], []any{p.Queue, k.Priority, k.ID, p.Queue, k.Priority, lim}, nil
	case sqlstore.LaneScheduled:
		// A key with no delivery time is before every scheduled message.
		if p.From == nil || p.From.DeliverAt <= 0 {
			return s.lanes[sqlstore.LaneScheduled][0], []any{p.Queue, lim}, nil
		}
		k := p.From
		return s.lanes[sqlstore.LaneScheduled][1], []any{
			p.Queue, k.DeliverAt, k.Priority, k.ID,
			p.Queue, k.DeliverAt, k.Priority,
			p.Queue, k.DeliverAt,
			lim,
		}, nil
	}
	return nil, nil, fmt.Errorf("unknown lane %d", p.Lane)
}

// MessageScan implements sqlstore.Driver with the SQLite lane scans. Limit <= 0 means
// stdsql.ScanLimitDefault.
func (d *Driver) MessageScan(ctx context.Context, p *sqlstore.MessageScanParams) ([]sqlstore.Message, error) {
	op := "message scan of queue " + p.Queue
	if d.closed.Load() {
		return nil, fmt.Errorf("sqlite: %s: %w", op, sqlstore.ErrClosed)
	}
	limit := p.Limit
	if limit <= 0 {
		limit = stdsql.ScanLimitDefault
	}
	scans, err := d.scanStmts(ctx)
	if err != nil {
		return nil, d.wrap(op, err)
	}
	st, args, err := scans.scan(p, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: %s: %w", op, err)
	}
	rows, err := st.QueryContext(ctx, args...)
	if err != nil {
		return nil, d.wrap(op, err)
	}
	defer rows.Close()
	out, err := stdsql.ScanMessages(rows, min(limit, 256))
	if err != nil {
		return nil, d.wrap(op, err)
	}
	return out, nil
}

// scanStmts returns the prepared lane scans, preparing them on first use.
func (d *Driver) scanStmts(ctx context.Context) (*scanStmts, error) {
	d.scanMu.Lock()
	defer d.scanMu.Unlock()
	if d.scans == nil {
		if d.closed.Load() {
			return nil, sqlstore.ErrClosed
		}
		s, err := prepareScans(ctx, d.read, d.cfg.Tables.Messages)
		if err != nil {
			return nil, fmt.Errorf("prepare: %w", err)
		}
		d.scans = s
	}
	return d.scans, nil
}

// Close implements sqlstore.Driver: it closes the prepared statements, then the pools.
func (d *Driver) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.scanMu.Lock()
	var err error
	if d.scans != nil {
		err = d.scans.close()
		d.scans = nil
	}
	d.scanMu.Unlock()
	if d.ckpt != nil {
		err = errors.Join(err, d.ckpt.close())
	}
	if err != nil {
		_ = d.Core.Close()
		return fmt.Errorf("sqlite: close: %w", err)
	}
	return d.Core.Close()
}

// wrap maps err as the shared driver code does (a failure after Close is ErrClosed)
// and adds context.
func (d *Driver) wrap(op string, err error) error {
	if d.closed.Load() && !errors.Is(err, sqlstore.ErrClosed) {
		err = fmt.Errorf("%w: %w", sqlstore.ErrClosed, err)
	}
	return fmt.Errorf("sqlite: %s: %w", op, interpretError(err))
}
