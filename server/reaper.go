package server

import (
	"container/heap"
	"context"
	"errors"
	"maps"
	"slices"
	"time"

	"github.com/tablemq/tablemq/sqlstore"
)

// Headers set on a dead-lettered message.
const (
	HeaderDeadLetterFrom       = "tablemq-dead-letter-from"
	HeaderDeadLetterOriginalID = "tablemq-original-id"
)

// reaper is the one background goroutine of an activation: it ends expired leases,
// releases delayed messages and deletes expired idempotency keys.
func (l *live) reaper() {
	defer close(l.reaperDone)
	t := time.NewTicker(l.cfg.ReaperInterval)
	defer t.Stop()
	lastDup := l.now()
	for {
		select {
		case <-l.reaperStop:
			return
		case <-t.C:
		}
		now := l.now()
		for _, q := range l.queueSnapshot() {
			l.reapQueue(q, now)
		}
		if now.Sub(lastDup) >= l.cfg.DuplicateCleanupInterval {
			lastDup = now
			l.cleanDuplicates(now)
		}
	}
}

// reapQueue ends the expired leases of a queue and releases its due delayed messages.
func (l *live) reapQueue(q *queue, now time.Time) {
	nowMs := now.UnixMilli()
	var updates []sqlstore.MessageUpdate
	var dead []*msg
	q.mu.Lock()
	if q.deleting || q.deleted {
		q.mu.Unlock()
		return
	}
	n := 0
	for q.leases.Len() > 0 && !q.leases[0].deadline.After(now) {
		e := heap.Pop(&q.leases).(leaseEntry)
		m := q.index[e.id]
		if m == nil || m.state != stInFlight || m.nonce != e.nonce || !m.deadline.Equal(e.deadline) {
			continue // acked, nacked, extended or delivered again since
		}
		q.unlinkLocked(m)
		if md := q.cfg.MaxDeliveries; md > 0 && int(m.deliveries) >= md {
			dead = append(dead, m)
			continue
		}
		q.requeueLocked(m, nowMs)
		n++
		l.s.ctr.leaseExpired.Add(1)
		if m.persistent {
			updates = append(updates, sqlstore.MessageUpdate{Queue: q.name, ID: m.id, DeliveryCount: m.deliveries, DeliverAt: m.deliverAt})
		}
	}
	n += q.promoteLocked(nowMs)
	if n == 0 && q.waiters.Len() > 0 && q.schedDueLocked(nowMs) {
		n = 1 // due messages wait in the store: a receiver reads them
	}
	q.wakeLocked(n)
	if int64(q.leases.Len()) > 4*q.inFlight+1024 {
		q.compactLeasesLocked()
	}
	q.mu.Unlock()
	if len(updates) > 0 {
		if err := l.write(context.Background(), &sqlstore.Batch{MessageUpdates: updates}); err != nil && !errors.Is(err, ErrNotLive) {
			l.log.Warn("persisting delivery counts failed", "queue", q.name, "error", err)
		}
	}
	if len(dead) > 0 {
		l.deadLetter(q, dead)
	}
}

// cleanDuplicates deletes idempotency keys older than the window, in the store first
// and then in memory, so memory never forgets a key the store still holds.
func (l *live) cleanDuplicates(now time.Time) {
	// Whole milliseconds, as the store keeps them: memory must not forget a key whose
	// row survives because it falls in the cutoff's millisecond.
	cutoff := time.UnixMilli(now.Add(-l.cfg.DuplicateWindow).UnixMilli())
	if err := l.write(context.Background(), &sqlstore.Batch{DuplicatesBefore: cutoff.UnixMilli()}); err != nil {
		if !errors.Is(err, ErrNotLive) {
			l.log.Warn("deleting expired idempotency keys failed", "error", err)
		}
		return
	}
	l.cleanedBefore.Store(cutoff.UnixMilli())
	l.metaMu.RLock()
	sets := slices.Collect(maps.Values(l.dedups))
	l.metaMu.RUnlock()
	for _, d := range sets {
		d.expire(cutoff)
	}
}

