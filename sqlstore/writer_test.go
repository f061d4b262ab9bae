package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tablemq/tablemq/migrations"
)

// The Writer against a fake driver, so that queueing is deterministic. The same Writer
// runs against real databases in sqlstore/storetest.

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeDriver records commits. While gate is non-nil, a commit blocks until gate is
// closed (after signalling entered).
type fakeDriver struct {
	mu      sync.Mutex
	commits []*Batch
	slots   []int // the slot of each commit in commits
	epoch   int64
	fail    func(b *Batch) error
	gate    chan struct{}
	entered chan struct{}
	dialect string // "" is "fake"
	// inFlight holds the slots of the commits under way; maxInFlight is the most seen
	// at once; alongside lists, per commit in commits, how many others were in flight
	// when it began; overlap notes two commits in flight on one slot.
	inFlight    map[int]bool
	maxInFlight int
	alongside   []int
	overlap     bool
}

func (f *fakeDriver) Dialect() string {
	if f.dialect != "" {
		return f.dialect
	}
	return "fake"
}
func (f *fakeDriver) Tables() migrations.Tables                      { return migrations.Tables{}.WithDefaults() }
func (f *fakeDriver) Migrate(context.Context) error                  { return nil }
func (f *fakeDriver) EpochGet(context.Context) (int64, error)        { return f.epoch, nil }
func (f *fakeDriver) EpochBump(context.Context) (int64, error)       { f.epoch++; return f.epoch, nil }
func (f *fakeDriver) BindingList(context.Context) ([]Binding, error) { return nil, nil }
func (f *fakeDriver) MessageScan(context.Context, *MessageScanParams) ([]Message, error) {
	return nil, nil
}
func (f *fakeDriver) MessagesByID(context.Context, string, []int64) ([]Message, error) {
	return nil, nil
}
func (f *fakeDriver) MessageCount(context.Context, string) (int64, error) { return 0, nil }
func (f *fakeDriver) DuplicateGet(context.Context, *DuplicateGetParams) (int64, error) {
	return 0, ErrNotFound
}
func (f *fakeDriver) Close() error { return nil }

var errFakeLease = errors.New("fake driver: no lease")

func (f *fakeDriver) LeaseAcquire(context.Context, *LeaseAcquireParams) (*LeaseState, error) {
	return nil, errFakeLease
}
func (f *fakeDriver) LeaseRenew(context.Context, *LeaseRenewParams) (*LeaseState, error) {
	return nil, errFakeLease
}
func (f *fakeDriver) LeaseRelease(context.Context, *LeaseReleaseParams) error { return errFakeLease }
func (f *fakeDriver) LeaseGet(context.Context) (*LeaseState, error)           { return nil, errFakeLease }
func (f *fakeDriver) LeaseAnnounce(context.Context, *LeaseAnnounceParams) error {
	return errFakeLease
}
func (f *fakeDriver) LeaseWithdraw(context.Context, string) error { return errFakeLease }

func (f *fakeDriver) BatchCommit(ctx context.Context, p *BatchCommitParams) error {
	f.mu.Lock()
	if f.inFlight == nil {
		f.inFlight = map[int]bool{}
	}
	if f.inFlight[p.Slot] {
		f.overlap = true
	}
	others := len(f.inFlight)
	f.inFlight[p.Slot] = true
	f.maxInFlight = max(f.maxInFlight, len(f.inFlight))
	gate, entered := f.gate, f.entered
	f.mu.Unlock()
	if gate != nil {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.inFlight, p.Slot)
	if p.Epoch != f.epoch {
		return fmt.Errorf("fake: %w", ErrFenced)
	}
	if f.fail != nil {
		if err := f.fail(p.Batch); err != nil {
			return err
		}
	}
	f.commits = append(f.commits, p.Batch)
	f.slots = append(f.slots, p.Slot)
	f.alongside = append(f.alongside, others)
	return nil
}

