package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/internal/stdsql"
)

// NowUS is the database clock in Unix microseconds. clock_timestamp() is the time of
// the call, not of the transaction start as now() is, so a transaction that waited for
// a lock still compares with the present.
const NowUS = "(extract(epoch from clock_timestamp()) * 1000000)::bigint"

// LeaseConnsDefault bounds the separate pool of the lease statements.
const LeaseConnsDefault = 2

// watchCloseTimeout bounds closing a watch connection.
const watchCloseTimeout = 5 * time.Second

// leaseQueries are the shared lease statements (stdsql.NewLeaseStatements) and the
// notification statements only PostgreSQL has.
type leaseQueries struct {
	stdsql.LeaseStatements
	notify, listen string
}

func newLeaseQueries(n string) leaseQueries {
	return leaseQueries{
		LeaseStatements: stdsql.NewLeaseStatements(n, stdsql.LeaseSyntax{
			Param:  stdsql.Dollar,
			Bigint: func(m string) string { return m + "::bigint" },
			NowUS:  NowUS,
			// The state row is locked first by every lease transaction that writes.
			LockRow: " FOR UPDATE",
			MemberUpsertSuffix: " ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, holder_id = EXCLUDED.holder_id, " +
				"holder_name = EXCLUDED.holder_name, expires_us = EXCLUDED.expires_us, updated_us = EXCLUDED.updated_us",
			BumpReturning: " RETURNING epoch",
		}),
		notify: "SELECT pg_notify($1, $2)",
		listen: "LISTEN " + pgx.Identifier{n}.Sanitize(),
	}
}

var _ sqlstore.LeaseWatcher = (*Driver)(nil)

// leaseWrap adds context to a lease error; ErrLeaseHeld and ErrLeaseLost pass through.
func (d *Driver) leaseWrap(op string, err error) error {
	if errors.Is(err, sqlstore.ErrLeaseHeld) || errors.Is(err, sqlstore.ErrLeaseLost) {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	return d.wrap(op, err)
}

// leaseTx runs fn in one READ COMMITTED transaction on the lease pool, retrying after
// a deadlock or serialization failure.
func (d *Driver) leaseTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return d.retry(ctx, func() error { return pgx.BeginFunc(ctx, d.leasePool, fn) })
}

func (d *Driver) readLeaseState(ctx context.Context, q interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}) (*sqlstore.LeaseState, error) {
	rows, err := q.Query(ctx, d.lq.Get)
	if err != nil {
		return nil, fmt.Errorf("read lease state: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (stdsql.LeaseRow, error) {
		var lr stdsql.LeaseRow
		var id int32
		err := r.Scan(&id, &lr.State, &lr.HolderID, &lr.HolderName, &lr.ExpiresUS, &lr.Epoch, &lr.NowUS)
		lr.ID = int64(id)
		return lr, err
	})
	if err != nil {
		return nil, fmt.Errorf("read lease state: %w", err)
	}
	return stdsql.AssembleLeaseState(out)
}

