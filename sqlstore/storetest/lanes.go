package storetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
)

// lanesTests run the Writer with several transactions in flight at once
// (WriterConfig.Lanes) against the real database: concurrent inserts, updates and
// deletes on the same queues stay exact in the counters, a barrier commits after every
// write queued before it, and fencing stops every lane.
var lanesTests = []struct {
	name string
	fn   func(t *testing.T, h Harness)
}{
	{"WriterLanesConcurrent", testWriterLanesConcurrent},
	{"WriterLanesOverlap", testWriterLanesOverlap},
	{"WriterLanesBarrier", testWriterLanesBarrier},
	{"WriterLanesFenced", testWriterLanesFenced},
}

// lanesWaitLimit bounds the waits of these tests for a commit that must begin; it only
// turns a hang into a failure.
const lanesWaitLimit = 30 * time.Second

// watchedDriver wraps a Driver to watch BatchCommit: the slots in flight, the most at
// once, and, while hold is set, it holds commits back (before they reach the
// database) until release.
type watchedDriver struct {
	sqlstore.Driver
	mu          sync.Mutex
	inFlight    map[int]bool
	maxInFlight int
	overlap     bool // two commits in flight on one slot
	barrierMax  int  // the most commits in flight beside a barrier
	done        int  // commits finished
	hold        func(p *sqlstore.BatchCommitParams) bool
	gate        chan struct{}
	entered     chan int // the slot of every held commit, as it begins
}

func newWatchedDriver(drv sqlstore.Driver) *watchedDriver {
	return &watchedDriver{Driver: drv, inFlight: map[int]bool{}, gate: make(chan struct{}), entered: make(chan int, 1024)}
}

// BatchCommit implements sqlstore.Driver.
func (d *watchedDriver) BatchCommit(ctx context.Context, p *sqlstore.BatchCommitParams) error {
	d.mu.Lock()
	if d.inFlight[p.Slot] {
		d.overlap = true
	}
	d.inFlight[p.Slot] = true
	d.maxInFlight = max(d.maxInFlight, len(d.inFlight))
	isBarrier := len(p.Batch.QueuePurges) > 0 || len(p.Batch.BindingDeletes) > 0 || len(p.Batch.PageTrims) > 0 || len(p.Batch.CounterDeletes) > 0
	if isBarrier {
		d.barrierMax = max(d.barrierMax, len(d.inFlight)-1)
	}
	held := d.hold != nil && d.hold(p)
	gate := d.gate
	d.mu.Unlock()
	if held {
		d.entered <- p.Slot
		<-gate
	}
	err := d.Driver.BatchCommit(ctx, p)
	d.mu.Lock()
	delete(d.inFlight, p.Slot)
	d.done++
	d.mu.Unlock()
	return err
}

// release lets every held commit go on and holds no more. It is idempotent.
func (d *watchedDriver) release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hold != nil {
		d.hold = nil
		close(d.gate)
	}
}

// awaitEntered waits until n held commits have begun and returns their slots.
func (d *watchedDriver) awaitEntered(t *testing.T, n int) []int {
	t.Helper()
	var slots []int
	for range n {
		select {
		case s := <-d.entered:
			slots = append(slots, s)
		case <-time.After(lanesWaitLimit):
			t.Fatalf("%d of %d held commits began", len(slots), n)
		}
	}
	return slots
}

// skipSingleLane skips a test of concurrent lanes on a dialect that uses one lane only
// (sqlstore.DialectMaxLanes).
func skipSingleLane(t *testing.T, b *bundle) {
	t.Helper()
	if n := sqlstore.DialectMaxLanes(b.drv.Dialect()); n < 4 {
		t.Skipf("the writer uses %d lane(s) on %s", n, b.drv.Dialect())
	}
}

func lanesWriter(t *testing.T, b *bundle, drv sqlstore.Driver, cfg sqlstore.WriterConfig) *sqlstore.Writer {
	t.Helper()
	w := sqlstore.NewWriter(drv, b.epoch, cfg)
	require.Equal(t, cfg.Lanes, w.Lanes())
	require.NoError(t, w.Start(b.ctx))
	t.Cleanup(w.Stop)
	return w
}

