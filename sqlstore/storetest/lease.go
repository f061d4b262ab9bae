package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
)

// Lease timings. shortTTL must be long enough for one statement on a loaded CI
// machine, longTTL long enough never to lapse during a test.
const (
	shortTTL = 200 * time.Millisecond
	longTTL  = time.Minute
)

// leaseTests are the LeaseStore cases, run by Exercise.
var leaseTests = []struct {
	name string
	fn   func(t *testing.T, h Harness)
}{
	{"LeaseAcquire", testLeaseAcquire},
	{"LeaseTakeover", testLeaseTakeover},
	{"LeaseRenew", testLeaseRenew},
	{"LeaseNoRevival", testLeaseNoRevival},
	{"LeaseRelease", testLeaseRelease},
	{"LeaseFailback", testLeaseFailback},
	{"LeaseMembers", testLeaseMembers},
	{"LeaseAcquireRace", testLeaseAcquireRace},
	{"LeaseFenceRace", testLeaseFenceRace},
	{"LeaseTableNames", testLeaseTableNames},
	{"LeaseInvalid", testLeaseInvalid},
	{"LeaseWatch", testLeaseWatch},
}

// migrated opens and migrates a fresh store without touching the epoch.
func migrated(t *testing.T, h Harness) *bundle {
	t.Helper()
	ctx := ctxT(t)
	url := h.NewURL(t)
	drv := h.Open(t, url, migrations.Tables{})
	require.NoError(t, drv.Migrate(ctx))
	return &bundle{url: url, drv: drv, ctx: ctx}
}

func acq(id string, ttl time.Duration, primary bool) *sqlstore.LeaseAcquireParams {
	return &sqlstore.LeaseAcquireParams{HolderID: id, HolderName: "node-" + id, TTL: ttl, Primary: primary}
}

// leaseGet reads the lease state and checks the invariants every state holds.
func leaseGet(t testing.TB, ctx context.Context, drv sqlstore.Driver) *sqlstore.LeaseState {
	t.Helper()
	st, err := drv.LeaseGet(ctx)
	require.NoError(t, err)
	requireSane(t, st)
	return st
}

func requireSane(t testing.TB, st *sqlstore.LeaseState) {
	t.Helper()
	require.NotNil(t, st)
	// The database runs next to the tests: its clock is near ours.
	require.InDelta(t, time.Now().UnixMicro(), st.NowUS, float64(5*time.Minute/time.Microsecond), "database clock")
	for i, m := range st.Members {
		require.GreaterOrEqual(t, m.ExpiresUS, st.NowUS, "member %s is expired", m.HolderID)
		if i > 0 {
			require.Less(t, st.Members[i-1].HolderID, m.HolderID, "members are ordered by holder id")
		}
	}
}

// acquireWithin polls LeaseAcquire until it succeeds; only ErrLeaseHeld is retried.
func acquireWithin(t testing.TB, ctx context.Context, drv sqlstore.Driver, p *sqlstore.LeaseAcquireParams, within time.Duration) *sqlstore.LeaseState {
	t.Helper()
	var st *sqlstore.LeaseState
	waitFor(t, within, func() bool {
		var err error
		st, err = drv.LeaseAcquire(ctx, p)
		if errors.Is(err, sqlstore.ErrLeaseHeld) {
			require.NotNil(t, st, "ErrLeaseHeld comes with the current state")
			return false
		}
		require.NoError(t, err)
		return true
	})
	requireSane(t, st)
	return st
}

// waitExpired polls until the lock is no longer held on the database clock.
func waitExpired(t testing.TB, ctx context.Context, drv sqlstore.Driver, within time.Duration) *sqlstore.LeaseState {
	t.Helper()
	var st *sqlstore.LeaseState
	waitFor(t, within, func() bool {
		st = leaseGet(t, ctx, drv)
		return !st.Held()
	})
	return st
}

func requireHeld(t testing.TB, st *sqlstore.LeaseState, err error, holder string) {
	t.Helper()
	require.ErrorIs(t, err, sqlstore.ErrLeaseHeld)
	require.NotNil(t, st, "ErrLeaseHeld comes with the current state")
	requireSane(t, st)
	require.Equal(t, holder, st.HolderID)
}

