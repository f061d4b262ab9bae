package stdsql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tablemq/tablemq/sqlstore"
)

// Limits of the node-manager columns the lease statements write.
const (
	maxHolderID   = 128
	maxHolderName = 255
)

// LeaseStateSQL renders the one statement that reads the lease state: rows 0, 1 and 4
// and the unexpired member rows of the node-manager table n, each with the database
// clock now (an SQL expression in Unix microseconds) evaluated once in a derived table.
// Columns: id, state, holder_id, holder_name, expires_us, epoch, now_us.
func LeaseStateSQL(n, now string) string {
	return fmt.Sprintf("SELECT nm.id, nm.state, nm.holder_id, nm.holder_name, nm.expires_us, nm.epoch, c.now_us "+
		"FROM (SELECT %s AS now_us) c CROSS JOIN %s nm "+
		"WHERE nm.id IN (%d, %d, %d) OR (nm.id >= %d AND nm.expires_us >= c.now_us) ORDER BY nm.id",
		now, n, sqlstore.NodeRowState, sqlstore.NodeRowLiveLock, sqlstore.NodeRowFence, sqlstore.MemberRowBase)
}

// LeaseSyntax is what the lease statements need of a dialect.
type LeaseSyntax struct {
	// Param renders the n-th (from 1) parameter marker: Dollar or Question.
	Param func(n int) string
	// Bigint renders a parameter marker that the statement adds to the clock: typed on
	// PostgreSQL ("$3::bigint").
	Bigint func(marker string) string
	// NowUS is the database clock in Unix microseconds (an SQL expression).
	NowUS string
	// LockRow is appended to the read of the state row that starts a lease
	// transaction.
	LockRow string
	// MemberUpsertSuffix turns the member-row insert into an insert-or-refresh.
	MemberUpsertSuffix string
	// BumpReturning is appended to the epoch bump (" RETURNING epoch" where the
	// dialect has it; the epoch is read back with FenceGet otherwise).
	BumpReturning string
}

// LeaseStatements are the lease statements on one node-manager table, the same text
// for every dialect but for LeaseSyntax.
type LeaseStatements struct {
	LockState, FailbackWaiting, Acquire, BumpEpoch, FenceGet, SetLockEpoch string
	SetState, Renew, Release, Get, Announce, Withdraw                      string
}

// NewLeaseStatements renders the lease statements on node-manager table n.
func NewLeaseStatements(n string, syn LeaseSyntax) LeaseStatements {
	now := syn.NowUS
	var i int
	// p renders the next parameter of the statement being built; reset starts one.
	p := func() string { i++; return syn.Param(i) }
	reset := func() { i = 0 }
	st := LeaseStatements{}
	reset()
	st.LockState = fmt.Sprintf("SELECT state FROM %s WHERE id = %d%s", n, sqlstore.NodeRowState, syn.LockRow)
	reset()
	st.FailbackWaiting = fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id >= %d AND state = '%s' AND expires_us >= %s AND holder_id <> %s",
		n, sqlstore.MemberRowBase, sqlstore.MemberFailback, now, p())
	reset()
	st.Acquire = fmt.Sprintf("UPDATE %s SET holder_id = %s, holder_name = %s, expires_us = %s + %s, updated_us = %s "+
		"WHERE id = %d AND (holder_id = '' OR expires_us < %s)", n, p(), p(), now, syn.Bigint(p()), now, sqlstore.NodeRowLiveLock, now)
	st.BumpEpoch = fmt.Sprintf("UPDATE %s SET epoch = epoch + 1, updated_us = %s WHERE id = %d%s", n, now, sqlstore.NodeRowFence, syn.BumpReturning)
	st.FenceGet = fmt.Sprintf("SELECT epoch FROM %s WHERE id = %d", n, sqlstore.NodeRowFence)
	reset()
	st.SetLockEpoch = fmt.Sprintf("UPDATE %s SET epoch = %s WHERE id = %d", n, p(), sqlstore.NodeRowLiveLock)
	reset()
	st.SetState = fmt.Sprintf("UPDATE %s SET state = %s, updated_us = %s WHERE id = %d", n, p(), now, sqlstore.NodeRowState)
	reset()
	st.Renew = fmt.Sprintf("UPDATE %s SET expires_us = %s + %s, updated_us = %s "+
		"WHERE id = %d AND holder_id = %s AND epoch = %s AND expires_us >= %s", n, now, syn.Bigint(p()), now, sqlstore.NodeRowLiveLock, p(), p(), now)
	reset()
	st.Release = fmt.Sprintf("UPDATE %s SET holder_id = '', holder_name = '', expires_us = 0, updated_us = %s "+
		"WHERE id = %d AND holder_id = %s AND epoch = %s", n, now, sqlstore.NodeRowLiveLock, p(), p())
	st.Get = LeaseStateSQL(n, now)
	reset()
	st.Announce = fmt.Sprintf("INSERT INTO %s (id, state, holder_id, holder_name, expires_us, updated_us) VALUES (%s, %s, %s, %s, %s + %s, %s)%s",
		n, p(), p(), p(), p(), now, syn.Bigint(p()), now, syn.MemberUpsertSuffix)
	reset()
	st.Withdraw = fmt.Sprintf("DELETE FROM %s WHERE id = %s AND holder_id = %s", n, p(), p())
	return st
}

