// Package storetest is the conformance suite every sqlstore dialect runs unchanged
// against a real database: sqlstore/{sqlite,postgres,mysql}/*_test.go call Exercise
// with their own Harness. It covers the Driver including its LeaseStore (lease.go);
// optional capabilities such as sqlstore.LeaseWatcher are tested where a driver has
// them and skipped elsewhere.
//
// Each subtest opens its own fresh database (internal/testdb) and runs in parallel.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
)

// Harness is what a dialect supplies to Exercise.
type Harness struct {
	// NewURL returns the store URL of a fresh, empty database (testdb.SQLite etc.).
	NewURL func(t testing.TB) string
	// Open opens a driver on url with the given table names, without migrating, and
	// closes it when t ends. Zero Tables means the defaults.
	Open func(t testing.TB, url string, tables migrations.Tables) sqlstore.Driver
	// Exec runs one SQL statement on the database named by url, outside any driver
	// (used to tamper with the schema version).
	Exec func(t testing.TB, url string, stmt string)
	// QueryInt runs one query returning one integer (a row count) on the database
	// named by url, outside any driver.
	QueryInt func(t testing.TB, url string, query string) int64
	// MigrateTo applies the migrations up to version only (an older schema, to test
	// upgrades) with the given table names, outside any driver.
	MigrateTo func(t testing.TB, url string, tables migrations.Tables, version uint)
}

// Exercise runs the conformance suite.
func Exercise(t *testing.T, h Harness) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"MigrateTwice", testMigrateTwice},
		{"MigrateConcurrent", testMigrateConcurrent},
		{"SchemaTooNew", testSchemaTooNew},
		{"MigrateDirty", testMigrateDirty},
		{"TableNames", testTableNames},
		{"Bindings", testBindings},
		{"MessageInsertScan", testMessageInsertScan},
		{"MessagesByID", testMessagesByID},
		{"MessageUpdate", testMessageUpdate},
		{"MessageDelete", testMessageDelete},
		{"QueuePurge", testQueuePurge},
		{"Duplicates", testDuplicates},
		{"ConflictIsAtomic", testConflictIsAtomic},
		{"Fenced", testFenced},
		{"EpochBump", testEpochBump},
		{"FenceRace", testFenceRace},
		{"LargeBatch", testLargeBatch},
		{"WriterMerges", testWriterMerges},
		{"WriterBarrier", testWriterBarrier},
		{"WriterFenced", testWriterFenced},
		{"WriterStopDrains", testWriterStopDrains},
		{"Closed", testClosed},
	}
	tests = append(tests, v2Tests...)
	tests = append(tests, leaseTests...)
	tests = append(tests, fencingTests...)
	tests = append(tests, lanesTests...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, h)
		})
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// bundle is a migrated store under a known epoch.
type bundle struct {
	url   string
	drv   sqlstore.Driver
	epoch int64
	ctx   context.Context
}

func setup(t *testing.T, h Harness) *bundle {
	t.Helper()
	ctx := ctxT(t)
	url := h.NewURL(t)
	drv := h.Open(t, url, migrations.Tables{})
	require.NoError(t, drv.Migrate(ctx))
	epoch, err := drv.EpochBump(ctx)
	require.NoError(t, err)
	return &bundle{url: url, drv: drv, epoch: epoch, ctx: ctx}
}

func (b *bundle) commit(t testing.TB, batch *sqlstore.Batch) {
	t.Helper()
	require.NoError(t, b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: b.epoch, Batch: batch}))
}

func (b *bundle) scanAll(t testing.TB, queue string) []sqlstore.Message {
	t.Helper()
	ms, err := b.drv.MessageScan(b.ctx, &sqlstore.MessageScanParams{Queue: queue, Limit: 1 << 20})
	require.NoError(t, err)
	return ms
}

func (b *bundle) count(t testing.TB, queue string) int64 {
	t.Helper()
	n, err := b.drv.MessageCount(b.ctx, queue)
	require.NoError(t, err)
	return n
}

func msg(queue string, id int64) sqlstore.Message {
	return sqlstore.Message{Queue: queue, ID: id, Priority: 4, CreatedAt: 1_700_000_000_000 + id, Body: []byte(fmt.Sprintf("body-%d", id))}
}

func ids(ms []sqlstore.Message) []int64 {
	out := make([]int64, len(ms))
	for i := range ms {
		out[i] = ms[i].ID
	}
	return out
}