func testLeaseAcquire(t *testing.T, h Harness) {
	b := migrated(t, h)
	st := leaseGet(t, b.ctx, b.drv)
	require.Equal(t, sqlstore.GroupStateNotStarted, st.State)
	require.Empty(t, st.HolderID)
	require.False(t, st.Held())
	require.Zero(t, st.Epoch)
	require.Empty(t, st.Members)

	st, err := b.drv.LeaseAcquire(b.ctx, acq("a", longTTL, false))
	require.NoError(t, err)
	requireSane(t, st)
	require.Equal(t, "a", st.HolderID)
	require.Equal(t, "node-a", st.HolderName)
	require.Equal(t, sqlstore.GroupStateLive, st.State)
	require.Equal(t, int64(1), st.Epoch)
	require.Equal(t, int64(1), st.LockEpoch)
	require.True(t, st.Held())
	require.Greater(t, st.ExpiresUS, st.NowUS)
	require.LessOrEqual(t, st.ExpiresUS-st.NowUS, longTTL.Microseconds(), "expiry is now + TTL on the database clock")
	require.Greater(t, st.ExpiresUS-st.NowUS, (longTTL - 10*time.Second).Microseconds())
	require.Equal(t, st.HolderID, leaseGet(t, b.ctx, b.drv).HolderID)

	// The acquisition moved the fencing epoch: writes go under it.
	e, err := b.drv.EpochGet(b.ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), e)
	require.NoError(t, b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: 1, Batch: &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 1)}}}))
	require.ErrorIs(t, b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: 0, Batch: &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 2)}}}), sqlstore.ErrFenced)

	// Nobody takes an unexpired lease: not another holder, not a primary, not the
	// holder itself (acquisition is not re-entrant), and not through another driver.
	other := h.Open(t, b.url, migrations.Tables{})
	for _, p := range []*sqlstore.LeaseAcquireParams{acq("b", longTTL, false), acq("b", longTTL, true), acq("a", longTTL, true)} {
		for _, d := range []sqlstore.Driver{b.drv, other} {
			st, err := d.LeaseAcquire(b.ctx, p)
			requireHeld(t, st, err, "a")
			require.Equal(t, int64(1), st.Epoch, "a refused acquisition does not move the epoch")
		}
	}
}

func testLeaseTakeover(t *testing.T, h Harness) {
	b := migrated(t, h)
	a, err := b.drv.LeaseAcquire(b.ctx, acq("a", shortTTL, false))
	require.NoError(t, err)
	require.NoError(t, b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: a.Epoch, Batch: &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 1)}}}))

	other := h.Open(t, b.url, migrations.Tables{})
	st, err := other.LeaseAcquire(b.ctx, acq("b", longTTL, false))
	if err == nil {
		t.Skipf("the %s lease expired before the first attempt (machine too slow for a %s TTL)", shortTTL, shortTTL)
	}
	requireHeld(t, st, err, "a")

	st = acquireWithin(t, b.ctx, other, acq("b", longTTL, false), 30*time.Second)
	require.Equal(t, "b", st.HolderID)
	require.Equal(t, a.Epoch+1, st.Epoch)
	require.Equal(t, a.Epoch+1, st.LockEpoch)
	require.Equal(t, sqlstore.GroupStateLive, st.State)

	// The deposed holder can neither renew nor write.
	_, err = b.drv.LeaseRenew(b.ctx, &sqlstore.LeaseRenewParams{HolderID: "a", Epoch: a.Epoch, TTL: longTTL})
	require.ErrorIs(t, err, sqlstore.ErrLeaseLost)
	err = b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: a.Epoch, Batch: &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 2)}}})
	require.ErrorIs(t, err, sqlstore.ErrFenced)
	require.ErrorIs(t, b.drv.LeaseRelease(b.ctx, &sqlstore.LeaseReleaseParams{HolderID: "a", Epoch: a.Epoch, State: sqlstore.GroupStatePaused}), sqlstore.ErrLeaseLost)
	st = leaseGet(t, b.ctx, b.drv)
	require.Equal(t, "b", st.HolderID)
	require.Equal(t, sqlstore.GroupStateLive, st.State, "a refused release writes no state")
	require.Equal(t, []int64{1}, ids(b.scanAll(t, "q")))

	// The new holder writes under the new epoch.
	require.NoError(t, other.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: st.Epoch, Batch: &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 3)}}}))
}

