package stdsql

import (
	"context"
	"database/sql"
	"errors"
	"math/bits"
	"sync"
)

// The statement cache of Dialect.CacheStatements (SQLite). Preparing a statement
// parses it: for a multi-row insert of a hundred messages that cost as much as running
// it. The write path therefore runs the statements it uses often as statements
// prepared once on the write pool and reused by every transaction (Tx.StmtContext
// finds the prepared statement of the transaction's connection). A statement is
// prepared between transactions, never inside one: the write pool of SQLite has one
// connection, which a transaction holds, so tryTx prepares the statements the previous
// transactions wanted (wanted) before it begins the next; until then they run
// unprepared. Multi-row statements come in few shapes because chunks splits their
// rows into runs of a power of two rows (ladderMax at most), so the cache stays small
// (stmtCacheMax bounds it anyway).

const (
	// ladderMax is the most rows of one multi-row statement when statements are cached.
	ladderMax = 256
	// stmtCacheMax bounds the statements prepared on the write pool.
	stmtCacheMax = 128
)

// stmtCache holds the statements prepared on the write pool.
type stmtCache struct {
	mu     sync.Mutex
	stmts  map[string]*sql.Stmt
	wanted map[string]struct{}
	closed bool
}

// lookup returns the prepared statement of query, or nil after noting that query is
// wanted.
func (s *stmtCache) lookup(query string) *sql.Stmt {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.stmts[query]; st != nil {
		return st
	}
	if !s.closed && len(s.stmts)+len(s.wanted) < stmtCacheMax {
		if s.wanted == nil {
			s.wanted = map[string]struct{}{}
		}
		s.wanted[query] = struct{}{}
	}
	return nil
}

// prepareWanted prepares the wanted statements on db. A statement that fails to
// prepare (its table does not exist before Migrate) is dropped from the wanted list
// and runs unprepared; the next use asks for it again.
func (s *stmtCache) prepareWanted(ctx context.Context, db *sql.DB) {
	s.mu.Lock()
	if len(s.wanted) == 0 || s.closed {
		s.mu.Unlock()
		return
	}
	wanted := s.wanted
	s.wanted = nil
	s.mu.Unlock()
	for query := range wanted {
		st, err := db.PrepareContext(ctx, query)
		if err != nil {
			continue
		}
		s.mu.Lock()
		if s.closed || s.stmts[query] != nil {
			s.mu.Unlock()
			_ = st.Close()
			continue
		}
		if s.stmts == nil {
			s.stmts = map[string]*sql.Stmt{}
		}
		s.stmts[query] = st
		s.mu.Unlock()
	}
}

// close closes every prepared statement; later lookups find none.
func (s *stmtCache) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var err error
	for _, st := range s.stmts {
		err = errors.Join(err, st.Close())
	}
	s.stmts, s.wanted = nil, nil
	return err
}

// stmt returns the prepared statement of query for tx, or nil when statements are
// not cached or query is not prepared yet.
func (c *Core) stmt(ctx context.Context, tx *sql.Tx, query string) *sql.Stmt {
	if !c.d.CacheStatements {
		return nil
	}
	if st := c.stmts.lookup(query); st != nil {
		return tx.StmtContext(ctx, st)
	}
	return nil
}

// exec runs query in tx, as a cached prepared statement when there is one.
func (c *Core) exec(ctx context.Context, tx *sql.Tx, query string, args ...any) (sql.Result, error) {
	if st := c.stmt(ctx, tx, query); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return tx.ExecContext(ctx, query, args...)
}

// query runs query in tx, as a cached prepared statement when there is one.
func (c *Core) query(ctx context.Context, tx *sql.Tx, query string, args ...any) (*sql.Rows, error) {
	if st := c.stmt(ctx, tx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, query, args...)
}

// queryRow runs query in tx, as a cached prepared statement when there is one.
func (c *Core) queryRow(ctx context.Context, tx *sql.Tx, query string, args ...any) *sql.Row {
	if st := c.stmt(ctx, tx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return tx.QueryRowContext(ctx, query, args...)
}

// ladder splits the rows [start, end) into runs of a power of two rows, ladderMax at
// most, largest first, appending them to out.
func ladder(out [][2]int, start, end int) [][2]int {
	for start < end {
		k := min(1<<(bits.Len(uint(end-start))-1), ladderMax)
		out = append(out, [2]int{start, start + k})
		start += k
	}
	return out
}
