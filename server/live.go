package server

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tablemq/tablemq/sqlstore"
)

// live is the state of one activation. Everything in it is rebuilt from the store by
// the next Activate, so a deactivated live is dropped whole.
type live struct {
	s     *Server
	cfg   Config
	log   *slog.Logger
	epoch int64
	w     *sqlstore.Writer

	counter atomic.Int64 // low bits of the last message id handed out

	// global is the sum of the queues' sizes (queue.bytes), for Config.GlobalMaxSize.
	global atomic.Int64
	// spaceCh, when set, is closed (and cleared) the next time sizes go down, waking
	// blocked publishers.
	spaceCh atomic.Pointer[chan struct{}]
	// logs are the page logs by key; logsMu is a leaf lock guarding the map.
	logsMu sync.Mutex
	logs   map[string]*pageLog

	// The store may hold idempotency keys the in-memory maps do not know: those of
	// earlier lives, and those of writes that failed but may have committed. They were
	// all created before unknownKeysSince (Unix ms). Once a duplicate cleanup deleted
	// every key older than that (cleanedBefore), the maps know every key the store
	// holds and publishes stop asking the store.
	unknownKeysSince atomic.Int64
	cleanedBefore    atomic.Int64

	stopOnce sync.Once
	stopping chan struct{} // closed when deactivation starts
	// ctx is canceled when deactivation starts; background work (the queues'
	// read-ahead, started by goBackground) runs under it, and bg counts it so that
	// deactivation waits for it. bgMu guards bgClosed and the calls of bg.Add.
	ctx        context.Context
	cancel     context.CancelFunc
	bgMu       sync.Mutex
	bgClosed   bool
	bg         sync.WaitGroup
	finished   chan struct{} // closed when deactivation has ended
	reaperStop chan struct{}
	reaperDone chan struct{}
	large      *largeState // large.go: the sweeper of abandoned uploads

	// adminMu serialises changes of queues, addresses and bindings, including their
	// store writes. It is the outermost lock (see the package documentation).
	adminMu sync.Mutex
	// metaMu guards the two maps and the queue lists of the addresses; held only for
	// map reads and updates, never across I/O.
	metaMu    sync.RWMutex
	queues    map[string]*queue
	addresses map[string]*address
	// dedups holds the idempotency keys per scope (a queue name, or "@" and an address
	// name). A scope outlives a deleted queue or address, as its stored keys do.
	dedups map[string]*dedupSet
}

// address is an address and the queues bound to it.
type address struct {
	name      string
	routing   RoutingType
	limits    Limits
	createdAt time.Time
	queues    []string // sorted; guarded by live.metaMu
	rr        atomic.Uint64
}

func newAddress(name string, cfg AddressConfig, createdAt time.Time) *address {
	a := &address{name: name, routing: cfg.Routing, limits: cfg.Limits, createdAt: createdAt}
	return a
}

