package nodemanager_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/nodemanager"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/opener"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Test timings: short, with a generous safety margin so that a loaded CI machine does
// not turn scheduling delays into false exclusivity violations.
func testConfig(name string, p nodemanager.Policy) nodemanager.Config {
	return nodemanager.Config{
		NodeName:        name,
		Policy:          p,
		LockRenewPeriod: 100 * time.Millisecond,
		LockExpiration:  1200 * time.Millisecond,
		NetworkTimeout:  300 * time.Millisecond,
		PollInterval:    50 * time.Millisecond,
		SafetyMargin:    400 * time.Millisecond,
		Logger:          slog.New(slog.DiscardHandler),
	}
}

// group checks that at most one activator of a group is live at any moment and that
// epochs grow.
type group struct {
	mu         sync.Mutex
	live       *activator
	lastEpoch  int64
	violations []string
}

type activator struct {
	name string
	g    *group

	mu            sync.Mutex
	live          bool
	epochs        []int64
	deactivations int
}

func (a *activator) Activate(ctx context.Context, epoch int64) error {
	a.g.mu.Lock()
	defer a.g.mu.Unlock()
	if a.g.live != nil && a.g.live != a {
		a.g.violations = append(a.g.violations, fmt.Sprintf("%s activated (epoch %d) while %s is live", a.name, epoch, a.g.live.name))
	}
	if epoch <= a.g.lastEpoch {
		a.g.violations = append(a.g.violations, fmt.Sprintf("%s activated with epoch %d after epoch %d", a.name, epoch, a.g.lastEpoch))
	}
	a.g.lastEpoch = epoch
	a.g.live = a
	a.mu.Lock()
	a.live = true
	a.epochs = append(a.epochs, epoch)
	a.mu.Unlock()
	return nil
}

func (a *activator) Deactivate() {
	a.g.mu.Lock()
	defer a.g.mu.Unlock()
	if a.g.live == a {
		a.g.live = nil
	}
	a.mu.Lock()
	if a.live {
		a.deactivations++
	}
	a.live = false
	a.mu.Unlock()
}

func (a *activator) isLive() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.live
}

func (a *activator) lastEpoch() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.epochs) == 0 {
		return 0
	}
	return a.epochs[len(a.epochs)-1]
}

// cuttable wraps a store; cut makes every lease statement hang until its deadline, as
// a network partition or a hung database would.
type cuttable struct {
	sqlstore.LeaseStore
	cut      atomic.Bool
	acquires atomic.Int64
}

func (c *cuttable) block(ctx context.Context) error {
	if c.cut.Load() {
		<-ctx.Done()
		return fmt.Errorf("cut: %w", ctx.Err())
	}
	return nil
}

func (c *cuttable) LeaseAcquire(ctx context.Context, p *sqlstore.LeaseAcquireParams) (*sqlstore.LeaseState, error) {
	c.acquires.Add(1)
	if err := c.block(ctx); err != nil {
		return nil, err
	}
	return c.LeaseStore.LeaseAcquire(ctx, p)
}

func (c *cuttable) LeaseRenew(ctx context.Context, p *sqlstore.LeaseRenewParams) (*sqlstore.LeaseState, error) {
	if err := c.block(ctx); err != nil {
		return nil, err
	}
	return c.LeaseStore.LeaseRenew(ctx, p)
}

func (c *cuttable) LeaseRelease(ctx context.Context, p *sqlstore.LeaseReleaseParams) error {
	if err := c.block(ctx); err != nil {
		return err
	}
	return c.LeaseStore.LeaseRelease(ctx, p)
}

func (c *cuttable) LeaseGet(ctx context.Context) (*sqlstore.LeaseState, error) {
	if err := c.block(ctx); err != nil {
		return nil, err
	}
	return c.LeaseStore.LeaseGet(ctx)
}

func (c *cuttable) LeaseAnnounce(ctx context.Context, p *sqlstore.LeaseAnnounceParams) error {
	if err := c.block(ctx); err != nil {
		return err
	}
	return c.LeaseStore.LeaseAnnounce(ctx, p)
}

func (c *cuttable) LeaseWithdraw(ctx context.Context, id string) error {
	if err := c.block(ctx); err != nil {
		return err
	}
	return c.LeaseStore.LeaseWithdraw(ctx, id)
}

