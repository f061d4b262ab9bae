package sqlstore

import (
	"context"
	"errors"
	"hash/fnv"
	"time"
)

// ErrLeaseLost means this holder does not hold the live lock (any more): a renew found
// it expired, released, or taken under another epoch.
var ErrLeaseLost = errors.New("sqlstore: live lock lost")

// ErrLeaseHeld means the live lock could not be taken: another holder's lease is
// unexpired, the group is paused (for a backup), or a returning primary is waiting for
// failback (for anyone else).
var ErrLeaseHeld = errors.New("sqlstore: live lock held")

// Group states stored in row NodeRowState.
const (
	GroupStateNotStarted = ""       // no live ever ran
	GroupStateLive       = "live"   // a live holds (or held) the lock; a backup may take over when it lapses
	GroupStatePaused     = "paused" // the live stopped without failover: only a primary may take the lock
)

// Member roles announced in member rows (see LeaseAnnounce).
const (
	MemberBackup   = "backup"   // waiting to take over
	MemberFailback = "failback" // a primary waiting for the live backup to hand back
)

// MemberRowBase is the lowest id of a member row in the node-manager table. A member's
// row id is MemberRowID(holderID).
const MemberRowBase = 100

// MemberRowID returns the node-manager row id of a member: MemberRowBase plus a 31-bit
// hash of its holder id. Two holder ids that collide share a row; that only affects
// the list of waiting members shown in status, never the lock.
func MemberRowID(holderID string) int64 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(holderID))
	return MemberRowBase + int64(h.Sum32()&0x7fffffff)
}

// Member is an instance waiting in the group, from its member row.
type Member struct {
	HolderID   string
	HolderName string
	Role       string // MemberBackup or MemberFailback
	ExpiresUS  int64  // database clock, Unix microseconds
}

// LeaseState is a snapshot of the node-manager rows together with the database clock.
type LeaseState struct {
	HolderID   string // "" when the lock is free
	HolderName string
	ExpiresUS  int64 // lock expiry on the database clock, Unix microseconds
	LockEpoch  int64 // the fencing epoch the current holder took the lock under
	Epoch      int64 // the fencing epoch row
	State      string
	NowUS      int64    // the database clock when the state was read
	Members    []Member // unexpired member rows, ordered by holder id
}

// Held reports whether the lock is held by an unexpired lease at NowUS.
func (s *LeaseState) Held() bool { return s.HolderID != "" && s.ExpiresUS >= s.NowUS }

// LeaseAcquireParams is the argument of Driver.LeaseAcquire.
type LeaseAcquireParams struct {
	HolderID   string // unique per process start
	HolderName string // the node name, for status
	TTL        time.Duration
	// Primary lets the caller take the lock while the group is paused and while a
	// failback member other than itself is waiting. Backups leave it false.
	Primary bool
}

// LeaseRenewParams is the argument of Driver.LeaseRenew.
type LeaseRenewParams struct {
	HolderID string
	Epoch    int64 // the epoch the lock was taken under
	TTL      time.Duration
}

// LeaseReleaseParams is the argument of Driver.LeaseRelease.
type LeaseReleaseParams struct {
	HolderID string
	Epoch    int64
	// State is written to the state row in the same transaction (GroupStateLive to let
	// a backup take over, GroupStatePaused to pause the group).
	State string
}

// LeaseAnnounceParams is the argument of Driver.LeaseAnnounce.
type LeaseAnnounceParams struct {
	HolderID   string
	HolderName string
	Role       string // MemberBackup or MemberFailback
	TTL        time.Duration
}

// LeaseStore is the part of Driver the node manager uses. Every method is one
// transaction whose time arithmetic happens in SQL on the database clock
// (clock_timestamp(), NOW(6) in UTC, SQLite's clock); the broker's clock is never
// compared with a stored time. Transactions take the node-manager rows in the order
// state (0), live lock (1), fencing epoch (4), then member rows, so that they cannot
// deadlock with each other or with BatchCommit (which takes only row 4, shared).
// Lease statements run on connections of their own, so a busy writer never delays a
// renewal.
type LeaseStore interface {
	// LeaseAcquire takes the live lock when it is free or expired (and, unless
	// Primary, the group is not paused and no other failback member waits). In the same
	// transaction it increments the fencing epoch, records it as the lock's epoch, and
	// sets the group state to live. It returns the new state, or ErrLeaseHeld with
	// the current state.
	LeaseAcquire(ctx context.Context, params *LeaseAcquireParams) (*LeaseState, error)
	// LeaseRenew extends the lock to now+TTL only while it is held by HolderID under
	// Epoch and is unexpired; otherwise ErrLeaseLost. An expired lease is never
	// revived, even when nobody took it. It returns the state as LeaseGet would (with
	// the member rows), also together with ErrLeaseLost.
	LeaseRenew(ctx context.Context, params *LeaseRenewParams) (*LeaseState, error)
	// LeaseRelease frees the lock held by HolderID under Epoch and writes State, in one
	// transaction, and wakes watchers (LeaseWatcher). ErrLeaseLost when not held.
	LeaseRelease(ctx context.Context, params *LeaseReleaseParams) error
	// LeaseGet reads the lock, state, epoch, unexpired members and the database clock.
	LeaseGet(ctx context.Context) (*LeaseState, error)
	// LeaseAnnounce inserts or refreshes the caller's member row (expiring at now+TTL).
	LeaseAnnounce(ctx context.Context, params *LeaseAnnounceParams) error
	// LeaseWithdraw deletes the caller's member row.
	LeaseWithdraw(ctx context.Context, holderID string) error
}

// LeaseWatcher is implemented by drivers that can push lock releases (PostgreSQL
// LISTEN/NOTIFY). The node manager polls either way; a watcher only makes a graceful
// handover immediate.
type LeaseWatcher interface {
	// LeaseWatch returns a channel that receives a value (coalesced, buffered to one)
	// soon after any LeaseRelease in the group. The channel is closed when ctx ends or
	// the watch fails for good (the caller then relies on polling).
	LeaseWatch(ctx context.Context) (<-chan struct{}, error)
}