func testLeaseRenew(t *testing.T, h Harness) {
	b := migrated(t, h)
	st, err := b.drv.LeaseAcquire(b.ctx, acq("a", 10*time.Second, false))
	require.NoError(t, err)
	epoch, exp := st.Epoch, st.ExpiresUS

	// A renewal extends to now + TTL: a longer TTL at once, the same TTL as the
	// database clock advances.
	r, err := b.drv.LeaseRenew(b.ctx, &sqlstore.LeaseRenewParams{HolderID: "a", Epoch: epoch, TTL: longTTL})
	require.NoError(t, err)
	requireSane(t, r)
	require.Greater(t, r.ExpiresUS, exp)
	require.LessOrEqual(t, r.ExpiresUS-r.NowUS, longTTL.Microseconds())
	require.Equal(t, "a", r.HolderID)
	require.Equal(t, epoch, r.Epoch)
	require.Equal(t, epoch, r.LockEpoch)
	exp = r.ExpiresUS
	waitFor(t, 10*time.Second, func() bool {
		r, err = b.drv.LeaseRenew(b.ctx, &sqlstore.LeaseRenewParams{HolderID: "a", Epoch: epoch, TTL: longTTL})
		require.NoError(t, err)
		require.GreaterOrEqual(t, r.ExpiresUS, exp, "a renewal never shortens the lease by itself")
		return r.ExpiresUS > exp
	})
	require.Equal(t, r.ExpiresUS, leaseGet(t, b.ctx, b.drv).ExpiresUS)

	// Only the holder under its own epoch renews.
	for _, p := range []*sqlstore.LeaseRenewParams{
		{HolderID: "b", Epoch: epoch, TTL: longTTL},
		{HolderID: "a", Epoch: epoch + 1, TTL: longTTL},
		{HolderID: "a", Epoch: epoch - 1, TTL: longTTL},
	} {
		_, err := b.drv.LeaseRenew(b.ctx, p)
		require.ErrorIs(t, err, sqlstore.ErrLeaseLost, "%+v", p)
	}
	require.Equal(t, r.ExpiresUS, leaseGet(t, b.ctx, b.drv).ExpiresUS, "a refused renewal changes nothing")
}

// testLeaseNoRevival is the Artemis bug turned around: an expired lease stays expired
// even when nobody took it.
func testLeaseNoRevival(t *testing.T, h Harness) {
	b := migrated(t, h)
	st, err := b.drv.LeaseAcquire(b.ctx, acq("a", shortTTL, false))
	require.NoError(t, err)
	expired := waitExpired(t, b.ctx, b.drv, 30*time.Second)
	require.Equal(t, "a", expired.HolderID, "nobody took it")

	_, err = b.drv.LeaseRenew(b.ctx, &sqlstore.LeaseRenewParams{HolderID: "a", Epoch: st.Epoch, TTL: longTTL})
	require.ErrorIs(t, err, sqlstore.ErrLeaseLost)
	after := leaseGet(t, b.ctx, b.drv)
	require.False(t, after.Held())
	require.Equal(t, expired.ExpiresUS, after.ExpiresUS)

	// The old holder may still release what nobody took (clearing it), or anyone
	// acquires it under a new epoch.
	st2, err := b.drv.LeaseAcquire(b.ctx, acq("a", longTTL, false))
	require.NoError(t, err, "an expired lease is free, also for its old holder (under a new epoch)")
	require.Equal(t, st.Epoch+1, st2.Epoch)
	_, err = b.drv.LeaseRenew(b.ctx, &sqlstore.LeaseRenewParams{HolderID: "a", Epoch: st.Epoch, TTL: longTTL})
	require.ErrorIs(t, err, sqlstore.ErrLeaseLost, "the old epoch is gone for good")
}

