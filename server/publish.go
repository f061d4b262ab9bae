package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync/atomic"

	"github.com/tablemq/tablemq/sqlstore"
)

// addressDupScope is the queue column of the duplicate rows of an address: "@" cannot
// start a queue name, so the two never collide.
func addressDupScope(address string) string { return "@" + address }

func formatID(id int64) string { return strconv.FormatInt(id, 10) }

func (l *live) publishAddress(ctx context.Context, name string, msgs []Message) ([]PublishResult, error) {
	l.metaMu.RLock()
	a := l.addresses[name]
	var qs []*queue
	if a != nil {
		for _, n := range a.queues {
			if q := l.queues[n]; q != nil {
				qs = append(qs, q)
			}
		}
	}
	l.metaMu.RUnlock()
	if a == nil {
		return nil, fmt.Errorf("server: address %q: %w", name, ErrAddressNotFound)
	}
	if len(qs) == 0 {
		return nil, fmt.Errorf("server: address %q has no bound queue, nothing was stored: %w", name, ErrConflict)
	}
	var rr *atomic.Uint64
	if a.routing == Anycast {
		rr = &a.rr
	}
	return l.publish(ctx, l.dedupFor(addressDupScope(name)), addressDupScope(name), msgs, qs, rr)
}

// pubItem is one message of a publish call that is being stored.
type pubItem struct {
	i     int // index in the call
	m     *Message
	id    int64
	entry *dupEntry // owned idempotency entry, or nil
	rows  []*msg    // one per target queue
	qs    []*queue
	skip  bool // answered already (a duplicate, or its key failed)
}