// block makes the next commits wait until the returned release is called.
func (f *fakeDriver) block() (entered <-chan struct{}, release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate = make(chan struct{})
	f.entered = make(chan struct{}, 64)
	gate := f.gate
	var once sync.Once
	return f.entered, func() {
		once.Do(func() {
			f.mu.Lock()
			f.gate = nil
			f.mu.Unlock()
			close(gate)
		})
	}
}

func (f *fakeDriver) commitRows() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]int, len(f.commits))
	for i, b := range f.commits {
		out[i] = b.rows()
	}
	return out
}

func one(id int64) *Batch {
	return &Batch{MessageInserts: []Message{{Queue: "q", ID: id, Body: []byte("x")}}}
}

type writerBundle struct {
	drv *fakeDriver
	w   *Writer
	ctx context.Context
}

func setupWriter(t *testing.T, cfg WriterConfig) *writerBundle {
	t.Helper()
	drv := &fakeDriver{epoch: 1}
	if cfg.Lanes == 0 {
		cfg.Lanes = 1 // the tests without Lanes are about one transaction at a time
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	w := NewWriter(drv, 1, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	require.NoError(t, w.Start(ctx))
	t.Cleanup(w.Stop)
	return &writerBundle{drv: drv, w: w, ctx: ctx}
}

// writeAsync starts a Write and returns its result channel.
func (b *writerBundle) writeAsync(batch *Batch) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- b.w.Write(b.ctx, batch) }()
	return ch
}

// inFlight writes one(0) .. one(n-1), each once the previous one's commit started
// (the driver blocked, see fakeDriver.block): n lanes end up in flight.
func (b *writerBundle) inFlight(t *testing.T, entered <-chan struct{}, n int64) []<-chan error {
	t.Helper()
	var rs []<-chan error
	for i := range n {
		rs = append(rs, b.writeAsync(one(i)))
		enter(t, entered, 1)
	}
	return rs
}

// queueOnes writes one(from) .. one(to-1) while every lane is busy and waits until
// they all wait in the queue.
func (b *writerBundle) queueOnes(t *testing.T, from, to int64) []<-chan error {
	t.Helper()
	var rs []<-chan error
	for i := from; i < to; i++ {
		rs = append(rs, b.writeAsync(one(i)))
	}
	b.queued(t, int(to-from))
	return rs
}

// queued waits until n requests wait in the writer's queue.
func (b *writerBundle) queued(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(b.w.reqs) != n {
		if time.Now().After(deadline) {
			t.Fatalf("queue holds %d requests, want %d", len(b.w.reqs), n)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// lanesTaken waits until the dispatcher holds every idle lane: a barrier waits for the
// lanes still in flight.
func (b *writerBundle) lanesTaken(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(b.w.free) != 0 || len(b.w.reqs) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d lanes idle, %d requests queued, want none", len(b.w.free), len(b.w.reqs))
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// stall makes the writer busy with a blocked commit and returns its result and the
// release function.
func (b *writerBundle) stall(t *testing.T) (<-chan error, func()) {
	t.Helper()
	entered, release := b.drv.block()
	first := b.writeAsync(one(0))
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("first commit never started")
	}
	return first, release
}

func TestWriterMergesQueuedRequests(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{})
	first, release := b.stall(t)
	var results []<-chan error
	for i := int64(1); i <= 10; i++ {
		results = append(results, b.writeAsync(one(i)))
	}
	b.queued(t, 10)
	release()
	require.NoError(t, <-first)
	for _, r := range results {
		require.NoError(t, <-r)
	}
	require.Equal(t, []int{1, 10}, b.drv.commitRows())
}

func TestWriterRespectsMaxBatchRows(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{MaxBatchRows: 3})
	first, release := b.stall(t)
	var results []<-chan error
	for i := int64(1); i <= 7; i++ {
		results = append(results, b.writeAsync(one(i)))
		b.queued(t, int(i))
	}
	release()
	require.NoError(t, <-first)
	for _, r := range results {
		require.NoError(t, <-r)
	}
	require.Equal(t, []int{1, 3, 3, 1}, b.drv.commitRows())
}

func TestWriterBarrierCommitsAlone(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{})
	first, release := b.stall(t)
	a := b.writeAsync(one(1))
	b.queued(t, 1)
	purge := b.writeAsync(&Batch{QueuePurges: []string{"q", "r"}})
	b.queued(t, 2)
	c := b.writeAsync(one(2))
	b.queued(t, 3)
	d := b.writeAsync(one(3))
	b.queued(t, 4)
	release()
	for _, r := range []<-chan error{first, a, purge, c, d} {
		require.NoError(t, <-r)
	}
	require.Equal(t, []int{1, 1, 2, 2}, b.drv.commitRows())
	b.drv.mu.Lock()
	defer b.drv.mu.Unlock()
	require.Equal(t, []string{"q", "r"}, b.drv.commits[2].QueuePurges)
	require.Empty(t, b.drv.commits[2].MessageInserts)
}