func newLeaseQueries(d Dialect, n string) LeaseStatements {
	return NewLeaseStatements(n, LeaseSyntax{
		Param: Question, Bigint: func(m string) string { return m }, NowUS: d.NowUS,
		LockRow: d.LockRow, MemberUpsertSuffix: d.MemberUpsertSuffix,
	})
}

// LeaseRow is one row read by LeaseStateSQL.
type LeaseRow struct {
	ID         int64
	State      string
	HolderID   string
	HolderName string
	ExpiresUS  int64
	Epoch      int64
	NowUS      int64
}

// AssembleLeaseState turns the rows read by LeaseStateSQL into a LeaseState, members
// ordered by holder id.
func AssembleLeaseState(rows []LeaseRow) (*sqlstore.LeaseState, error) {
	st := &sqlstore.LeaseState{}
	seen := 0
	for i := range rows {
		r := &rows[i]
		st.NowUS = r.NowUS
		switch {
		case r.ID == sqlstore.NodeRowState:
			st.State = r.State
			seen |= 1
		case r.ID == sqlstore.NodeRowLiveLock:
			st.HolderID, st.HolderName, st.ExpiresUS, st.LockEpoch = r.HolderID, r.HolderName, r.ExpiresUS, r.Epoch
			seen |= 2
		case r.ID == sqlstore.NodeRowFence:
			st.Epoch = r.Epoch
			seen |= 4
		case r.ID >= sqlstore.MemberRowBase:
			st.Members = append(st.Members, sqlstore.Member{HolderID: r.HolderID, HolderName: r.HolderName, Role: r.State, ExpiresUS: r.ExpiresUS})
		}
	}
	if seen != 7 {
		return nil, fmt.Errorf("node-manager rows %d, %d and %d not all present (is the store migrated?): %w",
			sqlstore.NodeRowState, sqlstore.NodeRowLiveLock, sqlstore.NodeRowFence, sqlstore.ErrNotFound)
	}
	slices.SortFunc(st.Members, func(a, b sqlstore.Member) int { return strings.Compare(a.HolderID, b.HolderID) })
	return st, nil
}

// TTLMicros converts a lease TTL to the microseconds the statements add to the database
// clock. It refuses a TTL under one microsecond.
func TTLMicros(ttl time.Duration) (int64, error) {
	us := ttl.Microseconds()
	if us <= 0 {
		return 0, fmt.Errorf("lease TTL %s is not positive", ttl)
	}
	return us, nil
}