func testLeaseRelease(t *testing.T, h Harness) {
	b := migrated(t, h)
	a, err := b.drv.LeaseAcquire(b.ctx, acq("a", longTTL, true))
	require.NoError(t, err)

	// Only the holder under its own epoch releases; a refused release writes no
	// state.
	for _, p := range []*sqlstore.LeaseReleaseParams{
		{HolderID: "a", Epoch: a.Epoch + 1, State: sqlstore.GroupStatePaused},
		{HolderID: "b", Epoch: a.Epoch, State: sqlstore.GroupStatePaused},
	} {
		require.ErrorIs(t, b.drv.LeaseRelease(b.ctx, p), sqlstore.ErrLeaseLost, "%+v", p)
	}
	st := leaseGet(t, b.ctx, b.drv)
	require.Equal(t, "a", st.HolderID)
	require.Equal(t, sqlstore.GroupStateLive, st.State)

	// Pause: the lock is free, but only a primary takes it.
	require.NoError(t, b.drv.LeaseRelease(b.ctx, &sqlstore.LeaseReleaseParams{HolderID: "a", Epoch: a.Epoch, State: sqlstore.GroupStatePaused}))
	st = leaseGet(t, b.ctx, b.drv)
	require.Empty(t, st.HolderID)
	require.Empty(t, st.HolderName)
	require.False(t, st.Held())
	require.Equal(t, sqlstore.GroupStatePaused, st.State)
	require.Equal(t, a.Epoch, st.Epoch, "a release does not move the epoch")
	require.ErrorIs(t, b.drv.LeaseRelease(b.ctx, &sqlstore.LeaseReleaseParams{HolderID: "a", Epoch: a.Epoch, State: sqlstore.GroupStateLive}),
		sqlstore.ErrLeaseLost, "a second release is refused")
	require.Equal(t, sqlstore.GroupStatePaused, leaseGet(t, b.ctx, b.drv).State)

	backup := h.Open(t, b.url, migrations.Tables{})
	st, err = backup.LeaseAcquire(b.ctx, acq("b", longTTL, false))
	requireHeld(t, st, err, "")
	require.Equal(t, sqlstore.GroupStatePaused, st.State)
	require.Equal(t, a.Epoch, st.Epoch)

	p, err := b.drv.LeaseAcquire(b.ctx, acq("p", longTTL, true))
	require.NoError(t, err)
	require.Equal(t, "p", p.HolderID)
	require.Equal(t, a.Epoch+1, p.Epoch)
	require.Equal(t, sqlstore.GroupStateLive, p.State)

	// Release for failover: the state stays live and a backup takes over at once.
	require.NoError(t, b.drv.LeaseRelease(b.ctx, &sqlstore.LeaseReleaseParams{HolderID: "p", Epoch: p.Epoch, State: sqlstore.GroupStateLive}))
	st, err = backup.LeaseAcquire(b.ctx, acq("b", longTTL, false))
	require.NoError(t, err)
	require.Equal(t, "b", st.HolderID)
	require.Equal(t, p.Epoch+1, st.Epoch)
}

