package storetest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
)

// v2Tests cover the storage surface of schema v2: counters, delivery lanes, page logs,
// large messages and their reference counts, and the upgrade from v1.
var v2Tests = []struct {
	name string
	fn   func(t *testing.T, h Harness)
}{
	{"CountersExact", testCountersExact},
	{"CounterSlotInvalid", testCounterSlotInvalid},
	{"LaneReady", testLaneReady},
	{"LaneScheduled", testLaneScheduled},
	{"LaneMixedKeyset", testLaneMixedKeyset},
	{"Pages", testPages},
	{"LargeRoundTrip", testLargeRoundTrip},
	{"LargePut4MiB", testLargePut4MiB},
	{"LargeRefsFanout", testLargeRefsFanout},
	{"LargeRefsPurgeAndFlags", testLargeRefsPurgeAndFlags},
	{"LargeRefsMissingChunks", testLargeRefsMissingChunks},
	{"LargePageRefs", testLargePageRefs},
	{"LargeDelete", testLargeDelete},
	{"LargeSweep", testLargeSweep},
	{"V2Fenced", testV2Fenced},
	{"MigrateFromV1", testMigrateFromV1},
}

// counters returns CounterList as a map.
func (b *bundle) counters(t testing.TB) map[sqlstore.CounterKey][2]int64 {
	t.Helper()
	cs, err := b.drv.CounterList(b.ctx)
	require.NoError(t, err)
	out := map[sqlstore.CounterKey][2]int64{}
	for i, c := range cs {
		if i > 0 {
			prev := cs[i-1].CounterKey
			require.True(t, prev.Kind < c.Kind || (prev.Kind == c.Kind && prev.Name < c.Name), "counters ordered by kind, name: %v", cs)
		}
		out[c.CounterKey] = [2]int64{c.Messages, c.Bytes}
	}
	return out
}

func (b *bundle) commitSlot(t testing.TB, slot int, batch *sqlstore.Batch) {
	t.Helper()
	require.NoError(t, b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: b.epoch, Batch: batch, Slot: slot}))
}

func qkey(name string) sqlstore.CounterKey {
	return sqlstore.CounterKey{Kind: sqlstore.CounterQueue, Name: name}
}

func pkey(name string) sqlstore.CounterKey {
	return sqlstore.CounterKey{Kind: sqlstore.CounterPages, Name: name}
}

// rows counts the rows of table (a name from Tables) with a raw query.
func (b *bundle) rows(t testing.TB, h Harness, table, where string) int64 {
	t.Helper()
	q := "SELECT COUNT(*) FROM " + table
	if where != "" {
		q += " WHERE " + where
	}
	return h.QueryInt(t, b.url, q)
}

func sized(queue string, id int64, n int) sqlstore.Message {
	m := msg(queue, id)
	m.Body = bytes.Repeat([]byte{byte(id)}, n)
	return m
}