// CheckHolder validates a holder id and name against the node-manager columns.
func CheckHolder(id, name string) error {
	switch {
	case id == "":
		return errors.New("empty holder id")
	case len(id) > maxHolderID:
		return fmt.Errorf("holder id longer than %d bytes", maxHolderID)
	case len(name) > maxHolderName:
		return fmt.Errorf("holder name longer than %d bytes", maxHolderName)
	}
	return nil
}

// CheckAcquire validates the parameters of LeaseAcquire and returns the TTL in
// microseconds.
func CheckAcquire(p *sqlstore.LeaseAcquireParams) (int64, error) {
	if err := CheckHolder(p.HolderID, p.HolderName); err != nil {
		return 0, err
	}
	return TTLMicros(p.TTL)
}

// CheckRenew validates the parameters of LeaseRenew and returns the TTL in
// microseconds.
func CheckRenew(p *sqlstore.LeaseRenewParams) (int64, error) {
	if err := CheckHolder(p.HolderID, ""); err != nil {
		return 0, err
	}
	return TTLMicros(p.TTL)
}

// CheckRelease validates the parameters of LeaseRelease.
func CheckRelease(p *sqlstore.LeaseReleaseParams) error {
	if err := CheckHolder(p.HolderID, ""); err != nil {
		return err
	}
	switch p.State {
	case sqlstore.GroupStateLive, sqlstore.GroupStatePaused, sqlstore.GroupStateNotStarted:
		return nil
	}
	return fmt.Errorf("unknown group state %q", p.State)
}

// CheckAnnounce validates the parameters of LeaseAnnounce and returns the TTL in
// microseconds.
func CheckAnnounce(p *sqlstore.LeaseAnnounceParams) (int64, error) {
	if err := CheckHolder(p.HolderID, p.HolderName); err != nil {
		return 0, err
	}
	if p.Role != sqlstore.MemberBackup && p.Role != sqlstore.MemberFailback {
		return 0, fmt.Errorf("unknown member role %q", p.Role)
	}
	return TTLMicros(p.TTL)
}

