package server

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tablemq/tablemq/sqlstore"
)

// Page logs. See the package documentation ("Sizes and paging").

func (p FullPolicy) validate() error {
	switch p {
	case "", PolicyPage, PolicyBlock, PolicyFail, PolicyDrop:
		return nil
	}
	return invalidf("address_full_policy %q: must be one of PAGE, BLOCK, FAIL, DROP", string(p))
}

func (lim Limits) validate() error {
	if lim.MaxSizeBytes < -1 {
		return invalidf("max_size_bytes %d: must be -1 (no limit), 0 (the broker default) or positive", lim.MaxSizeBytes)
	}
	return lim.FullPolicy.validate()
}

// resolve fills the broker defaults in: a max of -1 means no limit.
func (lim Limits) resolve(cfg *Config) (maxBytes int64, policy FullPolicy) {
	maxBytes, policy = lim.MaxSizeBytes, lim.FullPolicy
	if maxBytes == 0 {
		maxBytes = cfg.MaxSizeBytes
	}
	if maxBytes <= 0 {
		maxBytes = -1
	}
	if policy == "" {
		policy = cfg.FullPolicy
	}
	return maxBytes, policy
}

// pageLog is one page log: the overflow of a multicast address (key "@" + address) or
// of a queue (key: the queue name; the queue's direct publishes and its share of
// anycast addresses). Rows are appended by publishes and read by each reading queue
// through its own pageCursor.
type pageLog struct {
	key      string
	appended atomic.Int64 // rows ever appended and committed (the CounterPages counter)
	paging   atomic.Bool  // publishes go to the log: some reader has not caught up

	mu       sync.Mutex
	inflight map[int64]struct{} // ids of appends being written
	trimmed  int64              // rows with id <= trimmed were deleted by this live
	trimming bool
}

// bound returns the smallest id of an append being written, or MaxInt64: a reader may
// move its cursor only below it, since that append can still commit.
func (lg *pageLog) bound() int64 {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	b := int64(math.MaxInt64)
	for id := range lg.inflight {
		b = min(b, id)
	}
	return b
}

// pageCursor is a queue's position in one page log, stored as a KindCursor binding
// row. Guarded by the queue's mu.
type pageCursor struct {
	log      *pageLog
	After    int64 `json:"after"`    // every row with id <= After was read into the queue
	Consumed int64 `json:"consumed"` // rows of the log read into the queue (or skipped)
	stale    bool  // a write of the cursor failed: it may have committed; reread first
}

func (c *pageCursor) row(queue string) sqlstore.Binding {
	js, _ := json.Marshal(c)
	return sqlstore.Binding{Kind: sqlstore.KindCursor, Name: queue, Target: c.log.key, Config: string(js)}
}

func (c *pageCursor) pending() int64 { return max(c.log.appended.Load()-c.Consumed, 0) }

// logFor returns the page log of key, creating it.
func (l *live) logFor(key string) *pageLog {
	l.logsMu.Lock()
	defer l.logsMu.Unlock()
	lg := l.logs[key]
	if lg == nil {
		lg = &pageLog{key: key, inflight: map[int64]struct{}{}}
		l.logs[key] = lg
	}
	return lg
}

// logIf returns the page log of key, or nil.
func (l *live) logIf(key string) *pageLog {
	l.logsMu.Lock()
	defer l.logsMu.Unlock()
	return l.logs[key]
}

func (l *live) dropLog(key string) {
	l.logsMu.Lock()
	delete(l.logs, key)
	l.logsMu.Unlock()
}

// readersOf returns the queues reading a page log.
func (l *live) readersOf(key string) []*queue {
	l.metaMu.RLock()
	defer l.metaMu.RUnlock()
	if len(key) > 0 && key[0] == '@' {
		a := l.addresses[key[1:]]
		if a == nil {
			return nil
		}
		out := make([]*queue, 0, len(a.queues))
		for _, n := range a.queues {
			if q := l.queues[n]; q != nil {
				out = append(out, q)
			}
		}
		return out
	}
	if q := l.queues[key]; q != nil {
		return []*queue{q}
	}
	return nil
}

