package server

import (
	"cmp"
	"container/heap"
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tablemq/tablemq/sqlstore"
)

// msgState says where an in-memory message is.
type msgState uint8

const (
	stReady    msgState = iota // in the ready heap
	stDelayed                  // in the delayed heap
	stInFlight                 // leased to a receiver
	stBusy                     // being acked, deleted or dead-lettered: in no heap
)

// msg is one message of one queue held in memory.
type msg struct {
	id          int64
	priority    int
	deliverAt   int64 // Unix ms; 0 or past: deliverable
	expiresAt   int64 // Unix ms; 0: never
	createdAt   int64 // Unix ms
	contentType string
	headers     map[string]string
	body        []byte
	size        int64 // body size in bytes (for a large message: of its chunks)
	large       bool  // the body lives in the large-messages table; body is nil
	persistent  bool

	deliveries int32     // delivery count: the stored count plus deliveries by this live
	leasedHere bool      // delivered at least once by this live
	nonce      uint64    // receipt nonce of the latest delivery by this live
	deadline   time.Time // lease end while in flight
	state      msgState
	hidx       int // index in the heap it is in
}

func msgFromRow(r *sqlstore.Message) *msg {
	return &msg{
		id:          r.ID,
		priority:    int(r.Priority),
		deliverAt:   r.DeliverAt,
		expiresAt:   r.ExpiresAt,
		createdAt:   r.CreatedAt,
		contentType: r.ContentType,
		headers:     r.Headers,
		body:        r.Body,
		size:        r.Size,
		large:       r.Large,
		persistent:  true,
		deliveries:  r.DeliveryCount,
	}
}

func (m *msg) row(queue string) sqlstore.Message {
	return sqlstore.Message{
		Queue:         queue,
		ID:            m.id,
		Priority:      int16(m.priority),
		DeliverAt:     m.deliverAt,
		ExpiresAt:     m.expiresAt,
		DeliveryCount: m.deliveries,
		CreatedAt:     m.createdAt,
		ContentType:   m.contentType,
		Headers:       m.headers,
		Body:          m.body,
		Size:          m.size,
		Large:         m.large,
	}
}

// readyHeap orders deliverable messages: priority descending, then id ascending.
type readyHeap []*msg

func (h readyHeap) Len() int { return len(h) }
func (h readyHeap) Less(i, j int) bool {
	if h[i].priority != h[j].priority {
		return h[i].priority > h[j].priority
	}
	return h[i].id < h[j].id
}
func (h readyHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].hidx = i; h[j].hidx = j }
func (h *readyHeap) Push(x any)   { m := x.(*msg); m.hidx = len(*h); *h = append(*h, m) }
func (h *readyHeap) Pop() any {
	old := *h
	m := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	m.hidx = -1
	return m
}

// delayHeap orders delayed messages by delivery time, then id.
type delayHeap []*msg

func (h delayHeap) Len() int { return len(h) }
func (h delayHeap) Less(i, j int) bool {
	if h[i].deliverAt != h[j].deliverAt {
		return h[i].deliverAt < h[j].deliverAt
	}
	return h[i].id < h[j].id
}
func (h delayHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].hidx = i; h[j].hidx = j }
func (h *delayHeap) Push(x any)   { m := x.(*msg); m.hidx = len(*h); *h = append(*h, m) }
func (h *delayHeap) Pop() any {
	old := *h
	m := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	m.hidx = -1
	return m
}

// leaseEntry is one lease end to check; stale entries (the message was acked, nacked,
// extended or delivered again) are skipped when popped.
type leaseEntry struct {
	deadline time.Time
	id       int64
	nonce    uint64
}

type leaseHeap []leaseEntry