func testLeaseFailback(t *testing.T, h Harness) {
	b := migrated(t, h)
	backup := h.Open(t, b.url, migrations.Tables{})
	// Backup b is live; primary p returns and waits for failback.
	bs, err := backup.LeaseAcquire(b.ctx, acq("b", longTTL, false))
	require.NoError(t, err)
	require.NoError(t, b.drv.LeaseAnnounce(b.ctx, &sqlstore.LeaseAnnounceParams{HolderID: "p", HolderName: "node-p", Role: sqlstore.MemberFailback, TTL: longTTL}))
	// Waiting backups and the waiting failback member of the caller itself block
	// nobody.
	require.NoError(t, b.drv.LeaseAnnounce(b.ctx, &sqlstore.LeaseAnnounceParams{HolderID: "c", HolderName: "node-c", Role: sqlstore.MemberBackup, TTL: longTTL}))
	require.NoError(t, backup.LeaseRelease(b.ctx, &sqlstore.LeaseReleaseParams{HolderID: "b", Epoch: bs.Epoch, State: sqlstore.GroupStateLive}))

	// Another backup may not take the lock from the returning primary.
	st, err := backup.LeaseAcquire(b.ctx, acq("c", longTTL, false))
	requireHeld(t, st, err, "")
	require.Len(t, st.Members, 2)
	require.Equal(t, "p", st.Members[1].HolderID)
	require.Equal(t, sqlstore.MemberFailback, st.Members[1].Role)
	// The primary takes it.
	ps, err := b.drv.LeaseAcquire(b.ctx, acq("p", longTTL, true))
	require.NoError(t, err)
	require.Equal(t, bs.Epoch+1, ps.Epoch)
	require.NoError(t, b.drv.LeaseWithdraw(b.ctx, "p"))
	require.NoError(t, b.drv.LeaseRelease(b.ctx, &sqlstore.LeaseReleaseParams{HolderID: "p", Epoch: ps.Epoch, State: sqlstore.GroupStateLive}))

	// A failback member of the caller itself does not block it.
	require.NoError(t, b.drv.LeaseAnnounce(b.ctx, &sqlstore.LeaseAnnounceParams{HolderID: "c", HolderName: "node-c", Role: sqlstore.MemberFailback, TTL: longTTL}))
	cs, err := backup.LeaseAcquire(b.ctx, acq("c", longTTL, false))
	require.NoError(t, err)
	require.NoError(t, b.drv.LeaseWithdraw(b.ctx, "c"))
	require.NoError(t, backup.LeaseRelease(b.ctx, &sqlstore.LeaseReleaseParams{HolderID: "c", Epoch: cs.Epoch, State: sqlstore.GroupStateLive}))

	// A failback member that stops announcing (the primary crashed while waiting)
	// blocks others only until its row expires: no liveness hole.
	require.NoError(t, b.drv.LeaseAnnounce(b.ctx, &sqlstore.LeaseAnnounceParams{HolderID: "p", HolderName: "node-p", Role: sqlstore.MemberFailback, TTL: shortTTL}))
	st, err = backup.LeaseAcquire(b.ctx, acq("c", longTTL, false))
	if err == nil {
		t.Skipf("the %s member row expired before the first attempt (machine too slow)", shortTTL)
	}
	requireHeld(t, st, err, "")
	st = acquireWithin(t, b.ctx, backup, acq("c", longTTL, false), 30*time.Second)
	require.Equal(t, "c", st.HolderID)
	require.Equal(t, cs.Epoch+1, st.Epoch)
	for _, m := range st.Members {
		require.NotEqual(t, "p", m.HolderID, "the expired member is not listed")
	}
}

func testLeaseMembers(t *testing.T, h Harness) {
	b := migrated(t, h)
	announce := func(id, role string, ttl time.Duration) {
		t.Helper()
		require.NoError(t, b.drv.LeaseAnnounce(b.ctx, &sqlstore.LeaseAnnounceParams{HolderID: id, HolderName: "node-" + id, Role: role, TTL: ttl}))
	}
	announce("m2", sqlstore.MemberBackup, longTTL)
	announce("m1", sqlstore.MemberFailback, longTTL)
	announce("m3", sqlstore.MemberBackup, shortTTL)
	st := leaseGet(t, b.ctx, b.drv)
	if len(st.Members) == 2 {
		t.Skipf("the %s member row expired before the first read (machine too slow)", shortTTL)
	}
	require.Len(t, st.Members, 3)
	require.Equal(t, sqlstore.Member{HolderID: "m1", HolderName: "node-m1", Role: sqlstore.MemberFailback, ExpiresUS: st.Members[0].ExpiresUS}, st.Members[0])
	require.Equal(t, "m2", st.Members[1].HolderID)
	require.Equal(t, sqlstore.MemberBackup, st.Members[1].Role)
	require.LessOrEqual(t, st.Members[1].ExpiresUS-st.NowUS, longTTL.Microseconds())
	require.Equal(t, "m3", st.Members[2].HolderID)

	// Only unexpired members are listed.
	waitFor(t, 30*time.Second, func() bool { return len(leaseGet(t, b.ctx, b.drv).Members) == 2 })

	// Announcing again refreshes the row: role, name and expiry.
	require.NoError(t, b.drv.LeaseAnnounce(b.ctx, &sqlstore.LeaseAnnounceParams{HolderID: "m2", HolderName: "renamed", Role: sqlstore.MemberFailback, TTL: 2 * longTTL}))
	st = leaseGet(t, b.ctx, b.drv)
	require.Len(t, st.Members, 2)
	require.Equal(t, "renamed", st.Members[1].HolderName)
	require.Equal(t, sqlstore.MemberFailback, st.Members[1].Role)
	require.Greater(t, st.Members[1].ExpiresUS-st.NowUS, longTTL.Microseconds())

	// Withdraw removes the caller's row; withdrawing twice, or what was never there,
	// is no error.
	require.NoError(t, b.drv.LeaseWithdraw(b.ctx, "m1"))
	require.NoError(t, b.drv.LeaseWithdraw(b.ctx, "m1"))
	require.NoError(t, b.drv.LeaseWithdraw(b.ctx, "never"))
	st = leaseGet(t, b.ctx, b.drv)
	require.Len(t, st.Members, 1)
	require.Equal(t, "m2", st.Members[0].HolderID)

	// Members never touch the lock or the epoch.
	require.Empty(t, st.HolderID)
	require.Zero(t, st.Epoch)
	require.Equal(t, sqlstore.GroupStateNotStarted, st.State)
}