// ensureCursors gives every reader of lg a cursor (a reader bound before the log's
// first append starts at its head).
func (l *live) ensureCursors(lg *pageLog) {
	for _, q := range l.readersOf(lg.key) {
		q.mu.Lock()
		if q.cursors[lg.key] == nil && !q.deleted {
			q.cursors[lg.key] = &pageCursor{log: lg}
		}
		q.mu.Unlock()
	}
}

// pagedLocked returns how many messages wait in page logs for the queue.
func (q *queue) pagedLocked() int64 {
	var n int64
	for _, c := range q.cursors {
		n += c.pending()
	}
	return n
}

// spaceFreed wakes publishers blocked on a full address. It costs one atomic load
// when nobody is blocked.
func (l *live) spaceFreed() {
	if l.spaceCh.Load() == nil {
		return
	}
	if p := l.spaceCh.Swap(nil); p != nil {
		close(*p)
	}
}

// spaceWait returns a channel closed the next time sizes go down.
func (l *live) spaceWait() <-chan struct{} {
	for {
		if p := l.spaceCh.Load(); p != nil {
			return *p
		}
		ch := make(chan struct{})
		if l.spaceCh.CompareAndSwap(nil, &ch) {
			return ch
		}
	}
}

// sizeOf returns the size of a publish scope: the bytes of the queues it fills.
func sizeOf(qs []*queue) int64 {
	var n int64
	for _, q := range qs {
		q.mu.Lock()
		n += q.bytes
		q.mu.Unlock()
	}
	return n
}

// fullCheck reports whether a publish scope (its limits, and the queues whose bytes
// make its size) is full: its size, or the global size, reached its limit.
func (l *live) fullCheck(maxBytes int64, qs []*queue) bool {
	if g := l.cfg.GlobalMaxSize; g > 0 && l.global.Load() >= g {
		return true
	}
	return maxBytes > 0 && sizeOf(qs) >= maxBytes
}

// admit applies the full policy of a publish scope before anything is written. It
// returns page=true when the publish must go to the page log, drop=true when it must
// be dropped, or an error (ErrAddressFull, ErrPublishBlocked, a context error).
// paging says whether the scope's log is paging already (then PolicyPage pages, to
// keep the order).
func (l *live) admit(ctx context.Context, name string, lim Limits, qs []*queue, paging bool) (page, drop bool, err error) {
	maxBytes, policy := lim.resolve(&l.cfg)
	if policy == PolicyPage && paging {
		return true, false, nil
	}
	if maxBytes <= 0 && l.cfg.GlobalMaxSize <= 0 {
		return false, false, nil
	}
	if !l.fullCheck(maxBytes, qs) {
		return false, false, nil
	}
	switch policy {
	case PolicyPage:
		return true, false, nil
	case PolicyDrop:
		return false, true, nil
	case PolicyFail:
		l.s.ctr.fullRefused.Add(1)
		return false, false, fmt.Errorf("server: %s is full (max_size_bytes %d, global-max-size %d): %w", name, maxBytes, l.cfg.GlobalMaxSize, ErrAddressFull)
	}
	// PolicyBlock: wait for room.
	t := time.NewTimer(l.cfg.BlockTimeout)
	defer t.Stop()
	for {
		ch := l.spaceWait()
		if !l.fullCheck(maxBytes, qs) {
			return false, false, nil
		}
		select {
		case <-ch:
		case <-t.C:
			l.s.ctr.fullRefused.Add(1)
			return false, false, fmt.Errorf("server: %s stayed full for %s: %w", name, l.cfg.BlockTimeout, ErrPublishBlocked)
		case <-ctx.Done():
			return false, false, fmt.Errorf("server: publish to %s: %w", name, ctx.Err())
		case <-l.stopping:
			return false, false, fmt.Errorf("server: publish to %s: %w", name, ErrNotLive)
		}
	}
}