func testMigrateTwice(t *testing.T, h Harness) {
	ctx := ctxT(t)
	url := h.NewURL(t)
	drv := h.Open(t, url, migrations.Tables{})
	require.NoError(t, drv.Migrate(ctx))
	require.NoError(t, drv.Migrate(ctx))
	e, err := drv.EpochGet(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(0), e)
	// A second driver on a migrated database finds nothing to do either.
	require.NoError(t, h.Open(t, url, migrations.Tables{}).Migrate(ctx))
}

func testMigrateConcurrent(t *testing.T, h Harness) {
	ctx := ctxT(t)
	url := h.NewURL(t)
	const n = 3
	drvs := make([]sqlstore.Driver, n)
	for i := range drvs {
		drvs[i] = h.Open(t, url, migrations.Tables{})
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range drvs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = drvs[i].Migrate(ctx)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "driver %d", i)
	}
	for _, d := range drvs {
		require.NoError(t, d.Migrate(ctx))
		_, err := d.EpochGet(ctx)
		require.NoError(t, err)
	}
}

func testSchemaTooNew(t *testing.T, h Harness) {
	b := setup(t, h)
	h.Exec(t, b.url, "UPDATE "+b.drv.Tables().Migrations+" SET version = 999")
	err := h.Open(t, b.url, migrations.Tables{}).Migrate(b.ctx)
	require.Error(t, err)
	require.ErrorIs(t, err, sqlstore.ErrSchemaTooNew)
	require.ErrorIs(t, err, migrations.ErrSchemaTooNew)
	require.Contains(t, err.Error(), "999")
	require.Contains(t, err.Error(), "upgrade tablemq")
}

func testMigrateDirty(t *testing.T, h Harness) {
	b := setup(t, h)
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 1)}})
	h.Exec(t, b.url, "UPDATE "+b.drv.Tables().Migrations+" SET dirty = true")
	// Every migration is idempotent: the runner forces the previous version and runs
	// the dirty one again, keeping the data.
	require.NoError(t, h.Open(t, b.url, migrations.Tables{}).Migrate(b.ctx))
	require.NoError(t, b.drv.Migrate(b.ctx))
	require.Equal(t, int64(1), b.count(t, "q"))
	e, err := b.drv.EpochGet(b.ctx)
	require.NoError(t, err)
	require.Equal(t, b.epoch, e)
}

func testTableNames(t *testing.T, h Harness) {
	ctx := ctxT(t)
	url := h.NewURL(t)
	ta, tb := migrations.WithPrefix("ga_"), migrations.WithPrefix("gb_")
	a := h.Open(t, url, ta)
	b := h.Open(t, url, tb)
	require.Equal(t, ta, a.Tables())
	require.NoError(t, a.Migrate(ctx))
	require.NoError(t, b.Migrate(ctx))
	_, err := a.EpochBump(ctx)
	require.NoError(t, err)
	ea, err := a.EpochBump(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), ea)
	eb, err := b.EpochGet(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(0), eb, "epoch of group b moved with group a")

	require.NoError(t, a.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: ea, Batch: &sqlstore.Batch{
		BindingPuts:      []sqlstore.Binding{{Kind: sqlstore.KindQueue, Name: "q", Config: "{}", CreatedAt: 1}},
		MessageInserts:   []sqlstore.Message{msg("q", 1), msg("q", 2)},
		DuplicateInserts: []sqlstore.Duplicate{{Queue: "q", Key: "k", MessageID: 1, CreatedAt: 1}},
	}}))
	n, err := b.MessageCount(ctx, "q")
	require.NoError(t, err)
	require.Zero(t, n)
	bs, err := b.BindingList(ctx)
	require.NoError(t, err)
	require.Empty(t, bs)
	_, err = b.DuplicateGet(ctx, &sqlstore.DuplicateGetParams{Queue: "q", Key: "k"})
	require.ErrorIs(t, err, sqlstore.ErrNotFound)
	n, err = a.MessageCount(ctx, "q")
	require.NoError(t, err)
	require.Equal(t, int64(2), n)
	// A writer of group a holds a's epoch, which b's fence does not know.
	require.ErrorIs(t, b.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: ea, Batch: &sqlstore.Batch{
		MessageInserts: []sqlstore.Message{msg("q", 3)},
	}}), sqlstore.ErrFenced)
}