// testLeaseAcquireRace lets goroutines on two drivers race for a lapsed lock, round
// after round: exactly one wins each time, and the epoch moves by one per round.
func testLeaseAcquireRace(t *testing.T, h Harness) {
	b := migrated(t, h)
	drvs := []sqlstore.Driver{b.drv, h.Open(t, b.url, migrations.Tables{})}
	const (
		racers = 8
		rounds = 4
	)
	var epoch int64
	for round := 0; round < rounds; round++ {
		start := make(chan struct{})
		var wg sync.WaitGroup
		results := make([]*sqlstore.LeaseState, racers)
		errs := make([]error, racers)
		for i := 0; i < racers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				// A long TTL, so that a late racer cannot find the winner's lease
				// lapsed already.
				results[i], errs[i] = drvs[i%len(drvs)].LeaseAcquire(b.ctx, acq(string(rune('a'+i)), longTTL, i%2 == 0))
			}()
		}
		close(start)
		wg.Wait()
		winners, winner := 0, 0
		for i := range errs {
			if errs[i] == nil {
				winners, winner = winners+1, i
				require.Equal(t, epoch+1, results[i].Epoch, "round %d", round)
				require.Equal(t, string(rune('a'+i)), results[i].HolderID)
				continue
			}
			require.ErrorIs(t, errs[i], sqlstore.ErrLeaseHeld, "round %d racer %d", round, i)
		}
		require.Equal(t, 1, winners, "round %d: exactly one racer takes the lock", round)
		epoch++
		cur, err := b.drv.EpochGet(b.ctx)
		require.NoError(t, err)
		require.Equal(t, epoch, cur)
		// Let it lapse for the next round: a renewal sets the expiry to now + TTL, so
		// a tiny TTL shortens the lease.
		_, err = b.drv.LeaseRenew(b.ctx, &sqlstore.LeaseRenewParams{HolderID: results[winner].HolderID, Epoch: epoch, TTL: time.Microsecond})
		require.NoError(t, err)
		waitExpired(t, b.ctx, b.drv, 30*time.Second)
	}
}