func (h leaseHeap) Len() int           { return len(h) }
func (h leaseHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h leaseHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *leaseHeap) Push(x any)        { *h = append(*h, x.(leaseEntry)) }
func (h *leaseHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// waiter is a receiver parked on a queue. ch is buffered(1) and signalled once when
// the waiter is taken off the list.
type waiter struct {
	ch   chan struct{}
	elem *list.Element
}

// Lanes of a queue's window: every stored message is in exactly one, by its stored
// deliver_at (see sqlstore.LaneReady and sqlstore.LaneScheduled).
const (
	laneReady = 0
	laneSched = 1
	laneCount = 2
)

var storeLane = [laneCount]sqlstore.Lane{sqlstore.LaneReady, sqlstore.LaneScheduled}

// laneOf returns the lane of a stored message with this deliver_at.
func laneOf(deliverAt int64) int {
	if deliverAt > 0 {
		return laneSched
	}
	return laneReady
}

// keyOf returns the position of m in its lane.
func keyOf(m *msg) sqlstore.ScanKey {
	return sqlstore.ScanKey{DeliverAt: m.deliverAt, Priority: int16(m.priority), ID: m.id}
}

// cmpKey compares two positions in lane ln, in the lane's order.
func cmpKey(ln int, a, b sqlstore.ScanKey) int {
	if ln == laneSched && a.DeliverAt != b.DeliverAt {
		return cmp.Compare(a.DeliverAt, b.DeliverAt)
	}
	if a.Priority != b.Priority {
		return cmp.Compare(b.Priority, a.Priority) // descending
	}
	return cmp.Compare(a.ID, b.ID)
}

// laneState is the window's position in one lane.
type laneState struct {
	started   bool             // cursor is set; false: the window starts before the head
	cursor    sqlstore.ScanKey // the window holds every stored message of the lane up to it
	exhausted bool             // the window holds every stored message of the lane
}

// queue is one queue of one activation. See the package documentation for the window,
// the lanes and the page logs. Every mutable field is guarded by mu, the only lock of
// a queue; nothing does I/O while holding it.
type queue struct {
	l         *live
	name      string
	cfg       QueueConfig // immutable
	createdAt time.Time

	mu       sync.Mutex
	deleting bool          // a delete is under way: new work is refused
	deleted  bool          // deleted: every call fails with ErrQueueNotFound
	pubs     int           // publishes (and dead-letter moves) under way into this queue
	idle     chan struct{} // closed when pubs drops to 0 while deleting

	msgs  int64 // messages in the messages table plus non-persistent ones, not acked
	bytes int64 // their body bytes (counted in the sizes of addresses and the global size)

	index    map[int64]*msg // every message in memory
	memBytes int64          // footprint of the messages in index
	// stored counts the persistent messages of index by lane, so that pageOutLocked
	// looks through index only for a lane that has some.
	stored   [laneCount]int
	rowFoot  int64 // mean footprint of the rows the last refill read; 0: none yet
	ready    readyHeap
	delayed  delayHeap
	leases   leaseHeap
	inFlight int64

	lanes    [laneCount]laneState
	scanning chan struct{} // non-nil while a refill or a depage reads the store
	// prefetching is set while a read-ahead (prefetchLocked) is started or running.
	prefetching bool
	// uncommitted holds the ids of persistent messages being written; the value turns
	// true when a refill read the row before the publisher took it in.
	uncommitted map[int64]bool
	// lateCommits are messages committed while a refill was reading: the refill
	// decides whether they belong in memory.
	lateCommits []*msg
	// pendingDeletes holds ids of stored rows being deleted that are not in memory;
	// refills skip them.
	pendingDeletes map[int64]struct{}

	// cursors are the queue's positions in the page logs it reads, by log key.
	cursors map[string]*pageCursor

	waiters list.List // of *waiter, FIFO
}

func newQueue(l *live, name string, cfg QueueConfig, createdAt time.Time) *queue {
	q := &queue{
		l:              l,
		name:           name,
		cfg:            cfg,
		createdAt:      createdAt,
		index:          map[int64]*msg{},
		uncommitted:    map[int64]bool{},
		pendingDeletes: map[int64]struct{}{},
		cursors:        map[string]*pageCursor{},
	}
	return q
}

func (q *queue) notFound() error {
	return fmt.Errorf("server: queue %q: %w", q.name, ErrQueueNotFound)
}

// accountLocked changes the message count and byte total of the queue, and the
// global total with it.
func (q *queue) accountLocked(n, bytes int64) {
	q.msgs += n
	q.bytes += bytes
	q.l.global.Add(bytes)
	if bytes < 0 {
		q.l.spaceFreed()
	}
}

// allExhaustedLocked reports whether the window holds every stored message.
func (q *queue) allExhaustedLocked() bool {
	return q.lanes[laneReady].exhausted && q.lanes[laneSched].exhausted
}

// coveredLocked reports whether the window covers a stored message at key k of lane
// ln: such a message belongs in memory.
func (q *queue) coveredLocked(ln int, k sqlstore.ScanKey) bool {
	st := &q.lanes[ln]
	return st.exhausted || (st.started && cmpKey(ln, k, st.cursor) <= 0)
}

// uncoverLocked moves the window of lane ln back below key k, so that a later refill
// reads a row at k if it exists.
func (q *queue) uncoverLocked(ln int, k sqlstore.ScanKey) {
	if !q.coveredLocked(ln, k) {
		return
	}
	st := &q.lanes[ln]
	k.ID--
	if !st.started || cmpKey(ln, k, st.cursor) < 0 {
		st.cursor = k
	}
	st.started = true
	st.exhausted = false
}

// beginPublish registers a write of messages into the queue; endPublish ends it.
func (q *queue) beginPublish() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.deleting || q.deleted {
		return q.notFound()
	}
	q.pubs++
	return nil
}