// LeaseAcquire implements sqlstore.LeaseStore.
func (d *Driver) LeaseAcquire(ctx context.Context, p *sqlstore.LeaseAcquireParams) (*sqlstore.LeaseState, error) {
	const op = "lease acquire"
	if err := d.checkOpen(op); err != nil {
		return nil, err
	}
	ttl, err := stdsql.CheckAcquire(p)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: %w", op, err)
	}
	// Read before locking: while another holder's lease is unexpired (the common case
	// for a waiting backup) the answer is known without taking row locks.
	if cur, err := d.LeaseGet(ctx); err == nil && cur.Held() && cur.HolderID != p.HolderID {
		return cur, fmt.Errorf("postgres: %s: held by %s: %w", op, cur.HolderName, sqlstore.ErrLeaseHeld)
	}
	var st *sqlstore.LeaseState
	err = d.leaseTx(ctx, func(tx pgx.Tx) error {
		st = nil
		// Row 0 first: every lease transaction that writes starts here, so they
		// queue in one order and the state cannot change under this one.
		var state string
		if err := tx.QueryRow(ctx, d.lq.LockState).Scan(&state); err != nil {
			return fmt.Errorf("lock state row: %w", err)
		}
		eligible := true
		if !p.Primary {
			if state == sqlstore.GroupStatePaused {
				eligible = false
			} else {
				var waiting int64
				if err := tx.QueryRow(ctx, d.lq.FailbackWaiting, p.HolderID).Scan(&waiting); err != nil {
					return fmt.Errorf("read failback members: %w", err)
				}
				eligible = waiting == 0
			}
		}
		if eligible {
			tag, err := tx.Exec(ctx, d.lq.Acquire, p.HolderID, p.HolderName, ttl)
			if err != nil {
				return fmt.Errorf("take live lock: %w", err)
			}
			eligible = tag.RowsAffected() == 1
		}
		if !eligible {
			var err error
			if st, err = d.readLeaseState(ctx, tx); err != nil {
				return err
			}
			return sqlstore.ErrLeaseHeld
		}
		// The exclusive lock on the epoch row waits for every BatchCommit holding it
		// FOR SHARE; every later one sees the new epoch.
		var epoch int64
		if err := tx.QueryRow(ctx, d.lq.BumpEpoch).Scan(&epoch); err != nil {
			return fmt.Errorf("bump fencing epoch: %w", err)
		}
		if _, err := tx.Exec(ctx, d.lq.SetLockEpoch, epoch); err != nil {
			return fmt.Errorf("record lock epoch: %w", err)
		}
		if _, err := tx.Exec(ctx, d.lq.SetState, sqlstore.GroupStateLive); err != nil {
			return fmt.Errorf("write group state: %w", err)
		}
		st, err = d.readLeaseState(ctx, tx)
		return err
	})
	if err != nil {
		if errors.Is(err, sqlstore.ErrLeaseHeld) {
			return st, d.leaseWrap(op, err)
		}
		return nil, d.leaseWrap(op, err)
	}
	return st, nil
}

// LeaseRenew implements sqlstore.LeaseStore. The conditional UPDATE and the read of
// the state go in one round trip as one implicit transaction. With ErrLeaseLost it also
// returns the state it found.
func (d *Driver) LeaseRenew(ctx context.Context, p *sqlstore.LeaseRenewParams) (*sqlstore.LeaseState, error) {
	const op = "lease renew"
	if err := d.checkOpen(op); err != nil {
		return nil, err
	}
	ttl, err := stdsql.CheckRenew(p)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: %w", op, err)
	}
	var st *sqlstore.LeaseState
	var lost bool
	err = d.retry(ctx, func() error {
		var b pgx.Batch
		b.Queue(d.lq.Renew, ttl, p.HolderID, p.Epoch)
		b.Queue(d.lq.Get)
		res := d.leasePool.SendBatch(ctx, &b)
		tag, err := res.Exec()
		if err != nil {
			_ = res.Close()
			return fmt.Errorf("extend live lock: %w", err)
		}
		lost = tag.RowsAffected() == 0
		rows, err := res.Query()
		if err != nil {
			_ = res.Close()
			return fmt.Errorf("read lease state: %w", err)
		}
		out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (stdsql.LeaseRow, error) {
			var lr stdsql.LeaseRow
			var id int32
			err := r.Scan(&id, &lr.State, &lr.HolderID, &lr.HolderName, &lr.ExpiresUS, &lr.Epoch, &lr.NowUS)
			lr.ID = int64(id)
			return lr, err
		})
		if err != nil {
			_ = res.Close()
			return fmt.Errorf("read lease state: %w", err)
		}
		if err := res.Close(); err != nil {
			return fmt.Errorf("renew: %w", err)
		}
		st, err = stdsql.AssembleLeaseState(out)
		return err
	})
	if err != nil {
		return nil, d.leaseWrap(op, err)
	}
	if lost {
		return st, d.leaseWrap(op, fmt.Errorf("holder %s, epoch %d: %w", p.HolderID, p.Epoch, sqlstore.ErrLeaseLost))
	}
	return st, nil
}

