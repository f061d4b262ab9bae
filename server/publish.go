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

func (l *live) publishQueue(ctx context.Context, name string, msgs []Message) ([]PublishResult, error) {
	q, err := l.queue(name)
	if err != nil {
		return nil, err
	}
	sc := pubScope{name: fmt.Sprintf("queue %q", name), limits: q.cfg.Limits, logKey: name}
	return l.publish(ctx, l.dedupFor(name), name, msgs, []*queue{q}, sc)
}

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
	sc := pubScope{name: fmt.Sprintf("address %q", name), limits: a.limits}
	if a.routing == Anycast {
		sc.rr = &a.rr
	} else {
		sc.logKey = addressDupScope(name)
	}
	return l.publish(ctx, l.dedupFor(addressDupScope(name)), addressDupScope(name), msgs, qs, sc)
}

// pubScope says where a publish call goes and which limits apply.
type pubScope struct {
	name   string // for errors: `queue "x"` or `address "y"`
	limits Limits
	// rr, when set, routes each message to one target round robin (anycast);
	// otherwise every message goes to every target.
	rr *atomic.Uint64
	// logKey is the page log of a multicast address or of a queue; "" for anycast,
	// whose messages page into their target queue's own log.
	logKey string
}

// pubItem is one message of a publish call that is being stored.
type pubItem struct {
	i     int // index in the call
	m     *Message
	id    int64
	entry *dupEntry // owned idempotency entry, or nil
	rows  []*msg    // one per target queue
	qs    []*queue
	skip  bool     // answered already (a duplicate, or its key failed)
	log   *pageLog // the page log it is appended to, or nil
}

// publish stores msgs into targets (see pubScope). dd and dupScope are the
// idempotency scope (a queue or an address). All messages of the call are committed
// in one Write; only then are they put in memory (or counted in their page log) and
// receivers woken.
func (l *live) publish(ctx context.Context, dd *dedupSet, dupScope string, msgs []Message, targets []*queue, sc pubScope) ([]PublishResult, error) {
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
	// fail answers an item that will not be stored.
	fail := func(it *pubItem, r PublishResult) {
		if it.entry != nil {
			dd.resolve(it.m.IdempotencyKey, it.entry, 0, false, l.now())
		}
		res[it.i] = r
	}

	// The address-full policy, before anything is written.
	var scopeLog *pageLog
	if sc.logKey != "" {
		scopeLog = l.logIf(sc.logKey)
	}
	page, drop, aerr := false, false, error(nil)
	if len(items) > 0 {
		paging := scopeLog != nil && scopeLog.paging.Load()
		page, drop, aerr = l.admit(ctx, sc.name, sc.limits, targets, paging)
	}
	kept := items[:0]
	for _, it := range items {
		switch {
		case it.skip:
			continue
		case aerr != nil:
			fail(it, PublishResult{Err: aerr})
			continue
		case drop:
			fail(it, PublishResult{Dropped: true})
			l.s.ctr.fullDropped.Add(1)
			continue
		}
		if sc.rr != nil {
			it.qs = []*queue{targets[(sc.rr.Add(1)-1)%uint64(len(targets))]}
		} else {
			it.qs = targets
		}
		// Large messages are not paged: their bodies are stored once already.
		if it.m.large == nil {
			_, policy := sc.limits.resolve(&l.cfg)
			switch {
			case sc.logKey != "" && page:
				it.log = l.logFor(sc.logKey)
			case sc.logKey == "" && (page || policy == PolicyPage && ownPaging(l, it.qs[0])):
				it.log = l.logFor(it.qs[0].name)
			}
		}
		var id int64
		var err error
		switch {
		case it.m.large != nil:
			id = it.m.large.id
		case it.log != nil:
			id, err = l.appendBegin(it.log)
		default:
			id, err = l.nextID()
		}
		if err != nil {
			fail(it, PublishResult{Err: err})
			continue
		}
		it.id = id
		kept = append(kept, it)
	}
	items = kept

	// Build the rows.
	batch := &sqlstore.Batch{}
	for _, it := range items {
		prio := PriorityDefault
		if it.m.Priority != nil {
			prio = *it.m.Priority
		}
		var deliverAt int64
		if it.m.Delay > 0 {
			deliverAt = now.Add(it.m.Delay).UnixMilli()
		}
		if it.log != nil {
			var expiresAt int64 // 0: each reading queue applies its own TTL
			if it.m.TTL > 0 {
				expiresAt = now.Add(it.m.TTL).UnixMilli()
			}
			batch.PageInserts = append(batch.PageInserts, sqlstore.PageRow{
				Log: it.log.key, ID: it.id, Priority: int16(prio), DeliverAt: deliverAt, ExpiresAt: expiresAt,
				CreatedAt: nowMs, ContentType: it.m.ContentType, Headers: it.m.Headers, Body: it.m.Body,
				Size: int64(len(it.m.Body)),
			})
		} else {
			for _, q := range it.qs {
				ttl := it.m.TTL
				if ttl == 0 {
					ttl = q.cfg.TTL
				}
				r := &msg{
					id:          it.id,
					priority:    prio,
					deliverAt:   deliverAt,
					createdAt:   nowMs,
					contentType: it.m.ContentType,
					headers:     it.m.Headers,
					body:        it.m.Body,
					size:        int64(len(it.m.Body)),
					persistent:  !it.m.NonPersistent,
				}
				if lg := it.m.large; lg != nil {
					r.large, r.size, r.body, r.persistent = true, lg.size, nil, true
				}
				if ttl > 0 {
					r.expiresAt = now.Add(ttl).UnixMilli()
				}
				it.rows = append(it.rows, r)
				if r.persistent {
					batch.MessageInserts = append(batch.MessageInserts, r.row(q.name))
				}
			}
		}
		if it.entry != nil && (!it.m.NonPersistent || it.log != nil) {
			batch.DuplicateInserts = append(batch.DuplicateInserts, sqlstore.Duplicate{
				Queue: dupScope, Key: it.m.IdempotencyKey, MessageID: it.id, CreatedAt: nowMs,
			})
		}
	}

	// Register the persistent ids so refills running during the write account for them.
	perQueue := map[*queue][]*msg{}
	perLog := map[*pageLog][]int64{}
	for _, it := range items {
		if it.log != nil {
			perLog[it.log] = append(perLog[it.log], it.id)
			continue
		}
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
				q.accountLocked(1, r.size)
				woken++
			}
		}
		woken += q.committedLocked(pers, werr == nil, nowMs)
		q.wakeLocked(woken)
		q.mu.Unlock()
	}
	for lg, ids := range perLog {
		l.appendEnd(lg, ids, werr == nil)
	}

	for _, it := range items {
		ok := werr == nil || (it.m.NonPersistent && it.log == nil)
		if it.entry != nil {
			dd.resolve(it.m.IdempotencyKey, it.entry, it.id, ok, l.now())
		}
		if ok {
			res[it.i] = PublishResult{ID: formatID(it.id)}
			l.s.ctr.published.Add(int64(max(len(it.rows), 1)))
		} else {
			res[it.i].Err = werr
		}
	}
	for i, j := range dupOf {
		switch {
		case res[j].Err != nil:
			res[i].Err = res[j].Err
		case res[j].Dropped:
			res[i].Dropped = true
		default:
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

// ownPaging reports whether a queue's own page log is paging.
func ownPaging(l *live, q *queue) bool {
	lg := l.logIf(q.name)
	return lg != nil && lg.paging.Load()
}