// node is one instance: its own driver (own connections, as a separate process
// would have), its store wrapper, activator and manager.
type node struct {
	name   string
	drv    sqlstore.Driver
	store  *cuttable
	act    *activator
	m      *nodemanager.Manager
	cancel context.CancelFunc
	done   chan error
}

type bundle struct {
	url string
	g   *group
}

func setup(t *testing.T, newURL func(testing.TB) string) *bundle {
	t.Helper()
	url := newURL(t)
	drv := open(t, url)
	require.NoError(t, drv.Migrate(context.Background()))
	return &bundle{url: url, g: &group{}}
}

func open(t *testing.T, url string) sqlstore.Driver {
	t.Helper()
	drv, err := opener.Open(context.Background(), url, opener.Options{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = drv.Close() })
	return drv
}

func (b *bundle) start(t *testing.T, cfg nodemanager.Config) *node {
	t.Helper()
	drv := open(t, b.url)
	n := &node{name: cfg.NodeName, drv: drv, store: &cuttable{LeaseStore: drv}, act: &activator{name: cfg.NodeName, g: b.g}, done: make(chan error, 1)}
	m, err := nodemanager.New(n.store, n.act, cfg)
	require.NoError(t, err)
	n.m = m
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() { n.done <- m.Run(ctx) }()
	t.Cleanup(func() { _ = n.stop(t) })
	return n
}

// stop ends Run (a graceful stop unless the store is cut) and returns its result.
func (n *node) stop(t *testing.T) error {
	t.Helper()
	n.cancel()
	select {
	case err, ok := <-n.done:
		if ok {
			close(n.done)
		}
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: Run did not return within 10s of its context ending", n.name)
		return nil
	}
}

// crash cuts the node's store and stops its manager without a release, as kill -9
// would (the store stays cut, so nothing is released).
func (n *node) crash(t *testing.T) {
	t.Helper()
	n.store.cut.Store(true)
	_ = n.stop(t)
}

func (b *bundle) noViolations(t *testing.T) {
	t.Helper()
	b.g.mu.Lock()
	defer b.g.mu.Unlock()
	require.Empty(t, b.g.violations)
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func forEachBackend(t *testing.T, fn func(t *testing.T, b *bundle)) {
	for name, newURL := range testdb.All(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, setup(t, newURL))
		})
	}
}

func TestPrimaryBackupGracefulHandover(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *bundle) {
		// A lock that expires long after the bound below: a handover that waited for
		// the expiry cannot pass, and one slowed by a loaded machine still does.
		const expiration = 5 * time.Second
		pcfg := testConfig("p", nodemanager.PolicyPrimary)
		pcfg.FailoverOnShutdown = true
		pcfg.LockExpiration = expiration
		p := b.start(t, pcfg)
		eventually(t, 5*time.Second, "primary live", p.act.isLive)
		// The manager reports live once Activate has returned, a moment after the
		// activator marked itself live.
		eventually(t, time.Second, "status shows live", func() bool { return p.m.Status().Role == nodemanager.RoleLive })
		e1 := p.act.lastEpoch()

		bcfg := testConfig("b", nodemanager.PolicyBackup)
		bcfg.LockExpiration = expiration
		bk := b.start(t, bcfg)
		eventually(t, 5*time.Second, "backup sees the live", func() bool {
			s := bk.m.Status()
			return s.Role == nodemanager.RoleBackup && s.LiveNode == "p"
		})
		eventually(t, 5*time.Second, "live sees the backup", func() bool {
			s := p.m.Status()
			return len(s.Backups) == 1 && s.Backups[0] == "b"
		})
		require.False(t, bk.act.isLive())

		require.NoError(t, p.stop(t))
		require.False(t, p.act.isLive())
		// A graceful handover does not wait for the lock to expire (5 s after the
		// last renewal).
		start := time.Now()
		eventually(t, expiration, "backup takes over", bk.act.isLive)
		require.Less(t, time.Since(start), expiration/2, "handover waited for the lock to expire")
		require.Equal(t, e1+1, bk.act.lastEpoch())
		b.noViolations(t)
	})
}