func testBindings(t *testing.T, h Harness) {
	b := setup(t, h)
	bs, err := b.drv.BindingList(b.ctx)
	require.NoError(t, err)
	require.Empty(t, bs)

	b.commit(t, &sqlstore.Batch{BindingPuts: []sqlstore.Binding{
		{Kind: sqlstore.KindQueue, Name: "orders", Config: `{"max_deliveries":5}`, CreatedAt: 10},
		{Kind: sqlstore.KindAddress, Name: "orders", Config: "{}", CreatedAt: 11},
		{Kind: sqlstore.KindBinding, Name: "orders", Target: "orders", Config: "", CreatedAt: 12},
		{Kind: sqlstore.KindQueue, Name: "audit", Config: "{}", CreatedAt: 13},
	}})
	bs, err = b.drv.BindingList(b.ctx)
	require.NoError(t, err)
	require.Equal(t, []sqlstore.Binding{
		{Kind: sqlstore.KindAddress, Name: "orders", Config: "{}", CreatedAt: 11},
		{Kind: sqlstore.KindBinding, Name: "orders", Target: "orders", Config: "{}", CreatedAt: 12},
		{Kind: sqlstore.KindQueue, Name: "audit", Config: "{}", CreatedAt: 13},
		{Kind: sqlstore.KindQueue, Name: "orders", Config: `{"max_deliveries":5}`, CreatedAt: 10},
	}, bs)

	// Replace.
	b.commit(t, &sqlstore.Batch{BindingPuts: []sqlstore.Binding{
		{Kind: sqlstore.KindQueue, Name: "orders", Config: `{"max_deliveries":9}`, CreatedAt: 20},
	}})
	// Two puts of one key in one batch (as a merged group commit makes): the last wins.
	b.commit(t, &sqlstore.Batch{BindingPuts: []sqlstore.Binding{
		{Kind: sqlstore.KindQueue, Name: "audit", Config: `{"v":1}`, CreatedAt: 14},
		{Kind: sqlstore.KindQueue, Name: "audit", Config: "{}", CreatedAt: 13},
	}})
	// Delete (and a delete of a missing row is no error).
	b.commit(t, &sqlstore.Batch{BindingDeletes: []sqlstore.BindingKey{
		{Kind: sqlstore.KindBinding, Name: "orders", Target: "orders"},
		{Kind: sqlstore.KindQueue, Name: "missing"},
	}})
	bs, err = b.drv.BindingList(b.ctx)
	require.NoError(t, err)
	require.Equal(t, []sqlstore.Binding{
		{Kind: sqlstore.KindAddress, Name: "orders", Config: "{}", CreatedAt: 11},
		{Kind: sqlstore.KindQueue, Name: "audit", Config: "{}", CreatedAt: 13},
		{Kind: sqlstore.KindQueue, Name: "orders", Config: `{"max_deliveries":9}`, CreatedAt: 20},
	}, bs)
}

func testMessageInsertScan(t *testing.T, h Harness) {
	b := setup(t, h)
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	special := []sqlstore.Message{
		{Queue: "q1", ID: 3, Priority: 9, DeliverAt: 1234, ExpiresAt: 5678, DeliveryCount: 2, CreatedAt: 99,
			ContentType: "application/octet-stream", Headers: map[string]string{"a": "1", "ünï": "cödé \"q\""}, Body: binary},
		{Queue: "q1", ID: 5, CreatedAt: 1, Body: nil},                                    // nil body
		{Queue: "q1", ID: 7, CreatedAt: 1, Body: []byte{}, Headers: map[string]string{}}, // empty body and headers
	}
	var ms []sqlstore.Message
	ms = append(ms, special...)
	for _, id := range []int64{10, 1, 8, 2, 9, 4, 6} {
		ms = append(ms, msg("q1", id))
	}
	ms = append(ms, msg("q2", 1), msg("q2", 100), msg("q10", 2), msg("q", 2))
	b.commit(t, &sqlstore.Batch{MessageInserts: ms})

	require.Equal(t, int64(10), b.count(t, "q1"))
	require.Equal(t, int64(2), b.count(t, "q2"))
	require.Equal(t, int64(0), b.count(t, "nope"))

	page := func(after int64, limit int) []int64 {
		got, err := b.drv.MessageScan(b.ctx, &sqlstore.MessageScanParams{Queue: "q1", AfterID: after, Limit: limit})
		require.NoError(t, err)
		for _, m := range got {
			require.Equal(t, "q1", m.Queue)
		}
		return ids(got)
	}
	require.Equal(t, []int64{1, 2, 3, 4}, page(0, 4))
	require.Equal(t, []int64{5, 6, 7, 8}, page(4, 4))
	require.Equal(t, []int64{9, 10}, page(8, 4))
	require.Empty(t, page(10, 4))
	require.Equal(t, []int64{7, 8, 9, 10}, page(6, 100))
	require.Len(t, page(0, 0), 10, "Limit 0 means the default limit")

	all := b.scanAll(t, "q1")
	byID := map[int64]sqlstore.Message{}
	for _, m := range all {
		byID[m.ID] = m
	}
	got := byID[3]
	require.Equal(t, special[0].Priority, got.Priority)
	require.Equal(t, special[0].DeliverAt, got.DeliverAt)
	require.Equal(t, special[0].ExpiresAt, got.ExpiresAt)
	require.Equal(t, special[0].DeliveryCount, got.DeliveryCount)
	require.Equal(t, special[0].CreatedAt, got.CreatedAt)
	require.Equal(t, special[0].ContentType, got.ContentType)
	require.Equal(t, special[0].Headers, got.Headers)
	require.True(t, bytes.Equal(binary, got.Body), "binary body round trip")
	require.Empty(t, byID[5].Body)
	require.NotNil(t, byID[5].Body, "an empty body reads back as an empty, non-nil slice")
	require.Empty(t, byID[5].Headers)
	require.Empty(t, byID[7].Body)
	require.Empty(t, byID[7].Headers)
	require.Equal(t, []byte("body-10"), byID[10].Body)

	require.Equal(t, []int64{1, 100}, ids(b.scanAll(t, "q2")))
	require.Equal(t, []int64{2}, ids(b.scanAll(t, "q10")))

	// Inserting an existing (queue, id) is a conflict.
	err := b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: b.epoch, Batch: &sqlstore.Batch{
		MessageInserts: []sqlstore.Message{msg("q2", 100)},
	}})
	require.ErrorIs(t, err, sqlstore.ErrConflict)
}