// testLeaseFenceRace is testFenceRace with the epoch moved by a takeover: once the new
// holder's LeaseAcquire returned, no batch under the old epoch commits.
func testLeaseFenceRace(t *testing.T, h Harness) {
	b := migrated(t, h)
	a, err := b.drv.LeaseAcquire(b.ctx, acq("a", shortTTL, false))
	require.NoError(t, err)
	const writers = 3
	var (
		acquired  atomic.Bool
		nextID    atomic.Int64
		okCount   atomic.Int64
		mu        sync.Mutex
		committed []int64
		wg        sync.WaitGroup
	)
	fencedAfter := make(chan struct{}, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				if b.ctx.Err() != nil {
					return
				}
				id := nextID.Add(1)
				after := acquired.Load()
				err := b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: a.Epoch, Batch: &sqlstore.Batch{
					MessageInserts: []sqlstore.Message{msg("race", id)},
				}})
				switch {
				case err == nil:
					if after {
						t.Errorf("batch %d started after the takeover returned and still committed", id)
						return
					}
					mu.Lock()
					committed = append(committed, id)
					mu.Unlock()
					okCount.Add(1)
				case errors.Is(err, sqlstore.ErrFenced):
					if after {
						fencedAfter <- struct{}{}
						return
					}
				default:
					t.Errorf("batch %d: unexpected error: %v", id, err)
					return
				}
			}
		}()
	}
	waitFor(t, 30*time.Second, func() bool { return okCount.Load() >= 20 })
	other := h.Open(t, b.url, migrations.Tables{})
	st := acquireWithin(t, b.ctx, other, acq("b", longTTL, false), 30*time.Second)
	acquired.Store(true)
	require.Equal(t, a.Epoch+1, st.Epoch)
	wg.Wait()
	require.Len(t, fencedAfter, writers, "every writer saw ErrFenced after the takeover")

	mu.Lock()
	defer mu.Unlock()
	stored := map[int64]bool{}
	for _, m := range b.scanAll(t, "race") {
		stored[m.ID] = true
	}
	for _, id := range committed {
		require.True(t, stored[id], "batch %d returned nil but is not in the store", id)
	}
	require.Len(t, stored, len(committed), "the store holds a batch that did not return nil")
}

// testLeaseTableNames runs two groups in one database under different table names:
// their locks, epochs and members are independent.
func testLeaseTableNames(t *testing.T, h Harness) {
	ctx := ctxT(t)
	url := h.NewURL(t)
	ga := h.Open(t, url, migrations.WithPrefix("ga_"))
	gb := h.Open(t, url, migrations.WithPrefix("gb_"))
	require.NoError(t, ga.Migrate(ctx))
	require.NoError(t, gb.Migrate(ctx))
	sa, err := ga.LeaseAcquire(ctx, acq("a", longTTL, false))
	require.NoError(t, err)
	require.NoError(t, ga.LeaseAnnounce(ctx, &sqlstore.LeaseAnnounceParams{HolderID: "x", Role: sqlstore.MemberBackup, TTL: longTTL}))
	sb, err := gb.LeaseAcquire(ctx, acq("b", longTTL, false))
	require.NoError(t, err)
	require.Equal(t, int64(1), sa.Epoch)
	require.Equal(t, int64(1), sb.Epoch)
	require.Empty(t, sb.Members)
	require.Equal(t, "a", leaseGet(t, ctx, ga).HolderID)
	require.Len(t, leaseGet(t, ctx, ga).Members, 1)
}

func testLeaseInvalid(t *testing.T, h Harness) {
	b := migrated(t, h)
	bad := []*sqlstore.LeaseAcquireParams{
		{HolderID: "", TTL: time.Second},
		{HolderID: "a", TTL: 0},
		{HolderID: "a", TTL: -time.Second},
		{HolderID: string(make([]byte, 129)), TTL: time.Second},
	}
	for _, p := range bad {
		st, err := b.drv.LeaseAcquire(b.ctx, p)
		require.Error(t, err, "%+v", p)
		require.Nil(t, st)
		require.NotErrorIs(t, err, sqlstore.ErrLeaseHeld)
	}
	_, err := b.drv.LeaseRenew(b.ctx, &sqlstore.LeaseRenewParams{HolderID: "a", Epoch: 1})
	require.Error(t, err)
	require.Error(t, b.drv.LeaseRelease(b.ctx, &sqlstore.LeaseReleaseParams{HolderID: "a", Epoch: 1, State: "bogus"}))
	require.Error(t, b.drv.LeaseAnnounce(b.ctx, &sqlstore.LeaseAnnounceParams{HolderID: "a", Role: "bogus", TTL: time.Second}))
	require.Error(t, b.drv.LeaseWithdraw(b.ctx, ""))
	st := leaseGet(t, b.ctx, b.drv)
	require.Empty(t, st.HolderID)
	require.Zero(t, st.Epoch)
	require.Empty(t, st.Members)
}