func testCountersExact(t *testing.T, h Harness) {
	b := setup(t, h)
	require.Empty(t, b.counters(t))
	b.commitSlot(t, 0, &sqlstore.Batch{MessageInserts: []sqlstore.Message{sized("a", 1, 10), sized("a", 2, 20), sized("b", 1, 5)}})
	b.commitSlot(t, 7, &sqlstore.Batch{MessageInserts: []sqlstore.Message{sized("a", 3, 30)}})
	// Size is the body length whatever the caller says for an ordinary message.
	wrong := sized("a", 4, 40)
	wrong.Size = 999
	b.commitSlot(t, sqlstore.SlotMax, &sqlstore.Batch{MessageInserts: []sqlstore.Message{wrong}})
	require.Equal(t, map[sqlstore.CounterKey][2]int64{qkey("a"): {4, 100}, qkey("b"): {1, 5}}, b.counters(t))
	for _, m := range b.scanAll(t, "a") {
		require.Equal(t, int64(len(m.Body)), m.Size)
		require.False(t, m.Large)
	}

	// Deletes count only the rows that existed: absent keys, a key twice, a row
	// inserted and deleted in the same batch.
	b.commitSlot(t, 3, &sqlstore.Batch{
		MessageInserts: []sqlstore.Message{sized("b", 2, 7)},
		MessageDeletes: []sqlstore.MessageKey{
			{Queue: "a", ID: 2}, {Queue: "a", ID: 2}, {Queue: "a", ID: 99}, {Queue: "nope", ID: 1}, {Queue: "b", ID: 2},
		},
	})
	require.Equal(t, map[sqlstore.CounterKey][2]int64{qkey("a"): {3, 80}, qkey("b"): {1, 5}}, b.counters(t))
	b.commitSlot(t, 1, &sqlstore.Batch{MessageDeletes: []sqlstore.MessageKey{{Queue: "a", ID: 2}, {Queue: "a", ID: 1}}})
	require.Equal(t, map[sqlstore.CounterKey][2]int64{qkey("a"): {2, 70}, qkey("b"): {1, 5}}, b.counters(t))
	require.Equal(t, int64(2), b.count(t, "a"))

	// Page inserts count on their log.
	b.commitSlot(t, 2, &sqlstore.Batch{PageInserts: []sqlstore.PageRow{
		{Log: "@x", ID: 1, Body: []byte("123")}, {Log: "@x", ID: 2, Body: []byte("45")}, {Log: "b", ID: 9, Body: nil},
	}})
	want := map[sqlstore.CounterKey][2]int64{qkey("a"): {2, 70}, qkey("b"): {1, 5}, pkey("@x"): {2, 5}, pkey("b"): {1, 0}}
	require.Equal(t, want, b.counters(t))

	// A purge drops the queue's counter rows on every slot, even with inserts to it in
	// the same batch before it.
	b.commitSlot(t, 4, &sqlstore.Batch{MessageInserts: []sqlstore.Message{sized("a", 5, 1)}, QueuePurges: []string{"a", "absent"}})
	delete(want, qkey("a"))
	require.Equal(t, want, b.counters(t))
	require.Zero(t, b.rows(t, h, b.drv.Tables().Counters, "kind = 'queue' AND name = 'a'"))
	// Inserts after a purge count from zero.
	b.commitSlot(t, 5, &sqlstore.Batch{MessageInserts: []sqlstore.Message{sized("a", 6, 6)}})
	want[qkey("a")] = [2]int64{1, 6}
	require.Equal(t, want, b.counters(t))

	// CounterDeletes remove every slot of a counter, after the batch's own changes.
	b.commitSlot(t, 6, &sqlstore.Batch{
		PageInserts:    []sqlstore.PageRow{{Log: "@x", ID: 3, Body: []byte("6")}},
		CounterDeletes: []sqlstore.CounterKey{pkey("@x"), pkey("missing")},
	})
	delete(want, pkey("@x"))
	require.Equal(t, want, b.counters(t))
	b.commitSlot(t, 0, &sqlstore.Batch{MessageInserts: []sqlstore.Message{sized("b", 3, 3)}, CounterDeletes: []sqlstore.CounterKey{qkey("b")}})
	delete(want, qkey("b"))
	require.Equal(t, want, b.counters(t))

	// The merged batches of the writer keep them exact too.
	w := newWriter(t, b, sqlstore.WriterConfig{})
	for i := int64(10); i < 30; i++ {
		require.NoError(t, w.Write(b.ctx, &sqlstore.Batch{MessageInserts: []sqlstore.Message{sized("w", i, int(i))}}))
	}
	require.NoError(t, w.Write(b.ctx, &sqlstore.Batch{MessageDeletes: []sqlstore.MessageKey{{Queue: "w", ID: 10}, {Queue: "w", ID: 10}, {Queue: "w", ID: 11}}}))
	var sum int64
	for i := int64(12); i < 30; i++ {
		sum += i
	}
	require.Equal(t, [2]int64{18, sum}, b.counters(t)[qkey("w")])
	require.Equal(t, int64(18), b.count(t, "w"))
}

func testCounterSlotInvalid(t *testing.T, h Harness) {
	b := setup(t, h)
	for _, slot := range []int{-1, sqlstore.SlotMax + 1} {
		err := b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: b.epoch, Slot: slot,
			Batch: &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("q", 1)}}})
		require.Error(t, err)
		require.Contains(t, err.Error(), "slot")
	}
	require.Zero(t, b.count(t, "q"))
}

// laneMessages inserts a mix of ready and scheduled messages with equal and distinct
// priorities and delivery times into queue q (and noise into other queues) and returns
// them.
func laneMessages(t *testing.T, b *bundle, q string) []sqlstore.Message {
	t.Helper()
	var ms []sqlstore.Message
	id := int64(0)
	for _, da := range []int64{0, 0, 0, 5000, 1000, 1000, 3000, 0, 1000, 2000} {
		for _, prio := range []int16{4, 9, 0, 4, 4} {
			id += 3 // not contiguous, and inserted out of order below
			m := msg(q, id)
			m.Priority, m.DeliverAt = prio, da
			ms = append(ms, m)
		}
	}
	shuffled := slices.Clone(ms)
	for i := range shuffled {
		j, err := rand.Int(rand.Reader, big.NewInt(int64(i+1)))
		require.NoError(t, err)
		shuffled[i], shuffled[j.Int64()] = shuffled[j.Int64()], shuffled[i]
	}
	noise := []sqlstore.Message{msg(q+"x", 1), msg("a"+q, 2)}
	noise[0].DeliverAt = 1000
	b.commit(t, &sqlstore.Batch{MessageInserts: append(shuffled, noise...)})
	return ms
}

// laneWant returns the messages of lane in the lane's order.
func laneWant(ms []sqlstore.Message, lane sqlstore.Lane) []int64 {
	var out []sqlstore.Message
	for _, m := range ms {
		if (lane == sqlstore.LaneReady) == (m.DeliverAt == 0) {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b sqlstore.Message) int {
		switch {
		case a.DeliverAt != b.DeliverAt:
			return int(a.DeliverAt - b.DeliverAt)
		case a.Priority != b.Priority:
			return int(b.Priority - a.Priority)
		}
		return int(a.ID - b.ID)
	})
	return ids(out)
}