func TestWriterRetriesFailedMergeOneByOne(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{})
	b.drv.fail = func(batch *Batch) error {
		for _, m := range batch.MessageInserts {
			if m.ID == 3 {
				return fmt.Errorf("fake: %w", ErrConflict)
			}
		}
		return nil
	}
	first, release := b.stall(t)
	results := map[int64]<-chan error{}
	for i := int64(1); i <= 5; i++ {
		results[i] = b.writeAsync(one(i))
	}
	b.queued(t, 5)
	release()
	require.NoError(t, <-first)
	for id, r := range results {
		err := <-r
		if id == 3 {
			require.ErrorIs(t, err, ErrConflict)
		} else {
			require.NoError(t, err, "write %d", id)
		}
	}
	require.Equal(t, []int{1, 1, 1, 1, 1}, b.drv.commitRows())
}

func TestWriterFenced(t *testing.T) {
	t.Parallel()
	var fencedCalls int
	var mu sync.Mutex
	b := setupWriter(t, WriterConfig{OnFenced: func() { mu.Lock(); fencedCalls++; mu.Unlock() }})
	require.NoError(t, b.w.Write(b.ctx, one(1)))
	_, _ = b.drv.EpochBump(b.ctx)

	first, release := b.stall(t)
	var results []<-chan error
	for i := int64(2); i <= 6; i++ {
		results = append(results, b.writeAsync(one(i)))
	}
	b.queued(t, 5)
	release()
	require.ErrorIs(t, <-first, ErrFenced)
	for _, r := range results {
		require.ErrorIs(t, <-r, ErrFenced)
	}
	require.True(t, b.w.Fenced())
	require.ErrorIs(t, b.w.Write(b.ctx, one(7)), ErrFenced)
	mu.Lock()
	require.Equal(t, 1, fencedCalls)
	mu.Unlock()
	require.Equal(t, []int{1}, b.drv.commitRows())

	b.w.SetEpoch(2)
	require.False(t, b.w.Fenced())
	require.NoError(t, b.w.Write(b.ctx, one(8)))
	require.Equal(t, []int{1, 1}, b.drv.commitRows())
}

func TestWriterStopDrainsQueue(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{})
	first, release := b.stall(t)
	var results []<-chan error
	for i := int64(1); i <= 5; i++ {
		results = append(results, b.writeAsync(one(i)))
	}
	b.queued(t, 5)
	stopped := make(chan struct{})
	go func() {
		b.w.Stop()
		close(stopped)
	}()
	// New writes are refused once Stop has begun.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.w.mu.Lock()
		stopping := b.w.stopping
		b.w.mu.Unlock()
		if stopping {
			break
		}
		require.False(t, time.Now().After(deadline), "Stop never began")
		time.Sleep(100 * time.Microsecond)
	}
	require.ErrorIs(t, b.w.Write(b.ctx, one(99)), ErrClosed)
	release()
	<-stopped
	require.NoError(t, <-first)
	for _, r := range results {
		require.NoError(t, <-r)
	}
	total := 0
	for _, n := range b.drv.commitRows() {
		total += n
	}
	require.Equal(t, 6, total)
	b.w.Stop()
}

