package server

import (
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

// queue is one queue of one activation. See the package documentation for the window,
// the cursor and the exhausted state. Every mutable field is guarded by mu, the only
// lock of a queue; nothing does I/O while holding it.
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

	loaded  bool          // depth holds the stored count
	loading chan struct{} // non-nil while the count is being loaded
	depth   int64         // messages not acked: stored ones plus non-persistent ones

	index    map[int64]*msg // every message in memory
	ready    readyHeap
	delayed  delayHeap
	leases   leaseHeap
	inFlight int64

	cursor    int64         // the window holds every stored message with id <= cursor
	exhausted bool          // the window holds every stored message
	scanned   bool          // a refill ran at least once
	scanning  chan struct{} // non-nil while a refill reads the store
	maxMemID  int64         // largest persistent id ever put in memory
	// uncommitted holds the ids of persistent messages being written; the value turns
	// true when a refill read the row before the publisher took it in.
	uncommitted map[int64]bool
	// lateCommits are messages committed while a refill was reading: the refill
	// decides whether they belong in memory.
	lateCommits []*msg
	// pendingDeletes holds ids of stored rows being deleted that are not in memory;
	// refills skip them.
	pendingDeletes map[int64]struct{}

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
	}
	return q
}

func (q *queue) notFound() error {
	return fmt.Errorf("server: queue %q: %w", q.name, ErrQueueNotFound)
}

// ensureLoaded loads the stored message count once. Every path that writes messages
// of the queue calls it first, so no write of this live is counted twice.
func (q *queue) ensureLoaded(ctx context.Context) error {
	for {
		q.mu.Lock()
		if q.deleting || q.deleted {
			q.mu.Unlock()
			return q.notFound()
		}
		if q.loaded {
			q.mu.Unlock()
			return nil
		}
		if ch := q.loading; ch != nil {
			q.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return fmt.Errorf("server: queue %q: %w", q.name, ctx.Err())
			}
		}
		ch := make(chan struct{})
		q.loading = ch
		q.mu.Unlock()
		n, err := q.l.s.drv.MessageCount(ctx, q.name)
		q.mu.Lock()
		q.loading = nil
		close(ch)
		if err == nil {
			q.loaded = true
			q.depth += n
		}
		q.mu.Unlock()
		if err != nil {
			return fmt.Errorf("server: count messages of queue %q: %w: %w", q.name, ErrUnavailable, err)
		}
		return nil
	}
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
	q.ready, q.delayed, q.leases = nil, nil, nil
	q.inFlight, q.depth = 0, 0
	q.wakeAllLocked()
}