// walkLane reads a whole lane with keyset pages of limit rows.
func walkLane(t *testing.T, b *bundle, q string, lane sqlstore.Lane, limit int) []int64 {
	t.Helper()
	var out []int64
	var from *sqlstore.ScanKey
	for pages := 0; ; pages++ {
		require.Less(t, pages, 1000, "lane scan does not end")
		got, err := b.drv.MessageScan(b.ctx, &sqlstore.MessageScanParams{Queue: q, Lane: lane, From: from, Limit: limit})
		require.NoError(t, err)
		require.LessOrEqual(t, len(got), limit)
		for _, m := range got {
			require.Equal(t, q, m.Queue)
			require.Equal(t, fmt.Sprintf("body-%d", m.ID), string(m.Body))
			out = append(out, m.ID)
		}
		if len(got) < limit {
			return out
		}
		last := got[len(got)-1]
		from = &sqlstore.ScanKey{DeliverAt: last.DeliverAt, Priority: last.Priority, ID: last.ID}
	}
}

func testLaneReady(t *testing.T, h Harness) {
	b := setup(t, h)
	ms := laneMessages(t, b, "q")
	want := laneWant(ms, sqlstore.LaneReady)
	require.Len(t, want, 20)
	for _, limit := range []int{1, 2, 3, 7, 20, 100} {
		require.Equal(t, want, walkLane(t, b, "q", sqlstore.LaneReady, limit), "limit %d", limit)
	}
	// A key between rows (not itself a row) continues after it.
	got, err := b.drv.MessageScan(b.ctx, &sqlstore.MessageScanParams{Queue: "q", Lane: sqlstore.LaneReady,
		From: &sqlstore.ScanKey{Priority: 4, ID: 0}, Limit: 100})
	require.NoError(t, err)
	i := slices.IndexFunc(ms, func(m sqlstore.Message) bool { return m.DeliverAt == 0 && m.Priority == 4 })
	require.Equal(t, want[slices.Index(want, ms[i].ID):], ids(got))
	// The lane's head with the default limit; other lanes are untouched.
	got, err = b.drv.MessageScan(b.ctx, &sqlstore.MessageScanParams{Queue: "q", Lane: sqlstore.LaneReady})
	require.NoError(t, err)
	require.Equal(t, want, ids(got))
	got, err = b.drv.MessageScan(b.ctx, &sqlstore.MessageScanParams{Queue: "none", Lane: sqlstore.LaneReady, Limit: 5})
	require.NoError(t, err)
	require.Empty(t, got)
}

func testLaneScheduled(t *testing.T, h Harness) {
	b := setup(t, h)
	ms := laneMessages(t, b, "q")
	want := laneWant(ms, sqlstore.LaneScheduled)
	require.Len(t, want, 30)
	for _, limit := range []int{1, 2, 4, 5, 30, 100} {
		require.Equal(t, want, walkLane(t, b, "q", sqlstore.LaneScheduled, limit), "limit %d", limit)
	}
	// A key with no delivery time starts at the head; a key past every row returns
	// nothing.
	got, err := b.drv.MessageScan(b.ctx, &sqlstore.MessageScanParams{Queue: "q", Lane: sqlstore.LaneScheduled,
		From: &sqlstore.ScanKey{Priority: 9, ID: 1 << 40}, Limit: 100})
	require.NoError(t, err)
	require.Equal(t, want, ids(got))
	got, err = b.drv.MessageScan(b.ctx, &sqlstore.MessageScanParams{Queue: "q", Lane: sqlstore.LaneScheduled,
		From: &sqlstore.ScanKey{DeliverAt: 5000, Priority: 0, ID: 1 << 40}, Limit: 100})
	require.NoError(t, err)
	require.Empty(t, got)
	// From a delivery time between rows.
	got, err = b.drv.MessageScan(b.ctx, &sqlstore.MessageScanParams{Queue: "q", Lane: sqlstore.LaneScheduled,
		From: &sqlstore.ScanKey{DeliverAt: 2500, Priority: 9, ID: 0}, Limit: 100})
	require.NoError(t, err)
	var later []int64
	for _, id := range want {
		if i := slices.IndexFunc(ms, func(m sqlstore.Message) bool { return m.ID == id }); ms[i].DeliverAt > 2500 {
			later = append(later, id)
		}
	}
	require.Equal(t, later, ids(got))
}