func TestWriterLifecycle(t *testing.T) {
	t.Parallel()
	drv := &fakeDriver{epoch: 1}
	w := NewWriter(drv, 1, WriterConfig{Logger: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	require.ErrorIs(t, w.Write(ctx, one(1)), ErrClosed, "before Start")
	require.NoError(t, w.Write(ctx, &Batch{}), "an empty batch needs no commit")
	require.NoError(t, w.Start(ctx))
	require.Error(t, w.Start(ctx))
	require.NoError(t, w.Write(ctx, one(1)))
	w.Stop()
	w.Stop()
	require.ErrorIs(t, w.Write(ctx, one(2)), ErrClosed)
	require.Equal(t, int64(1), w.Epoch())
}

func (f *fakeDriver) CounterList(context.Context) ([]Counter, error) { return nil, nil }
func (f *fakeDriver) PageScan(context.Context, *PageScanParams) ([]PageRow, error) {
	return nil, nil
}
func (f *fakeDriver) LargePut(context.Context, *LargePutParams) error { return nil }
func (f *fakeDriver) LargeScan(context.Context, *LargeScanParams) ([][]byte, error) {
	return nil, nil
}
func (f *fakeDriver) LargeDelete(context.Context, int64, int64) error { return nil }
func (f *fakeDriver) LargeSweep(context.Context, *LargeSweepParams) (int64, error) {
	return 0, nil
}

// enter waits until n more commits have begun (after block).
func enter(t *testing.T, entered <-chan struct{}, n int) {
	t.Helper()
	for range n {
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatal("a commit never started")
		}
	}
}

// ids returns the message IDs a commit inserted.
func ids(b *Batch) []int64 {
	out := make([]int64, len(b.MessageInserts))
	for i, m := range b.MessageInserts {
		out[i] = m.ID
	}
	return out
}

func TestWriterDefaultLanes(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		dialect string
		cfg     int
		want    int
	}{
		{"postgres", 0, LanesDefault},
		{"postgres", 4, 4},
		{"postgres", 1000, LanesMax},
		{"mysql", 0, 1},
		{"mysql", 4, 1},
		{"sqlite", 0, 1},
		{"sqlite", 3, 1},
		{"", 3, 3},
	} {
		w := NewWriter(&fakeDriver{epoch: 1, dialect: tt.dialect}, 1, WriterConfig{Lanes: tt.cfg, Logger: slog.New(slog.DiscardHandler)})
		require.Equal(t, tt.want, w.Lanes(), "dialect %q, Lanes %d", tt.dialect, tt.cfg)
	}
}

// With several lanes, a request that arrives while a commit is in flight starts its
// own transaction at once, on another slot; once every lane is busy, requests queue
// and merge.
func TestWriterLanesCommitConcurrently(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{LaneMinRows: 1, Lanes: 3})
	entered, release := b.drv.block()
	t.Cleanup(release) // a failed test must not leave the writer blocked
	rs := b.inFlight(t, entered, 3)
	// Three transactions in flight: the next ones wait, queued, for a free lane.
	rs = append(rs, b.queueOnes(t, 3, 9)...)
	release()
	for _, r := range rs {
		require.NoError(t, <-r)
	}
	b.drv.mu.Lock()
	defer b.drv.mu.Unlock()
	require.Equal(t, 3, b.drv.maxInFlight)
	require.False(t, b.drv.overlap, "two commits in flight on one slot")
	require.Len(t, b.drv.commits, 4, "the six queued requests merge into one commit")
	var merged []int64
	for i, c := range b.drv.commits {
		require.GreaterOrEqual(t, b.drv.slots[i], 0)
		require.Less(t, b.drv.slots[i], 3)
		if c.rows() > 1 {
			merged = ids(c)
		}
	}
	require.ElementsMatch(t, []int64{3, 4, 5, 6, 7, 8}, merged)
}