// appendBegin allocates an id for an append to lg and registers it as in flight; the
// log pages from now on.
func (l *live) appendBegin(lg *pageLog) (int64, error) {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	id, err := l.nextID()
	if err != nil {
		return 0, err
	}
	lg.inflight[id] = struct{}{}
	lg.paging.Store(true)
	return id, nil
}

// appendEnd ends appends to lg: committed ones count, and the readers are woken.
func (l *live) appendEnd(lg *pageLog, ids []int64, ok bool) {
	lg.mu.Lock()
	for _, id := range ids {
		delete(lg.inflight, id)
	}
	if ok {
		lg.appended.Add(int64(len(ids)))
		l.s.ctr.paged.Add(int64(len(ids)))
	}
	lg.mu.Unlock()
	if !ok {
		// The append may have committed anyway: readers find it (their cursors only
		// move past committed rows), and the count is exact again at the next
		// activation.
		l.updatePaging(lg)
		return
	}
	l.ensureCursors(lg)
	for _, q := range l.readersOf(lg.key) {
		q.mu.Lock()
		q.wakeLocked(1)
		q.mu.Unlock()
	}
}

// updatePaging clears lg's paging state once every reader caught up, and trims the
// rows every reader has passed.
func (l *live) updatePaging(lg *pageLog) {
	appended := lg.appended.Load()
	upTo := int64(math.MaxInt64)
	caughtUp := true
	readers := l.readersOf(lg.key)
	for _, q := range readers {
		q.mu.Lock()
		c := q.cursors[lg.key]
		if c == nil {
			upTo = 0
			caughtUp = caughtUp && appended == 0
		} else {
			upTo = min(upTo, c.After)
			caughtUp = caughtUp && c.Consumed >= appended
		}
		q.mu.Unlock()
	}
	if len(readers) == 0 {
		upTo = 0
	}
	lg.mu.Lock()
	if caughtUp && len(lg.inflight) == 0 && lg.appended.Load() == appended {
		lg.paging.Store(false)
	}
	trim := upTo > lg.trimmed && upTo != math.MaxInt64 && !lg.trimming
	if trim {
		lg.trimming = true
	}
	lg.mu.Unlock()
	if trim {
		go l.trim(lg, upTo)
	}
}

// trim deletes the rows of lg every reader has passed, in bulk.
func (l *live) trim(lg *pageLog, upTo int64) {
	err := l.write(context.Background(), &sqlstore.Batch{PageTrims: []sqlstore.PageTrim{{Log: lg.key, UpTo: upTo}}})
	lg.mu.Lock()
	lg.trimming = false
	if err == nil && upTo > lg.trimmed {
		lg.trimmed = upTo
	}
	lg.mu.Unlock()
	if err != nil {
		if !isNotLive(err) {
			l.log.Warn("trimming a page log failed; retried after the next read", "log", lg.key, "error", err)
		}
		return
	}
	l.updatePaging(lg) // readers may have moved on while this trim ran
}