// testLaneMixedKeyset checks that scans see updates (a nack moving a message from the
// ready lane to the scheduled lane) and that LaneID still reads by ID.
func testLaneMixedKeyset(t *testing.T, h Harness) {
	b := setup(t, h)
	ms := laneMessages(t, b, "q")
	ready := laneWant(ms, sqlstore.LaneReady)
	moved := ready[0]
	b.commit(t, &sqlstore.Batch{MessageUpdates: []sqlstore.MessageUpdate{{Queue: "q", ID: moved, DeliveryCount: 1, DeliverAt: 1500}}})
	for i := range ms {
		if ms[i].ID == moved {
			ms[i].DeliverAt = 1500
		}
	}
	require.Equal(t, laneWant(ms, sqlstore.LaneReady), walkLane(t, b, "q", sqlstore.LaneReady, 3))
	require.Equal(t, laneWant(ms, sqlstore.LaneScheduled), walkLane(t, b, "q", sqlstore.LaneScheduled, 3))
	require.Len(t, b.scanAll(t, "q"), len(ms))
	got, err := b.drv.MessageScan(b.ctx, &sqlstore.MessageScanParams{Queue: "q", Lane: sqlstore.LaneID, AfterID: 30, Limit: 3})
	require.NoError(t, err)
	require.Equal(t, []int64{33, 36, 39}, ids(got))
}

func testPages(t *testing.T, h Harness) {
	b := setup(t, h)
	var rows []sqlstore.PageRow
	for i := int64(1); i <= 10; i++ {
		rows = append(rows, sqlstore.PageRow{Log: "@a", ID: i * 2, Priority: int16(i % 10), DeliverAt: i * 100, ExpiresAt: i * 1000,
			CreatedAt: i, ContentType: "text/plain", Headers: map[string]string{"n": fmt.Sprint(i)}, Body: []byte(fmt.Sprintf("page-%d", i))})
	}
	rows = append(rows, sqlstore.PageRow{Log: "@b", ID: 3, Body: []byte("other")}, sqlstore.PageRow{Log: "@a", ID: 1, Body: nil})
	b.commit(t, &sqlstore.Batch{PageInserts: rows})

	scan := func(log string, after int64, limit int) []sqlstore.PageRow {
		got, err := b.drv.PageScan(b.ctx, &sqlstore.PageScanParams{Log: log, AfterID: after, Limit: limit})
		require.NoError(t, err)
		return got
	}
	pageIDs := func(ps []sqlstore.PageRow) []int64 {
		var out []int64
		for _, p := range ps {
			out = append(out, p.ID)
		}
		return out
	}
	require.Equal(t, []int64{1, 2, 4}, pageIDs(scan("@a", 0, 3)))
	require.Equal(t, []int64{6, 8, 10}, pageIDs(scan("@a", 4, 3)))
	require.Equal(t, []int64{20}, pageIDs(scan("@a", 18, 3)))
	require.Len(t, scan("@a", 0, 0), 11, "Limit 0 means the default limit")
	got := scan("@a", 5, 1)[0]
	want := rows[2]
	want.Size = int64(len(want.Body))
	require.Equal(t, want, got)
	require.Equal(t, []byte{}, scan("@a", 0, 1)[0].Body)
	require.Equal(t, map[sqlstore.CounterKey][2]int64{pkey("@a"): {11, 61}, pkey("@b"): {1, 5}}, b.counters(t))

	// Inserting an existing row is a conflict and writes nothing.
	err := b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: b.epoch, Batch: &sqlstore.Batch{
		PageInserts: []sqlstore.PageRow{{Log: "@a", ID: 100}, {Log: "@a", ID: 2}},
	}})
	require.ErrorIs(t, err, sqlstore.ErrConflict)

	// A trim deletes up to and including UpTo, leaves later rows and other logs, and
	// does not change the log's counter.
	b.commit(t, &sqlstore.Batch{PageTrims: []sqlstore.PageTrim{{Log: "@a", UpTo: 8}, {Log: "@a", UpTo: 4}, {Log: "@none", UpTo: 100}}})
	require.Equal(t, []int64{10, 12, 14, 16, 18, 20}, pageIDs(scan("@a", 0, 100)))
	require.Equal(t, []int64{3}, pageIDs(scan("@b", 0, 100)))
	require.Equal(t, map[sqlstore.CounterKey][2]int64{pkey("@a"): {11, 61}, pkey("@b"): {1, 5}}, b.counters(t))
	b.commit(t, &sqlstore.Batch{PageTrims: []sqlstore.PageTrim{{Log: "@a", UpTo: 1 << 62}}})
	require.Empty(t, scan("@a", 0, 100))
	require.Equal(t, int64(1), b.rows(t, h, b.drv.Tables().Pages, ""))
}

// randomChunks returns n random chunks of size bytes and the SHA-256 of their
// concatenation.
func randomChunks(t testing.TB, n, size int) ([][]byte, [32]byte) {
	t.Helper()
	h := sha256.New()
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, size)
		_, err := rand.Read(out[i])
		require.NoError(t, err)
		h.Write(out[i])
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return out, sum
}

func (b *bundle) largePut(t testing.TB, id int64, first int32, chunks [][]byte) {
	t.Helper()
	require.NoError(t, b.drv.LargePut(b.ctx, &sqlstore.LargePutParams{Epoch: b.epoch, MessageID: id, FirstChunk: first, Chunks: chunks}))
}