// testMessagesByID reads messages by ID: only the queue's, in ID order, whole (the
// same rows as a scan), missing IDs left out, repeats and order of the list ignored,
// lists longer than one statement split.
func testMessagesByID(t *testing.T, h Harness) {
	b := setup(t, h)
	var ms []sqlstore.Message
	for id := int64(1); id <= 700; id++ {
		if id%7 == 0 {
			continue // not stored
		}
		m := msg("q1", id)
		m.Headers = map[string]string{"n": fmt.Sprint(id)}
		ms = append(ms, m)
	}
	ms = append(ms, msg("q2", 14), msg("q2", 3))
	b.commit(t, &sqlstore.Batch{MessageInserts: ms})
	stored := map[int64]sqlstore.Message{}
	for _, m := range b.scanAll(t, "q1") {
		stored[m.ID] = m
	}

	byID := func(queue string, list ...int64) []sqlstore.Message {
		got, err := b.drv.MessagesByID(b.ctx, queue, list)
		require.NoError(t, err)
		return got
	}
	require.Empty(t, byID("q1"))
	require.Empty(t, byID("q1", 7, 14, 701, 0, -1))
	require.Empty(t, byID("nope", 1, 2))
	require.Equal(t, []sqlstore.Message{stored[5]}, byID("q1", 5))
	require.Equal(t, []sqlstore.Message{stored[3], stored[5]}, byID("q1", 5, 3, 5, 7, 3))
	got := byID("q2", 3, 14, 15)
	require.Equal(t, []int64{3, 14}, ids(got))
	require.Equal(t, "q2", got[0].Queue)
	require.Equal(t, []byte("body-3"), got[0].Body)

	// Every ID from 700 down to 1, each twice: three statements' worth.
	var list []int64
	for id := int64(700); id >= 1; id-- {
		list = append(list, id, id)
	}
	got = byID("q1", list...)
	var want []sqlstore.Message
	for id := int64(1); id <= 700; id++ {
		if m, ok := stored[id]; ok {
			want = append(want, m)
		}
	}
	require.Equal(t, want, got)
}

func testMessageUpdate(t *testing.T, h Harness) {
	b := setup(t, h)
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 1), msg("q", 2), msg("q", 3), msg("r", 1)}})
	b.commit(t, &sqlstore.Batch{MessageUpdates: []sqlstore.MessageUpdate{
		{Queue: "q", ID: 1, DeliveryCount: 1, DeliverAt: 1000},
		{Queue: "q", ID: 3, DeliveryCount: 7, DeliverAt: 3000},
		{Queue: "q", ID: 99, DeliveryCount: 1, DeliverAt: 1}, // missing: no error
	}})
	b.commit(t, &sqlstore.Batch{MessageUpdates: []sqlstore.MessageUpdate{{Queue: "q", ID: 2, DeliveryCount: 2, DeliverAt: 2000}}})
	// Several updates of one message in one batch (a merged group commit): the last wins.
	b.commit(t, &sqlstore.Batch{MessageUpdates: []sqlstore.MessageUpdate{
		{Queue: "q", ID: 3, DeliveryCount: 5, DeliverAt: 1},
		{Queue: "q", ID: 3, DeliveryCount: 6, DeliverAt: 2},
		{Queue: "q", ID: 3, DeliveryCount: 7, DeliverAt: 3000},
	}})
	got := b.scanAll(t, "q")
	require.Len(t, got, 3)
	for i, want := range []struct {
		dc int32
		da int64
	}{{1, 1000}, {2, 2000}, {7, 3000}} {
		require.Equal(t, want.dc, got[i].DeliveryCount, "id %d", got[i].ID)
		require.Equal(t, want.da, got[i].DeliverAt, "id %d", got[i].ID)
		require.Equal(t, fmt.Sprintf("body-%d", got[i].ID), string(got[i].Body))
	}
	r := b.scanAll(t, "r")
	require.Zero(t, r[0].DeliveryCount)
	require.Zero(t, r[0].DeliverAt)
}