func TestPauseOnShutdown(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *bundle) {
		p := b.start(t, testConfig("p", nodemanager.PolicyPrimary)) // failover-on-shutdown false
		eventually(t, 5*time.Second, "primary live", p.act.isLive)
		bk := b.start(t, testConfig("b", nodemanager.PolicyBackup))
		eventually(t, 5*time.Second, "backup waiting", func() bool { return bk.m.Status().Role == nodemanager.RoleBackup })

		require.NoError(t, p.stop(t))
		// The backup keeps trying but never takes a paused group.
		n0 := bk.store.acquires.Load()
		eventually(t, 10*time.Second, "backup tried 20 more times", func() bool { return bk.store.acquires.Load() >= n0+20 })
		require.False(t, bk.act.isLive(), "a backup took over a paused group")

		p2 := b.start(t, testConfig("p2", nodemanager.PolicyPrimary))
		eventually(t, 5*time.Second, "a primary resumes the paused group", p2.act.isLive)
		require.False(t, bk.act.isLive())
		b.noViolations(t)
	})
}

func TestCrashTakeoverAndFencing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *bundle) {
		p := b.start(t, testConfig("p", nodemanager.PolicyPrimary))
		eventually(t, 5*time.Second, "primary live", p.act.isLive)
		oldEpoch := p.act.lastEpoch()
		bk := b.start(t, testConfig("b", nodemanager.PolicyBackup))
		eventually(t, 5*time.Second, "backup waiting", func() bool { return bk.m.Status().Role == nodemanager.RoleBackup })

		// Cut the live from the database: it must fence itself before its lock can
		// lapse, and the backup must take over once it has lapsed.
		p.store.cut.Store(true)
		eventually(t, 5*time.Second, "cut live fences itself", func() bool { return !p.act.isLive() })
		eventually(t, 5*time.Second, "backup takes over", bk.act.isLive)
		require.Greater(t, bk.act.lastEpoch(), oldEpoch)
		b.noViolations(t) // the backup never activated while the old live was live

		// The old live's epoch can never commit again.
		err := p.drv.BatchCommit(context.Background(), &sqlstore.BatchCommitParams{Epoch: oldEpoch, Batch: &sqlstore.Batch{
			BindingPuts: []sqlstore.Binding{{Kind: sqlstore.KindQueue, Name: "zombie", Config: "{}", CreatedAt: 1}},
		}})
		require.ErrorIs(t, err, sqlstore.ErrFenced)

		// Reconnected, the old primary waits (a primary announces itself for failback).
		p.store.cut.Store(false)
		eventually(t, 5*time.Second, "old live waits as backup", func() bool { return p.m.Status().Role == nodemanager.RoleBackup })
		require.False(t, p.act.isLive())
		require.True(t, bk.act.isLive())
		b.noViolations(t)
	})
}

func TestFailbackAndRestartBackup(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *bundle) {
		p := b.start(t, testConfig("p", nodemanager.PolicyPrimary))
		eventually(t, 5*time.Second, "primary live", p.act.isLive)
		bcfg := testConfig("b", nodemanager.PolicyBackup)
		bcfg.AllowFailback, bcfg.RestartBackup = true, true
		bk := b.start(t, bcfg)
		eventually(t, 5*time.Second, "backup waiting", func() bool { return bk.m.Status().Role == nodemanager.RoleBackup })

		p.crash(t)
		eventually(t, 5*time.Second, "backup takes over", bk.act.isLive)

		p2 := b.start(t, testConfig("p", nodemanager.PolicyPrimary))
		eventually(t, 5*time.Second, "the returning primary gets the lock back", p2.act.isLive)
		eventually(t, 5*time.Second, "the backup waits again", func() bool { return bk.m.Status().Role == nodemanager.RoleBackup })
		require.False(t, bk.act.isLive())
		b.noViolations(t)
	})
}

func TestFailbackWithoutRestartBackupStops(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *bundle) {
		p := b.start(t, testConfig("p", nodemanager.PolicyPrimary))
		eventually(t, 5*time.Second, "primary live", p.act.isLive)
		bcfg := testConfig("b", nodemanager.PolicyBackup)
		bcfg.AllowFailback = true
		bk := b.start(t, bcfg)
		eventually(t, 5*time.Second, "backup waiting", func() bool { return bk.m.Status().Role == nodemanager.RoleBackup })
		p.crash(t)
		eventually(t, 5*time.Second, "backup takes over", bk.act.isLive)

		p2 := b.start(t, testConfig("p", nodemanager.PolicyPrimary))
		select {
		case err := <-bk.done:
			require.ErrorIs(t, err, nodemanager.ErrHandedBack)
			close(bk.done)
		case <-time.After(10 * time.Second):
			t.Fatal("the backup did not hand back")
		}
		eventually(t, 5*time.Second, "primary live again", p2.act.isLive)
		b.noViolations(t)
	})
}