// largeRead reads every chunk of a message limit chunks at a time and returns the
// SHA-256 of the body and its length.
func (b *bundle) largeRead(t testing.TB, id int64, limit int) ([32]byte, int) {
	t.Helper()
	h := sha256.New()
	n := 0
	for from := int32(0); ; {
		got, err := b.drv.LargeScan(b.ctx, &sqlstore.LargeScanParams{MessageID: id, FromChunk: from, Limit: limit})
		require.NoError(t, err)
		require.LessOrEqual(t, len(got), limit)
		for _, c := range got {
			h.Write(c)
			n += len(c)
		}
		from += int32(len(got))
		if len(got) < limit {
			break
		}
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, n
}

func (b *bundle) chunkRows(t testing.TB, h Harness, id int64) int64 {
	t.Helper()
	return b.rows(t, h, b.drv.Tables().LargeMessages, fmt.Sprintf("message_id = %d", id))
}

func testLargeRoundTrip(t *testing.T, h Harness) {
	b := setup(t, h)
	chunks, sum := randomChunks(t, 7, 64<<10)
	// Several calls, as an upload streams: 3 + 1 + 3 chunks.
	b.largePut(t, 42, 0, chunks[:3])
	b.largePut(t, 42, 3, chunks[3:4])
	b.largePut(t, 42, 4, chunks[4:])
	for _, limit := range []int{1, 2, 3, 7, 100} {
		got, n := b.largeRead(t, 42, limit)
		require.Equal(t, sum, got, "limit %d", limit)
		require.Equal(t, 7*64<<10, n)
	}
	part, err := b.drv.LargeScan(b.ctx, &sqlstore.LargeScanParams{MessageID: 42, FromChunk: 5, Limit: 10})
	require.NoError(t, err)
	require.Len(t, part, 2)
	require.True(t, bytes.Equal(chunks[5], part[0]))
	one, err := b.drv.LargeScan(b.ctx, &sqlstore.LargeScanParams{MessageID: 42})
	require.NoError(t, err)
	require.Len(t, one, 1, "Limit 0 reads one chunk")
	none, err := b.drv.LargeScan(b.ctx, &sqlstore.LargeScanParams{MessageID: 43, Limit: 5})
	require.NoError(t, err)
	require.Empty(t, none)
	// A chunk put twice is a conflict and changes nothing.
	err = b.drv.LargePut(b.ctx, &sqlstore.LargePutParams{Epoch: b.epoch, MessageID: 42, FirstChunk: 6, Chunks: [][]byte{[]byte("x"), []byte("y")}})
	require.ErrorIs(t, err, sqlstore.ErrConflict)
	require.Equal(t, int64(7), b.chunkRows(t, h, 42))
	// An empty chunk round-trips.
	b.largePut(t, 44, 0, [][]byte{{}})
	got, err := b.drv.LargeScan(b.ctx, &sqlstore.LargeScanParams{MessageID: 44, Limit: 2})
	require.NoError(t, err)
	require.Equal(t, [][]byte{{}}, got)
}

// testLargePut4MiB puts 4 MiB in one call, as 4 chunks of 1 MiB and as one chunk:
// MariaDB's max_allowed_packet (16 MiB here) bounds one statement.
func testLargePut4MiB(t *testing.T, h Harness) {
	b := setup(t, h)
	chunks, sum := randomChunks(t, 4, 1<<20)
	b.largePut(t, 1, 0, chunks)
	got, n := b.largeRead(t, 1, 2)
	require.Equal(t, sum, got)
	require.Equal(t, 4<<20, n)
	// One chunk of 4 MiB (the largest chunk the broker is configured with).
	one, sum := randomChunks(t, 1, 4<<20)
	b.largePut(t, 2, 0, one)
	got, n = b.largeRead(t, 2, 1)
	require.Equal(t, sum, got)
	require.Equal(t, 4<<20, n)
}

func largeMsg(queue string, id, size int64) sqlstore.Message {
	return sqlstore.Message{Queue: queue, ID: id, Priority: 4, CreatedAt: 1, Large: true, Size: size}
}

func testLargeRefsFanout(t *testing.T, h Harness) {
	b := setup(t, h)
	chunks, sum := randomChunks(t, 3, 1000)
	b.largePut(t, 100, 0, chunks)
	// An upload in progress nobody references.
	b.largePut(t, 200, 0, chunks[:2])

	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{largeMsg("q1", 100, 3000), largeMsg("q2", 100, 3000), msg("q1", 1)}})
	got := b.scanAll(t, "q1")
	require.Len(t, got, 2)
	require.True(t, got[1].Large)
	require.Equal(t, int64(3000), got[1].Size)
	require.Empty(t, got[1].Body)
	require.Equal(t, map[sqlstore.CounterKey][2]int64{qkey("q1"): {2, 3000 + 6}, qkey("q2"): {1, 3000}}, b.counters(t))

	// The first delete leaves the chunks to the second row; deletes of absent large
	// keys (including the upload in progress) change nothing.
	b.commit(t, &sqlstore.Batch{MessageDeletes: []sqlstore.MessageKey{
		{Queue: "q1", ID: 100, Large: true}, {Queue: "q1", ID: 100, Large: true}, {Queue: "q3", ID: 100, Large: true}, {Queue: "q1", ID: 200, Large: true},
	}})
	require.Equal(t, int64(3), b.chunkRows(t, h, 100))
	require.Equal(t, int64(2), b.chunkRows(t, h, 200))
	sumGot, _ := b.largeRead(t, 100, 2)
	require.Equal(t, sum, sumGot)
	require.Equal(t, map[sqlstore.CounterKey][2]int64{qkey("q1"): {1, 6}, qkey("q2"): {1, 3000}}, b.counters(t))

	// The last reference takes every chunk with it.
	b.commit(t, &sqlstore.Batch{MessageDeletes: []sqlstore.MessageKey{{Queue: "q2", ID: 100, Large: true}}})
	require.Zero(t, b.chunkRows(t, h, 100))
	require.Equal(t, int64(2), b.chunkRows(t, h, 200), "an upload in progress is never deleted by a batch")
	require.Equal(t, map[sqlstore.CounterKey][2]int64{qkey("q1"): {1, 6}, qkey("q2"): {0, 0}}, b.counters(t))

	// A message moved in one batch (insert into a dead-letter queue, delete from its
	// queue) keeps its chunks; a row inserted and deleted in one batch drops them.
	b.largePut(t, 300, 0, chunks)
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{largeMsg("q1", 300, 3000)}})
	b.commit(t, &sqlstore.Batch{
		MessageInserts: []sqlstore.Message{largeMsg("dlq", 300, 3000)},
		MessageDeletes: []sqlstore.MessageKey{{Queue: "q1", ID: 300, Large: true}},
	})
	require.Equal(t, int64(3), b.chunkRows(t, h, 300))
	b.commit(t, &sqlstore.Batch{
		MessageInserts: []sqlstore.Message{largeMsg("q9", 300, 3000)},
		MessageDeletes: []sqlstore.MessageKey{{Queue: "q9", ID: 300, Large: true}, {Queue: "dlq", ID: 300, Large: true}},
	})
	require.Zero(t, b.chunkRows(t, h, 300))
	require.Equal(t, int64(2), b.rows(t, h, b.drv.Tables().LargeMessages, ""), "only the upload in progress is left")
}