// addLocked puts a message in memory, ready or delayed.
func (q *queue) addLocked(m *msg, nowMs int64) {
	q.index[m.id] = m
	if m.deliverAt > nowMs {
		m.state = stDelayed
		heap.Push(&q.delayed, m)
	} else {
		m.state = stReady
		heap.Push(&q.ready, m)
	}
	if m.persistent && m.id > q.maxMemID {
		q.maxMemID = m.id
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
// failure the cursor is moved back below the messages: later refills read them if
// they exist, and skip what memory holds.
func (q *queue) committedLocked(ms []*msg, ok bool, nowMs int64) int {
	added := 0
	for _, m := range ms {
		seen := q.uncommitted[m.id]
		delete(q.uncommitted, m.id)
		if q.deleted {
			continue
		}
		if !ok {
			if m.id <= q.cursor || q.exhausted {
				q.cursor = min(q.cursor, m.id-1)
				q.exhausted = false
			}
			continue
		}
		q.depth++
		if seen {
			continue // a refill read it already
		}
		switch {
		case q.exhausted || m.id <= q.cursor:
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

// pageOutLocked leaves the exhausted state when the window grew past twice its size:
// later persistent messages then stay in the store until refills read them.
func (q *queue) pageOutLocked() {
	if q.exhausted && q.ready.Len()+q.delayed.Len() > 2*q.l.cfg.WindowSize {
		q.exhausted = false
		q.cursor = max(q.cursor, q.maxMemID)
	}
}

// refillLocked reads the next part of the queue from the store into the window. It is
// called with mu held, releases it for the read, and returns with it held. Only one
// refill runs at a time; a caller finding one running waits for it instead.
func (q *queue) refillLocked(ctx context.Context) error {
	if ch := q.scanning; ch != nil {
		q.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		q.mu.Lock()
		return ctx.Err()
	}
	ch := make(chan struct{})
	q.scanning = ch
	after := q.cursor
	limit := q.l.cfg.WindowSize
	q.mu.Unlock()
	rows, err := q.l.s.drv.MessageScan(ctx, &sqlstore.MessageScanParams{Queue: q.name, AfterID: after, Limit: limit})
	q.mu.Lock()
	q.scanning = nil
	close(ch)
	late := q.lateCommits
	q.lateCommits = nil
	if err != nil {
		return fmt.Errorf("server: read queue %q: %w: %w", q.name, ErrUnavailable, err)
	}
	if q.deleting || q.deleted {
		return nil
	}
	q.scanned = true
	nowMs := q.l.now().UnixMilli()
	for i := range rows {
		r := &rows[i]
		if r.ID > q.cursor {
			q.cursor = r.ID
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
	if len(rows) < limit {
		q.exhausted = true
	}
	for _, m := range late {
		if (q.exhausted || m.id <= q.cursor) && q.index[m.id] == nil {
			if _, ok := q.pendingDeletes[m.id]; !ok {
				q.addLocked(m, nowMs)
			}
		}
	}
	if q.exhausted {
		q.cursor = max(q.cursor, q.maxMemID)
	}
	if q.ready.Len() > 0 {
		q.wakeLocked(q.ready.Len())
	}
	return nil
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

// info describes the queue; it fills the window on first use.
func (q *queue) info(ctx context.Context) (QueueInfo, error) {
	if err := q.ensureLoaded(ctx); err != nil {
		return QueueInfo{}, err
	}
	q.mu.Lock()
	if !q.scanned && !q.exhausted && !q.deleting && !q.deleted {
		if err := q.refillLocked(ctx); err != nil {
			q.mu.Unlock()
			return QueueInfo{}, err
		}
	}
	if q.deleting || q.deleted {
		q.mu.Unlock()
		return QueueInfo{}, q.notFound()
	}
	qi := QueueInfo{
		Name:             q.name,
		Config:           q.cfg,
		Depth:            max(q.depth, 0),
		InFlight:         q.inFlight,
		Delayed:          int64(q.delayed.Len()),
		WaitingReceivers: q.waiters.Len(),
		CreatedAt:        q.createdAt,
	}
	q.mu.Unlock()
	qi.Addresses = q.l.queueAddresses(q.name)
	return qi, nil
}

// purge deletes the messages of the queue that are not leased: the ready and delayed
// ones in the window, and every stored one past the window that was committed when
// the purge read it. Leased messages and messages being acked stay.
func (q *queue) purge(ctx context.Context) (int64, error) {
	if err := q.ensureLoaded(ctx); err != nil {
		return 0, err
	}
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
	exhausted, cursor := q.exhausted, q.cursor
	q.mu.Unlock()
	n, err := q.deleteMsgs(ctx, victims)
	total += n
	if err != nil || exhausted {
		return total, err
	}

	// 2. The store past the window, page by page. Rows a refill takes in meanwhile are
	// deleted from memory instead when not leased.
	upper := q.l.epoch<<idCounterBits | q.l.counter.Load() // ids published before now
	after := cursor
	for {
		rows, err := q.l.s.drv.MessageScan(ctx, &sqlstore.MessageScanParams{Queue: q.name, AfterID: after, Limit: q.l.cfg.WindowSize})
		if err != nil {
			return total, fmt.Errorf("server: purge queue %q: %w: %w", q.name, ErrUnavailable, err)
		}
		if len(rows) == 0 {
			return total, nil
		}
		after = rows[len(rows)-1].ID
		var keys []sqlstore.MessageKey
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
			keys = append(keys, sqlstore.MessageKey{Queue: q.name, ID: id})
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
				q.depth -= int64(len(keys))
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
			keys = append(keys, sqlstore.MessageKey{Queue: q.name, ID: m.id})
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
		delete(q.index, m.id)
		q.depth--
	}
	if err != nil {
		q.wakeLocked(len(ms))
		return int64(len(ms) - len(keys)), fmt.Errorf("server: delete messages of queue %q: %w", q.name, err)
	}
	return int64(len(ms)), nil
}