// publish stores msgs into targets: every target, or one per message round robin when
// rr is set. dd and dupScope are the idempotency scope (a queue or an address). All
// persistent messages of the call are committed in one Write; only then are they put
// in memory and receivers woken.
func (l *live) publish(ctx context.Context, dd *dedupSet, dupScope string, msgs []Message, targets []*queue, rr *atomic.Uint64) ([]PublishResult, error) {
	for _, q := range targets {
		if err := q.ensureLoaded(ctx); err != nil {
			return nil, err
		}
	}
	var begun []*queue
	defer func() {
		for _, q := range begun {
			q.endPublish()
		}
	}()
	for _, q := range targets {
		if err := q.beginPublish(); err != nil {
			return nil, err
		}
		begun = append(begun, q)
	}

	res := make([]PublishResult, len(msgs))
	now := l.now()
	nowMs := now.UnixMilli()
	var items []*pubItem
	firstByKey := map[string]*pubItem{}
	dupOf := map[int]int{} // call index -> call index of the first message with its key
	for i := range msgs {
		m := &msgs[i]
		if err := m.validate(l.cfg.MaxMessageSize); err != nil {
			res[i].Err = err
			continue
		}
		it := &pubItem{i: i, m: m}
		if key := m.IdempotencyKey; key != "" {
			if first, ok := firstByKey[key]; ok {
				dupOf[i] = first.i
				continue
			}
			firstByKey[key] = it
		}
		items = append(items, it)
	}
	// Claim the keys in sorted order, so that two calls claiming the same keys cannot
	// wait for each other in a cycle.
	keys := slices.Sorted(maps.Keys(firstByKey))
	for _, key := range keys {
		it := firstByKey[key]
		i := it.i
		it.skip = true
		e, owner, err := dd.claim(ctx, key)
		if err != nil {
			res[i].Err = fmt.Errorf("server: idempotency key %q: %w", key, err)
			continue
		}
		if !owner {
			res[i] = PublishResult{ID: formatID(e.id), Duplicate: true}
			continue
		}
		if l.keysAllKnown() {
			it.entry = e
			it.skip = false
			continue
		}
		id, err := l.s.drv.DuplicateGet(ctx, &sqlstore.DuplicateGetParams{Queue: dupScope, Key: key})
		if err == nil {
			dd.resolve(key, e, id, true, l.now())
			res[i] = PublishResult{ID: formatID(id), Duplicate: true}
			continue
		}
		if !errors.Is(err, sqlstore.ErrNotFound) {
			dd.resolve(key, e, 0, false, l.now())
			res[i].Err = fmt.Errorf("server: look up idempotency key %q: %w: %w", key, ErrUnavailable, err)
			continue
		}
		it.entry = e
		it.skip = false
	}
	kept := items[:0]
	for _, it := range items {
		if it.skip {
			continue
		}
		id, err := l.nextID()
		if err != nil {
			if it.entry != nil {
				dd.resolve(it.m.IdempotencyKey, it.entry, 0, false, l.now())
			}
			res[it.i].Err = err
			continue
		}
		it.id = id
		kept = append(kept, it)
	}
	items = kept

	// Route and build the rows.
	batch := &sqlstore.Batch{}
	for _, it := range items {
		if rr != nil {
			it.qs = []*queue{targets[(rr.Add(1)-1)%uint64(len(targets))]}
		} else {
			it.qs = targets
		}
		prio := PriorityDefault
		if it.m.Priority != nil {
			prio = *it.m.Priority
		}
		for _, q := range it.qs {
			ttl := it.m.TTL
			if ttl == 0 {
				ttl = q.cfg.TTL
			}
			r := &msg{
				id:          it.id,
				priority:    prio,
				createdAt:   nowMs,
				contentType: it.m.ContentType,
				headers:     it.m.Headers,
				body:        it.m.Body,
				persistent:  !it.m.NonPersistent,
			}
			if it.m.Delay > 0 {
				r.deliverAt = now.Add(it.m.Delay).UnixMilli()
			}
			if ttl > 0 {
				r.expiresAt = now.Add(ttl).UnixMilli()
			}
			it.rows = append(it.rows, r)
			if r.persistent {
				batch.MessageInserts = append(batch.MessageInserts, r.row(q.name))
			}
		}
		if it.entry != nil && !it.m.NonPersistent {
			batch.DuplicateInserts = append(batch.DuplicateInserts, sqlstore.Duplicate{
				Queue: dupScope, Key: it.m.IdempotencyKey, MessageID: it.id, CreatedAt: nowMs,
			})
		}
	}

	// Register the persistent ids so refills running during the write account for them.
	perQueue := map[*queue][]*msg{}
	for _, it := range items {
		for j, q := range it.qs {
			perQueue[q] = append(perQueue[q], it.rows[j])
		}
	}
	for q, rows := range perQueue {
		q.mu.Lock()
		for _, r := range rows {
			if r.persistent {
				q.uncommitted[r.id] = false
			}
		}
		q.mu.Unlock()
	}

	var werr error
	if !batch.Empty() {
		werr = l.write(ctx, batch)
		if werr != nil {
			werr = fmt.Errorf("server: publish: %w", werr)
			if len(batch.DuplicateInserts) > 0 {
				l.keysMayBeUnknown()
			}
		}
	}

	nowMs = l.now().UnixMilli()
	for q, rows := range perQueue {
		var pers []*msg
		q.mu.Lock()
		woken := 0
		for _, r := range rows {
			if r.persistent {
				pers = append(pers, r)
				continue
			}
			if !q.deleted && !q.deleting {
				q.addLocked(r, nowMs)
				q.depth++
				woken++
			}
		}
		woken += q.committedLocked(pers, werr == nil, nowMs)
		q.wakeLocked(woken)
		q.mu.Unlock()
	}

	for _, it := range items {
		ok := werr == nil || it.m.NonPersistent
		if it.entry != nil {
			dd.resolve(it.m.IdempotencyKey, it.entry, it.id, ok, l.now())
		}
		if ok {
			res[it.i] = PublishResult{ID: formatID(it.id)}
			l.s.ctr.published.Add(int64(len(it.rows)))
		} else {
			res[it.i].Err = werr
		}
	}
	for i, j := range dupOf {
		if res[j].Err != nil {
			res[i].Err = res[j].Err
		} else {
			res[i] = PublishResult{ID: res[j].ID, Duplicate: true}
		}
	}
	for _, r := range res {
		if r.Duplicate {
			l.s.ctr.duplicates.Add(1)
		}
	}
	return res, nil
}