func testLargeRefsPurgeAndFlags(t *testing.T, h Harness) {
	b := setup(t, h)
	chunks, _ := randomChunks(t, 2, 100)
	for _, id := range []int64{1, 2, 3} {
		b.largePut(t, id, 0, chunks)
	}
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{
		largeMsg("p", 1, 200), largeMsg("p", 2, 200), largeMsg("keep", 2, 200), largeMsg("keep", 3, 200), msg("p", 4),
	}})
	// A purge drops the references of the queue's large rows.
	b.commit(t, &sqlstore.Batch{QueuePurges: []string{"p"}})
	require.Zero(t, b.chunkRows(t, h, 1))
	require.Equal(t, int64(2), b.chunkRows(t, h, 2))
	// A delete whose key does not say Large still drops the row's reference: the
	// driver reads the flag from the row it deleted.
	b.commit(t, &sqlstore.Batch{MessageDeletes: []sqlstore.MessageKey{{Queue: "keep", ID: 2}}})
	require.Zero(t, b.chunkRows(t, h, 2))
	// A key that says Large for an ordinary row drops nothing.
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{msg("plain", 3)}})
	b.commit(t, &sqlstore.Batch{MessageDeletes: []sqlstore.MessageKey{{Queue: "plain", ID: 3, Large: true}}})
	require.Equal(t, int64(2), b.chunkRows(t, h, 3))
	require.Equal(t, map[sqlstore.CounterKey][2]int64{qkey("keep"): {1, 200}, qkey("plain"): {0, 0}}, b.counters(t))
}

func testLargeRefsMissingChunks(t *testing.T, h Harness) {
	b := setup(t, h)
	chunks, _ := randomChunks(t, 1, 10)
	b.largePut(t, 1, 0, chunks)
	for _, bt := range []*sqlstore.Batch{
		{MessageInserts: []sqlstore.Message{largeMsg("q", 1, 10), largeMsg("q", 2, 10)}},
		{MessageInserts: []sqlstore.Message{largeMsg("q", 1, 10)}, PageInserts: []sqlstore.PageRow{{Log: "@a", ID: 7, Large: true, Size: 1}}},
	} {
		err := b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: b.epoch, Batch: bt})
		require.ErrorIs(t, err, sqlstore.ErrNotFound)
		require.NotErrorIs(t, err, sqlstore.ErrFenced)
	}
	require.Zero(t, b.count(t, "q"))
	require.Empty(t, b.counters(t))
	require.Zero(t, b.rows(t, h, b.drv.Tables().LargeMessages, "refs <> 0"))
	// The store is still usable.
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{largeMsg("q", 1, 10)}})
	require.Equal(t, int64(1), b.rows(t, h, b.drv.Tables().LargeMessages, "refs = 1 AND chunk_no = 0"))
}

