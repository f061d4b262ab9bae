package nodemanager

import (
	"context"
	"errors"
	"time"

	"github.com/tablemq/tablemq/sqlstore"
)

// outcome is how a live period ended.
type outcome int

const (
	outStopped        outcome = iota // ctx ended: deactivated and released
	outLost                          // renewal refused, or the local deadline passed
	outHandedBack                    // released to a returning primary
	outActivateFailed                // Activate failed; the lock was released
)

type renewResult struct {
	start time.Time
	st    *sqlstore.LeaseState
	err   error
}

// live holds the lock taken at acquiredAt: it activates the broker, renews the lock,
// fences itself at its local deadline, and ends by one of the outcomes. Renewals run
// on their own goroutine, one at a time, so that a hanging statement never delays the
// deadline; activation and deactivation run on their own goroutine so that renewals go
// on meanwhile.
func (m *Manager) live(ctx context.Context, st *sqlstore.LeaseState, acquiredAt time.Time) (outcome, error) {
	epoch := st.LockEpoch
	log := m.log.With("epoch", epoch)
	m.mu.Lock()
	m.status.Role = RoleStarting
	m.status.Epoch = epoch
	m.mu.Unlock()
	m.observe(st)
	m.withdraw() // the live has no member row

	expiration, margin := m.cfg.LockExpiration, m.cfg.SafetyMargin
	deadline := acquiredAt.Add(expiration - margin)
	deadlineTimer := time.NewTimer(time.Until(deadline))
	defer deadlineTimer.Stop()
	ticker := time.NewTicker(m.cfg.LockRenewPeriod)
	defer ticker.Stop()

	actCtx, cancelAct := context.WithCancel(ctx)
	defer cancelAct()
	actDone := make(chan error, 1)
	go func() { actDone <- m.act.Activate(actCtx, epoch) }()
	activating := true
	var actErr error

	renewDone := make(chan renewResult, 1)
	renewing := false
	defer func() {
		if renewing {
			<-renewDone // bounded by the statement's deadline
		}
	}()

	var deactDone chan struct{}
	var reason outcome
	lockLost := false
	done := ctx.Done()

	deactivate := func(why outcome) {
		if deactDone != nil {
			return
		}
		reason = why
		m.setRole(RoleStopping)
		cancelAct()
		deactDone = make(chan struct{})
		waitAct := activating
		activating = false
		go func() {
			if waitAct {
				// Cancelled: its outcome no longer matters, it is undone below.
				if err := <-actDone; err != nil {
					log.Debug("activation cancelled", "error", err)
				}
			}
			m.act.Deactivate()
			close(deactDone)
		}()
	}
	lose := func(msg string, err error) {
		lockLost = true
		if deactDone == nil {
			log.Error(msg+": stopped serving", "error", err)
			deactivate(outLost)
		}
	}

	for {
		select {
		case err := <-actDone:
			activating = false
			if err != nil {
				actErr = err
				log.Error("activation failed; releasing the live lock", "error", err)
				deactivate(outActivateFailed)
				continue
			}
			m.setRole(RoleLive)
			log.Info("live", "node", m.cfg.NodeName)

		case <-ticker.C:
			if renewing || lockLost {
				continue
			}
			renewing = true
			start := time.Now()
			timeout := min(m.cfg.NetworkTimeout, time.Until(deadline))
			go func() {
				r := renewResult{start: start}
				rctx, cancel := context.WithTimeout(context.Background(), max(timeout, time.Millisecond))
				defer cancel()
				// The renewal also reads the member rows, where a returning primary
				// announces itself (allow-failback).
				r.st, r.err = m.store.LeaseRenew(rctx, &sqlstore.LeaseRenewParams{
					HolderID: m.holderID, Epoch: epoch, TTL: expiration,
				})
				if m.cfg.OnRenew != nil {
					m.cfg.OnRenew(time.Since(start), r.err)
				}
				renewDone <- r
			}()

		case r := <-renewDone:
			renewing = false
			if lockLost {
				continue
			}
			switch {
			case r.err == nil:
				deadline = r.start.Add(expiration - margin)
				if !deadlineTimer.Stop() {
					select {
					case <-deadlineTimer.C:
					default:
					}
				}
				deadlineTimer.Reset(time.Until(deadline))
				m.observe(r.st)
				if deactDone == nil && m.cfg.Policy == PolicyBackup && m.cfg.AllowFailback && m.Status().Failback {
					log.Info("a primary is back: handing the live lock back (allow-failback)")
					deactivate(outHandedBack)
				}
			case errors.Is(r.err, sqlstore.ErrLeaseLost):
				lose("the live lock was lost (taken over or expired)", r.err)
			default:
				log.Warn("renewing the live lock failed; retrying until the local deadline",
					"error", r.err, "deadline_in", time.Until(deadline).Round(time.Millisecond))
			}

		case <-deadlineTimer.C:
			if !lockLost {
				lose("self-fencing: the live lock could not be renewed before its local deadline", nil)
			}

		case <-done:
			done = nil
			if deactDone == nil {
				log.Info("stopping: deactivating, then releasing the live lock",
					"failover_on_shutdown", m.cfg.FailoverOnShutdown)
				deactivate(outStopped)
			}

		case <-deactDone:
			if !lockLost {
				state := sqlstore.GroupStateLive
				if reason == outStopped && !m.cfg.FailoverOnShutdown {
					state = sqlstore.GroupStatePaused
				}
				m.release(epoch, state)
			}
			if reason == outStopped {
				return outStopped, nil
			}
			if lockLost && reason != outLost && ctx.Err() == nil {
				// The lock lapsed while deactivating for another reason.
				return outLost, nil
			}
			if ctx.Err() != nil {
				return outStopped, nil
			}
			return reason, actErr
		}
	}
}

func (m *Manager) release(epoch int64, state string) {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.NetworkTimeout)
	defer cancel()
	err := m.store.LeaseRelease(ctx, &sqlstore.LeaseReleaseParams{HolderID: m.holderID, Epoch: epoch, State: state})
	switch {
	case err == nil:
		m.log.Info("released the live lock", "epoch", epoch, "group_state", state)
	case errors.Is(err, sqlstore.ErrLeaseLost):
		m.log.Warn("the live lock had already lapsed when releasing it", "epoch", epoch)
	default:
		m.log.Error("releasing the live lock failed; it lapses on its own", "epoch", epoch, "error", err)
	}
}