func testMessageDelete(t *testing.T, h Harness) {
	b := setup(t, h)
	var ms []sqlstore.Message
	for i := int64(1); i <= 10; i++ {
		ms = append(ms, msg("q", i), msg("r", i))
	}
	b.commit(t, &sqlstore.Batch{MessageInserts: ms})
	b.commit(t, &sqlstore.Batch{MessageDeletes: []sqlstore.MessageKey{{Queue: "q", ID: 2}, {Queue: "q", ID: 4}, {Queue: "r", ID: 10}, {Queue: "q", ID: 77}, {Queue: "nope", ID: 1}}})
	b.commit(t, &sqlstore.Batch{MessageDeletes: []sqlstore.MessageKey{{Queue: "q", ID: 6}}})
	require.Equal(t, []int64{1, 3, 5, 7, 8, 9, 10}, ids(b.scanAll(t, "q")))
	require.Equal(t, int64(9), b.count(t, "r"))
	// Insert and delete of the same row in one batch: the insert comes first.
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 11)}, MessageDeletes: []sqlstore.MessageKey{{Queue: "q", ID: 11}}})
	require.Equal(t, int64(7), b.count(t, "q"))
}

func testQueuePurge(t *testing.T, h Harness) {
	b := setup(t, h)
	var ms []sqlstore.Message
	for i := int64(1); i <= 20; i++ {
		ms = append(ms, msg("q", i), msg("keep", i))
	}
	b.commit(t, &sqlstore.Batch{MessageInserts: ms})
	b.commit(t, &sqlstore.Batch{QueuePurges: []string{"q", "absent"}})
	require.Zero(t, b.count(t, "q"))
	require.Equal(t, int64(20), b.count(t, "keep"))
}

func testDuplicates(t *testing.T, h Harness) {
	b := setup(t, h)
	b.commit(t, &sqlstore.Batch{
		MessageInserts: []sqlstore.Message{msg("q", 1), msg("q", 2)},
		DuplicateInserts: []sqlstore.Duplicate{
			{Queue: "q", Key: "old", MessageID: 1, CreatedAt: 100},
			{Queue: "q", Key: "new", MessageID: 2, CreatedAt: 200},
			{Queue: "other", Key: "old", MessageID: 3, CreatedAt: 300},
		},
	})
	get := func(q, k string) (int64, error) {
		return b.drv.DuplicateGet(b.ctx, &sqlstore.DuplicateGetParams{Queue: q, Key: k})
	}
	id, err := get("q", "old")
	require.NoError(t, err)
	require.Equal(t, int64(1), id)
	id, err = get("other", "old")
	require.NoError(t, err)
	require.Equal(t, int64(3), id)
	_, err = get("q", "missing")
	require.ErrorIs(t, err, sqlstore.ErrNotFound)
	_, err = get("nope", "new")
	require.ErrorIs(t, err, sqlstore.ErrNotFound)

	b.commit(t, &sqlstore.Batch{DuplicatesBefore: 200})
	_, err = get("q", "old")
	require.ErrorIs(t, err, sqlstore.ErrNotFound)
	id, err = get("q", "new")
	require.NoError(t, err)
	require.Equal(t, int64(2), id)
	_, err = get("other", "old")
	require.NoError(t, err)
	// The key is free again.
	b.commit(t, &sqlstore.Batch{DuplicateInserts: []sqlstore.Duplicate{{Queue: "q", Key: "old", MessageID: 9, CreatedAt: 400}}})
	id, err = get("q", "old")
	require.NoError(t, err)
	require.Equal(t, int64(9), id)
}