func (q *queue) endPublish() {
	q.mu.Lock()
	q.pubs--
	if q.pubs == 0 && q.idle != nil {
		close(q.idle)
		q.idle = nil
	}
	q.mu.Unlock()
}

// beginDelete refuses new work and returns a channel closed once no publish is under
// way.
func (q *queue) beginDelete() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.deleting = true
	q.wakeAllLocked()
	ch := make(chan struct{})
	if q.pubs == 0 {
		close(ch)
	} else {
		q.idle = ch
	}
	return ch
}

func (q *queue) abortDelete() {
	q.mu.Lock()
	q.deleting = false
	q.idle = nil
	q.mu.Unlock()
}

func (q *queue) finishDelete() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.deleted = true
	q.index = map[int64]*msg{}
	q.memBytes = 0
	q.stored = [laneCount]int{}
	q.ready, q.delayed, q.leases = nil, nil, nil
	q.inFlight = 0
	q.accountLocked(-q.msgs, -q.bytes)
	q.wakeAllLocked()
}

// footprint estimates the memory a message in the window takes.
func footprint(m *msg) int64 {
	n := int64(len(m.body)+len(m.contentType)) + 160
	for k, v := range m.headers {
		n += int64(len(k)+len(v)) + 32
	}
	return n
}

// addLocked puts a message in memory, ready or delayed.
func (q *queue) addLocked(m *msg, nowMs int64) {
	q.index[m.id] = m
	q.memBytes += footprint(m)
	if m.persistent {
		q.stored[laneOf(m.deliverAt)]++
	}
	q.requeueLocked(m, nowMs)
}

// rescheduleLocked moves m, busy in memory, to deliverAt, and to that lane.
func (q *queue) rescheduleLocked(m *msg, deliverAt int64) {
	if m.persistent && q.index[m.id] == m {
		q.stored[laneOf(m.deliverAt)]--
		q.stored[laneOf(deliverAt)]++
	}
	m.deliverAt = deliverAt
}

// forgetLocked drops a message from memory.
func (q *queue) forgetLocked(m *msg) {
	if q.index[m.id] == m {
		delete(q.index, m.id)
		q.memBytes -= footprint(m)
		if m.persistent {
			q.stored[laneOf(m.deliverAt)]--
		}
	}
}

// requeueLocked puts a message that left a heap (or flight) back, ready or delayed.
func (q *queue) requeueLocked(m *msg, nowMs int64) {
	if m.deliverAt > nowMs {
		m.state = stDelayed
		heap.Push(&q.delayed, m)
	} else {
		m.state = stReady
		heap.Push(&q.ready, m)
	}
}

