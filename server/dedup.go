package server

import (
	"context"
	"sync"
	"time"
)

// dupEntry is one idempotency key of a scope (a queue or an address).
type dupEntry struct {
	id      int64
	created time.Time
	done    chan struct{} // closed once settled
	settled bool          // the publish owning the key finished: id is valid
}

// dedupSet remembers the idempotency keys of one scope in front of the store's
// duplicate table. Its mutex is a leaf: nothing else is locked while holding it.
type dedupSet struct {
	mu sync.Mutex
	m  map[string]*dupEntry
}

// dedupFor returns the idempotency scope named scope, creating it.
func (l *live) dedupFor(scope string) *dedupSet {
	l.metaMu.RLock()
	d := l.dedups[scope]
	l.metaMu.RUnlock()
	if d != nil {
		return d
	}
	l.metaMu.Lock()
	defer l.metaMu.Unlock()
	if d = l.dedups[scope]; d == nil {
		d = &dedupSet{m: map[string]*dupEntry{}}
		l.dedups[scope] = d
	}
	return d
}

// claim returns the entry of key. owner is true when the caller created it and must
// settle it with resolve; otherwise the entry is settled (a duplicate). Concurrent
// claims of a pending key wait for its outcome.
func (d *dedupSet) claim(ctx context.Context, key string) (e *dupEntry, owner bool, err error) {
	for {
		d.mu.Lock()
		e := d.m[key]
		if e == nil {
			e = &dupEntry{done: make(chan struct{})}
			d.m[key] = e
			d.mu.Unlock()
			return e, true, nil
		}
		if e.settled {
			d.mu.Unlock()
			return e, false, nil
		}
		ch := e.done
		d.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

// resolve settles an owned entry: with ok it records id, otherwise it forgets the
// key so that a waiting or later publish tries again.
func (d *dedupSet) resolve(key string, e *dupEntry, id int64, ok bool, now time.Time) {
	d.mu.Lock()
	if ok {
		e.id = id
		e.created = now
		e.settled = true
	} else if d.m[key] == e {
		delete(d.m, key)
	}
	close(e.done)
	d.mu.Unlock()
}

// expire forgets settled keys created before cutoff.
func (d *dedupSet) expire(cutoff time.Time) {
	d.mu.Lock()
	for k, e := range d.m {
		if e.settled && e.created.Before(cutoff) {
			delete(d.m, k)
		}
	}
	d.mu.Unlock()
}
