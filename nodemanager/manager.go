package nodemanager

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tablemq/tablemq/sqlstore"
)

// Activator is what the node manager drives: the broker core (*server.Server).
type Activator interface {
	// Activate makes the broker live under the given fencing epoch.
	Activate(ctx context.Context, epoch int64) error
	// Deactivate stops serving at once and drains; it is idempotent.
	Deactivate()
}

// Outcomes of Run other than a clean stop.
var (
	// ErrLockHeld means policy none could not take the live lock: another instance
	// held it for longer than one lock expiration after this one started.
	ErrLockHeld = errors.New("nodemanager: the live lock is held by another instance")
	// ErrLockLost means policy none lost the live lock (renewal refused or not answered
	// in time) and stopped, as it never waits as a backup.
	ErrLockLost = errors.New("nodemanager: lost the live lock")
	// ErrHandedBack means this backup handed the lock back to a returning primary and
	// stopped, as restart-backup is off. It is a clean stop.
	ErrHandedBack = errors.New("nodemanager: handed back to the primary (restart-backup is off)")
)

// Role is the role of this instance as the node manager sees it.
type Role string

// Roles.
const (
	RoleStarting Role = "starting" // trying the lock for the first time, or activating
	RoleBackup   Role = "backup"   // waiting for the lock
	RoleLive     Role = "live"     // holding the lock and serving
	RoleStopping Role = "stopping" // deactivating, then releasing or waiting again
	RoleStopped  Role = "stopped"  // Run has returned
)

// Status is a snapshot of what this instance knows of its group.
type Status struct {
	Role     Role
	HolderID string // this instance's holder id
	Epoch    int64  // the epoch this instance holds the lock under, or last saw
	// LiveNode is the name of the lock holder as last read; "" when the lock is free.
	LiveNode string
	// LockExpiresAt is the lock's expiry as last read, on the database's clock.
	LockExpiresAt time.Time
	// Backups names the other instances waiting in the group, as last read.
	Backups []string
	// Failback is true while a returning primary waits for the lock.
	Failback bool
}

// Manager runs the HA state machine of one instance. One goroutine (Run) owns the
// state; Status may be called from any goroutine.
type Manager struct {
	store    sqlstore.LeaseStore
	act      Activator
	cfg      Config
	log      *slog.Logger
	holderID string

	mu     sync.Mutex // guards status
	status Status
}

// New returns a Manager for the store and the broker it activates. It does not touch
// the store until Run.
func New(store sqlstore.LeaseStore, act Activator, cfg Config) (*Manager, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("nodemanager: %w", err)
	}
	var b [12]byte
	_, _ = rand.Read(b[:])
	id := cfg.NodeName + "/" + hex.EncodeToString(b[:])
	if len(id) > 128 {
		id = id[len(id)-128:]
	}
	m := &Manager{store: store, act: act, cfg: cfg, holderID: id}
	m.log = cfg.Logger.With("holder", id)
	m.status = Status{Role: RoleStarting, HolderID: id}
	return m, nil
}

// HolderID returns the random id this instance holds the lock under.
func (m *Manager) HolderID() string { return m.holderID }

// Status returns a snapshot of the instance's role and view of the group.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.status
	s.Backups = append([]string(nil), s.Backups...)
	return s
}

func (m *Manager) setRole(r Role) {
	m.mu.Lock()
	m.status.Role = r
	m.mu.Unlock()
}

// observe records what a lease statement read.
func (m *Manager) observe(st *sqlstore.LeaseState) {
	if st == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if st.Held() {
		m.status.LiveNode = st.HolderName
		m.status.LockExpiresAt = time.UnixMicro(st.ExpiresUS).UTC()
	} else {
		m.status.LiveNode = ""
		m.status.LockExpiresAt = time.Time{}
	}
	if m.status.Role != RoleLive && m.status.Role != RoleStopping {
		m.status.Epoch = st.Epoch
	}
	m.status.Backups = m.status.Backups[:0]
	m.status.Failback = false
	for _, mb := range st.Members {
		if mb.HolderID == m.holderID || mb.HolderID == st.HolderID {
			continue
		}
		m.status.Backups = append(m.status.Backups, mb.HolderName)
		if mb.Role == sqlstore.MemberFailback {
			m.status.Failback = true
		}
	}
}