func testConflictIsAtomic(t *testing.T, h Harness) {
	b := setup(t, h)
	b.commit(t, &sqlstore.Batch{
		MessageInserts:   []sqlstore.Message{msg("q", 1)},
		DuplicateInserts: []sqlstore.Duplicate{{Queue: "q", Key: "k", MessageID: 1, CreatedAt: 1}},
	})
	err := b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: b.epoch, Batch: &sqlstore.Batch{
		BindingPuts:      []sqlstore.Binding{{Kind: sqlstore.KindQueue, Name: "new", Config: "{}", CreatedAt: 1}},
		MessageInserts:   []sqlstore.Message{msg("q", 2), msg("q", 3)},
		DuplicateInserts: []sqlstore.Duplicate{{Queue: "q", Key: "fresh", MessageID: 2, CreatedAt: 1}, {Queue: "q", Key: "k", MessageID: 3, CreatedAt: 1}},
		MessageDeletes:   []sqlstore.MessageKey{{Queue: "q", ID: 1}},
	}})
	require.ErrorIs(t, err, sqlstore.ErrConflict)
	require.NotErrorIs(t, err, sqlstore.ErrFenced)
	require.Equal(t, []int64{1}, ids(b.scanAll(t, "q")))
	bs, err := b.drv.BindingList(b.ctx)
	require.NoError(t, err)
	require.Empty(t, bs)
	_, err = b.drv.DuplicateGet(b.ctx, &sqlstore.DuplicateGetParams{Queue: "q", Key: "fresh"})
	require.ErrorIs(t, err, sqlstore.ErrNotFound)
	// The store is still usable.
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 2)}})
	require.Equal(t, int64(2), b.count(t, "q"))
}

func testFenced(t *testing.T, h Harness) {
	b := setup(t, h)
	for _, epoch := range []int64{b.epoch - 1, b.epoch + 1, 0} {
		err := b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Batch: &sqlstore.Batch{
			BindingPuts:      []sqlstore.Binding{{Kind: sqlstore.KindQueue, Name: "q", Config: "{}", CreatedAt: 1}},
			MessageInserts:   []sqlstore.Message{msg("q", 1)},
			DuplicateInserts: []sqlstore.Duplicate{{Queue: "q", Key: "k", MessageID: 1, CreatedAt: 1}},
		}})
		require.ErrorIs(t, err, sqlstore.ErrFenced, "epoch %d", epoch)
	}
	require.Zero(t, b.count(t, "q"))
	bs, err := b.drv.BindingList(b.ctx)
	require.NoError(t, err)
	require.Empty(t, bs)
	_, err = b.drv.DuplicateGet(b.ctx, &sqlstore.DuplicateGetParams{Queue: "q", Key: "k"})
	require.ErrorIs(t, err, sqlstore.ErrNotFound)
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 1)}})
	require.Equal(t, int64(1), b.count(t, "q"))
}

func testEpochBump(t *testing.T, h Harness) {
	b := setup(t, h)
	require.Equal(t, int64(1), b.epoch)
	for want := int64(2); want <= 4; want++ {
		got, err := b.drv.EpochBump(b.ctx)
		require.NoError(t, err)
		require.Equal(t, want, got)
		cur, err := b.drv.EpochGet(b.ctx)
		require.NoError(t, err)
		require.Equal(t, want, cur)
	}
	// Concurrent bumps each get their own value.
	const n = 8
	got := make(chan int64, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := b.drv.EpochBump(b.ctx)
			if err != nil {
				t.Errorf("concurrent bump: %v", err)
				return
			}
			got <- e
		}()
	}
	wg.Wait()
	close(got)
	seen := map[int64]bool{}
	for e := range got {
		require.False(t, seen[e], "epoch %d returned twice", e)
		seen[e] = true
	}
	cur, err := b.drv.EpochGet(b.ctx)
	require.NoError(t, err)
	require.Equal(t, int64(4+n), cur)
}

