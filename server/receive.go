package server

import (
	"container/heap"
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/tablemq/tablemq/sqlstore"
)

// receipt identifies one delivery: the epoch of the live that made it, the message id
// and a random nonce drawn for the delivery.
type receipt struct {
	epoch int64
	id    int64
	nonce uint64
}

func (r receipt) String() string {
	return strconv.FormatInt(r.epoch, 16) + "." + strconv.FormatInt(r.id, 16) + "." + strconv.FormatUint(r.nonce, 16)
}

func parseReceipt(s string) (receipt, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(s) > 64 {
		return receipt{}, fmt.Errorf("server: receipt %q: %w", s, ErrReceiptInvalid)
	}
	e, err1 := strconv.ParseInt(parts[0], 16, 64)
	id, err2 := strconv.ParseInt(parts[1], 16, 64)
	n, err3 := strconv.ParseUint(parts[2], 16, 64)
	if err1 != nil || err2 != nil || err3 != nil || e < 1 || id < 1 || n == 0 {
		return receipt{}, fmt.Errorf("server: receipt %q: %w", s, ErrReceiptInvalid)
	}
	r := receipt{epoch: e, id: id, nonce: n}
	if r.String() != s { // only the canonical spelling: one receipt, one string
		return receipt{}, fmt.Errorf("server: receipt %q: %w", s, ErrReceiptInvalid)
	}
	return r, nil
}

func receiptErr(s string, err error) error { return fmt.Errorf("server: receipt %q: %w", s, err) }

// receive implements Server.Receive.
func (q *queue) receive(ctx context.Context, p ReceiveParams) ([]Delivery, error) {
	maxN := p.Max
	if maxN == 0 {
		maxN = 1
	}
	if maxN < 1 || maxN > ReceiveMaxLimit {
		return nil, invalidf("max %d out of range 1..%d", p.Max, ReceiveMaxLimit)
	}
	if p.Wait < 0 || p.Wait > ReceiveWaitLimit {
		return nil, invalidf("wait %s out of range 0..%s", p.Wait, ReceiveWaitLimit)
	}
	lease := p.Lease
	if lease == 0 {
		lease = q.cfg.Lease
	}
	if lease == 0 {
		lease = LeaseDefault
	}
	if lease < LeaseMin || lease > LeaseMax {
		return nil, invalidf("lease %s out of range %s..%s", lease, LeaseMin, LeaseMax)
	}
	l := q.l
	var timer *time.Timer
	if p.Wait > 0 {
		timer = time.NewTimer(p.Wait)
		defer timer.Stop()
	}
	for {
		q.mu.Lock()
		if q.deleting || q.deleted {
			q.mu.Unlock()
			return nil, q.notFound()
		}
		if l.isStopping() {
			q.mu.Unlock()
			return []Delivery{}, nil
		}
		now := q.l.now()
		q.promoteLocked(now.UnixMilli())
		rerr := q.fillLocked(ctx, maxN)
		if q.deleting || q.deleted {
			q.mu.Unlock()
			return nil, q.notFound()
		}
		if l.isStopping() { // deactivated while reading the store
			q.mu.Unlock()
			return []Delivery{}, nil
		}
		now = q.l.now()
		ds, took, drop, dead := q.takeLocked(maxN, lease, now)
		if len(ds) > 0 {
			q.prefetchLocked(now.UnixMilli())
		}
		if len(ds) == 0 && rerr != nil {
			q.mu.Unlock()
			return nil, rerr
		}
		var w *waiter
		if len(ds) == 0 && timer != nil {
			w = &waiter{ch: make(chan struct{}, 1)}
			w.elem = q.waiters.PushBack(w)
		}
		q.mu.Unlock()
		q.dispose(drop, dead)

		if len(ds) > 0 {
			if ctx.Err() != nil {
				q.putBack(took)
				return nil, fmt.Errorf("server: receive from queue %q: %w", q.name, ctx.Err())
			}
			return ds, nil
		}
		if w == nil {
			return []Delivery{}, nil
		}
		var retErr error
		select {
		case <-w.ch:
			continue
		case <-timer.C:
		case <-ctx.Done():
			retErr = fmt.Errorf("server: receive from queue %q: %w", q.name, ctx.Err())
		case <-l.stopping:
		}
		q.mu.Lock()
		if w.elem != nil {
			q.waiters.Remove(w.elem)
			w.elem = nil
		} else {
			select {
			case <-w.ch: // signalled as we left: pass the signal on
				q.wakeLocked(1)
			default:
			}
		}
		q.mu.Unlock()
		if retErr != nil {
			return nil, retErr
		}
		return []Delivery{}, nil
	}
}