// A barrier waits until every lane is idle, commits alone, and only then do the
// requests queued after it start.
func TestWriterLanesBarrierWaitsForEveryLane(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{LaneMinRows: 1, Lanes: 4})
	entered, release := b.drv.block()
	t.Cleanup(release) // a failed test must not leave the writer blocked
	first := b.inFlight(t, entered, 2)
	purge := b.writeAsync(&Batch{QueuePurges: []string{"q"}})
	b.lanesTaken(t) // the dispatcher holds it, waiting for the two lanes in flight
	after := b.writeAsync(one(2))
	b.queued(t, 1)
	after2 := b.writeAsync(one(3))
	b.queued(t, 2)
	select {
	case <-entered:
		t.Fatal("a commit began while two lanes were in flight before the barrier")
	default:
	}
	release()
	for _, r := range append(first, purge, after, after2) {
		require.NoError(t, <-r)
	}
	b.drv.mu.Lock()
	defer b.drv.mu.Unlock()
	require.Len(t, b.drv.commits, 4)
	require.ElementsMatch(t, []int64{0, 1}, append(ids(b.drv.commits[0]), ids(b.drv.commits[1])...))
	require.Equal(t, []string{"q"}, b.drv.commits[2].QueuePurges, "the barrier commits after every earlier request")
	require.Equal(t, 0, b.drv.alongside[2], "the barrier commits alone")
	require.Equal(t, []int64{2, 3}, ids(b.drv.commits[3]), "later requests wait for the barrier, then merge")
	require.False(t, b.drv.overlap)
}

// A barrier that arrives while requests queued behind busy lanes still commits after
// them, and a barrier queued behind another barrier follows it.
func TestWriterLanesBarrierOrder(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{LaneMinRows: 1, Lanes: 2})
	entered, release := b.drv.block()
	t.Cleanup(release) // a failed test must not leave the writer blocked
	rs := b.inFlight(t, entered, 2)
	rs = append(rs, b.writeAsync(one(2)))
	b.queued(t, 1)
	rs = append(rs, b.writeAsync(&Batch{BindingDeletes: []BindingKey{{Kind: KindQueue, Name: "q"}}}))
	b.queued(t, 2)
	rs = append(rs, b.writeAsync(&Batch{PageTrims: []PageTrim{{Log: "q", UpTo: 5}}}))
	b.queued(t, 3)
	rs = append(rs, b.writeAsync(one(3)))
	b.queued(t, 4)
	release()
	for _, r := range rs {
		require.NoError(t, <-r)
	}
	b.drv.mu.Lock()
	defer b.drv.mu.Unlock()
	require.Len(t, b.drv.commits, 6)
	require.ElementsMatch(t, []int64{0, 1, 2}, append(append(ids(b.drv.commits[0]), ids(b.drv.commits[1])...), ids(b.drv.commits[2])...))
	require.Len(t, b.drv.commits[3].BindingDeletes, 1)
	require.Equal(t, 0, b.drv.alongside[3])
	require.Len(t, b.drv.commits[4].PageTrims, 1)
	require.Equal(t, 0, b.drv.alongside[4])
	require.Equal(t, []int64{3}, ids(b.drv.commits[5]))
}

// A failed merged batch is retried request by request on its lane while the other
// lanes go on.
func TestWriterLanesRetryOneByOne(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{LaneMinRows: 1, Lanes: 2})
	b.drv.fail = func(batch *Batch) error {
		for _, m := range batch.MessageInserts {
			if m.ID == 3 {
				return fmt.Errorf("fake: %w", ErrConflict)
			}
		}
		return nil
	}
	entered, release := b.drv.block()
	t.Cleanup(release) // a failed test must not leave the writer blocked
	first := b.inFlight(t, entered, 2)
	queued := b.queueOnes(t, 2, 6)
	release()
	for _, r := range first {
		require.NoError(t, <-r)
	}
	for i, r := range queued {
		id := int64(i) + 2
		if id == 3 {
			require.ErrorIs(t, <-r, ErrConflict)
		} else {
			require.NoError(t, <-r, "write %d", id)
		}
	}
	require.Equal(t, []int{1, 1, 1, 1, 1}, b.drv.commitRows())
}