// testFenceRace commits batches under epoch E in a loop on several goroutines while
// another bumps the epoch: no batch that started after the bump returned may succeed,
// and every batch that returned nil must be in the store.
func testFenceRace(t *testing.T, h Harness) {
	b := setup(t, h)
	const writers = 3
	var (
		bumped    atomic.Bool
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
				after := bumped.Load()
				err := b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: b.epoch, Batch: &sqlstore.Batch{
					MessageInserts: []sqlstore.Message{msg("race", id)},
				}})
				switch {
				case err == nil:
					if after {
						t.Errorf("batch %d started after the bump returned and still committed", id)
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
	// Let some batches through, then bump.
	waitFor(t, 30*time.Second, func() bool { return okCount.Load() >= 20 })
	newEpoch, err := b.drv.EpochBump(b.ctx)
	require.NoError(t, err)
	bumped.Store(true)
	require.Equal(t, b.epoch+1, newEpoch)
	wg.Wait()
	require.Len(t, fencedAfter, writers, "every writer saw ErrFenced after the bump")

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

func testLargeBatch(t *testing.T, h Harness) {
	b := setup(t, h)
	const n = 5000
	body := bytes.Repeat([]byte("x"), 1024)
	ms := make([]sqlstore.Message, n)
	keys := make([]sqlstore.MessageKey, n)
	ups := make([]sqlstore.MessageUpdate, n)
	dups := make([]sqlstore.Duplicate, n)
	for i := range ms {
		id := int64(i + 1)
		ms[i] = sqlstore.Message{Queue: "big", ID: id, CreatedAt: id, Body: body, Headers: map[string]string{"i": fmt.Sprint(i)}}
		keys[i] = sqlstore.MessageKey{Queue: "big", ID: id}
		ups[i] = sqlstore.MessageUpdate{Queue: "big", ID: id, DeliveryCount: 1, DeliverAt: id}
		dups[i] = sqlstore.Duplicate{Queue: "big", Key: fmt.Sprintf("key-%d", i), MessageID: id, CreatedAt: id}
	}
	b.commit(t, &sqlstore.Batch{MessageInserts: ms, DuplicateInserts: dups})
	require.Equal(t, int64(n), b.count(t, "big"))
	var after int64
	seen := 0
	for {
		page, err := b.drv.MessageScan(b.ctx, &sqlstore.MessageScanParams{Queue: "big", AfterID: after, Limit: 1000})
		require.NoError(t, err)
		if len(page) == 0 {
			break
		}
		for _, m := range page {
			seen++
			require.Equal(t, int64(seen), m.ID)
			require.Len(t, m.Body, 1024)
			require.Equal(t, fmt.Sprint(seen-1), m.Headers["i"])
		}
		after = page[len(page)-1].ID
	}
	require.Equal(t, n, seen)

	b.commit(t, &sqlstore.Batch{MessageUpdates: ups})
	got := b.scanAll(t, "big")
	require.Equal(t, int32(1), got[0].DeliveryCount)
	require.Equal(t, int64(n), got[n-1].DeliverAt)

	b.commit(t, &sqlstore.Batch{MessageDeletes: keys[:n-1]})
	require.Equal(t, []int64{n}, ids(b.scanAll(t, "big")))
}

func newWriter(t *testing.T, b *bundle, cfg sqlstore.WriterConfig) *sqlstore.Writer {
	t.Helper()
	w := sqlstore.NewWriter(b.drv, b.epoch, cfg)
	require.NoError(t, w.Start(b.ctx))
	t.Cleanup(w.Stop)
	return w
}

func testWriterMerges(t *testing.T, h Harness) {
	b := setup(t, h)
	var commits, rows atomic.Int64
	w := newWriter(t, b, sqlstore.WriterConfig{
		SyncPeriod: 2 * time.Millisecond,
		OnCommit: func(n int, _ time.Duration, err error) {
			commits.Add(1)
			if err == nil {
				rows.Add(int64(n))
			}
		},
	})
	const n = 200
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("w", int64(i+1))}})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, int64(n), b.count(t, "w"))
	require.Equal(t, int64(n), rows.Load())
	require.Less(t, commits.Load(), int64(n), "concurrent writes were not merged")
	t.Logf("%d writes in %d commits", n, commits.Load())
}

func testWriterBarrier(t *testing.T, h Harness) {
	b := setup(t, h)
	var mu sync.Mutex
	var commitRows []int
	w := newWriter(t, b, sqlstore.WriterConfig{
		SyncPeriod: 2 * time.Millisecond,
		OnCommit: func(n int, _ time.Duration, err error) {
			mu.Lock()
			commitRows = append(commitRows, n)
			mu.Unlock()
		},
	})
	// Message writes carry 2 rows each, the barrier 3 (three purges): a commit with an
	// odd number of rows other than 3 would be a barrier merged with something else.
	const n = 60
	var wg sync.WaitGroup
	errs := make(chan error, n+1)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := "keep"
			if i%2 == 0 {
				q = "p1"
			}
			errs <- w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg(q, int64(2*i+1)), msg(q, int64(2*i+2))}})
		}()
		if i == n/2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- w.Write(b.ctx, &sqlstore.Batch{QueuePurges: []string{"p1", "p2", "p3"}})
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	mu.Lock()
	rowsSeen := append([]int(nil), commitRows...)
	mu.Unlock()
	barriers := 0
	for _, r := range rowsSeen {
		if r%2 == 1 {
			require.Equal(t, 3, r, "a barrier batch was merged: commits %v", rowsSeen)
			barriers++
		}
	}
	require.Equal(t, 1, barriers, "commits %v", rowsSeen)
	require.Equal(t, int64(n), b.count(t, "keep"))

	// Order holds around a barrier: writes queued before it are purged, after it stay.
	require.NoError(t, w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("p2", 1)}}))
	require.NoError(t, w.Write(b.ctx, &sqlstore.Batch{QueuePurges: []string{"p2"}}))
	require.NoError(t, w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("p2", 2)}}))
	require.Equal(t, []int64{2}, ids(b.scanAll(t, "p2")))
}