// leased remembers what a delivery changed, to undo it.
type leased struct {
	m          *msg
	nonce      uint64
	prevNonce  uint64
	prevLeased bool
}

// takeLocked leases up to n ready messages. Expired messages are returned in drop
// and messages past max_deliveries in dead, both busy, for the caller to dispose of
// once it released the lock.
func (q *queue) takeLocked(n int, lease time.Duration, now time.Time) (ds []Delivery, took []leased, drop, dead []*msg) {
	nowMs := now.UnixMilli()
	for len(ds) < n && q.ready.Len() > 0 {
		m := heap.Pop(&q.ready).(*msg)
		if m.expiresAt > 0 && m.expiresAt <= nowMs {
			m.state = stBusy
			drop = append(drop, m)
			continue
		}
		if md := q.cfg.MaxDeliveries; md > 0 && int(m.deliveries) >= md {
			m.state = stBusy
			dead = append(dead, m)
			continue
		}
		took = append(took, leased{m: m, prevNonce: m.nonce, prevLeased: m.leasedHere})
		m.deliveries++
		q.l.s.ctr.delivered.Add(1)
		if m.deliveries > 1 {
			q.l.s.ctr.redelivered.Add(1)
		}
		m.leasedHere = true
		m.nonce = rand.Uint64() | 1
		took[len(took)-1].nonce = m.nonce
		m.deadline = now.Add(lease)
		m.state = stInFlight
		q.inFlight++
		heap.Push(&q.leases, leaseEntry{deadline: m.deadline, id: m.id, nonce: m.nonce})
		ds = append(ds, Delivery{
			ID:            formatID(m.id),
			Receipt:       receipt{epoch: q.l.epoch, id: m.id, nonce: m.nonce}.String(),
			Body:          m.body,
			ContentType:   m.contentType,
			Headers:       m.headers,
			DeliveryCount: int(m.deliveries),
			Redelivered:   m.deliveries > 1,
			Priority:      m.priority,
			PublishedAt:   time.UnixMilli(m.createdAt),
			LeaseExpires:  m.deadline,
			Large:         m.large,
			Size:          m.size,
		})
	}
	return ds, took, drop, dead
}

// putBack undoes deliveries whose receiver went away before getting them.
func (q *queue) putBack(took []leased) {
	q.mu.Lock()
	defer q.mu.Unlock()
	nowMs := q.l.now().UnixMilli()
	n := 0
	for _, t := range took {
		m := t.m
		if m.state != stInFlight || m.nonce != t.nonce {
			continue
		}
		q.unlinkLocked(m)
		m.deliveries--
		m.nonce, m.leasedHere = t.prevNonce, t.prevLeased
		q.requeueLocked(m, nowMs)
		n++
	}
	q.wakeLocked(n)
}

// dispose deletes expired messages and dead-letters those past max_deliveries.
func (q *queue) dispose(drop, dead []*msg) {
	if len(drop) > 0 {
		n, err := q.deleteMsgs(context.Background(), drop)
		q.l.s.ctr.expired.Add(n)
		if err != nil {
			q.l.log.Warn("deleting expired messages failed", "queue", q.name, "error", err)
		}
	}
	if len(dead) > 0 {
		q.l.deadLetter(q, dead)
	}
}

// ackTarget is one receipt an ack is acting on.
type ackTarget struct {
	i   int
	m   *msg              // in memory
	row *sqlstore.Message // found in the store (a receipt of an older epoch)
	id  int64
}