// depageLocked moves the next rows of the queue's page logs into the queue, in one
// transaction with the cursors. It is called with mu held when the ready lane of the
// window is exhausted and messages wait in page logs; it releases mu for the I/O and
// returns with it held. It shares the refill slot (scanning).
func (q *queue) depageLocked(ctx context.Context) error {
	if q.scanning != nil {
		return q.awaitScanLocked(ctx)
	}
	l := q.l
	for _, c := range q.cursors {
		if c.stale { // a cursor write failed but may have committed: reread them first
			q.mu.Unlock()
			err := q.reloadCursors(ctx)
			q.mu.Lock()
			if err != nil {
				return err
			}
			break
		}
	}
	if q.scanning != nil || q.deleting || q.deleted {
		return nil // the caller loops
	}
	type job struct {
		c               *pageCursor
		after, consumed int64
	}
	var jobs []job
	for _, c := range q.cursors {
		if c.pending() > 0 {
			jobs = append(jobs, job{c: c, after: c.After, consumed: c.Consumed})
		}
	}
	if len(jobs) == 0 {
		return nil
	}
	ch := make(chan struct{})
	q.scanning = ch
	limit := max(q.refillLimitLocked()/len(jobs), 1)
	q.mu.Unlock()

	done := func() {
		q.scanning = nil
		close(ch)
		q.settleLateLocked(l.now().UnixMilli())
	}
	nowMs := l.now().UnixMilli()
	var ms []*msg
	b := &sqlstore.Batch{}
	type moved struct {
		c               *pageCursor
		after, consumed int64
	}
	var mv []moved
	for _, j := range jobs {
		bound := j.c.log.bound()
		rows, err := l.s.drv.PageScan(ctx, &sqlstore.PageScanParams{Log: j.c.log.key, AfterID: j.after, Limit: limit})
		if err != nil {
			q.mu.Lock()
			done()
			return fmt.Errorf("server: read page log %q for queue %q: %w: %w", j.c.log.key, q.name, ErrUnavailable, err)
		}
		var n, after int64 = 0, j.after
		for i := range rows {
			r := &rows[i]
			if r.ID >= bound {
				break
			}
			m := &msg{
				id: r.ID, priority: int(r.Priority), deliverAt: r.DeliverAt, expiresAt: r.ExpiresAt,
				createdAt: r.CreatedAt, contentType: r.ContentType, headers: r.Headers, body: r.Body,
				size: r.Size, large: r.Large, persistent: true,
			}
			if m.expiresAt == 0 && q.cfg.TTL > 0 {
				m.expiresAt = r.CreatedAt + q.cfg.TTL.Milliseconds()
			}
			ms = append(ms, m)
			b.MessageInserts = append(b.MessageInserts, m.row(q.name))
			n++
			after = r.ID
		}
		if n == 0 {
			if len(rows) == 0 && bound == math.MaxInt64 {
				// Nothing left in the store for this cursor: the count was off (an
				// append that failed but committed is counted at the next
				// activation). Catch up.
				q.mu.Lock()
				j.c.Consumed = j.c.log.appended.Load()
				q.mu.Unlock()
			}
			continue
		}
		nc := pageCursor{log: j.c.log, After: after, Consumed: j.consumed + n}
		b.BindingPuts = append(b.BindingPuts, nc.row(q.name))
		mv = append(mv, moved{c: j.c, after: after, consumed: j.consumed + n})
	}
	if len(ms) == 0 {
		q.mu.Lock()
		done()
		return nil
	}
	q.mu.Lock()
	for _, m := range ms {
		q.uncommitted[m.id] = false
	}
	q.mu.Unlock()
	err := l.write(ctx, b)
	q.mu.Lock()
	if err == nil {
		for _, v := range mv {
			v.c.After, v.c.Consumed, v.c.stale = v.after, v.consumed, false
		}
		l.s.ctr.depaged.Add(int64(len(ms)))
	} else {
		for _, v := range mv {
			v.c.stale = true
		}
	}
	// The depaged messages were counted as paged; committedLocked counts them as
	// messages of the queue now.
	woken := q.committedLocked(ms, err == nil, nowMs)
	done()
	q.wakeLocked(woken)
	if err != nil {
		return fmt.Errorf("server: move paged messages into queue %q: %w", q.name, err)
	}
	logs := make([]*pageLog, 0, len(mv))
	for _, v := range mv {
		logs = append(logs, v.c.log)
	}
	q.mu.Unlock()
	for _, lg := range logs {
		l.updatePaging(lg)
	}
	q.mu.Lock()
	return nil
}