// LeaseRelease implements sqlstore.LeaseStore. The transaction also notifies the
// channel named after the node-manager table, which LeaseWatch listens on; PostgreSQL
// delivers the notification only if it commits.
func (d *Driver) LeaseRelease(ctx context.Context, p *sqlstore.LeaseReleaseParams) error {
	const op = "lease release"
	if err := d.checkOpen(op); err != nil {
		return err
	}
	if err := stdsql.CheckRelease(p); err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	err := d.leaseTx(ctx, func(tx pgx.Tx) error {
		var state string
		if err := tx.QueryRow(ctx, d.lq.LockState).Scan(&state); err != nil {
			return fmt.Errorf("lock state row: %w", err)
		}
		tag, err := tx.Exec(ctx, d.lq.Release, p.HolderID, p.Epoch)
		if err != nil {
			return fmt.Errorf("free live lock: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("holder %s, epoch %d: %w", p.HolderID, p.Epoch, sqlstore.ErrLeaseLost)
		}
		if _, err := tx.Exec(ctx, d.lq.SetState, p.State); err != nil {
			return fmt.Errorf("write group state: %w", err)
		}
		if _, err := tx.Exec(ctx, d.lq.notify, d.t.NodeManager, p.HolderID); err != nil {
			return fmt.Errorf("notify watchers: %w", err)
		}
		return nil
	})
	if err != nil {
		return d.leaseWrap(op, err)
	}
	return nil
}

// LeaseGet implements sqlstore.LeaseStore: one statement.
func (d *Driver) LeaseGet(ctx context.Context) (*sqlstore.LeaseState, error) {
	const op = "lease get"
	if err := d.checkOpen(op); err != nil {
		return nil, err
	}
	st, err := d.readLeaseState(ctx, d.leasePool)
	if err != nil {
		return nil, d.wrap(op, err)
	}
	return st, nil
}

// LeaseAnnounce implements sqlstore.LeaseStore: one upsert.
func (d *Driver) LeaseAnnounce(ctx context.Context, p *sqlstore.LeaseAnnounceParams) error {
	const op = "lease announce"
	if err := d.checkOpen(op); err != nil {
		return err
	}
	ttl, err := stdsql.CheckAnnounce(p)
	if err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	err = d.retry(ctx, func() error {
		_, err := d.leasePool.Exec(ctx, d.lq.Announce, sqlstore.MemberRowID(p.HolderID), p.Role, p.HolderID, p.HolderName, ttl)
		return err
	})
	if err != nil {
		return d.wrap(op, err)
	}
	return nil
}

// LeaseWithdraw implements sqlstore.LeaseStore. It deletes the member row only while it
// names holderID, and is a no-op when there is none.
func (d *Driver) LeaseWithdraw(ctx context.Context, holderID string) error {
	const op = "lease withdraw"
	if err := d.checkOpen(op); err != nil {
		return err
	}
	if err := stdsql.CheckHolder(holderID, ""); err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	if _, err := d.leasePool.Exec(ctx, d.lq.Withdraw, sqlstore.MemberRowID(holderID), holderID); err != nil {
		return d.wrap(op, err)
	}
	return nil
}

// LeaseWatch implements sqlstore.LeaseWatcher. It opens a connection of its own (not
// from either pool) and LISTENs before returning, so every release that commits after
// LeaseWatch returns is seen. The channel is closed when ctx ends, the driver closes,
// or the connection fails; the goroutine behind it has ended (and the connection is
// closed) by then, or at the latest when Close returns.
func (d *Driver) LeaseWatch(ctx context.Context) (<-chan struct{}, error) {
	const op = "lease watch"
	if err := d.checkOpen(op); err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, d.connConfig.Copy())
	if err != nil {
		return nil, d.wrap(op, err)
	}
	if _, err := conn.Exec(ctx, d.lq.listen); err != nil {
		closeConn(conn)
		return nil, d.wrap(op, err)
	}
	// Under watchMu, Close either has not begun (and will wait for this goroutine) or
	// has marked the driver closed (and this watch is refused).
	d.watchMu.Lock()
	defer d.watchMu.Unlock()
	if err := d.checkOpen(op); err != nil {
		closeConn(conn)
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(d.closing, cancel)
	ch := make(chan struct{}, 1)
	d.watchers.Add(1)
	go func() {
		defer d.watchers.Done()
		defer close(ch)
		defer stop()
		defer cancel()
		defer closeConn(conn)
		for {
			if _, err := conn.WaitForNotification(wctx); err != nil {
				if wctx.Err() == nil {
					d.logger.Warn("postgres: lease watch ended; relying on polling", "error", err)
				}
				return
			}
			select {
			case ch <- struct{}{}:
			default: // one is pending already
			}
		}
	}()
	return ch, nil
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), watchCloseTimeout)
	defer cancel()
	_ = conn.Close(ctx)
}

// newLeasePool opens the small pool of the lease statements from the main pool's
// configuration.
func newLeasePool(ctx context.Context, pcfg *pgxpool.Config) (*pgxpool.Pool, error) {
	lcfg := pcfg.Copy()
	lcfg.MaxConns = LeaseConnsDefault
	lcfg.MinConns = 0
	return pgxpool.NewWithConfig(ctx, lcfg)
}
