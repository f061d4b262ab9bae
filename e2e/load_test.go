package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// heavySlots bounds how many load-heavy HA tests run at once: each runs several
// brokers under load, and too many at once on a small machine starve the lease
// renewals they are testing.
var heavySlots = make(chan struct{}, 2)

// heavy waits for a slot, held until the end of t. Call it before starting brokers.
func heavy(t *testing.T) {
	t.Helper()
	heavySlots <- struct{}{}
	t.Cleanup(func() { <-heavySlots })
}

// takeoverBound is the most a takeover after kill -9 may take: lock-expiration plus one
// poll interval plus generous slack for a loaded machine (the race detector makes the
// binary several times slower).
func takeoverBound() time.Duration {
	slack := 3 * time.Second
	if raceEnabled {
		slack = 6 * time.Second
	}
	return lockExpiration + pollInterval + slack
}

// epochOf returns the fencing epoch in a message id: its bits above the 43-bit counter.
func epochOf(t *testing.T, id string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(id, 10, 64)
	require.NoError(t, err, "message id %q", id)
	return n >> 43
}

// waitUntil polls cond every 10 ms until it is true and returns how long that took
// from since; it fails t when ctx ends first. It is for measuring, where eventually's
// 50 ms steps are too coarse.
func waitUntil(ctx context.Context, t *testing.T, what string, since time.Time, cond func() bool) time.Duration {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not reached in time (%s)", what, time.Since(since).Round(time.Millisecond))
		case <-tick.C:
		}
	}
	return time.Since(since)
}

// within polls cond every 10 ms for at most d and reports how long it took from since
// to become true, and whether it did.
func within(ctx context.Context, d time.Duration, since time.Time, cond func() bool) (time.Duration, bool) {
	end := since.Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(end) {
			return time.Since(since), false
		}
		select {
		case <-ctx.Done():
			return time.Since(since), false
		case <-tick.C:
		}
	}
	return time.Since(since), true
}

// observeFor checks cond every 100 ms for d and fails t the first time it is false.
func observeFor(ctx context.Context, t *testing.T, what string, d time.Duration, cond func() error) {
	t.Helper()
	end := time.Now().Add(d)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(end) {
		if err := cond(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: the test ran out of time", what)
		case <-tick.C:
		}
	}
}

// load publishes to and consumes from one queue of a live-backup group as a failing-
// over client would: every request goes to the instance believed live, and a failure
// (503, a refused connection) moves on to the next instance after a short backoff.
//
// It records every publish attempt (each with its own body), every id that got 201,
// every delivery, and every ack that was answered ok. The consumer holds back (never
// acks) every seventh message it receives before markKilled, so that those must be
// delivered again after a failover.
type load struct {
	t       *testing.T
	queue   string
	targets []*broker
	cur     atomic.Int64 // index into targets of the instance believed live

	mu          sync.Mutex        // guards the fields below
	attempts    map[string]bool   // body of every publish attempt
	published   map[string]string // id -> body, for every 201
	pubOn       map[string]string // id -> name of the instance that answered 201
	received    map[string]int    // id -> deliveries seen
	acked       map[string]bool   // ids whose ack was answered ok
	heldBack    map[string]bool   // ids deliberately left unacked before the kill
	afterKill   map[string]bool   // ids received (again) after markKilled
	killed      bool              // markKilled was called
	killedAt    time.Time         // when
	firstPubAt  time.Time         // first 201 after markKilled
	problems    []string          // invariant violations seen by the goroutines
	ackFailures int               // acks not answered ok (expected around a failover)

	stopPub, stopCons chan struct{}
	pubOnce, consOnce sync.Once
	pubWG, consWG     sync.WaitGroup
}

func newLoad(t *testing.T, queue string, targets ...*broker) *load {
	return &load{
		t: t, queue: queue, targets: targets,
		attempts: map[string]bool{}, published: map[string]string{}, pubOn: map[string]string{},
		received: map[string]int{}, acked: map[string]bool{}, heldBack: map[string]bool{},
		afterKill: map[string]bool{},
		stopPub:   make(chan struct{}), stopCons: make(chan struct{}),
	}
}