// unlinkLocked takes a message out of its heap or out of flight; it stays indexed
// and becomes busy.
func (q *queue) unlinkLocked(m *msg) {
	switch m.state {
	case stReady:
		heap.Remove(&q.ready, m.hidx)
	case stDelayed:
		heap.Remove(&q.delayed, m.hidx)
	case stInFlight:
		q.inFlight--
	}
	m.state = stBusy
}

// committedLocked takes in persistent messages whose insert committed (ok) or failed.
// It decides, per the window rules, whether each belongs in memory, and returns how
// many receivers to wake.
//
// A failed write may still have committed (the answer to COMMIT can be lost), so on a
// failure the window is moved back below the messages: later refills read them if
// they exist, and skip what memory holds.
func (q *queue) committedLocked(ms []*msg, ok bool, nowMs int64) int {
	added := 0
	for _, m := range ms {
		seen := q.uncommitted[m.id]
		delete(q.uncommitted, m.id)
		if q.deleted {
			continue
		}
		ln, k := laneOf(m.deliverAt), keyOf(m)
		if !ok {
			q.uncoverLocked(ln, k)
			continue
		}
		q.accountLocked(1, m.size)
		if seen {
			continue // a refill read it already
		}
		switch {
		case q.coveredLocked(ln, k):
			if q.index[m.id] == nil {
				q.addLocked(m, nowMs)
				added++
			}
		case q.scanning != nil:
			q.lateCommits = append(q.lateCommits, m)
		default:
			// Left in the store for a refill: wake a receiver to do it.
			added++
		}
	}
	q.pageOutLocked()
	return added
}

// windowBytes is the byte bound of one lane's part of the window.
func (q *queue) windowBytes() int64 { return q.l.cfg.WindowBytes }

// pageOutLocked leaves the exhausted state of a lane when the window grew past twice
// its size (in messages or bytes): later persistent messages of the lane then stay in
// the store until refills read them. The cursor moves to the largest key in memory.
func (q *queue) pageOutLocked() {
	held := q.ready.Len() + q.delayed.Len()
	if held <= 2*q.l.cfg.WindowSize && q.memBytes <= 2*q.windowBytes() {
		return
	}
	for ln := range laneCount {
		st := &q.lanes[ln]
		if !st.exhausted || q.stored[ln] == 0 {
			continue // nothing of the lane in memory: it stays exhausted
		}
		found := false
		var top sqlstore.ScanKey
		for _, m := range q.index {
			if !m.persistent || laneOf(m.deliverAt) != ln {
				continue
			}
			if k := keyOf(m); !found || cmpKey(ln, k, top) > 0 {
				top, found = k, true
			}
		}
		if !found {
			continue // unreachable while stored is right
		}
		st.exhausted = false
		if !st.started || cmpKey(ln, top, st.cursor) > 0 {
			st.cursor = top
		}
		st.started = true
	}
}

// refillLimit is the number of rows one refill reads: Config.WindowSize, fewer when
// the queue's messages are big, so that a refill stays within Config.WindowBytes.
func (q *queue) refillLimitLocked() int {
	limit := q.l.cfg.WindowSize
	foot := q.rowFoot
	if foot == 0 && q.msgs > 0 && q.bytes > 0 {
		// Before the first read: the mean size from the counters. Large messages count
		// at most the threshold: their bodies are not in memory.
		foot = min(q.bytes/q.msgs, q.l.cfg.LargeMessageThreshold) + 160
	}
	if foot > 0 {
		if n := q.windowBytes() / foot; n < int64(limit) {
			limit = max(int(n), 1)
		}
	}
	return limit
}