func testWriterFenced(t *testing.T, h Harness) {
	b := setup(t, h)
	var fencedCalls atomic.Int64
	w := newWriter(t, b, sqlstore.WriterConfig{OnFenced: func() { fencedCalls.Add(1) }})
	require.NoError(t, w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("f", 1)}}))

	// Another broker takes over.
	other := h.Open(t, b.url, migrations.Tables{})
	_, err := other.EpochBump(b.ctx)
	require.NoError(t, err)

	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("f", int64(i+2))}})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.ErrorIs(t, err, sqlstore.ErrFenced)
	}
	require.True(t, w.Fenced())
	require.ErrorIs(t, w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("f", 100)}}), sqlstore.ErrFenced)
	require.Equal(t, int64(1), fencedCalls.Load())
	require.Equal(t, []int64{1}, ids(b.scanAll(t, "f")))

	// Given the new epoch, it writes again.
	e, err := b.drv.EpochGet(b.ctx)
	require.NoError(t, err)
	w.SetEpoch(e)
	require.NoError(t, w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("f", 200)}}))
	require.Equal(t, []int64{1, 200}, ids(b.scanAll(t, "f")))
}

func testWriterStopDrains(t *testing.T, h Harness) {
	b := setup(t, h)
	w := sqlstore.NewWriter(b.drv, b.epoch, sqlstore.WriterConfig{MaxBatchRows: 5})
	require.NoError(t, w.Start(b.ctx))
	const n = 100
	var ok, closed atomic.Int64
	var started sync.WaitGroup
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			started.Done()
			err := w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("s", int64(i+1))}})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, sqlstore.ErrClosed):
				closed.Add(1)
			default:
				t.Errorf("write %d: %v", i, err)
			}
		}()
	}
	started.Wait()
	w.Stop()
	wg.Wait()
	w.Stop() // idempotent
	require.Equal(t, int64(n), ok.Load()+closed.Load())
	require.Equal(t, ok.Load(), b.count(t, "s"), "every accepted write is committed before Stop returns")
	require.ErrorIs(t, w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("s", 1000)}}), sqlstore.ErrClosed)
	t.Logf("%d writes committed, %d refused after Stop", ok.Load(), closed.Load())
}

func testClosed(t *testing.T, h Harness) {
	ctx := ctxT(t)
	url := h.NewURL(t)
	drv := h.Open(t, url, migrations.Tables{})
	require.NoError(t, drv.Migrate(ctx))
	require.NoError(t, drv.Close())
	require.NoError(t, drv.Close(), "Close is idempotent")
	_, err := drv.EpochGet(ctx)
	require.ErrorIs(t, err, sqlstore.ErrClosed)
	err = drv.BatchCommit(ctx, &sqlstore.BatchCommitParams{Epoch: 0, Batch: &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 1)}}})
	require.ErrorIs(t, err, sqlstore.ErrClosed)
	_, err = drv.MessageScan(ctx, &sqlstore.MessageScanParams{Queue: "q"})
	require.ErrorIs(t, err, sqlstore.ErrClosed)
	require.True(t, strings.Contains(err.Error(), drv.Dialect()), "errors name the dialect: %v", err)
	_, err = drv.CounterList(ctx)
	require.ErrorIs(t, err, sqlstore.ErrClosed)
	_, err = drv.PageScan(ctx, &sqlstore.PageScanParams{Log: "@a"})
	require.ErrorIs(t, err, sqlstore.ErrClosed)
	require.ErrorIs(t, drv.LargePut(ctx, &sqlstore.LargePutParams{MessageID: 1, Chunks: [][]byte{{1}}}), sqlstore.ErrClosed)
	_, err = drv.LargeScan(ctx, &sqlstore.LargeScanParams{MessageID: 1})
	require.ErrorIs(t, err, sqlstore.ErrClosed)
	require.ErrorIs(t, drv.LargeDelete(ctx, 0, 1), sqlstore.ErrClosed)
	_, err = drv.LargeSweep(ctx, &sqlstore.LargeSweepParams{Below: 1, Limit: 1})
	require.ErrorIs(t, err, sqlstore.ErrClosed)
	leaseClosed(t, ctx, drv)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", within)
		}
		time.Sleep(time.Millisecond)
	}
}