func testLargePageRefs(t *testing.T, h Harness) {
	b := setup(t, h)
	chunks, sum := randomChunks(t, 3, 500)
	b.largePut(t, 10, 0, chunks)
	b.largePut(t, 11, 0, chunks)
	b.commit(t, &sqlstore.Batch{PageInserts: []sqlstore.PageRow{
		{Log: "@a", ID: 10, Large: true, Size: 1500}, {Log: "@a", ID: 11, Large: true, Size: 1500}, {Log: "@a", ID: 12, Body: []byte("x")},
	}})
	ps, err := b.drv.PageScan(b.ctx, &sqlstore.PageScanParams{Log: "@a", Limit: 10})
	require.NoError(t, err)
	require.True(t, ps[0].Large)
	require.Equal(t, int64(1500), ps[0].Size)
	require.False(t, ps[2].Large)
	require.Equal(t, [2]int64{3, 3001}, b.counters(t)[pkey("@a")])
	// A queue reads message 10 from the log into its own row: two references.
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{largeMsg("q", 10, 1500)}})
	b.commit(t, &sqlstore.Batch{PageTrims: []sqlstore.PageTrim{{Log: "@a", UpTo: 11}}})
	require.Equal(t, int64(3), b.chunkRows(t, h, 10), "the queue's row still references it")
	require.Zero(t, b.chunkRows(t, h, 11), "the trim dropped the last reference")
	got, _ := b.largeRead(t, 10, 5)
	require.Equal(t, sum, got)
	b.commit(t, &sqlstore.Batch{MessageDeletes: []sqlstore.MessageKey{{Queue: "q", ID: 10, Large: true}}})
	require.Zero(t, b.rows(t, h, b.drv.Tables().LargeMessages, ""))
	require.Equal(t, [2]int64{3, 3001}, b.counters(t)[pkey("@a")], "trims do not change the page counter")
}

func testLargeDelete(t *testing.T, h Harness) {
	b := setup(t, h)
	chunks, _ := randomChunks(t, 3, 100)
	b.largePut(t, 1, 0, chunks)
	b.largePut(t, 2, 0, chunks)
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{largeMsg("q", 2, 300)}})
	require.NoError(t, b.drv.LargeDelete(b.ctx, b.epoch, 1))
	require.NoError(t, b.drv.LargeDelete(b.ctx, b.epoch, 2))
	require.NoError(t, b.drv.LargeDelete(b.ctx, b.epoch, 3), "nothing to delete is no error")
	require.Zero(t, b.chunkRows(t, h, 1))
	require.Equal(t, int64(3), b.chunkRows(t, h, 2), "referenced chunks stay")
	// An upload that failed before its chunk 0 was written leaves no orphans either.
	b.largePut(t, 4, 1, chunks[1:])
	require.NoError(t, b.drv.LargeDelete(b.ctx, b.epoch, 4))
	require.Zero(t, b.chunkRows(t, h, 4))
}

func testLargeSweep(t *testing.T, h Harness) {
	b := setup(t, h)
	chunks, _ := randomChunks(t, 2, 100)
	for _, id := range []int64{10, 20, 30, 40} {
		b.largePut(t, id, 0, chunks)
	}
	b.commit(t, &sqlstore.Batch{MessageInserts: []sqlstore.Message{largeMsg("q", 30, 200)}})
	sweep := func(below int64, limit int) int64 {
		n, err := b.drv.LargeSweep(b.ctx, &sqlstore.LargeSweepParams{Epoch: b.epoch, Below: below, Limit: limit})
		require.NoError(t, err)
		return n
	}
	require.Equal(t, int64(1), sweep(35, 1))
	require.Zero(t, b.chunkRows(t, h, 10), "the lowest unreferenced ID goes first")
	require.Equal(t, int64(2), b.chunkRows(t, h, 20))
	require.Equal(t, int64(1), sweep(35, 10))
	require.Zero(t, sweep(35, 10))
	require.Zero(t, b.chunkRows(t, h, 20))
	require.Equal(t, int64(2), b.chunkRows(t, h, 30), "referenced")
	require.Equal(t, int64(2), b.chunkRows(t, h, 40), "not below Below")
	require.Equal(t, int64(1), sweep(41, 10))
	require.Zero(t, b.chunkRows(t, h, 40))
	require.Equal(t, int64(2), b.rows(t, h, b.drv.Tables().LargeMessages, ""))
}

