// Package nodemanager decides which tablemq instance of a live-backup group serves and
// writes the shared store, and under which fencing epoch. It owns the live lock of the
// node-manager table (through sqlstore.LeaseStore), the HA options and the HA state
// machine, and tells the broker core when to activate and when to stop (Activator). It
// imports no driver and no HTTP code.
//
// # Rows
//
// The node-manager table holds: row 0, the group state ("" not started, "live",
// "paused"); row 1, the live lock (holder id, holder name, expiry, and the epoch it was
// taken under); row 3, reserved for a node id; row 4, the fencing epoch, read under a
// share lock by every write transaction (see package sqlstore); and one member row per
// waiting instance (id sqlstore.MemberRowID(holder id)), each with a role ("backup",
// or "failback" for a primary waiting to get the lock back) and an expiry, refreshed
// every poll. A holder id is random per process start.
//
// # States
//
//	                 ┌──────────── lock lost / self-fenced (policy primary, backup) ─────┐
//	                 ▼                                                                    │
//	start ──► waiting ──LeaseAcquire ok (epoch+1)──► activating ──Activate ok──► live ───┤
//	            ▲  │                                                              │      │
//	            │  └─ policy none: lock still held one lock-expiration            │      ▼
//	            │     after start ──► exit (ErrLockHeld)             ctx done ─────┤  lost (policy none
//	            │                                                                  │   ──► exit ErrLockLost)
//	            └──── handed back to a returning primary (restart-backup) ◄────────┤
//	                                                                               ▼
//	                           release: state "live" (failover-on-shutdown) or "paused" ──► stopped
//
// Waiting: every PollInterval (and at once when the store pushes a release, on
// PostgreSQL by LISTEN/NOTIFY) the instance refreshes its member row and tries
// LeaseAcquire. The statement succeeds only when the lock is free or expired on the
// database's clock; a backup also needs the group not paused and no other primary
// waiting for failback. A primary (and an instance with policy none) may take a paused
// group's lock. Exactly one of any number of contenders wins: the statement is a
// conditional UPDATE of row 1, serialised by its row lock.
//
// Live: the lock is renewed every LockRenewPeriod by a statement that succeeds only
// while it is held by this holder under this epoch and is unexpired (an expired lease
// is never revived). The live trusts the lock only until its local deadline: the start
// of the last successful renewal + LockExpiration − SafetyMargin, on the monotonic
// clock. Every renewal is bounded by NetworkTimeout and by the time left before the
// deadline. At the deadline the instance deactivates at once, whether or not a renewal
// is still hanging (self-fencing); a renewal answered "lost" deactivates it at once too.
// A primary or backup then waits again; policy none exits.
//
// Failback: a primary that starts while another instance is live announces itself
// with a "failback" member row. A live that took over as backup with AllowFailback
// sees it (it reads the rows every renewal), deactivates, and releases the lock with
// state "live"; the primary takes it. With RestartBackup the old backup then waits as a
// backup again, otherwise it stops. If the returning primary dies meanwhile its member
// row expires after LockExpiration and any backup may take the lock again: no state
// is left for nobody to clear (Artemis's FAILING_BACK hole).
//
// Graceful stop (ctx of Run ends): the live deactivates (the broker drains its writer)
// and releases the lock, writing state "live" when FailoverOnShutdown (a backup takes
// over at once) or "paused" otherwise (no backup takes over until a primary starts).
//
// # Safety
//
// The lock decides who serves; the epoch decides who may commit. A takeover increments
// the epoch in the transaction that takes the lock, and every write transaction of the
// broker checks the epoch under a share lock (package sqlstore), so the old live's
// writes either commit before the takeover commits or fail with ErrFenced: whatever a
// deposed live does (paused by SIGSTOP, cut off from the database, a clock that jumps),
// it never commits after another instance took over. Self-fencing is for clients, not
// for safety: it makes a live that cannot renew stop answering before its lock can
// expire, so that clients move to the next live instead of waiting on a zombie. The
// local deadline is sound because the database computes the expiry from its own clock
// at the moment it executes the renewal, which is after the renewal started on the
// broker; the margin covers the two clocks' rates differing. Lock times are never
// compared with the broker's wall clock.
package nodemanager