func newLive(s *Server, epoch int64) *live {
	l := &live{
		s:          s,
		cfg:        s.cfg,
		log:        s.log.With("epoch", epoch),
		epoch:      epoch,
		stopping:   make(chan struct{}),
		finished:   make(chan struct{}),
		reaperStop: make(chan struct{}),
		reaperDone: make(chan struct{}),
		queues:     map[string]*queue{},
		addresses:  map[string]*address{},
		dedups:     map[string]*dedupSet{},
		logs:       map[string]*pageLog{},
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.unknownKeysSince.Store(l.now().UnixMilli())
	return l
}

// keysAllKnown reports whether the in-memory idempotency maps know every key the store
// holds.
func (l *live) keysAllKnown() bool {
	return l.cleanedBefore.Load() > l.unknownKeysSince.Load()
}

// keysMayBeUnknown records that the store may hold keys written until now that the
// maps do not know.
func (l *live) keysMayBeUnknown() {
	now := l.now().UnixMilli()
	for {
		old := l.unknownKeysSince.Load()
		if old >= now || l.unknownKeysSince.CompareAndSwap(old, now) {
			return
		}
	}
}

// now is the server's clock (Config.Now).
func (l *live) now() time.Time { return l.cfg.Now() }

// goBackground runs f in a goroutine that deactivation waits for (f must return soon
// once l.ctx is canceled). It reports false, without running f, once deactivation
// started.
func (l *live) goBackground(f func()) bool {
	l.bgMu.Lock()
	defer l.bgMu.Unlock()
	if l.bgClosed {
		return false
	}
	l.bg.Add(1)
	go func() {
		defer l.bg.Done()
		f()
	}()
	return true
}

// isStopping reports whether deactivation started.
func (l *live) isStopping() bool {
	select {
	case <-l.stopping:
		return true
	default:
		return false
	}
}

// loadBindings builds the queues and addresses from the rows of the bindings table.
func (l *live) loadBindings(rows []sqlstore.Binding, counters []sqlstore.Counter) {
	var binds, cursors []sqlstore.Binding
	for _, b := range rows {
		switch b.Kind {
		case sqlstore.KindQueue:
			var c QueueConfig
			if err := json.Unmarshal([]byte(b.Config), &c); err != nil {
				l.log.Warn("queue settings unreadable; using defaults", "queue", b.Name, "error", err)
				c = QueueConfig{}
			}
			l.queues[b.Name] = newQueue(l, b.Name, c, time.UnixMilli(b.CreatedAt))
		case sqlstore.KindAddress:
			var c AddressConfig
			if err := json.Unmarshal([]byte(b.Config), &c); err != nil || (c.Routing != Anycast && c.Routing != Multicast) {
				l.log.Warn("address settings unreadable; using multicast", "address", b.Name, "error", err)
				c.Routing = Multicast
			}
			l.addresses[b.Name] = newAddress(b.Name, c, time.UnixMilli(b.CreatedAt))
		case sqlstore.KindBinding:
			binds = append(binds, b)
		case sqlstore.KindCursor:
			cursors = append(cursors, b)
		default:
			l.log.Warn("unknown binding kind ignored", "kind", b.Kind, "name", b.Name)
		}
	}
	for _, b := range binds {
		a := l.addresses[b.Name]
		if a == nil || l.queues[b.Target] == nil {
			l.log.Warn("binding to a missing address or queue ignored", "address", b.Name, "queue", b.Target)
			continue
		}
		a.queues = append(a.queues, b.Target)
	}
	for _, a := range l.addresses {
		sort.Strings(a.queues)
	}
	l.loadCounters(counters)
	for _, b := range cursors {
		l.loadCursor(b)
	}
	l.initLogs()
}

// isNotLive reports whether err means the activation ended.
func isNotLive(err error) bool { return errors.Is(err, ErrNotLive) }

// deactivate ends this activation; see Server.Deactivate. A second caller waits for the
// first to finish.
func (l *live) deactivate(fenced bool) {
	first := false
	l.stopOnce.Do(func() { first = true })
	if !first {
		<-l.finished
		return
	}
	s := l.s
	s.setRole(RoleStopping)
	if fenced {
		l.log.Error("fenced: another broker took over the store; deactivating", "node", l.cfg.NodeName)
	} else {
		l.log.Info("deactivating", "node", l.cfg.NodeName)
	}
	close(l.stopping) // new calls fail; waiting receivers return
	l.bgMu.Lock()
	l.bgClosed = true
	l.bgMu.Unlock()
	l.cancel()
	l.bg.Wait() // background work ends (its reads are canceled)
	close(l.reaperStop)
	<-l.reaperDone
	l.stopLarge() // large.go
	if !fenced {
		l.persistDeliveryCounts()
	}
	l.w.Stop()
	if fenced {
		s.doneMu.Lock()
		select {
		case <-s.done:
		default:
			close(s.done)
		}
		s.doneMu.Unlock()
	}
	s.cur.CompareAndSwap(l, nil)
	s.setRole(RoleBackup)
	close(l.finished)
}

// persistDeliveryCounts writes the delivery count of every persistent message in
// flight, so that the next live (after a graceful handover or restart) delivers them
// again as redelivered with the right count. Counts are otherwise written only when a
// message goes back (nack, lease end); after a crash they can be one short.
func (l *live) persistDeliveryCounts() {
	var updates []sqlstore.MessageUpdate
	for _, q := range l.queueSnapshot() {
		q.mu.Lock()
		for _, m := range q.index {
			if m.state == stInFlight && m.persistent {
				updates = append(updates, sqlstore.MessageUpdate{Queue: q.name, ID: m.id, DeliveryCount: m.deliveries, DeliverAt: m.deliverAt})
			}
		}
		q.mu.Unlock()
	}
	if len(updates) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.w.Write(ctx, &sqlstore.Batch{MessageUpdates: updates}); err != nil {
		l.log.Warn("persisting the delivery counts of messages in flight", "count", len(updates), "error", err)
	}
}

// write commits b through the group-commit writer and maps its errors to the
// server's sentinels.
func (l *live) write(ctx context.Context, b *sqlstore.Batch) error {
	err := l.w.Write(ctx, b)
	if err == nil {
		return nil
	}
	if errors.Is(err, sqlstore.ErrFenced) || errors.Is(err, sqlstore.ErrClosed) {
		return fmt.Errorf("server: write: %w: %w", ErrNotLive, err)
	}
	return fmt.Errorf("server: write: %w: %w", ErrUnavailable, err)
}

// nextID hands out a message id: epoch<<43 | counter.
func (l *live) nextID() (int64, error) {
	c := l.counter.Add(1)
	if c > idCounterMax {
		l.log.Error("message id counter exhausted for this epoch; publishes fail until the epoch moves on")
		return 0, fmt.Errorf("server: message id counter exhausted for epoch %d: %w", l.epoch, ErrUnavailable)
	}
	return l.epoch<<idCounterBits | c, nil
}

// queue returns a queue by name.
func (l *live) queue(name string) (*queue, error) {
	l.metaMu.RLock()
	q := l.queues[name]
	l.metaMu.RUnlock()
	if q == nil {
		return nil, fmt.Errorf("server: queue %q: %w", name, ErrQueueNotFound)
	}
	return q, nil
}

// queueSnapshot returns the queues ordered by name.
func (l *live) queueSnapshot() []*queue {
	l.metaMu.RLock()
	qs := make([]*queue, 0, len(l.queues))
	for _, q := range l.queues {
		qs = append(qs, q)
	}
	l.metaMu.RUnlock()
	slices.SortFunc(qs, func(a, b *queue) int { return cmp.Compare(a.name, b.name) })
	return qs
}

// queueAddresses returns the addresses a queue is bound to, sorted.
func (l *live) queueAddresses(name string) []string {
	l.metaMu.RLock()
	defer l.metaMu.RUnlock()
	out := []string{}
	for _, a := range l.addresses {
		if _, ok := slices.BinarySearch(a.queues, name); ok {
			out = append(out, a.name)
		}
	}
	sort.Strings(out)
	return out
}

// queueEnsure returns the queue, creating it with cfg if missing. When strict, an
// existing queue with other settings is an ErrConflict.
func (l *live) queueEnsure(ctx context.Context, name string, cfg QueueConfig, strict bool) (*queue, bool, error) {
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	l.metaMu.RLock()
	q := l.queues[name]
	l.metaMu.RUnlock()
	if q != nil {
		if strict && q.cfg != cfg {
			return nil, false, fmt.Errorf("server: queue %q exists with other settings: %w", name, ErrConflict)
		}
		return q, false, nil
	}
	now := l.now()
	// The dead-letter queue is created with the queue, in the same transaction, so that
	// it can be inspected (and consumed) before the first message is dead-lettered.
	names := []string{name}
	cfgs := []QueueConfig{cfg}
	if dlq := cfg.DeadLetterQueue; dlq != "" {
		l.metaMu.RLock()
		exists := l.queues[dlq] != nil
		l.metaMu.RUnlock()
		if !exists {
			names = append(names, dlq)
			cfgs = append(cfgs, QueueConfig{})
		}
	}
	b := &sqlstore.Batch{}
	for i, n := range names {
		js, _ := json.Marshal(cfgs[i])
		b.BindingPuts = append(b.BindingPuts, sqlstore.Binding{
			Kind: sqlstore.KindQueue, Name: n, Config: string(js), CreatedAt: now.UnixMilli(),
		})
	}
	if err := l.write(ctx, b); err != nil {
		return nil, false, fmt.Errorf("server: create queue %q: %w", name, err)
	}
	for i, n := range names {
		nq := newQueue(l, n, cfgs[i], time.UnixMilli(now.UnixMilli()))
		// A queue created now has no stored messages: its window holds them all.
		nq.lanes[laneReady].exhausted = true
		nq.lanes[laneSched].exhausted = true
		l.metaMu.Lock()
		l.queues[n] = nq
		l.metaMu.Unlock()
		l.log.Info("queue created", "queue", n)
		if i == 0 {
			q = nq
		}
	}
	return q, true, nil
}

// queueDelete deletes a queue with its messages and bindings in one transaction.
func (l *live) queueDelete(ctx context.Context, name string) error {
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	q, err := l.queue(name)
	if err != nil {
		return err
	}
	// Refuse new work on the queue and wait for the publishes already under way, so
	// that none of them commits a message after the purge.
	idle := q.beginDelete()
	select {
	case <-idle:
	case <-ctx.Done():
		q.abortDelete()
		return fmt.Errorf("server: delete queue %q: %w", name, ctx.Err())
	}
	b := &sqlstore.Batch{
		QueuePurges:    []string{name},
		BindingDeletes: []sqlstore.BindingKey{{Kind: sqlstore.KindQueue, Name: name}},
	}
	for _, a := range l.queueAddresses(name) {
		b.BindingDeletes = append(b.BindingDeletes, sqlstore.BindingKey{Kind: sqlstore.KindBinding, Name: a, Target: name})
	}
	// Its own page log, and its cursors in the logs of its addresses.
	b.PageTrims = append(b.PageTrims, sqlstore.PageTrim{Log: name, UpTo: math.MaxInt64})
	b.CounterDeletes = append(b.CounterDeletes, sqlstore.CounterKey{Kind: sqlstore.CounterPages, Name: name})
	q.mu.Lock()
	var logs []*pageLog
	for key, c := range q.cursors {
		b.BindingDeletes = append(b.BindingDeletes, sqlstore.BindingKey{Kind: sqlstore.KindCursor, Name: name, Target: key})
		if key != name {
			logs = append(logs, c.log)
		}
	}
	q.mu.Unlock()
	if err := l.write(ctx, b); err != nil {
		q.abortDelete()
		return fmt.Errorf("server: delete queue %q: %w", name, err)
	}
	l.dropLog(name)
	defer func() {
		for _, lg := range logs {
			l.updatePaging(lg)
		}
	}()
	l.metaMu.Lock()
	delete(l.queues, name)
	for _, a := range l.addresses {
		if i, ok := slices.BinarySearch(a.queues, name); ok {
			a.queues = slices.Delete(a.queues, i, i+1)
		}
	}
	l.metaMu.Unlock()
	q.finishDelete()
	l.log.Info("queue deleted", "queue", name)
	return nil
}

func (l *live) addressCreate(ctx context.Context, name string, cfg AddressConfig) (bool, error) {
	if cfg.Routing == "" {
		cfg.Routing = Multicast
	}
	if cfg.Routing != Anycast && cfg.Routing != Multicast {
		return false, invalidf("routing %q: must be %q or %q", cfg.Routing, Anycast, Multicast)
	}
	if err := cfg.Limits.validate(); err != nil {
		return false, err
	}
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	l.metaMu.RLock()
	a := l.addresses[name]
	l.metaMu.RUnlock()
	if a != nil {
		if a.routing != cfg.Routing || a.limits != cfg.Limits {
			return false, fmt.Errorf("server: address %q exists with other settings (routing %s): %w", name, a.routing, ErrConflict)
		}
		return false, nil
	}
	js, _ := json.Marshal(cfg)
	now := time.UnixMilli(l.now().UnixMilli())
	err := l.write(ctx, &sqlstore.Batch{BindingPuts: []sqlstore.Binding{{
		Kind: sqlstore.KindAddress, Name: name, Config: string(js), CreatedAt: now.UnixMilli(),
	}}})
	if err != nil {
		return false, fmt.Errorf("server: create address %q: %w", name, err)
	}
	l.metaMu.Lock()
	l.addresses[name] = newAddress(name, cfg, now)
	l.metaMu.Unlock()
	return true, nil
}

func (l *live) addressInfo(name string) (AddressInfo, error) {
	l.metaMu.RLock()
	defer l.metaMu.RUnlock()
	a := l.addresses[name]
	if a == nil {
		return AddressInfo{}, fmt.Errorf("server: address %q: %w", name, ErrAddressNotFound)
	}
	return l.describeAddressLocked(a), nil
}

// describeAddressLocked describes an address; metaMu is held.
func (l *live) describeAddressLocked(a *address) AddressInfo {
	ai := AddressInfo{Name: a.name, Routing: a.routing, Limits: a.limits, Queues: append([]string{}, a.queues...), CreatedAt: a.createdAt}
	key := addressDupScope(a.name)
	lg := l.logIf(key)
	if lg != nil {
		ai.Paging = lg.paging.Load()
	}
	for _, n := range a.queues {
		q := l.queues[n]
		if q == nil {
			continue
		}
		q.mu.Lock()
		ai.Bytes += q.bytes
		if c := q.cursors[key]; c != nil {
			ai.Paged = max(ai.Paged, c.pending())
		}
		q.mu.Unlock()
	}
	return ai
}

func (l *live) addressList() []AddressInfo {
	l.metaMu.RLock()
	out := make([]AddressInfo, 0, len(l.addresses))
	for _, a := range l.addresses {
		out = append(out, l.describeAddressLocked(a))
	}
	l.metaMu.RUnlock()
	slices.SortFunc(out, func(a, b AddressInfo) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

func (l *live) addressDelete(ctx context.Context, name string) error {
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	info, err := l.addressInfo(name)
	if err != nil {
		return err
	}
	key := addressDupScope(name)
	b := &sqlstore.Batch{
		BindingDeletes: []sqlstore.BindingKey{{Kind: sqlstore.KindAddress, Name: name}},
		PageTrims:      []sqlstore.PageTrim{{Log: key, UpTo: math.MaxInt64}},
		CounterDeletes: []sqlstore.CounterKey{{Kind: sqlstore.CounterPages, Name: key}},
	}
	for _, q := range info.Queues {
		b.BindingDeletes = append(b.BindingDeletes,
			sqlstore.BindingKey{Kind: sqlstore.KindBinding, Name: name, Target: q},
			sqlstore.BindingKey{Kind: sqlstore.KindCursor, Name: q, Target: key})
	}
	if err := l.write(ctx, b); err != nil {
		return fmt.Errorf("server: delete address %q: %w", name, err)
	}
	readers := l.readersOf(key)
	l.metaMu.Lock()
	delete(l.addresses, name)
	l.metaMu.Unlock()
	for _, q := range readers {
		q.mu.Lock()
		delete(q.cursors, key)
		q.mu.Unlock()
	}
	l.dropLog(key)
	return nil
}

func (l *live) bindingCreate(ctx context.Context, addr, queueName string) (bool, error) {
	if err := ValidName(addr); err != nil {
		return false, err
	}
	if err := ValidName(queueName); err != nil {
		return false, err
	}
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	l.metaMu.RLock()
	a, q := l.addresses[addr], l.queues[queueName]
	var bound bool
	if a != nil {
		_, bound = slices.BinarySearch(a.queues, queueName)
	}
	l.metaMu.RUnlock()
	switch {
	case a == nil:
		return false, fmt.Errorf("server: address %q: %w", addr, ErrAddressNotFound)
	case q == nil:
		return false, fmt.Errorf("server: queue %q: %w", queueName, ErrQueueNotFound)
	case bound:
		return false, nil
	}
	b := &sqlstore.Batch{BindingPuts: []sqlstore.Binding{{
		Kind: sqlstore.KindBinding, Name: addr, Target: queueName, Config: "{}", CreatedAt: l.now().UnixMilli(),
	}}}
	// A queue bound to a multicast address whose log holds rows reads only what is
	// appended from now on.
	var cur *pageCursor
	if lg := l.logIf(addressDupScope(addr)); lg != nil && a.routing == Multicast {
		cur = l.cursorAtEnd(lg)
		b.BindingPuts = append(b.BindingPuts, cur.row(queueName))
	}
	if err := l.write(ctx, b); err != nil {
		return false, fmt.Errorf("server: bind queue %q to address %q: %w", queueName, addr, err)
	}
	if cur != nil {
		q.mu.Lock()
		q.cursors[cur.log.key] = cur
		q.mu.Unlock()
	}
	l.metaMu.Lock()
	if i, ok := slices.BinarySearch(a.queues, queueName); !ok {
		a.queues = slices.Insert(a.queues, i, queueName)
	}
	l.metaMu.Unlock()
	return true, nil
}

func (l *live) bindingDelete(ctx context.Context, addr, queueName string) error {
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	l.metaMu.RLock()
	a := l.addresses[addr]
	var bound bool
	if a != nil {
		_, bound = slices.BinarySearch(a.queues, queueName)
	}
	l.metaMu.RUnlock()
	if a == nil {
		return fmt.Errorf("server: address %q: %w", addr, ErrAddressNotFound)
	}
	if !bound {
		return fmt.Errorf("server: queue %q is not bound to address %q: %w", queueName, addr, ErrBindingNotFound)
	}
	key := addressDupScope(addr)
	err := l.write(ctx, &sqlstore.Batch{BindingDeletes: []sqlstore.BindingKey{
		{Kind: sqlstore.KindBinding, Name: addr, Target: queueName},
		{Kind: sqlstore.KindCursor, Name: queueName, Target: key},
	}})
	if err != nil {
		return fmt.Errorf("server: unbind queue %q from address %q: %w", queueName, addr, err)
	}
	l.metaMu.Lock()
	if i, ok := slices.BinarySearch(a.queues, queueName); ok {
		a.queues = slices.Delete(a.queues, i, i+1)
	}
	q := l.queues[queueName]
	l.metaMu.Unlock()
	if q != nil {
		q.mu.Lock()
		delete(q.cursors, key)
		q.mu.Unlock()
	}
	if lg := l.logIf(key); lg != nil {
		l.updatePaging(lg)
	}
	return nil
}