// ack implements Server.Ack.
func (q *queue) ack(ctx context.Context, receipts []string) ([]ReceiptResult, error) {
	l := q.l
	res := make([]ReceiptResult, len(receipts))
	rs := make([]receipt, len(receipts))
	for i, s := range receipts {
		res[i].Receipt = s
		r, err := parseReceipt(s)
		if err != nil {
			res[i].Err = err
			continue
		}
		rs[i] = r
	}
	var mem, check []ackTarget
	q.mu.Lock()
	if q.deleting || q.deleted {
		q.mu.Unlock()
		return nil, q.notFound()
	}
	for i, r := range rs {
		if res[i].Err != nil {
			continue
		}
		m := q.index[r.id]
		switch {
		case r.epoch == l.epoch:
			switch {
			case m == nil || m.state == stBusy || !m.leasedHere:
				res[i].Err = receiptErr(receipts[i], ErrReceiptUnknown)
			case m.nonce != r.nonce:
				res[i].Err = receiptErr(receipts[i], ErrReceiptStale)
			default: // this delivery's receipt; its lease may have ended, but nobody received the message since
				q.unlinkLocked(m)
				mem = append(mem, ackTarget{i: i, m: m, id: m.id})
			}
		case r.epoch < l.epoch:
			_, deleting := q.pendingDeletes[r.id]
			switch {
			case m != nil && m.state == stBusy, deleting:
				res[i].Err = receiptErr(receipts[i], ErrReceiptUnknown)
			case m != nil && m.leasedHere:
				res[i].Err = receiptErr(receipts[i], ErrReceiptStale)
			case m != nil:
				q.unlinkLocked(m)
				mem = append(mem, ackTarget{i: i, m: m, id: m.id})
			case q.allExhaustedLocked(): // the window holds every stored message
				res[i].Err = receiptErr(receipts[i], ErrReceiptUnknown)
			default:
				q.pendingDeletes[r.id] = struct{}{}
				check = append(check, ackTarget{i: i, id: r.id})
			}
		default:
			res[i].Err = receiptErr(receipts[i], ErrReceiptUnknown)
		}
	}
	q.mu.Unlock()

	// Receipts of an older live for messages past the window: ask the store, in one
	// read for all of them (after a takeover, consumers ack what the old live gave
	// them, up to 1000 receipts a call, while the new live's window is still filling).
	var found []ackTarget
	var gone []int64
	if len(check) > 0 {
		ids := make([]int64, len(check))
		for j, t := range check {
			ids[j] = t.id
		}
		rows, err := l.s.drv.MessagesByID(ctx, q.name, ids)
		stored := make(map[int64]*sqlstore.Message, len(rows))
		for j := range rows {
			stored[rows[j].ID] = &rows[j]
		}
		for _, t := range check {
			switch row := stored[t.id]; {
			case err != nil:
				res[t.i].Err = fmt.Errorf("server: receipt %q: %w: %w", receipts[t.i], ErrUnavailable, err)
				gone = append(gone, t.id)
			case row != nil:
				t.row = row
				found = append(found, t)
			default:
				res[t.i].Err = receiptErr(receipts[t.i], ErrReceiptUnknown)
				gone = append(gone, t.id)
			}
		}
	}

	b := &sqlstore.Batch{}
	for _, t := range mem {
		if t.m.persistent {
			b.MessageDeletes = append(b.MessageDeletes, sqlstore.MessageKey{Queue: q.name, ID: t.id, Large: t.m.large})
		}
	}
	for _, t := range found {
		b.MessageDeletes = append(b.MessageDeletes, sqlstore.MessageKey{Queue: q.name, ID: t.id, Large: t.row.Large})
	}
	var werr error
	if !b.Empty() {
		if werr = l.write(ctx, b); werr != nil {
			werr = fmt.Errorf("server: ack on queue %q: %w", q.name, werr)
		}
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	nowMs := q.l.now().UnixMilli()
	for _, id := range gone {
		delete(q.pendingDeletes, id)
	}
	woken := 0
	for _, t := range mem {
		if werr != nil && t.m.persistent {
			q.requeueLocked(t.m, nowMs) // its receipt stays valid until someone receives it again
			woken++
			res[t.i].Err = werr
			continue
		}
		q.forgetLocked(t.m)
		q.accountLocked(-1, -t.m.size)
		l.s.ctr.acked.Add(1)
	}
	for _, t := range found {
		delete(q.pendingDeletes, t.id)
		if werr != nil {
			res[t.i].Err = werr
			if q.coveredLocked(laneOf(t.row.DeliverAt), sqlstore.ScanKey{DeliverAt: t.row.DeliverAt, Priority: t.row.Priority, ID: t.id}) &&
				q.index[t.id] == nil && !q.deleted {
				q.addLocked(msgFromRow(t.row), nowMs)
				woken++
			}
			continue
		}
		q.accountLocked(-1, -t.row.Size)
		l.s.ctr.acked.Add(1)
	}
	q.wakeLocked(woken)
	return res, nil
}

// inFlightLocked finds the in-flight delivery a receipt names, or sets the receipt's
// error.
func (q *queue) inFlightLocked(s string, r receipt) (*msg, error) {
	m := q.index[r.id]
	switch {
	case r.epoch != q.l.epoch || m == nil || m.state == stBusy || !m.leasedHere:
		return nil, receiptErr(s, ErrReceiptUnknown)
	case m.nonce != r.nonce:
		return nil, receiptErr(s, ErrReceiptStale)
	case m.state != stInFlight:
		return nil, receiptErr(s, ErrReceiptUnknown) // its lease ended
	}
	return m, nil
}

// nack implements Server.Nack.
func (q *queue) nack(ctx context.Context, receipts []string, delay time.Duration) ([]ReceiptResult, error) {
	res := make([]ReceiptResult, len(receipts))
	var updates []sqlstore.MessageUpdate
	var dead []*msg
	q.mu.Lock()
	if q.deleting || q.deleted {
		q.mu.Unlock()
		return nil, q.notFound()
	}
	now := q.l.now()
	nowMs := now.UnixMilli()
	woken := 0
	for i, s := range receipts {
		res[i].Receipt = s
		r, err := parseReceipt(s)
		if err != nil {
			res[i].Err = err
			continue
		}
		m, err := q.inFlightLocked(s, r)
		if err != nil {
			res[i].Err = err
			continue
		}
		q.unlinkLocked(m)
		q.l.s.ctr.nacked.Add(1)
		if md := q.cfg.MaxDeliveries; md > 0 && int(m.deliveries) >= md {
			dead = append(dead, m)
			continue
		}
		if delay > 0 {
			q.rescheduleLocked(m, now.Add(delay).UnixMilli())
		}
		q.requeueLocked(m, nowMs)
		woken++
		if m.persistent {
			updates = append(updates, sqlstore.MessageUpdate{Queue: q.name, ID: m.id, DeliveryCount: m.deliveries, DeliverAt: m.deliverAt})
		}
	}
	q.wakeLocked(woken)
	q.mu.Unlock()
	if len(updates) > 0 {
		if err := q.l.write(ctx, &sqlstore.Batch{MessageUpdates: updates}); err != nil {
			q.l.log.Warn("persisting delivery counts failed", "queue", q.name, "error", err)
		}
	}
	if len(dead) > 0 {
		q.l.deadLetter(q, dead)
	}
	return res, nil
}

// extend implements Server.Extend.
func (q *queue) extend(receipts []string, lease time.Duration) []ReceiptResult {
	res := make([]ReceiptResult, len(receipts))
	q.mu.Lock()
	defer q.mu.Unlock()
	deadline := q.l.now().Add(lease)
	for i, s := range receipts {
		res[i].Receipt = s
		r, err := parseReceipt(s)
		if err != nil {
			res[i].Err = err
			continue
		}
		m, err := q.inFlightLocked(s, r)
		if err != nil {
			res[i].Err = err
			continue
		}
		m.deadline = deadline
		heap.Push(&q.leases, leaseEntry{deadline: deadline, id: m.id, nonce: m.nonce})
	}
	return res
}