// Every lane in flight when the epoch moves on fails with ErrFenced; OnFenced is
// called once, and later writes are refused without a commit.
func TestWriterLanesFenced(t *testing.T) {
	t.Parallel()
	var fencedCalls atomic.Int64
	b := setupWriter(t, WriterConfig{LaneMinRows: 1, Lanes: 4, OnFenced: func() { fencedCalls.Add(1) }})
	entered, release := b.drv.block()
	t.Cleanup(release)
	rs := append(b.inFlight(t, entered, 4), b.queueOnes(t, 4, 8)...)
	_, _ = b.drv.EpochBump(b.ctx)
	release()
	for _, r := range rs {
		require.ErrorIs(t, <-r, ErrFenced)
	}
	require.True(t, b.w.Fenced())
	require.Equal(t, int64(1), fencedCalls.Load())
	require.ErrorIs(t, b.w.Write(b.ctx, one(9)), ErrFenced)
	require.Empty(t, b.drv.commitRows())
	b.w.SetEpoch(2)
	require.NoError(t, b.w.Write(b.ctx, one(10)))
	require.Equal(t, []int{1}, b.drv.commitRows())
}

// Stop commits what is queued and returns only once every lane has answered.
func TestWriterLanesStopDrains(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{LaneMinRows: 1, Lanes: 3, MaxBatchRows: 2})
	entered, release := b.drv.block()
	t.Cleanup(release)
	rs := append(b.inFlight(t, entered, 3), b.queueOnes(t, 3, 10)...)
	stopped := make(chan struct{})
	go func() {
		b.w.Stop()
		close(stopped)
	}()
	select {
	case <-stopped:
		t.Fatal("Stop returned while lanes were in flight")
	case <-time.After(20 * time.Millisecond):
	}
	release()
	<-stopped
	for _, r := range rs {
		require.NoError(t, <-r)
	}
	total := 0
	for _, n := range b.drv.commitRows() {
		require.LessOrEqual(t, n, 2)
		total += n
	}
	require.Equal(t, 10, total)
	b.drv.mu.Lock()
	defer b.drv.mu.Unlock()
	require.LessOrEqual(t, b.drv.maxInFlight, 3)
	require.False(t, b.drv.overlap)
}

// Many writers on many lanes: every request is answered, no slot is used twice at
// once, OnCommit sees every row.
func TestWriterLanesStress(t *testing.T) {
	t.Parallel()
	var rows atomic.Int64
	b := setupWriter(t, WriterConfig{LaneMinRows: 3, Lanes: 8, MaxBatchRows: 7, OnCommit: func(n int, _ time.Duration, err error) {
		if err == nil {
			rows.Add(int64(n))
		}
	}})
	const n = 2000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var batch *Batch
			if i%250 == 0 {
				batch = &Batch{CounterDeletes: []CounterKey{{Kind: CounterQueue, Name: "x"}}}
			} else {
				batch = one(int64(i))
			}
			errs <- b.w.Write(b.ctx, batch)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, int64(n), rows.Load())
	b.drv.mu.Lock()
	defer b.drv.mu.Unlock()
	require.False(t, b.drv.overlap, "two commits in flight on one slot")
	for i, c := range b.drv.commits {
		if c.barrier() {
			require.Equal(t, 0, b.drv.alongside[i], "a barrier committed beside another transaction")
		}
	}
}