// requireCountersMatchRows checks the queue counters against the rows stored.
func requireCountersMatchRows(t *testing.T, b *bundle, queues []string) {
	t.Helper()
	cs := b.counters(t)
	for _, q := range queues {
		ms := b.scanAll(t, q)
		var bytes int64
		for _, m := range ms {
			bytes += int64(len(m.Body))
		}
		require.Equal(t, [2]int64{int64(len(ms)), bytes}, cs[qkey(q)], "counter of queue %q against its rows", q)
	}
}

// Many writers on 4 lanes insert, update and delete messages of the same few queues at
// once (deletes of rows inserted earlier, of rows deleted already and of keys never
// inserted, next to inserts of new keys: InnoDB gap locks would make these deadlock
// under REPEATABLE READ). Every write succeeds and the counters match the rows.
func testWriterLanesConcurrent(t *testing.T, h Harness) {
	b := setup(t, h)
	skipSingleLane(t, b)
	wd := newWatchedDriver(b.drv)
	var commits atomic.Int64
	w := lanesWriter(t, b, wd, sqlstore.WriterConfig{LaneMinRows: 1, Lanes: 4, OnCommit: func(int, time.Duration, error) { commits.Add(1) }})
	queues := []string{"c0", "c1", "c2"}
	const writers, each = 24, 30
	var wg sync.WaitGroup
	errs := make(chan error, writers*each*2)
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := queues[g%len(queues)]
			var mine []int64
			for i := range each {
				id := int64(g*1000 + i + 1)
				batch := &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg(q, id)}}
				if i%3 == 2 && len(mine) > 0 {
					old := mine[0]
					mine = mine[1:]
					// The ack of an earlier message, a second ack of it (gone by then
					// or deleted in this batch: counted once) and a key never inserted.
					batch.MessageDeletes = []sqlstore.MessageKey{{Queue: q, ID: old}, {Queue: q, ID: old}, {Queue: q, ID: id + 500}}
				}
				if i%5 == 4 && len(mine) > 0 {
					batch.MessageUpdates = []sqlstore.MessageUpdate{{Queue: q, ID: mine[len(mine)-1], DeliveryCount: 1}}
				}
				if err := w.Write(b.ctx, batch); err != nil {
					errs <- fmt.Errorf("writer %d, write %d: %w", g, i, err)
					return
				}
				mine = append(mine, id)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	wd.mu.Lock()
	require.False(t, wd.overlap, "two transactions in flight on one counter slot")
	require.LessOrEqual(t, wd.maxInFlight, 4)
	t.Logf("%d writes in %d commits, at most %d in flight", writers*each, commits.Load(), wd.maxInFlight)
	wd.mu.Unlock()
	var total int64
	for _, q := range queues {
		total += b.count(t, q)
	}
	// Every third write from the third on deletes one earlier message.
	deletes := int64(writers * (each / 3))
	require.Equal(t, int64(writers*each)-deletes, total)
	requireCountersMatchRows(t, b, queues)
}

// Transactions really overlap: a commit held back keeps its lane while the next
// requests commit on other lanes, each on a slot of its own, and the counters add the
// slots up.
func testWriterLanesOverlap(t *testing.T, h Harness) {
	b := setup(t, h)
	skipSingleLane(t, b)
	wd := newWatchedDriver(b.drv)
	wd.hold = func(p *sqlstore.BatchCommitParams) bool { return true }
	t.Cleanup(wd.release)
	w := lanesWriter(t, b, wd, sqlstore.WriterConfig{LaneMinRows: 1, Lanes: 3})
	results := make(chan error, 10)
	write := func(id int64) {
		go func() {
			results <- w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{sized("o", id, int(id))}})
		}()
	}
	var slots []int
	for id := int64(1); id <= 3; id++ { // one at a time, or they would merge
		write(id)
		slots = append(slots, wd.awaitEntered(t, 1)...)
	}
	require.ElementsMatch(t, []int{0, 1, 2}, slots, "three transactions in flight, one per lane and slot")
	write(4) // waits for a free lane
	wd.release()
	for range 4 {
		require.NoError(t, <-results)
	}
	require.Equal(t, []int64{1, 2, 3, 4}, ids(b.scanAll(t, "o")))
	require.Equal(t, [2]int64{4, 10}, b.counters(t)[qkey("o")])
	wd.mu.Lock()
	defer wd.mu.Unlock()
	require.Equal(t, 3, wd.maxInFlight)
	require.False(t, wd.overlap)
}