// target returns the instance believed live.
func (l *load) target() (int64, *broker) {
	i := l.cur.Load()
	return i, l.targets[int(i)%len(l.targets)]
}

// failed moves on from instance i (unless another goroutine did already) and backs off.
func (l *load) failed(ctx context.Context, i int64) {
	l.cur.CompareAndSwap(i, i+1)
	select {
	case <-ctx.Done():
	case <-time.After(20 * time.Millisecond):
	}
}

func (l *load) problem(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.problems) < 20 {
		l.problems = append(l.problems, fmt.Sprintf(format, args...))
	}
}

// start runs publishers and one consumer until stopPublishers and drain.
func (l *load) start(ctx context.Context, publishers int) {
	for w := range publishers {
		l.pubWG.Add(1)
		go l.publisher(ctx, w)
	}
	l.consWG.Add(1)
	go l.consumer(ctx)
	l.t.Cleanup(func() { // if the test fails midway
		l.stopPublishers()
		l.stopConsumer()
	})
}

// stopPublishers stops the publishers and waits for them.
func (l *load) stopPublishers() {
	l.pubOnce.Do(func() { close(l.stopPub) })
	l.pubWG.Wait()
}

func (l *load) stopConsumer() {
	l.consOnce.Do(func() { close(l.stopCons) })
	l.consWG.Wait()
}

func (l *load) publisher(ctx context.Context, w int) {
	defer l.pubWG.Done()
	for i := 0; ; i++ {
		select {
		case <-l.stopPub:
			return
		case <-ctx.Done():
			return
		default:
		}
		body := fmt.Sprintf("w%d-%d", w, i)
		l.mu.Lock()
		l.attempts[body] = true
		l.mu.Unlock()
		ti, b := l.target()
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, data := b.request(rctx, http.MethodPost, "/v1/queues/"+l.queue+"/messages", []byte(body),
			map[string]string{"Content-Type": "text/plain"})
		cancel()
		if st != http.StatusCreated {
			if st != http.StatusServiceUnavailable && st != 0 {
				l.problem("publish to %s: status %d: %s", b.name, st, data)
			}
			l.failed(ctx, ti)
			continue
		}
		var out struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(data, &out); err != nil || out.ID == "" {
			l.problem("publish answer %s: %v", data, err)
			continue
		}
		l.mu.Lock()
		if old, dup := l.published[out.ID]; dup {
			l.problems = append(l.problems, fmt.Sprintf("id %s answered for %q and %q", out.ID, old, body))
		}
		l.published[out.ID] = body
		l.pubOn[out.ID] = b.name
		if l.killed && l.firstPubAt.IsZero() {
			l.firstPubAt = time.Now()
		}
		l.mu.Unlock()
	}
}

// holdBack picks the messages the consumer leaves unacked before the kill.
func holdBack(id string) bool {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return h.Sum32()%7 == 0
}

func (l *load) consumer(ctx context.Context) {
	defer l.consWG.Done()
	for {
		select {
		case <-l.stopCons:
			return
		case <-ctx.Done():
			return
		default:
		}
		ti, b := l.target()
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		in, _ := json.Marshal(map[string]any{"max": 20, "wait": "200ms", "lease": "1m"})
		st, data := b.request(rctx, http.MethodPost, "/v1/queues/"+l.queue+"/receive", in,
			map[string]string{"Content-Type": "application/json"})
		cancel()
		if st != http.StatusOK {
			if st != http.StatusServiceUnavailable && st != 0 {
				l.problem("receive from %s: status %d: %s", b.name, st, data)
			}
			l.failed(ctx, ti)
			continue
		}
		var out struct {
			Messages []delivery `json:"messages"`
		}
		if err := json.Unmarshal(data, &out); err != nil {
			l.problem("receive answer %s: %v", data, err)
			continue
		}
		var receipts []string
		ids := map[string]string{} // receipt -> id
		l.mu.Lock()
		for _, m := range out.Messages {
			raw, err := base64.StdEncoding.DecodeString(m.Data)
			if err != nil || !l.attempts[string(raw)] {
				l.problems = append(l.problems, fmt.Sprintf("delivered %s with a body nobody published: %q", m.ID, raw))
			}
			if l.acked[m.ID] {
				l.problems = append(l.problems, fmt.Sprintf("message %s came back after its ack was answered ok", m.ID))
			}
			l.received[m.ID]++
			if l.killed {
				l.afterKill[m.ID] = true
			} else if l.received[m.ID] == 1 && holdBack(m.ID) {
				l.heldBack[m.ID] = true
				continue
			}
			receipts = append(receipts, m.Receipt)
			ids[m.Receipt] = m.ID
		}
		l.mu.Unlock()
		if len(receipts) == 0 {
			continue
		}
		l.ackOn(ctx, ti, b, receipts, ids)
	}
}