// refillLocked reads the next part of lane ln from the store into the window. It is
// called with mu held, releases it for the read, and returns with it held. Only one
// refill runs at a time; a caller finding one running waits for it instead.
func (q *queue) refillLocked(ctx context.Context, ln int) error {
	if q.scanning != nil {
		return q.awaitScanLocked(ctx)
	}
	ch := make(chan struct{})
	q.scanning = ch
	st := &q.lanes[ln]
	p := &sqlstore.MessageScanParams{Queue: q.name, Lane: storeLane[ln], Limit: q.refillLimitLocked()}
	if st.started {
		from := st.cursor
		p.From = &from
	}
	q.mu.Unlock()
	rows, err := q.l.s.drv.MessageScan(ctx, p)
	q.mu.Lock()
	q.scanning = nil
	close(ch)
	if err != nil {
		q.settleLateLocked(q.l.now().UnixMilli())
		return fmt.Errorf("server: read queue %q: %w: %w", q.name, ErrUnavailable, err)
	}
	if q.deleting || q.deleted {
		return nil
	}
	nowMs := q.l.now().UnixMilli()
	var foot int64
	for i := range rows {
		r := &rows[i]
		foot += int64(len(r.Body)+len(r.ContentType)) + 160
		k := sqlstore.ScanKey{DeliverAt: r.DeliverAt, Priority: r.Priority, ID: r.ID}
		if !st.started || cmpKey(ln, k, st.cursor) > 0 {
			st.cursor, st.started = k, true
		}
		if _, ok := q.uncommitted[r.ID]; ok {
			q.uncommitted[r.ID] = true
		}
		if _, ok := q.pendingDeletes[r.ID]; ok {
			continue
		}
		if q.index[r.ID] != nil {
			continue
		}
		q.addLocked(msgFromRow(r), nowMs)
	}
	if len(rows) > 0 {
		q.rowFoot = foot / int64(len(rows))
	}
	if len(rows) < p.Limit {
		st.exhausted = true
	}
	q.settleLateLocked(nowMs)
	q.wakeLocked(q.ready.Len())
	return nil
}

// schedDueLocked reports whether due messages of the scheduled lane may wait in the
// store: the window does not hold the whole lane and its position is not in the
// future.
func (q *queue) schedDueLocked(nowMs int64) bool {
	st := &q.lanes[laneSched]
	return !st.exhausted && (!st.started || st.cursor.DeliverAt <= nowMs)
}

// fillLocked reads the store until the ready heap holds want messages or there is
// nothing more to read. Each pass reads due messages of the scheduled lane (when its
// cursor is not in the future) and the ready lane side by side, so neither starves the
// other (the ready heap merges them by priority), then the page logs once the ready
// lane is exhausted. Called with mu held; it releases it for the reads.
func (q *queue) fillLocked(ctx context.Context, want int) error {
	for range 64 { // bounded: each pass reads at most a window per lane
		if q.deleting || q.deleted || q.ready.Len() >= want {
			return nil
		}
		before, paged := q.lanes, q.pagedLocked()
		tried := false
		if q.schedDueLocked(q.l.now().UnixMilli()) {
			tried = true
			if err := q.refillLocked(ctx, laneSched); err != nil {
				return err
			}
			q.promoteLocked(q.l.now().UnixMilli())
		}
		if q.ready.Len() < want && !q.lanes[laneReady].exhausted && !q.deleting && !q.deleted {
			tried = true
			if err := q.refillLocked(ctx, laneReady); err != nil {
				return err
			}
		}
		if q.ready.Len() < want && q.lanes[laneReady].exhausted && q.pagedLocked() > 0 && !q.deleting && !q.deleted {
			tried = true
			if err := q.depageLocked(ctx); err != nil {
				return err
			}
		}
		if !tried {
			return nil
		}
		q.promoteLocked(q.l.now().UnixMilli())
		if q.lanes == before && q.pagedLocked() == paged && q.scanning == nil {
			return nil // no progress (appends in flight, or nothing new); do not spin
		}
	}
	return nil
}