// A barrier waits for every lane in flight, commits alone, and the writes queued after
// it follow it.
func testWriterLanesBarrier(t *testing.T, h Harness) {
	b := setup(t, h)
	skipSingleLane(t, b)
	wd := newWatchedDriver(b.drv)
	wd.hold = func(p *sqlstore.BatchCommitParams) bool { return len(p.Batch.MessageInserts) > 0 }
	t.Cleanup(wd.release)
	w := lanesWriter(t, b, wd, sqlstore.WriterConfig{LaneMinRows: 1, Lanes: 4})
	early := make(chan error, 3)
	for id := int64(1); id <= 3; id++ {
		go func() {
			early <- w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("p", id), msg("keep", id)}})
		}()
		wd.awaitEntered(t, 1) // one at a time: three lanes in flight, held
	}
	purged := make(chan error, 1)
	go func() { purged <- w.Write(b.ctx, &sqlstore.Batch{QueuePurges: []string{"p"}}) }()
	// Give the purge time to be queued behind the lanes in flight (if it were not
	// yet, it would follow them anyway: the check below cannot fail because of it).
	// It cannot begin while they are in flight: it waits in the writer, not in the
	// database (barrierMax below).
	time.Sleep(50 * time.Millisecond)
	wd.release()
	for range 3 {
		require.NoError(t, <-early)
	}
	require.NoError(t, <-purged)
	require.Empty(t, b.scanAll(t, "p"), "the purge committed after the writes queued before it")
	require.Len(t, b.scanAll(t, "keep"), 3)
	require.NoError(t, w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("p", 10)}}))
	require.Equal(t, []int64{10}, ids(b.scanAll(t, "p")))
	requireCountersMatchRows(t, b, []string{"p", "keep"})

	// Many writers with barriers among them: every barrier commits alone.
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			batch := &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("m", int64(100+i))}}
			if i%40 == 0 {
				batch = &sqlstore.Batch{QueuePurges: []string{"gone"}, CounterDeletes: []sqlstore.CounterKey{qkey("gone")}}
			}
			errs <- w.Write(b.ctx, batch)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	wd.mu.Lock()
	defer wd.mu.Unlock()
	require.Equal(t, 0, wd.barrierMax, "a barrier committed beside another transaction")
	require.False(t, wd.overlap)
	require.Equal(t, int64(195), b.count(t, "m"))
}

// A takeover while every lane is in flight fences them all: nothing of theirs commits,
// every write fails with ErrFenced, OnFenced is called once, and a new epoch writes
// again on every lane.
func testWriterLanesFenced(t *testing.T, h Harness) {
	b := setup(t, h)
	skipSingleLane(t, b)
	wd := newWatchedDriver(b.drv)
	var fencedCalls atomic.Int64
	w := lanesWriter(t, b, wd, sqlstore.WriterConfig{LaneMinRows: 1, Lanes: 4, OnFenced: func() { fencedCalls.Add(1) }})
	require.NoError(t, w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("f", 1)}}))

	wd.mu.Lock()
	wd.hold = func(p *sqlstore.BatchCommitParams) bool { return true }
	wd.mu.Unlock()
	t.Cleanup(wd.release)
	const n = 12
	results := make(chan error, n)
	for i := range n {
		go func() {
			results <- w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("f", int64(i+2))}})
		}()
		if i < 4 {
			wd.awaitEntered(t, 1) // one at a time until every lane is in flight
		}
	}
	other := h.Open(t, b.url, migrations.Tables{})
	_, err := other.EpochBump(b.ctx)
	require.NoError(t, err)
	wd.release()
	for range n {
		require.ErrorIs(t, <-results, sqlstore.ErrFenced)
	}
	require.True(t, w.Fenced())
	require.Equal(t, int64(1), fencedCalls.Load())
	require.Equal(t, []int64{1}, ids(b.scanAll(t, "f")))

	e, err := b.drv.EpochGet(b.ctx)
	require.NoError(t, err)
	w.SetEpoch(e)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("f", int64(100+i))}})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, int64(41), b.count(t, "f"))
	requireCountersMatchRows(t, b, []string{"f"})
}