// deadLetter moves busy messages of src that reached max_deliveries to its
// dead-letter queue (created if missing) in one transaction: insert there, delete
// here. Without a dead-letter queue they are deleted. If the write fails they go back
// to src and are tried again when next deliverable.
func (l *live) deadLetter(src *queue, ms []*msg) {
	ctx := context.Background()
	dlqName := src.cfg.DeadLetterQueue
	if dlqName == "" {
		n, err := src.deleteMsgs(ctx, ms)
		l.s.ctr.deadLetterDropped.Add(n)
		l.log.Warn("messages dropped after max_deliveries: the queue has no dead_letter_queue",
			"queue", src.name, "count", n, "dropped_total", l.s.ctr.deadLetterDropped.Load(), "error", err)
		return
	}
	dq, _, err := l.queueEnsure(ctx, dlqName, QueueConfig{}, false)
	if err == nil {
		if err = dq.beginPublish(); err == nil {
			defer dq.endPublish()
		}
	}
	if err != nil {
		l.log.Warn("dead-lettering failed; messages stay in their queue", "queue", src.name, "dead_letter_queue", dlqName, "error", err)
		src.requeueMsgs(ms)
		return
	}
	b := &sqlstore.Batch{}
	moved := make([]*msg, 0, len(ms))
	nowMs := l.now().UnixMilli()
	for _, m := range ms {
		id, err := l.nextID()
		if m.large {
			id, err = m.id, nil // large.go: the dead-letter row names the same chunks
		}
		if err != nil {
			l.log.Warn("dead-lettering failed", "queue", src.name, "error", err)
			src.requeueMsgs(ms)
			return
		}
		h := make(map[string]string, len(m.headers)+2)
		maps.Copy(h, m.headers)
		h[HeaderDeadLetterFrom] = src.name
		h[HeaderDeadLetterOriginalID] = formatID(m.id)
		nm := &msg{
			id:          id,
			priority:    m.priority,
			createdAt:   nowMs,
			contentType: m.contentType,
			headers:     h,
			body:        m.body,
			size:        m.size,
			large:       m.large,
			persistent:  m.persistent,
		}
		moved = append(moved, nm)
		if m.persistent {
			b.MessageInserts = append(b.MessageInserts, nm.row(dq.name))
			b.MessageDeletes = append(b.MessageDeletes, sqlstore.MessageKey{Queue: src.name, ID: m.id, Large: m.large})
		}
	}
	dq.mu.Lock()
	for _, nm := range moved {
		if nm.persistent {
			dq.uncommitted[nm.id] = false
		}
	}
	dq.mu.Unlock()
	var werr error
	if !b.Empty() {
		werr = l.write(ctx, b)
	}
	nowMs = l.now().UnixMilli()
	dq.mu.Lock()
	var pers []*msg
	woken := 0
	for _, nm := range moved {
		if nm.persistent {
			pers = append(pers, nm)
		} else if !dq.deleted {
			dq.addLocked(nm, nowMs)
			dq.accountLocked(1, nm.size)
			woken++
		}
	}
	woken += dq.committedLocked(pers, werr == nil, nowMs)
	dq.wakeLocked(woken)
	dq.mu.Unlock()

	src.mu.Lock()
	back := 0
	for _, m := range ms {
		if werr != nil && m.persistent {
			src.requeueLocked(m, nowMs)
			back++
			continue
		}
		src.forgetLocked(m)
		src.accountLocked(-1, -m.size)
	}
	src.wakeLocked(back)
	src.mu.Unlock()
	if werr != nil {
		l.log.Warn("dead-lettering failed; messages stay in their queue", "queue", src.name, "dead_letter_queue", dlqName, "error", werr)
		return
	}
	l.s.ctr.deadLettered.Add(int64(len(ms)))
	l.log.Info("messages dead-lettered", "queue", src.name, "dead_letter_queue", dlqName, "count", len(ms))
}

// requeueMsgs puts busy messages back in their heaps.
func (q *queue) requeueMsgs(ms []*msg) {
	q.mu.Lock()
	defer q.mu.Unlock()
	nowMs := q.l.now().UnixMilli()
	for _, m := range ms {
		if q.index[m.id] == m && m.state == stBusy {
			q.requeueLocked(m, nowMs)
		}
	}
	q.wakeLocked(len(ms))
}

// compactLeasesLocked rebuilds the lease heap from the in-flight messages, dropping the
// entries of deliveries that ended (acked, nacked or extended) before their lease.
func (q *queue) compactLeasesLocked() {
	h := make(leaseHeap, 0, q.inFlight)
	for _, m := range q.index {
		if m.state == stInFlight {
			h = append(h, leaseEntry{deadline: m.deadline, id: m.id, nonce: m.nonce})
		}
	}
	heap.Init(&h)
	q.leases = h
}