// A primary that comes back and dies while waiting for failback must not leave the
// group stuck: its announcement expires and a backup takes over the next crash.
func TestReturningPrimaryDiesWhileWaiting(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *bundle) {
		p := b.start(t, testConfig("p", nodemanager.PolicyPrimary))
		eventually(t, 5*time.Second, "primary live", p.act.isLive)
		b1 := b.start(t, testConfig("b1", nodemanager.PolicyBackup)) // no allow-failback
		eventually(t, 5*time.Second, "b1 waiting", func() bool { return b1.m.Status().Role == nodemanager.RoleBackup })
		p.crash(t)
		eventually(t, 5*time.Second, "b1 takes over", b1.act.isLive)

		p2 := b.start(t, testConfig("p", nodemanager.PolicyPrimary))
		eventually(t, 5*time.Second, "the live sees the returning primary", func() bool { return b1.m.Status().Failback })
		b2 := b.start(t, testConfig("b2", nodemanager.PolicyBackup))
		eventually(t, 5*time.Second, "b2 waiting", func() bool { return b2.m.Status().Role == nodemanager.RoleBackup })
		p2.crash(t) // dies while waiting for failback: its member row is left behind
		b1.crash(t)
		eventually(t, 10*time.Second, "b2 takes over once the stale announcement expired", b2.act.isLive)
		b.noViolations(t)
	})
}

func TestPolicyNone(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *bundle) {
		n1 := b.start(t, testConfig("n1", nodemanager.PolicyNone))
		eventually(t, 5*time.Second, "n1 live", n1.act.isLive)

		n2 := b.start(t, testConfig("n2", nodemanager.PolicyNone))
		select {
		case err := <-n2.done:
			require.ErrorIs(t, err, nodemanager.ErrLockHeld)
			require.ErrorContains(t, err, "held by n1")
			close(n2.done)
		case <-time.After(10 * time.Second):
			t.Fatal("n2 neither took the lock nor gave up")
		}
		require.True(t, n1.act.isLive())

		// After a crash, the next instance waits for the crashed one's lock to lapse.
		n1.crash(t)
		n3 := b.start(t, testConfig("n3", nodemanager.PolicyNone))
		eventually(t, 5*time.Second, "n3 live after n1's lock lapsed", n3.act.isLive)

		// Policy none does not wait as a backup once it lost the lock.
		n3.store.cut.Store(true)
		select {
		case err := <-n3.done:
			require.ErrorIs(t, err, nodemanager.ErrLockLost)
			close(n3.done)
		case <-time.After(10 * time.Second):
			t.Fatal("n3 did not stop after losing the lock")
		}
		require.False(t, n3.act.isLive())
		b.noViolations(t)
	})
}

// Several backups and repeated crashes: exactly one live at any moment, epochs grow.
func TestManyBackupsRepeatedCrashes(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *bundle) {
		nodes := []*node{b.start(t, testConfig("p", nodemanager.PolicyPrimary))}
		eventually(t, 5*time.Second, "primary live", nodes[0].act.isLive)
		for i := range 3 {
			nodes = append(nodes, b.start(t, testConfig(fmt.Sprintf("b%d", i), nodemanager.PolicyBackup)))
		}
		for round := range 4 {
			var live *node
			eventually(t, 10*time.Second, fmt.Sprintf("round %d: a live", round), func() bool {
				for _, n := range nodes {
					if n.act.isLive() {
						live = n
						return true
					}
				}
				return false
			})
			live.crash(t)
			// Replace the crashed instance with a fresh backup, as a supervisor would.
			for i, n := range nodes {
				if n == live {
					nodes[i] = b.start(t, testConfig(fmt.Sprintf("r%d", round), nodemanager.PolicyBackup))
				}
			}
		}
		eventually(t, 10*time.Second, "a live after the last crash", func() bool {
			for _, n := range nodes {
				if n.act.isLive() {
					return true
				}
			}
			return false
		})
		b.noViolations(t)
	})
}
