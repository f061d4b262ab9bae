package storetest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
)

// fencingTests check that a batch refused by the fence writes nothing, whatever parts
// it has and however many rows (drivers switch statements by size, e.g. COPY on
// PostgreSQL), and that the driver stays usable after it.
var fencingTests = []struct {
	name string
	fn   func(t *testing.T, h Harness)
}{
	{"FencedBatchWritesNothing", testFencedBatchWritesNothing},
	{"FenceRowMissing", testFenceRowMissing},
}

// storeState is everything a batch of fencedBatch can change.
type storeState struct {
	queues   map[string][]sqlstore.Message
	bindings []sqlstore.Binding
	dups     map[string]int64 // "queue/key" -> message id; absent when not found
}

func (b *bundle) state(t testing.TB, queues []string, dupKeys [][2]string) storeState {
	t.Helper()
	s := storeState{queues: map[string][]sqlstore.Message{}, dups: map[string]int64{}}
	for _, q := range queues {
		s.queues[q] = b.scanAll(t, q)
	}
	var err error
	s.bindings, err = b.drv.BindingList(b.ctx)
	require.NoError(t, err)
	for _, k := range dupKeys {
		id, err := b.drv.DuplicateGet(b.ctx, &sqlstore.DuplicateGetParams{Queue: k[0], Key: k[1]})
		if errors.Is(err, sqlstore.ErrNotFound) {
			continue
		}
		require.NoError(t, err)
		s.dups[k[0]+"/"+k[1]] = id
	}
	return s
}

// testFencedBatchWritesNothing commits, under a stale epoch, batches with every part
// (binding puts and deletes, message inserts, updates, deletes, queue purges,
// duplicate ids and their expiry), small and large: each fails with ErrFenced and the
// store is as before. The same batches under the right epoch then commit, so it was
// the fence that refused them.
func testFencedBatchWritesNothing(t *testing.T, h Harness) {
	b := setup(t, h)
	var seed []sqlstore.Message
	for i := int64(1); i <= 10; i++ {
		seed = append(seed, msg("q", i), msg("p", i))
	}
	b.commit(t, &sqlstore.Batch{
		BindingPuts: []sqlstore.Binding{
			{Kind: sqlstore.KindQueue, Name: "q", Config: `{"v":1}`, CreatedAt: 1},
			{Kind: sqlstore.KindAddress, Name: "a", Config: "{}", CreatedAt: 1},
			{Kind: sqlstore.KindBinding, Name: "a", Target: "q", Config: "{}", CreatedAt: 1},
		},
		MessageInserts:   seed,
		DuplicateInserts: []sqlstore.Duplicate{{Queue: "q", Key: "old", MessageID: 1, CreatedAt: 10}},
	})
	queues := []string{"q", "p", "new"}
	dupKeys := [][2]string{{"q", "old"}}

	batch := func(first int64, inserts int) *sqlstore.Batch {
		bt := &sqlstore.Batch{
			BindingPuts: []sqlstore.Binding{
				{Kind: sqlstore.KindQueue, Name: "q", Config: `{"v":2}`, CreatedAt: 2},
				{Kind: sqlstore.KindQueue, Name: fmt.Sprint("new", first), Config: "{}", CreatedAt: 2},
			},
			MessageUpdates:   []sqlstore.MessageUpdate{{Queue: "q", ID: 1, DeliveryCount: 3, DeliverAt: 99}},
			MessageDeletes:   []sqlstore.MessageKey{{Queue: "q", ID: 2}, {Queue: "q", ID: 3}},
			QueuePurges:      []string{"p"},
			BindingDeletes:   []sqlstore.BindingKey{{Kind: sqlstore.KindBinding, Name: "a", Target: "q"}},
			DuplicatesBefore: 100,
		}
		for i := int64(0); i < int64(inserts); i++ {
			bt.MessageInserts = append(bt.MessageInserts, msg("new", first+i))
			bt.DuplicateInserts = append(bt.DuplicateInserts, sqlstore.Duplicate{Queue: "new", Key: fmt.Sprint("k", first+i), MessageID: first + i, CreatedAt: 200})
		}
		return bt
	}
	for _, n := range []int{1, 2500} {
		dupKeys = append(dupKeys, [2]string{"new", fmt.Sprint("k", int64(n)*10)})
	}
	before := b.state(t, queues, dupKeys)
	require.Len(t, before.queues["p"], 10)
	require.Len(t, before.bindings, 3)
	require.Len(t, before.dups, 1)

	for _, n := range []int{1, 2500} {
		for _, epoch := range []int64{b.epoch - 1, b.epoch + 1} {
			err := b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Batch: batch(int64(n)*10, n)})
			require.ErrorIs(t, err, sqlstore.ErrFenced, "%d inserts, epoch %d", n, epoch)
			require.Equal(t, before, b.state(t, queues, dupKeys), "a fenced batch of %d inserts changed the store", n)
		}
	}

	// The driver is still usable, and the same batches commit under the right epoch.
	for _, n := range []int{1, 2500} {
		b.commit(t, batch(int64(n)*10, n))
	}
	after := b.state(t, queues, dupKeys)
	require.Empty(t, after.queues["p"])
	require.Len(t, after.queues["new"], 2501)
	require.Equal(t, []int64{1, 4, 5, 6, 7, 8, 9, 10}, ids(after.queues["q"]))
	require.Equal(t, int32(3), after.queues["q"][0].DeliveryCount)
	require.Len(t, after.bindings, 4) // address a, queues q, new10, new25000
	require.Equal(t, map[string]int64{"new/k10": 10, "new/k25000": 25000}, after.dups)
}

// testFenceRowMissing deletes the epoch row: a batch then fails (the fence cannot be
// read, so nobody may write) and writes nothing.
func testFenceRowMissing(t *testing.T, h Harness) {
	b := setup(t, h)
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 1)}})
	nm := migrations.Tables{}.WithDefaults().NodeManager
	h.Exec(t, b.url, fmt.Sprintf("DELETE FROM %s WHERE id = %d", nm, sqlstore.NodeRowFence))
	for _, n := range []int{1, 2500} {
		bt := &sqlstore.Batch{
			BindingPuts:    []sqlstore.Binding{{Kind: sqlstore.KindQueue, Name: "q", Config: "{}", CreatedAt: 1}},
			MessageDeletes: []sqlstore.MessageKey{{Queue: "q", ID: 1}},
		}
		for i := int64(0); i < int64(n); i++ {
			bt.MessageInserts = append(bt.MessageInserts, msg("new", 10+i))
		}
		err := b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: b.epoch, Batch: bt})
		require.Error(t, err, "%d inserts", n)
	}
	require.Equal(t, []int64{1}, ids(b.scanAll(t, "q")))
	require.Zero(t, b.count(t, "new"))
	bs, err := b.drv.BindingList(b.ctx)
	require.NoError(t, err)
	require.Empty(t, bs)
}