// testLeaseWatch runs only on drivers that push releases (sqlstore.LeaseWatcher).
func testLeaseWatch(t *testing.T, h Harness) {
	ctx := ctxT(t)
	url := h.NewURL(t)
	// Table names of its own, so that no other test's release can wake this watch
	// (PostgreSQL notifies a channel named after the table).
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	tables := migrations.WithPrefix("w" + hex.EncodeToString(rnd[:]) + "_")
	drv := h.Open(t, url, tables)
	w, ok := drv.(sqlstore.LeaseWatcher)
	if !ok {
		t.Skipf("%s does not implement sqlstore.LeaseWatcher", drv.Dialect())
	}
	require.NoError(t, drv.Migrate(ctx))
	other := h.Open(t, url, tables)
	st, err := other.LeaseAcquire(ctx, acq("a", longTTL, false))
	require.NoError(t, err)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := w.LeaseWatch(wctx)
	require.NoError(t, err)
	// A refused release changes nothing; a release wakes the watch.
	require.ErrorIs(t, other.LeaseRelease(ctx, &sqlstore.LeaseReleaseParams{HolderID: "b", Epoch: st.Epoch, State: sqlstore.GroupStateLive}), sqlstore.ErrLeaseLost)
	require.NoError(t, other.LeaseRelease(ctx, &sqlstore.LeaseReleaseParams{HolderID: "a", Epoch: st.Epoch, State: sqlstore.GroupStateLive}))
	select {
	case _, ok := <-ch:
		require.True(t, ok, "a notification, not a closed watch")
	case <-time.After(time.Second):
		t.Fatal("the release did not wake the watch within a second")
	}

	// Notifications coalesce: several releases leave at most one pending.
	for i := 0; i < 3; i++ {
		st, err := other.LeaseAcquire(ctx, acq("a", longTTL, false))
		require.NoError(t, err)
		require.NoError(t, other.LeaseRelease(ctx, &sqlstore.LeaseReleaseParams{HolderID: "a", Epoch: st.Epoch, State: sqlstore.GroupStateLive}))
	}
	select {
	case _, ok := <-ch:
		require.True(t, ok)
	case <-time.After(time.Second):
		t.Fatal("the releases did not wake the watch within a second")
	}

	// The watch ends with its context ...
	cancel()
	requireClosedWithin(t, ch, 10*time.Second)

	// ... and with the driver.
	ch2, err := w.LeaseWatch(ctx)
	require.NoError(t, err)
	require.NoError(t, drv.Close())
	requireClosedWithin(t, ch2, 10*time.Second)
	_, err = w.LeaseWatch(ctx)
	require.ErrorIs(t, err, sqlstore.ErrClosed)
}

// requireClosedWithin drains ch until it is closed.
func requireClosedWithin(t testing.TB, ch <-chan struct{}, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatalf("watch channel not closed within %s", within)
		}
	}
}

// leaseClosed checks the lease methods of a closed driver.
func leaseClosed(t *testing.T, ctx context.Context, drv sqlstore.Driver) {
	t.Helper()
	_, err := drv.LeaseAcquire(ctx, acq("a", time.Second, false))
	require.ErrorIs(t, err, sqlstore.ErrClosed)
	_, err = drv.LeaseRenew(ctx, &sqlstore.LeaseRenewParams{HolderID: "a", Epoch: 1, TTL: time.Second})
	require.ErrorIs(t, err, sqlstore.ErrClosed)
	require.ErrorIs(t, drv.LeaseRelease(ctx, &sqlstore.LeaseReleaseParams{HolderID: "a", Epoch: 1, State: sqlstore.GroupStateLive}), sqlstore.ErrClosed)
	_, err = drv.LeaseGet(ctx)
	require.ErrorIs(t, err, sqlstore.ErrClosed)
	require.ErrorIs(t, drv.LeaseAnnounce(ctx, &sqlstore.LeaseAnnounceParams{HolderID: "a", Role: sqlstore.MemberBackup, TTL: time.Second}), sqlstore.ErrClosed)
	require.ErrorIs(t, drv.LeaseWithdraw(ctx, "a"), sqlstore.ErrClosed)
	if w, ok := drv.(sqlstore.LeaseWatcher); ok {
		_, err = w.LeaseWatch(ctx)
		require.ErrorIs(t, err, sqlstore.ErrClosed)
	}
}