// ackOn acks receipts on b and records the acks answered ok.
func (l *load) ackOn(ctx context.Context, ti int64, b *broker, receipts []string, ids map[string]string) {
	in, _ := json.Marshal(map[string]any{"receipts": receipts})
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	st, data := b.request(rctx, http.MethodPost, "/v1/queues/"+l.queue+"/ack", in,
		map[string]string{"Content-Type": "application/json"})
	cancel()
	if st != http.StatusOK {
		l.mu.Lock()
		l.ackFailures += len(receipts)
		l.mu.Unlock()
		l.failed(ctx, ti)
		return
	}
	var out struct {
		Results []struct {
			Receipt string `json:"receipt"`
			OK      bool   `json:"ok"`
		} `json:"results"`
	}
	if err := json.Unmarshal(data, &out); err != nil {
		l.problem("ack answer %s: %v", data, err)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range out.Results {
		if r.OK {
			l.acked[ids[r.Receipt]] = true
		} else {
			l.ackFailures++
		}
	}
}

// markKilled records that the live was just killed (or cut off).
func (l *load) markKilled() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.killed = true
	l.killedAt = time.Now()
}

// counts returns how many ids got 201 and how many acks were answered ok.
func (l *load) counts() (published, acked int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.published), len(l.acked)
}

// awaitPublished waits until at least n publishes got 201 and at least acks acks were
// answered ok.
func (l *load) awaitPublished(ctx context.Context, n, acks int) {
	l.t.Helper()
	eventually(ctx, l.t, fmt.Sprintf("%d publishes and %d acks", n, acks), func() error {
		if p, a := l.counts(); p < n || a < acks {
			return fmt.Errorf("%d published, %d acked", p, a)
		}
		return nil
	})
}

// drain stops the publishers, lets the consumer run until every id that got 201 was
// received and every held-back message was received again after the kill, stops it,
// and checks the invariants.
func (l *load) drain(ctx context.Context) {
	l.t.Helper()
	l.stopPublishers()
	eventually(ctx, l.t, "drain", func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		missing, notAgain := 0, 0
		for id := range l.published {
			if l.received[id] == 0 {
				missing++
			}
		}
		for id := range l.heldBack {
			if !l.afterKill[id] {
				notAgain++
			}
		}
		if missing > 0 || notAgain > 0 {
			return fmt.Errorf("%d of %d published not received yet, %d of %d held-back not redelivered yet",
				missing, len(l.published), notAgain, len(l.heldBack))
		}
		return nil
	})
	l.stopConsumer()
	l.mu.Lock()
	defer l.mu.Unlock()
	require.Empty(l.t, l.problems, "invariant violations")
	require.NotEmpty(l.t, l.heldBack, "some messages were held back unacked before the kill")
	dups := 0
	for _, n := range l.received {
		if n > 1 {
			dups++
		}
	}
	l.t.Logf("load: %d publish attempts, %d got 201, %d ids received (%d more than once), %d acked ok, %d acks not ok, %d held back",
		len(l.attempts), len(l.published), len(l.received), dups, len(l.acked), l.ackFailures, len(l.heldBack))
}