// leaseTx runs fn in one transaction on the lease pool, retrying the whole transaction
// when the dialect says the error is transient. fn's ErrLeaseHeld and ErrLeaseLost roll
// back and are not retried.
func (c *Core) leaseTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	attempts := max(c.d.TxAttempts, 1)
	var err error
	for attempt := 1; attempt <= attempts; attempt++ {
		err = c.tryLeaseTx(ctx, fn)
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

func (c *Core) tryLeaseTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	defer c.lockWrites()()
	tx, err := c.lease.BeginTx(ctx, c.d.LeaseTxOptions)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		if rbErr := tx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) &&
			!errors.Is(err, sqlstore.ErrLeaseHeld) && !errors.Is(err, sqlstore.ErrLeaseLost) {
			return errors.Join(err, fmt.Errorf("rollback: %w", rbErr))
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// leaseWrap adds context to a lease error; ErrLeaseHeld and ErrLeaseLost pass through
// the dialect's mapping untouched.
func (c *Core) leaseWrap(op string, err error) error {
	if errors.Is(err, sqlstore.ErrLeaseHeld) || errors.Is(err, sqlstore.ErrLeaseLost) {
		return fmt.Errorf("%s: %s: %w", c.d.Name, op, err)
	}
	return c.wrap(op, err)
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func (c *Core) readLeaseState(ctx context.Context, q queryer) (*sqlstore.LeaseState, error) {
	rows, err := q.QueryContext(ctx, c.lq.Get)
	if err != nil {
		return nil, fmt.Errorf("read lease state: %w", err)
	}
	defer rows.Close()
	var out []LeaseRow
	for rows.Next() {
		var r LeaseRow
		if err := rows.Scan(&r.ID, &r.State, &r.HolderID, &r.HolderName, &r.ExpiresUS, &r.Epoch, &r.NowUS); err != nil {
			return nil, fmt.Errorf("read lease state: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read lease state: %w", err)
	}
	return AssembleLeaseState(out)
}

func rowsMatched(res sql.Result) (int64, error) {
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("rows affected: %w", err)
	}
	return n, nil
}

// LeaseAcquire implements sqlstore.LeaseStore.
func (c *Core) LeaseAcquire(ctx context.Context, p *sqlstore.LeaseAcquireParams) (*sqlstore.LeaseState, error) {
	const op = "lease acquire"
	if err := c.checkOpen(op); err != nil {
		return nil, err
	}
	ttl, err := CheckAcquire(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", c.d.Name, op, err)
	}
	// Read before locking: while another holder's lease is unexpired (the common case
	// for a waiting backup) the answer is known without taking a row lock or, on
	// SQLite, the database write lock, which a busy live needs for its commits.
	if cur, err := c.LeaseGet(ctx); err == nil && cur.Held() && cur.HolderID != p.HolderID {
		return cur, c.leaseWrap(op, fmt.Errorf("held by %s: %w", cur.HolderName, sqlstore.ErrLeaseHeld))
	}
	var st *sqlstore.LeaseState
	err = c.leaseTx(ctx, func(tx *sql.Tx) error {
		st = nil
		// Row 0 first: every lease transaction that writes starts here, so they
		// queue in one order and the state cannot change under this one.
		var state string
		if err := tx.QueryRowContext(ctx, c.lq.LockState).Scan(&state); err != nil {
			return fmt.Errorf("lock state row: %w", err)
		}
		eligible := true
		if !p.Primary {
			if state == sqlstore.GroupStatePaused {
				eligible = false
			} else {
				var waiting int64
				if err := tx.QueryRowContext(ctx, c.lq.FailbackWaiting, p.HolderID).Scan(&waiting); err != nil {
					return fmt.Errorf("read failback members: %w", err)
				}
				eligible = waiting == 0
			}
		}
		if eligible {
			res, err := tx.ExecContext(ctx, c.lq.Acquire, p.HolderID, p.HolderName, ttl)
			if err != nil {
				return fmt.Errorf("take live lock: %w", err)
			}
			if n, err := rowsMatched(res); err != nil {
				return err
			} else if n == 0 {
				eligible = false
			}
		}
		if !eligible {
			var err error
			if st, err = c.readLeaseState(ctx, tx); err != nil {
				return err
			}
			return sqlstore.ErrLeaseHeld
		}
		// The exclusive lock on the epoch row waits for every BatchCommit holding it
		// shared; every later one sees the new epoch.
		res, err := tx.ExecContext(ctx, c.lq.BumpEpoch)
		if err != nil {
			return fmt.Errorf("bump fencing epoch: %w", err)
		}
		if n, err := rowsMatched(res); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("bump fencing epoch: %w", sql.ErrNoRows)
		}
		var epoch int64
		if err := tx.QueryRowContext(ctx, c.lq.FenceGet).Scan(&epoch); err != nil {
			return fmt.Errorf("read fencing epoch: %w", err)
		}
		if _, err := tx.ExecContext(ctx, c.lq.SetLockEpoch, epoch); err != nil {
			return fmt.Errorf("record lock epoch: %w", err)
		}
		if _, err := tx.ExecContext(ctx, c.lq.SetState, sqlstore.GroupStateLive); err != nil {
			return fmt.Errorf("write group state: %w", err)
		}
		st, err = c.readLeaseState(ctx, tx)
		return err
	})
	if err != nil {
		if errors.Is(err, sqlstore.ErrLeaseHeld) {
			return st, c.leaseWrap(op, err)
		}
		return nil, c.leaseWrap(op, err)
	}
	return st, nil
}

// LeaseRenew implements sqlstore.LeaseStore. With ErrLeaseLost it also returns the
// state it found.
func (c *Core) LeaseRenew(ctx context.Context, p *sqlstore.LeaseRenewParams) (*sqlstore.LeaseState, error) {
	const op = "lease renew"
	if err := c.checkOpen(op); err != nil {
		return nil, err
	}
	ttl, err := CheckRenew(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", c.d.Name, op, err)
	}
	var st *sqlstore.LeaseState
	var lost bool
	err = c.leaseTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, c.lq.Renew, ttl, p.HolderID, p.Epoch)
		if err != nil {
			return fmt.Errorf("extend live lock: %w", err)
		}
		n, err := rowsMatched(res)
		if err != nil {
			return err
		}
		lost = n == 0
		st, err = c.readLeaseState(ctx, tx)
		return err
	})
	if err != nil {
		return nil, c.leaseWrap(op, err)
	}
	if lost {
		return st, c.leaseWrap(op, fmt.Errorf("holder %s, epoch %d: %w", p.HolderID, p.Epoch, sqlstore.ErrLeaseLost))
	}
	return st, nil
}