// While a lane is in flight, a batch smaller than LaneMinRows does not open another
// transaction: it grows until it reaches LaneMinRows rows, or waits for a lane to
// finish.
func TestWriterLaneMinRows(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{Lanes: 3, LaneMinRows: 4})
	require.Equal(t, 4, b.w.cfg.LaneMinRows)
	entered, release := b.drv.block()
	t.Cleanup(release)
	r0 := b.writeAsync(one(0)) // no lane in flight: commits at once
	enter(t, entered, 1)
	var rs []<-chan error
	for i := int64(1); i <= 4; i++ {
		rs = append(rs, b.writeAsync(one(i)))
	}
	enter(t, entered, 1) // four rows: a second transaction beside the first
	// One more row, handed to the dispatcher directly so that the test knows when it
	// was taken: it waits, as two lanes are in flight and it is alone.
	req := &writeRequest{batch: one(5), done: make(chan error, 1)}
	b.w.queued.Add(1) // as Write does
	b.w.reqs <- req
	b.queued(t, 0)
	select {
	case <-entered:
		t.Fatal("a one-row batch started a third transaction")
	case <-time.After(20 * time.Millisecond):
	}
	release()
	require.NoError(t, <-r0)
	for _, r := range rs {
		require.NoError(t, <-r)
	}
	require.NoError(t, <-req.done)
	b.drv.mu.Lock()
	defer b.drv.mu.Unlock()
	require.Equal(t, 2, b.drv.maxInFlight)
	var sizes []int
	for _, c := range b.drv.commits {
		sizes = append(sizes, c.rows())
	}
	require.ElementsMatch(t, []int{1, 4, 1}, sizes)
}

// A batch held back below LaneMinRows takes in the requests queued meanwhile when the
// lane in flight finishes, and commits them as one transaction; requests that stay
// below LaneMinRows together never wake it before that.
func TestWriterLaneMinRowsTakesQueuedOnFinish(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{Lanes: 2, LaneMinRows: 10})
	entered, release := b.drv.block()
	t.Cleanup(release)
	r0 := b.writeAsync(one(0))
	enter(t, entered, 1)
	// Handed to the dispatcher directly, so that the test knows when it was taken: it
	// is held back, as it is alone below LaneMinRows while a lane is in flight.
	held := &writeRequest{batch: one(1), done: make(chan error, 1)}
	b.w.queued.Add(1) // as Write does
	b.w.reqs <- held
	b.queued(t, 0)
	var rs []<-chan error
	for i := int64(2); i < 5; i++ { // three more rows: still below LaneMinRows together
		rs = append(rs, b.writeAsync(one(i)))
	}
	// Every row is held back or queued once Write counted it.
	require.Eventually(t, func() bool { return b.w.holding.Load() > 0 && b.w.holding.Load()+b.w.queued.Load() == 4 },
		10*time.Second, 100*time.Microsecond)
	select {
	case <-entered:
		t.Fatal("a batch below LaneMinRows started a second transaction")
	case <-time.After(20 * time.Millisecond):
	}
	release()
	require.NoError(t, <-r0)
	require.NoError(t, <-held.done)
	for _, r := range rs {
		require.NoError(t, <-r)
	}
	require.Equal(t, []int{1, 4}, b.drv.commitRows())
	require.Equal(t, 1, b.drv.maxInFlight)
}

// With SyncPeriod (journal-sync-period), the writer waits for more requests before it
// commits a batch: a request arriving after the first was taken joins its transaction.
func TestWriterSyncPeriodWaitsForMore(t *testing.T) {
	t.Parallel()
	b := setupWriter(t, WriterConfig{SyncPeriod: 10 * time.Second, MaxBatchRows: 2})
	// Handed to the dispatcher directly, so that the test knows when it was taken.
	r0 := &writeRequest{batch: one(0), done: make(chan error, 1)}
	b.w.reqs <- r0
	b.queued(t, 0) // taken, and waiting for more
	r1 := b.writeAsync(one(1))
	require.NoError(t, <-r0.done) // the second filled the batch: committed at once, not after 10s
	require.NoError(t, <-r1)
	require.Equal(t, []int{2}, b.drv.commitRows())
}