// testV2Fenced checks that every v2 write refuses a stale epoch and writes nothing.
func testV2Fenced(t *testing.T, h Harness) {
	b := setup(t, h)
	chunks, _ := randomChunks(t, 2, 100)
	b.largePut(t, 1, 0, chunks)
	b.largePut(t, 2, 0, chunks)
	b.commit(t, &sqlstore.Batch{
		MessageInserts: []sqlstore.Message{largeMsg("q", 1, 200), msg("q", 5)},
		PageInserts:    []sqlstore.PageRow{{Log: "@a", ID: 3, Body: []byte("p")}, {Log: "@a", ID: 1, Large: true, Size: 200}},
	})
	tables := b.drv.Tables()
	snapshot := func() []any {
		ps, err := b.drv.PageScan(b.ctx, &sqlstore.PageScanParams{Log: "@a", Limit: 100})
		require.NoError(t, err)
		return []any{b.counters(t), b.scanAll(t, "q"), ps,
			b.rows(t, h, tables.LargeMessages, ""), b.rows(t, h, tables.LargeMessages, "refs <> 0")}
	}
	before := snapshot()
	for _, epoch := range []int64{b.epoch - 1, b.epoch + 1} {
		require.ErrorIs(t, b.drv.LargePut(b.ctx, &sqlstore.LargePutParams{Epoch: epoch, MessageID: 9, Chunks: chunks}), sqlstore.ErrFenced)
		require.ErrorIs(t, b.drv.LargeDelete(b.ctx, epoch, 2), sqlstore.ErrFenced)
		_, err := b.drv.LargeSweep(b.ctx, &sqlstore.LargeSweepParams{Epoch: epoch, Below: 100, Limit: 10})
		require.ErrorIs(t, err, sqlstore.ErrFenced)
		for _, bt := range []*sqlstore.Batch{
			{MessageInserts: []sqlstore.Message{largeMsg("q", 2, 200)}},
			{MessageDeletes: []sqlstore.MessageKey{{Queue: "q", ID: 1, Large: true}, {Queue: "q", ID: 5}}},
			{PageInserts: []sqlstore.PageRow{{Log: "@a", ID: 4, Large: true, Size: 1}}},
			{PageTrims: []sqlstore.PageTrim{{Log: "@a", UpTo: 10}}},
			{QueuePurges: []string{"q"}},
			{CounterDeletes: []sqlstore.CounterKey{qkey("q"), pkey("@a")}},
		} {
			err := b.drv.BatchCommit(b.ctx, &sqlstore.BatchCommitParams{Epoch: epoch, Batch: bt, Slot: 3})
			require.ErrorIs(t, err, sqlstore.ErrFenced)
		}
		require.Equal(t, before, snapshot(), "epoch %d", epoch)
	}
	require.Equal(t, int64(0), b.chunkRows(t, h, 9))
	// Under the right epoch the same writes go through.
	require.NoError(t, b.drv.LargeDelete(b.ctx, b.epoch, 2))
	require.Zero(t, b.chunkRows(t, h, 2))
}

// testMigrateFromV1 migrates a v1 database holding messages to the latest schema, from
// three drivers at once: sizes and counters are filled from the rows, once, and running
// the migration again (a dirty version) changes nothing.
func testMigrateFromV1(t *testing.T, h Harness) {
	ctx := ctxT(t)
	url := h.NewURL(t)
	tables := migrations.WithPrefix("up_")
	h.MigrateTo(t, url, tables, 1)
	tw := tables.WithDefaults()
	require.Zero(t, h.QueryInt(t, url, "SELECT COUNT(*) FROM "+tw.Messages))
	for i, row := range []struct {
		queue string
		id    int64
		body  string
	}{{"a", 1, "x"}, {"a", 2, "hello"}, {"b", 1, ""}, {"b", 2, "0123456789"}, {"a", 3, "abc"}} {
		h.Exec(t, url, fmt.Sprintf("INSERT INTO %s (queue, id, priority, deliver_at, expires_at, delivery_count, created_at, content_type, headers, body) "+
			"VALUES ('%s', %d, 4, %d, 0, 0, 1, '', '', '%s')", tw.Messages, row.queue, row.id, i%2*1000, row.body))
	}
	// Three brokers upgrade at once: the backfill counts each message once.
	drvs := make([]sqlstore.Driver, 3)
	errs := make([]error, len(drvs))
	var wg sync.WaitGroup
	for i := range drvs {
		drvs[i] = h.Open(t, url, tables)
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
	drv := drvs[0]
	b := &bundle{url: url, drv: drv, ctx: ctx}
	var err error
	b.epoch, err = drv.EpochBump(ctx)
	require.NoError(t, err)
	want := map[sqlstore.CounterKey][2]int64{qkey("a"): {3, 9}, qkey("b"): {2, 10}}
	require.Equal(t, want, b.counters(t))
	for _, m := range append(b.scanAll(t, "a"), b.scanAll(t, "b")...) {
		require.Equal(t, int64(len(m.Body)), m.Size, "message %s/%d", m.Queue, m.ID)
		require.False(t, m.Large)
	}
	ready, err := drv.MessageScan(ctx, &sqlstore.MessageScanParams{Queue: "a", Lane: sqlstore.LaneReady, Limit: 10})
	require.NoError(t, err)
	require.Equal(t, []int64{1, 3}, ids(ready))

	// The counters keep working, and running the migration again (a dirty version) does
	// not count the messages twice.
	b.commitSlot(t, 9, &sqlstore.Batch{MessageInserts: []sqlstore.Message{sized("b", 3, 5)}})
	h.Exec(t, url, "UPDATE "+tw.Migrations+" SET dirty = true")
	require.NoError(t, h.Open(t, url, tables).Migrate(ctx))
	want[qkey("b")] = [2]int64{3, 15}
	require.Equal(t, want, b.counters(t))
}