// LeaseRelease implements sqlstore.LeaseStore. Nothing wakes watchers: these dialects
// have no LeaseWatcher, and the node manager polls.
func (c *Core) LeaseRelease(ctx context.Context, p *sqlstore.LeaseReleaseParams) error {
	const op = "lease release"
	if err := c.checkOpen(op); err != nil {
		return err
	}
	if err := CheckRelease(p); err != nil {
		return fmt.Errorf("%s: %s: %w", c.d.Name, op, err)
	}
	err := c.leaseTx(ctx, func(tx *sql.Tx) error {
		var state string
		if err := tx.QueryRowContext(ctx, c.lq.LockState).Scan(&state); err != nil {
			return fmt.Errorf("lock state row: %w", err)
		}
		res, err := tx.ExecContext(ctx, c.lq.Release, p.HolderID, p.Epoch)
		if err != nil {
			return fmt.Errorf("free live lock: %w", err)
		}
		if n, err := rowsMatched(res); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("holder %s, epoch %d: %w", p.HolderID, p.Epoch, sqlstore.ErrLeaseLost)
		}
		if _, err := tx.ExecContext(ctx, c.lq.SetState, p.State); err != nil {
			return fmt.Errorf("write group state: %w", err)
		}
		return nil
	})
	if err != nil {
		return c.leaseWrap(op, err)
	}
	return nil
}

// LeaseGet implements sqlstore.LeaseStore: one statement.
func (c *Core) LeaseGet(ctx context.Context) (*sqlstore.LeaseState, error) {
	const op = "lease get"
	if err := c.checkOpen(op); err != nil {
		return nil, err
	}
	st, err := c.readLeaseState(ctx, c.lease)
	if err != nil {
		return nil, c.wrap(op, err)
	}
	return st, nil
}

// LeaseAnnounce implements sqlstore.LeaseStore: one upsert.
func (c *Core) LeaseAnnounce(ctx context.Context, p *sqlstore.LeaseAnnounceParams) error {
	const op = "lease announce"
	if err := c.checkOpen(op); err != nil {
		return err
	}
	ttl, err := CheckAnnounce(p)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", c.d.Name, op, err)
	}
	err = c.leaseTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, c.lq.Announce, sqlstore.MemberRowID(p.HolderID), p.Role, p.HolderID, p.HolderName, ttl)
		return err
	})
	if err != nil {
		return c.wrap(op, err)
	}
	return nil
}

// LeaseWithdraw implements sqlstore.LeaseStore. It deletes the member row only while it
// names holderID, and is a no-op when there is none.
func (c *Core) LeaseWithdraw(ctx context.Context, holderID string) error {
	const op = "lease withdraw"
	if err := c.checkOpen(op); err != nil {
		return err
	}
	if err := CheckHolder(holderID, ""); err != nil {
		return fmt.Errorf("%s: %s: %w", c.d.Name, op, err)
	}
	err := c.leaseTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, c.lq.Withdraw, sqlstore.MemberRowID(holderID), holderID)
		return err
	})
	if err != nil {
		return c.wrap(op, err)
	}
	return nil
}
