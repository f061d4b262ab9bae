// Package nodemanager decides which tablemq instance of a live-backup group may write to
// the shared store, and under which fencing epoch.
//
// It owns the HA options (policy, lock renew period, lock expiration, network timeout,
// failover-on-shutdown, allow-failback, restart-backup), their defaults and their
// validation, and the acquisition of the fencing epoch. It speaks to the store only
// through the small Store interface and imports no driver and no HTTP code.
//
// # The spine
//
// This version implements the spine behaviour only: Acquire bumps the fencing epoch at
// once (Store.EpochBump) and returns the new value, whatever the policy. Bumping the
// epoch fences every other instance on the store: each of their write transactions
// from then on fails with sqlstore.ErrFenced (see the fencing argument in package
// sqlstore), so two instances never both commit, but the newest one always wins.
// shared-store-primary and shared-store-backup are accepted and validated, and act as
// none.
//
// # Next: the live lock
//
// The HA issue adds the lease on the node-manager table's live-lock row, measured on
// the database's clock: a live renews it every LockRenewPeriod and trusts it only until
// its last successful renewal's start + LockExpiration - a safety margin (monotonic
// clock), after which it stops serving on its own; a backup polls the row and, when
// the lock has expired or was released, takes it and bumps the epoch in the same
// transaction, then activates. Every lock statement is bounded by NetworkTimeout,
// which is therefore shorter than LockExpiration: a hung renewal must not outlive the
// lock it renews.
package nodemanager