// reloadCursors rereads the queue's cursor rows after a cursor write failed (it may
// have committed).
func (q *queue) reloadCursors(ctx context.Context) error {
	rows, err := q.l.s.drv.BindingList(ctx)
	if err != nil {
		return fmt.Errorf("server: reread page cursors of queue %q: %w: %w", q.name, ErrUnavailable, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, r := range rows {
		if r.Kind != sqlstore.KindCursor || r.Name != q.name {
			continue
		}
		c := q.cursors[r.Target]
		if c == nil || !c.stale {
			continue
		}
		var v pageCursor
		if err := json.Unmarshal([]byte(r.Config), &v); err != nil {
			return fmt.Errorf("server: page cursor of queue %q on %q unreadable: %w", q.name, r.Target, err)
		}
		c.After, c.Consumed, c.stale = v.After, v.Consumed, false
	}
	for _, c := range q.cursors {
		c.stale = false // no row: nothing was committed
	}
	return nil
}

// skipPages moves every cursor of q to the end of its log (a purge) and returns how
// many paged messages it skipped.
func (l *live) skipPages(ctx context.Context, q *queue) (int64, error) {
	type skip struct {
		c               *pageCursor
		after, consumed int64
	}
	var skips []skip
	b := &sqlstore.Batch{}
	q.mu.Lock()
	for _, c := range q.cursors {
		if c.pending() == 0 {
			continue
		}
		c.log.mu.Lock()
		after := l.epoch<<idCounterBits | l.counter.Load()
		for id := range c.log.inflight {
			after = min(after, id-1)
		}
		consumed := c.log.appended.Load()
		c.log.mu.Unlock()
		skips = append(skips, skip{c: c, after: max(after, c.After), consumed: consumed})
		nc := pageCursor{log: c.log, After: max(after, c.After), Consumed: consumed}
		b.BindingPuts = append(b.BindingPuts, nc.row(q.name))
	}
	q.mu.Unlock()
	if len(skips) == 0 {
		return 0, nil
	}
	if err := l.write(ctx, b); err != nil {
		return 0, fmt.Errorf("server: purge the paged messages of queue %q: %w", q.name, err)
	}
	var n int64
	q.mu.Lock()
	for _, s := range skips {
		n += max(s.consumed-s.c.Consumed, 0)
		s.c.After, s.c.Consumed = s.after, s.consumed
	}
	q.mu.Unlock()
	for _, s := range skips {
		l.updatePaging(s.c.log)
	}
	return n, nil
}

// loadCounters sets the message counts, sizes and page logs from the counters table.
func (l *live) loadCounters(cs []sqlstore.Counter) {
	for _, c := range cs {
		switch c.Kind {
		case sqlstore.CounterQueue:
			if q := l.queues[c.Name]; q != nil {
				q.msgs, q.bytes = c.Messages, c.Bytes
				l.global.Add(c.Bytes)
			}
		case sqlstore.CounterPages:
			if c.Messages > 0 {
				l.logFor(c.Name).appended.Store(c.Messages)
			}
		}
	}
}

// loadCursor attaches a stored cursor row to its queue.
func (l *live) loadCursor(b sqlstore.Binding) {
	q := l.queues[b.Name]
	if q == nil {
		l.log.Warn("page cursor of a missing queue ignored", "queue", b.Name, "log", b.Target)
		return
	}
	c := &pageCursor{}
	if err := json.Unmarshal([]byte(b.Config), c); err != nil {
		l.log.Warn("page cursor unreadable; the queue reads the log from its head", "queue", b.Name, "log", b.Target, "error", err)
		c = &pageCursor{}
	}
	c.log = l.logFor(b.Target)
	q.cursors[b.Target] = c
}

// initLogs gives every reader of every log a cursor and sets the paging states.
func (l *live) initLogs() {
	l.logsMu.Lock()
	logs := slices.Collect(maps.Values(l.logs))
	l.logsMu.Unlock()
	for _, lg := range logs {
		l.ensureCursors(lg)
		paging := false
		for _, q := range l.readersOf(lg.key) {
			if c := q.cursors[lg.key]; c != nil && c.pending() > 0 {
				paging = true
			}
		}
		lg.paging.Store(paging)
	}
}

// cursorAtEnd returns a cursor at the end of lg, for a queue bound to its address
// now: it reads only what is appended from now on.
func (l *live) cursorAtEnd(lg *pageLog) *pageCursor {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	after := l.epoch<<idCounterBits | l.counter.Load()
	for id := range lg.inflight {
		after = min(after, id-1)
	}
	return &pageCursor{log: lg, After: after, Consumed: lg.appended.Load()}
}