// prefetchLocked starts a read-ahead of the window when a receive left fewer than
// half a refill of ready messages in memory and the store holds more of the queue:
// the read (fillLocked, in the background) then overlaps the receivers' work, and the
// next receives find their messages in memory instead of waiting for the store. At
// most one read-ahead runs per queue, and it shares the refill slot (scanning) with
// the receivers' own reads. Called with mu held.
func (q *queue) prefetchLocked(nowMs int64) {
	if q.prefetching || q.scanning != nil || q.deleting || q.deleted || q.l.isStopping() {
		return
	}
	limit := q.refillLimitLocked()
	if q.ready.Len() >= max(limit/2, 1) {
		return
	}
	if q.lanes[laneReady].exhausted && q.pagedLocked() == 0 && !q.schedDueLocked(nowMs) {
		return // the window holds every due message already
	}
	q.prefetching = q.l.goBackground(func() { q.prefetch(limit) })
}

// prefetch reads up to want ready messages into the window (see prefetchLocked). A
// failure is only logged: a receiver that finds the window short reads the store
// itself and reports its own error.
func (q *queue) prefetch(want int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	defer func() { q.prefetching = false }()
	if err := q.fillLocked(q.l.ctx, want); err != nil && !q.l.isStopping() {
		q.l.log.Debug("read-ahead failed; receivers read the store themselves", "queue", q.name, "error", err)
	}
}

// awaitScanLocked waits, with mu released, for the refill or depage under way to end.
func (q *queue) awaitScanLocked(ctx context.Context) error {
	ch := q.scanning
	q.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
	q.mu.Lock()
	return ctx.Err()
}

// settleLateLocked decides, once a refill or depage ended, where the messages
// committed during it belong: in memory when the window covers them, else in the
// store for a later refill (a receiver is woken to do it).
func (q *queue) settleLateLocked(nowMs int64) {
	late := q.lateCommits
	q.lateCommits = nil
	wake := 0
	for _, m := range late {
		if _, ok := q.pendingDeletes[m.id]; ok || q.index[m.id] != nil || q.deleted {
			continue
		}
		if q.coveredLocked(laneOf(m.deliverAt), keyOf(m)) {
			q.addLocked(m, nowMs)
			wake++
		} else {
			wake++
		}
	}
	q.wakeLocked(wake)
}

// promoteLocked moves delayed messages whose time has come to the ready heap.
func (q *queue) promoteLocked(nowMs int64) int {
	n := 0
	for q.delayed.Len() > 0 && q.delayed[0].deliverAt <= nowMs {
		m := heap.Pop(&q.delayed).(*msg)
		m.state = stReady
		heap.Push(&q.ready, m)
		n++
	}
	return n
}

// wakeLocked signals up to n waiting receivers, oldest first.
func (q *queue) wakeLocked(n int) {
	for ; n > 0; n-- {
		e := q.waiters.Front()
		if e == nil {
			return
		}
		w := q.waiters.Remove(e).(*waiter)
		w.elem = nil
		w.ch <- struct{}{}
	}
}

func (q *queue) wakeAllLocked() { q.wakeLocked(q.waiters.Len()) }

// info describes the queue from memory: no store read.
func (q *queue) info() (QueueInfo, error) {
	q.mu.Lock()
	if q.deleting || q.deleted {
		q.mu.Unlock()
		return QueueInfo{}, q.notFound()
	}
	qi := QueueInfo{
		Name:             q.name,
		Config:           q.cfg,
		Depth:            max(q.msgs, 0),
		Paged:            q.pagedLocked(),
		Bytes:            max(q.bytes, 0),
		InFlight:         q.inFlight,
		InMemory:         int64(len(q.index)),
		Delayed:          int64(q.delayed.Len()),
		WaitingReceivers: q.waiters.Len(),
		CreatedAt:        q.createdAt,
	}
	q.mu.Unlock()
	qi.Depth += qi.Paged
	qi.Addresses = q.l.queueAddresses(q.name)
	return qi, nil
}