// Run runs the state machine until ctx ends (a graceful stop: the live deactivates and
// releases the lock; it returns nil) or the policy ends it (ErrLockHeld, ErrLockLost,
// ErrHandedBack, or an activation error under policy none).
func (m *Manager) Run(ctx context.Context) error {
	defer m.setRole(RoleStopped)
	wctx, stopWatch := context.WithCancel(ctx)
	wake := m.watch(wctx)
	defer stopWatch()
	defer m.withdraw()

	started := time.Now()
	for {
		st, acquiredAt, err := m.wait(ctx, wake, started)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		out, err := m.live(ctx, st, acquiredAt)
		switch out {
		case outStopped:
			return nil
		case outLost:
			if m.cfg.Policy == PolicyNone {
				return ErrLockLost
			}
		case outHandedBack:
			if !m.cfg.RestartBackup {
				return ErrHandedBack
			}
			m.log.Info("handed back to the primary; waiting as a backup again (restart-backup)")
		case outActivateFailed:
			if m.cfg.Policy == PolicyNone {
				return fmt.Errorf("nodemanager: activate: %w", err)
			}
			if !sleepCtx(ctx, m.cfg.PollInterval) {
				return nil
			}
		}
		started = time.Now()
	}
}

// watch forwards lock releases pushed by the store, when it can push them.
func (m *Manager) watch(ctx context.Context) <-chan struct{} {
	w, ok := m.store.(sqlstore.LeaseWatcher)
	if !ok {
		return nil
	}
	ch, err := w.LeaseWatch(ctx)
	if err != nil {
		m.log.Warn("cannot watch lock releases; polling only", "error", err)
		return nil
	}
	return ch
}

func (m *Manager) withdraw() {
	if m.cfg.Policy == PolicyNone {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.NetworkTimeout)
	defer cancel()
	if err := m.store.LeaseWithdraw(ctx, m.holderID); err != nil {
		m.log.Debug("withdrawing the member row", "error", err)
	}
}

// wait tries the lock every PollInterval (and when a release is pushed) until it is
// taken. It returns the state read by the successful LeaseAcquire and when that
// statement started.
func (m *Manager) wait(ctx context.Context, wake <-chan struct{}, started time.Time) (*sqlstore.LeaseState, time.Time, error) {
	if m.cfg.Policy == PolicyBackup {
		m.setRole(RoleBackup)
	} else {
		m.setRole(RoleStarting)
	}
	primary := m.cfg.Policy != PolicyBackup
	timer := time.NewTimer(0)
	defer timer.Stop()
	var lastErr error
	for attempt := 0; ; attempt++ {
		select {
		case <-ctx.Done():
			return nil, time.Time{}, ctx.Err()
		case <-timer.C:
		case _, ok := <-wake:
			if !ok {
				wake = nil // the watch ended: poll only
				continue
			}
		}
		at := time.Now()
		st, err := m.tryAcquire(ctx, primary)
		if err == nil {
			m.log.Info("took the live lock", "epoch", st.LockEpoch, "after", time.Since(started).Round(time.Millisecond))
			return st, at, nil
		}
		m.observe(st)
		switch {
		case errors.Is(err, sqlstore.ErrLeaseHeld):
			lastErr = nil
			if m.cfg.Policy == PolicyNone {
				// Give a crashed predecessor's lock the time to lapse, no more.
				if time.Since(started) > m.cfg.LockExpiration+m.cfg.PollInterval {
					return nil, time.Time{}, fmt.Errorf("%w: %s", ErrLockHeld, describe(st))
				}
			} else {
				m.setRole(RoleBackup)
				role := sqlstore.MemberBackup
				if m.cfg.Policy == PolicyPrimary && st != nil && st.Held() {
					role = sqlstore.MemberFailback
				}
				m.announce(ctx, role)
			}
		case ctx.Err() != nil:
			return nil, time.Time{}, ctx.Err()
		default:
			if lastErr == nil || attempt%20 == 0 {
				m.log.Warn("trying the live lock", "error", err)
			}
			lastErr = err
		}
		timer.Reset(m.cfg.PollInterval)
	}
}

func describe(st *sqlstore.LeaseState) string {
	if st == nil {
		return "state unknown"
	}
	if st.Held() {
		return fmt.Sprintf("held by %s until %s (database clock)", st.HolderName, time.UnixMicro(st.ExpiresUS).UTC().Format(time.RFC3339Nano))
	}
	if st.State == sqlstore.GroupStatePaused {
		return "the group is paused"
	}
	return "a returning primary is waiting for failback"
}

func (m *Manager) tryAcquire(ctx context.Context, primary bool) (*sqlstore.LeaseState, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.NetworkTimeout)
	defer cancel()
	return m.store.LeaseAcquire(ctx, &sqlstore.LeaseAcquireParams{
		HolderID: m.holderID, HolderName: m.cfg.NodeName, TTL: m.cfg.LockExpiration, Primary: primary,
	})
}

func (m *Manager) announce(ctx context.Context, role string) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.NetworkTimeout)
	defer cancel()
	err := m.store.LeaseAnnounce(ctx, &sqlstore.LeaseAnnounceParams{
		HolderID: m.holderID, HolderName: m.cfg.NodeName, Role: role, TTL: m.cfg.LockExpiration,
	})
	if err != nil && ctx.Err() == nil {
		m.log.Debug("announcing as "+role, "error", err)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
