package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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
	epoch   int64
	fail    func(b *Batch) error
	gate    chan struct{}
	entered chan struct{}
}

func (f *fakeDriver) Dialect() string                                { return "fake" }
func (f *fakeDriver) Tables() migrations.Tables                      { return migrations.Tables{}.WithDefaults() }
func (f *fakeDriver) Migrate(context.Context) error                  { return nil }
func (f *fakeDriver) EpochGet(context.Context) (int64, error)        { return f.epoch, nil }
func (f *fakeDriver) EpochBump(context.Context) (int64, error)       { f.epoch++; return f.epoch, nil }
func (f *fakeDriver) BindingList(context.Context) ([]Binding, error) { return nil, nil }
func (f *fakeDriver) MessageScan(context.Context, *MessageScanParams) ([]Message, error) {
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
	if p.Epoch != f.epoch {
		return fmt.Errorf("fake: %w", ErrFenced)
	}
	if f.fail != nil {
		if err := f.fail(p.Batch); err != nil {
			return err
		}
	}
	f.commits = append(f.commits, p.Batch)
	return nil
}

// block makes the next commits wait until the returned release is called.
func (f *fakeDriver) block() (entered <-chan struct{}, release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate = make(chan struct{})
	f.entered = make(chan struct{}, 1)
	gate := f.gate
	return f.entered, func() {
		f.mu.Lock()
		f.gate = nil
		f.mu.Unlock()
		close(gate)
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