// purge deletes the messages of the queue that are not leased: the ready and delayed
// ones in the window, every stored one past the window that was committed when the
// purge read it, and the queue's share of its page logs. Leased messages and messages
// being acked stay.
func (q *queue) purge(ctx context.Context) (int64, error) {
	if err := q.beginPublish(); err != nil { // holds off a delete of the queue
		return 0, err
	}
	defer q.endPublish()
	var total int64

	// 1. The window.
	q.mu.Lock()
	var victims []*msg
	for _, h := range [][]*msg{q.ready, q.delayed} {
		victims = append(victims, h...)
	}
	for _, m := range victims {
		q.unlinkLocked(m)
	}
	exhausted := q.allExhaustedLocked()
	q.mu.Unlock()
	n, err := q.deleteMsgs(ctx, victims)
	total += n
	if err != nil {
		return total, err
	}

	// 2. The page logs: move the cursors to the end.
	n, err = q.l.skipPages(ctx, q)
	total += n
	if err != nil || exhausted {
		return total, err
	}

	// 3. The store past the window, page by page. Rows a refill takes in meanwhile are
	// deleted from memory instead when not leased.
	upper := q.l.epoch<<idCounterBits | q.l.counter.Load() // ids published before now
	var after int64
	for {
		rows, err := q.l.s.drv.MessageScan(ctx, &sqlstore.MessageScanParams{Queue: q.name, Lane: sqlstore.LaneID, AfterID: after, Limit: q.l.cfg.WindowSize})
		if err != nil {
			return total, fmt.Errorf("server: purge queue %q: %w: %w", q.name, ErrUnavailable, err)
		}
		if len(rows) == 0 {
			return total, nil
		}
		after = rows[len(rows)-1].ID
		var keys []sqlstore.MessageKey
		var sizes int64
		var mem []*msg
		q.mu.Lock()
		for i := range rows {
			id := rows[i].ID
			if id > upper {
				continue
			}
			if _, ok := q.pendingDeletes[id]; ok {
				continue
			}
			if _, ok := q.uncommitted[id]; ok {
				continue // its publisher accounts for it
			}
			if m := q.index[id]; m != nil {
				if m.state == stReady || m.state == stDelayed {
					q.unlinkLocked(m)
					mem = append(mem, m)
				}
				continue
			}
			q.pendingDeletes[id] = struct{}{}
			keys = append(keys, sqlstore.MessageKey{Queue: q.name, ID: id, Large: rows[i].Large})
			sizes += rows[i].Size
		}
		q.mu.Unlock()
		n, err := q.deleteMsgs(ctx, mem)
		total += n
		if err != nil {
			return total, err
		}
		if len(keys) > 0 {
			err := q.l.write(ctx, &sqlstore.Batch{MessageDeletes: keys})
			q.mu.Lock()
			for _, k := range keys {
				delete(q.pendingDeletes, k.ID)
			}
			if err == nil {
				q.accountLocked(-int64(len(keys)), -sizes)
			}
			q.mu.Unlock()
			if err != nil {
				return total, fmt.Errorf("server: purge queue %q: %w", q.name, err)
			}
			total += int64(len(keys))
		}
		if len(rows) < q.l.cfg.WindowSize || after >= upper {
			return total, nil
		}
	}
}

// deleteMsgs deletes busy in-memory messages (persistent ones through the writer) and
// drops them from memory. On a failed write they go back to their heaps.
func (q *queue) deleteMsgs(ctx context.Context, ms []*msg) (int64, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	var keys []sqlstore.MessageKey
	for _, m := range ms {
		if m.persistent {
			keys = append(keys, sqlstore.MessageKey{Queue: q.name, ID: m.id, Large: m.large})
		}
	}
	var err error
	if len(keys) > 0 {
		err = q.l.write(ctx, &sqlstore.Batch{MessageDeletes: keys})
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	nowMs := q.l.now().UnixMilli()
	for _, m := range ms {
		if err != nil && m.persistent {
			q.requeueLocked(m, nowMs)
			continue
		}
		q.forgetLocked(m)
		q.accountLocked(-1, -m.size)
	}
	if err != nil {
		q.wakeLocked(len(ms))
		return int64(len(ms) - len(keys)), fmt.Errorf("server: delete messages of queue %q: %w", q.name, err)
	}
	return int64(len(ms)), nil
}
