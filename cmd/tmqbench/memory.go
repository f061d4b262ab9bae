package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The -memory mode: bounded memory and takeover with a big backlog (issue 4).
//
//  1. Broker RSS while a backlog of -memory-messages messages sits in one queue,
//     published by batches, after one receive (the window is loaded), next to the RSS
//     of the same broker with the queue empty.
//  2. kill -9 of the live with that backlog: time to the backup's /readyz 200 and to
//     its first delivered message, next to the same for a queue of one message in a
//     group of its own, median of -memory-rounds rounds.
//  3. Broker RSS growth while one -memory-large-size message is uploaded and while it
//     is downloaded (the large-message body endpoint), with SHA-256 checks.
//  4. Consume rate of the backlog against that of a -memory-small queue, with the
//     same consumers.

// memoryOptions are the knobs of -memory.
type memoryOptions struct {
	on         bool
	messages   int
	small      int
	publishers int
	consumers  int
	recvMax    int
	rounds     int
	largeSize  int64
	pprofDir   string
	limit      time.Duration
	analyze    bool
}

// registerMemoryFlags registers the flags of memoryOptions on the default flag set.
func registerMemoryFlags(m *memoryOptions) {
	flag.BoolVar(&m.on, "memory", false, "measure bounded memory and takeover with a big backlog (issue 4) instead of throughput")
	flag.IntVar(&m.messages, "memory-messages", 1_000_000, "with -memory: messages of the backlog in one queue (-size bytes each)")
	flag.IntVar(&m.small, "memory-small", 50_000, "with -memory: messages of the small queue, the consume rate's baseline")
	flag.IntVar(&m.publishers, "memory-publishers", 8, "with -memory: concurrent publishers of the backlog (batches of 100)")
	flag.IntVar(&m.consumers, "memory-consumers", 16, "with -memory: consumers of the consume-rate measurement")
	flag.IntVar(&m.recvMax, "memory-receive-max", 100, "with -memory: max messages per receive of the consumers (each receive then acked)")
	flag.IntVar(&m.rounds, "memory-rounds", 3, "with -memory: kill -9 rounds of each takeover measurement (median reported)")
	flag.Int64Var(&m.largeSize, "memory-large-size", 1<<30, "with -memory: bytes of the large message")
	flag.StringVar(&m.pprofDir, "memory-pprof-dir", "", "with -memory: save the brokers' heap profiles (go tool pprof) to this directory")
	flag.DurationVar(&m.limit, "memory-limit", 30*time.Minute, "with -memory: bound on each fill, drain and large-message transfer")
	flag.BoolVar(&m.analyze, "memory-analyze", false, "with -memory: ANALYZE the benchmark's tables once the queues are filled, as autovacuum would (when it is on)")
}

func (m *memoryOptions) check() error {
	for _, v := range []struct {
		name string
		n    int64
	}{{"-memory-messages", int64(m.messages)}, {"-memory-small", int64(m.small)}, {"-memory-publishers", int64(m.publishers)},
		{"-memory-consumers", int64(m.consumers)}, {"-memory-receive-max", int64(m.recvMax)}, {"-memory-rounds", int64(m.rounds)},
		{"-memory-large-size", m.largeSize}} {
		if v.n < 1 {
			return fmt.Errorf("%s: %d is not a positive number", v.name, v.n)
		}
	}
	if m.recvMax > 1000 {
		return fmt.Errorf("-memory-receive-max: %d is above the receive limit of 1000", m.recvMax)
	}
	return nil
}

// memoryHA are the lock settings of -memory when the flags leave them at zero: fast,
// as in the failover measurement of BENCHMARKS.md.
var memoryHA = haOptions{renew: 200 * time.Millisecond, expiration: time.Second,
	networkTimeout: 500 * time.Millisecond, poll: 100 * time.Millisecond}

// The parts of -memory, for -only.
const (
	partRSS      = "rss with a backlog"
	partTakeover = "takeover"
	partConsume  = "consume rate"
	partLarge    = "large message"
)

// memRun is one -memory run: its settings and the rows of its table.
type memRun struct {
	log    *slog.Logger
	o      options
	prefix string
	body   []byte
	rows   []memRow
	notes  []string // said under the table
	saved  []string // heap profiles written
	// savedMu guards saved against the profiles taken during a transfer (bg).
	savedMu sync.Mutex
	bg      sync.WaitGroup
}

// memoryMode runs the -memory measurements and prints their table.
func memoryMode(ctx context.Context, log *slog.Logger, o options, w io.Writer) error {
	if err := o.mem.check(); err != nil {
		return err
	}
	for _, f := range []struct {
		d *time.Duration
		v time.Duration
	}{{&o.ha.renew, memoryHA.renew}, {&o.ha.expiration, memoryHA.expiration},
		{&o.ha.networkTimeout, memoryHA.networkTimeout}, {&o.ha.poll, memoryHA.poll}} {
		if *f.d == 0 {
			*f.d = f.v
		}
	}
	if o.mem.pprofDir != "" {
		if err := os.MkdirAll(o.mem.pprofDir, 0o755); err != nil {
			return fmt.Errorf("-memory-pprof-dir: %w", err)
		}
	}
	m := &memRun{log: log, o: o, prefix: fmt.Sprintf("tmqmem%d_", time.Now().UnixNano()%1_000_000), body: payload(o.size)}
	want := func(part string) bool { return o.only == "" || containsFold(part, o.only) }
	start, loadStart := time.Now(), loadAvg()

	var small *groupResult
	if want(partTakeover) || want(partConsume) {
		// The small group first: its figures are the baselines of the backlog's.
		var err error
		if small, err = m.group(ctx, "small", false, want(partTakeover), want(partConsume)); err != nil {
			m.failed("baseline group (1-message queue, small queue)", err)
		}
	}
	var big *groupResult
	if want(partRSS) || want(partTakeover) || want(partConsume) {
		var err error
		if big, err = m.group(ctx, "big", true, want(partTakeover), want(partConsume)); err != nil {
			m.failed("backlog group", err)
		}
	}
	m.report(big, small)
	if want(partLarge) && ctx.Err() == nil {
		m.large(ctx)
	}
	m.bg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}

	analyzed := "not analyzed by the benchmark"
	if o.mem.analyze {
		analyzed = "ANALYZEd after the fill (-memory-analyze)"
	}
	fmt.Fprintf(w, "\n### %s: bounded memory and takeover (issue 4), store %s\n\n", time.Now().UTC().Format(time.RFC3339), redact(o.store))
	if av := pgSetting(ctx, o.store, "autovacuum"); av != "" {
		fmt.Fprintf(w, "PostgreSQL autovacuum %s; the benchmark's tables %s.\n", av, analyzed)
	}
	fmt.Fprintf(w, "Backlog %d messages of %d bytes in one queue (published by %d clients, batches of 100), small queue %d; "+
		"consumers %d × receive max %d + ack; takeover %s, median of %d rounds; large message %d bytes; "+
		"%d CPUs (GOMAXPROCS=%d of the load generator); load average %s at the start, %s at the end; "+
		"MB = 10⁶ bytes; run took %s.\n\n",
		o.mem.messages, o.size, o.mem.publishers, o.mem.small, o.mem.consumers, o.mem.recvMax, o.ha, o.mem.rounds,
		o.mem.largeSize, runtime.NumCPU(), runtime.GOMAXPROCS(0), loadStart, loadAvg(), time.Since(start).Round(time.Second))
	printMemRows(w, m.rows)
	if len(m.notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range m.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
	if len(m.saved) > 0 {
		fmt.Fprintf(w, "\nHeap profiles (`go tool pprof -sample_index=inuse_space -top %s PROFILE`): %s\n", o.binary, strings.Join(m.saved, ", "))
	}
	return nil
}

// failed records a part that could not be measured; the run goes on.
func (m *memRun) failed(what string, err error) {
	m.log.Error("measurement failed", "what", what, "err", err)
	m.notes = append(m.notes, fmt.Sprintf("%s failed: %s", what, oneLine(err.Error())))
}

// groupResult is what one live-backup group measured.
type groupResult struct {
	queued       int64   // messages in the measured queue
	pubRate      float64 // publish rate of the fill
	empty, full  procMem // the live with the queue empty, and with the backlog after one receive
	emptyHeap    heapStats
	fullHeap     heapStats
	kill, toLive []time.Duration // kill -9 → first delivery, kill -9 → /readyz 200
	fromLive     []time.Duration // /readyz 200 → first delivery
	newLiveRSS   []int64         // the new live right after its first delivery
	consumeRate  float64
	consumed     int64
	consumePeak  int64  // the live's peak RSS while it was drained
	consumeStart int64  // and its RSS before
	consumeNote  string // why the drain stopped early
	drainedOn    string // which live drained the queue
}

// group measures one live-backup group on tables of its own: with big, a queue of
// o.mem.messages (RSS empty and full), else a queue of one message; then, with
// takeover, kill -9 rounds with a receive loop on the backup; then, with consume, the
// drain of the big queue or of a small queue of o.mem.small messages.
//
// Only the takeover pair runs with the fast lock settings (o.ha): under the load of
// the fill and of the drain on 2 shared cores a live renewing every 200 ms can miss
// its 1 s deadline and fence itself. The fill and the drain run on a primary with the
// binary's default lock settings; the drain on a fresh one after the takeover rounds
// (a restart: its windows are filled on demand too).
func (m *memRun) group(ctx context.Context, name string, big, takeover, consume bool) (*groupResult, error) {
	fast := m.o.ha
	f := &failoverRun{log: m.log, o: m.o, prefix: m.prefix + name + "_", pprof: true}
	f.o.ha = haOptions{}
	defer func() {
		f.stopAll()
		if !m.o.keep {
			if err := dropTables(context.Background(), m.o.store, f.prefix); err != nil {
				m.log.Warn("dropping the benchmark tables", "prefix", f.prefix, "err", err)
			}
		}
	}()
	res := &groupResult{}
	live, err := f.startLive(ctx)
	if err != nil {
		return nil, err
	}
	q := "one" // a queue of one message: the takeover's baseline
	if big {
		q = "backlog"
	}
	if err := live.createQueue(ctx, q); err != nil {
		return nil, err
	}
	if big {
		if err := m.fillBacklog(ctx, live.broker, q, res); err != nil {
			return nil, err
		}
	} else {
		if err := live.publish(ctx, q, m.body); err != nil {
			return nil, err
		}
		res.queued = 1
	}
	if m.o.mem.analyze {
		if err := analyzeTables(ctx, m.o.store, f.prefix); err != nil {
			return res, err
		}
	}

	if takeover {
		live.stop() // SIGTERM: it releases the lock; the fast primary takes it at once
		f.forget(live)
		f.o.ha = fast
		if live, err = f.startLive(ctx); err != nil {
			return res, err
		}
		if err := m.takeoverRounds(ctx, f, live, q, res); err != nil {
			return res, err
		}
		f.stopAll()
		f.o.ha = haOptions{}
		live = nil
	}
	if consume {
		res.drainedOn = "the live that published them"
		if live == nil {
			if live, err = f.startLive(ctx); err != nil {
				return res, err
			}
			res.drainedOn = "a freshly started live (default lock settings)"
		}
		if !big {
			return res, m.drainSmall(ctx, live.broker, res)
		}
		if err := m.drain(ctx, live.broker, q, res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// drainSmall fills and drains a queue of o.mem.small messages o.mem.rounds times (the
// baseline is short, so noisier than the backlog's drain) and keeps the run of the
// median rate, with the highest peak RSS of all.
func (m *memRun) drainSmall(ctx context.Context, b *broker, res *groupResult) error {
	q := "small"
	if err := b.createQueue(ctx, q); err != nil {
		return err
	}
	var runs []groupResult
	for range m.o.mem.rounds {
		if _, err := fill(ctx, b, q, int64(m.o.mem.small), m.body, m.o.mem.publishers, m.o.mem.limit); err != nil {
			return err
		}
		var r groupResult
		if err := m.drain(ctx, b, q, &r); err != nil {
			return err
		}
		runs = append(runs, r)
	}
	peak, start := int64(0), runs[0].consumeStart
	for _, r := range runs {
		peak = max(peak, r.consumePeak)
	}
	slices.SortFunc(runs, func(a, b groupResult) int { return cmp.Compare(a.consumeRate, b.consumeRate) })
	mid := runs[len(runs)/2]
	res.consumed, res.consumeRate, res.consumeNote = mid.consumed, mid.consumeRate, mid.consumeNote
	res.consumePeak, res.consumeStart = peak, start
	if len(runs) > 1 {
		res.consumeNote = strings.TrimSpace(fmt.Sprintf("small queue: median of %d drains (%.0f..%.0f msgs/s) %s",
			len(runs), runs[0].consumeRate, runs[len(runs)-1].consumeRate, res.consumeNote))
	}
	return nil
}

// fillBacklog measures b's RSS with q empty, publishes o.mem.messages to q, receives
// one (nacked at once) and measures the RSS again.
func (m *memRun) fillBacklog(ctx context.Context, b *broker, q string, res *groupResult) error {
	if ds, err := b.recv(ctx, q, 1, "0s"); err != nil || len(ds) != 0 {
		return fmt.Errorf("receive on the empty queue: %d messages, %v", len(ds), err)
	}
	var err error
	if res.empty, res.emptyHeap, err = m.settled(ctx, b, "empty"); err != nil {
		return err
	}
	m.log.Info("empty queue", "rss_mb", mb(res.empty.rss), "hwm_mb", mb(res.empty.hwm))
	n := int64(m.o.mem.messages)
	m.log.Info("publishing the backlog", "messages", n, "publishers", m.o.mem.publishers)
	stopProgress := m.progress(ctx, b, q, n)
	s, err := fill(ctx, b, q, n, m.body, m.o.mem.publishers, m.o.mem.limit)
	stopProgress()
	if err != nil {
		return err
	}
	res.pubRate = s.rate()
	if res.queued, err = b.depth(ctx, q); err != nil {
		return err
	}
	if res.queued != n {
		return fmt.Errorf("published %d messages, the queue holds %d", n, res.queued)
	}
	m.log.Info("backlog published", "messages", n, "msgs_per_s", int(res.pubRate))
	ds, err := b.recv(ctx, q, 1, "5s")
	if err != nil || len(ds) != 1 {
		return fmt.Errorf("first receive of the backlog: %d messages, %v", len(ds), err)
	}
	if err := b.nack(ctx, q, ds); err != nil {
		return err
	}
	if res.full, res.fullHeap, err = m.settled(ctx, b, "backlog"); err != nil {
		return err
	}
	m.log.Info("backlog in the queue", "rss_mb", mb(res.full.rss), "hwm_mb", mb(res.full.hwm), "heap_inuse_mb", mb(res.fullHeap.inuse))
	return nil
}

// progress logs the depth of q every 10 s until the returned function is called.
func (m *memRun) progress(ctx context.Context, b *broker, q string, n int64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				d, err := b.depth(ctx, q)
				pm, _ := readProcMem(b.pid())
				m.log.Info("progress", "queue", q, "depth", d, "of", n, "rss_mb", mb(pm.rss), "err", err)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// settled lets the broker settle for a second, then returns the largest of five
// RSS samples 100 ms apart (with the last VmHWM) and its Go heap; with
// -memory-pprof-dir it saves a heap profile named after label.
func (m *memRun) settled(ctx context.Context, b *broker, label string) (procMem, heapStats, error) {
	var pm procMem
	select {
	case <-ctx.Done():
		return pm, heapStats{}, ctx.Err()
	case <-time.After(time.Second):
	}
	for i := 0; i < 5; i++ {
		s, err := readProcMem(b.pid())
		if err != nil {
			return pm, heapStats{}, err
		}
		pm.rss, pm.hwm = max(pm.rss, s.rss), s.hwm
		time.Sleep(100 * time.Millisecond)
	}
	hs, err := b.heap(ctx)
	if err != nil {
		m.log.Warn("heap statistics", "err", err)
	}
	m.saveProfile(ctx, b, label)
	return pm, hs, nil
}

// saveProfile writes b's heap profile to -memory-pprof-dir when it is set.
func (m *memRun) saveProfile(ctx context.Context, b *broker, label string) {
	if m.o.mem.pprofDir == "" || b.pprof == "" {
		return
	}
	path := filepath.Join(m.o.mem.pprofDir, fmt.Sprintf("%sheap-%s.pb.gz", m.prefix, label))
	if err := b.saveHeapProfile(ctx, path, true); err != nil {
		m.log.Warn("heap profile", "err", err)
		return
	}
	m.savedMu.Lock()
	m.saved = append(m.saved, path)
	m.savedMu.Unlock()
}

// takeoverRounds kills the live with SIGKILL o.mem.rounds times, each time with one
// backup waiting, and measures the backup: kill → /readyz 200, kill → first message
// delivered by a receive loop on q, and /readyz 200 → first delivery. The delivered
// message is nacked (the queue keeps its length) and the killed instance replaced by
// a new backup.
func (m *memRun) takeoverRounds(ctx context.Context, f *failoverRun, live *haNode, q string, res *groupResult) error {
	backup, err := f.startBackup(ctx)
	if err != nil {
		return err
	}
	limit := max(f.limit(), 5*time.Minute)
	for r := range m.o.mem.rounds {
		if err := f.jitter(ctx); err != nil {
			return err
		}
		t0 := time.Now()
		if err := live.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			return fmt.Errorf("kill: %w", err)
		}
		<-live.done
		f.forget(live)
		fd, err := firstDelivery(ctx, backup, q, t0, limit)
		if err != nil {
			return fmt.Errorf("round %d: %w", r+1, err)
		}
		pm, err := readProcMem(backup.pid())
		if err != nil {
			return err
		}
		if err := backup.nack(ctx, q, fd.ds); err != nil {
			return fmt.Errorf("round %d: %w", r+1, err)
		}
		m.log.Info("takeover round", "queue", q, "round", r+1, "kill_to_live_ms", fd.live.Milliseconds(),
			"kill_to_delivery_ms", fd.delivered.Milliseconds(), "rss_mb", mb(pm.rss))
		res.kill = append(res.kill, fd.delivered)
		res.toLive = append(res.toLive, fd.live)
		res.fromLive = append(res.fromLive, max(fd.delivered-fd.live, 0))
		res.newLiveRSS = append(res.newLiveRSS, pm.rss)
		if r == m.o.mem.rounds-1 {
			m.saveProfile(ctx, backup.broker, "takeover-"+q)
		}
		live = backup
		if backup, err = f.startBackup(ctx); err != nil {
			return err
		}
	}
	return nil
}

// takeoverTimes is what firstDelivery measured, from the kill.
type takeoverTimes struct {
	live      time.Duration // the sending of the first /readyz that answered 200
	delivered time.Duration // the answer of the first receive that delivered a message
	ds        []delivery
}

// firstDelivery polls n's /readyz every pollStep and, at the same time, receives from
// q in a loop (a long poll once n is live) until a message is delivered.
func firstDelivery(ctx context.Context, n *haNode, q string, t0 time.Time, limit time.Duration) (takeoverTimes, error) {
	var out takeoverTimes
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	liveAt := make(chan time.Time, 1)
	go func() {
		for ctx.Err() == nil {
			sent := time.Now()
			if n.ready(ctx) {
				liveAt <- sent
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(pollStep):
			}
		}
	}()
	for {
		ds, err := n.recv(ctx, q, 1, "2s")
		if err == nil && len(ds) > 0 {
			out.delivered, out.ds = time.Since(t0), ds
			break
		}
		select {
		case <-n.done:
			return out, fmt.Errorf("%s exited while taking over", n.name)
		case <-ctx.Done():
			return out, fmt.Errorf("%s: no message of %s delivered within %s of the kill (last error: %v)", n.name, q, limit, err)
		default:
		}
		if err != nil {
			time.Sleep(pollStep)
		}
	}
	select {
	case at := <-liveAt:
		out.live = at.Sub(t0)
	case <-ctx.Done():
		return out, fmt.Errorf("%s delivered but its /readyz did not answer 200 within %s", n.name, limit)
	}
	return out, nil
}

// drain consumes every message of q with o.mem.consumers consumers (receive up to
// o.mem.recvMax, then ack), sampling the broker's RSS every 50 ms.
func (m *memRun) drain(ctx context.Context, b *broker, q string, res *groupResult) error {
	n, err := b.depth(ctx, q)
	if err != nil {
		return err
	}
	before, err := readProcMem(b.pid())
	if err != nil {
		return err
	}
	m.log.Info("draining", "queue", q, "messages", n, "consumers", m.o.mem.consumers)
	rs := sampleRSS(b.pid(), 50*time.Millisecond)
	var consumed atomic.Int64
	dctx, cancel := context.WithTimeout(ctx, m.o.mem.limit)
	defer cancel()
	s, err := runWorkers(dctx, m.o.mem.consumers, m.o.mem.recvMax, func(ctx context.Context, _ int) (int, error) {
		ds, err := b.recv(ctx, q, m.o.mem.recvMax, "0s")
		if err != nil {
			return 0, err
		}
		if len(ds) == 0 {
			if consumed.Load() >= n {
				return 0, errExhausted
			}
			// Nothing in the answer but not all consumed: a refill under way, or
			// messages lost; the counts tell.
			d, f, err := b.counts(ctx, q)
			if err == nil && d == 0 && f == 0 {
				return 0, errExhausted
			}
			time.Sleep(2 * time.Millisecond)
			return 0, err
		}
		if err := b.ack(ctx, q, ds); err != nil {
			return 0, err
		}
		consumed.Add(int64(len(ds)))
		return len(ds), nil
	})
	peak, perr := rs.finish()
	if perr != nil {
		return perr
	}
	c := consumed.Load()
	timedOut := dctx.Err() != nil && ctx.Err() == nil
	if err != nil && !(timedOut && c > 0) {
		return fmt.Errorf("drain %s: %w", q, err)
	}
	if s.errs > 0 {
		m.log.Warn("drain had errors", "queue", q, "errors", s.errs, "last", s.lastErr)
	}
	switch {
	case timedOut:
		// Too slow to finish within the limit: the rate so far is the figure.
		res.consumeNote = fmt.Sprintf("stopped at -memory-limit %s after %d of %d messages", m.o.mem.limit, c, n)
		m.log.Warn("drain stopped at the limit", "queue", q, "consumed", c, "of", n)
	case c != n:
		return fmt.Errorf("drain %s: consumed %d of %d messages (%d errors, last %v)", q, c, n, s.errs, s.lastErr)
	}
	res.consumed, res.consumeRate = c, s.rate()
	res.consumePeak, res.consumeStart = peak, before.rss
	m.log.Info("drained", "queue", q, "messages", c, "msgs_per_s", int(s.rate()), "peak_rss_mb", mb(peak))
	return nil
}

// large uploads one o.mem.largeSize message generated on the fly to a fresh broker,
// receives it and downloads its body from the body endpoint, with SHA-256 sums of
// both streams, sampling the broker's RSS every 50 ms during each transfer.
func (m *memRun) large(ctx context.Context) {
	size := m.o.mem.largeSize
	upName := fmt.Sprintf("RSS growth, upload of one %s message", byteSize(size))
	downName := fmt.Sprintf("RSS growth, download of one %s message", byteSize(size))
	na := func(why string) {
		m.log.Warn("large message not available", "why", why)
		m.rows = append(m.rows, memRow{name: upName, na: why, goals: []goal{{label: "≤ 64 MB"}}},
			memRow{name: downName, na: why, goals: []goal{{label: "≤ 64 MB"}}})
	}
	prefix := m.prefix + "large_"
	if !m.o.keep {
		defer func() {
			if err := dropTables(context.Background(), m.o.store, prefix); err != nil {
				m.log.Warn("dropping the benchmark tables", "prefix", prefix, "err", err)
			}
		}()
	}
	b, err := startBrokerWith(ctx, m.log, launchOptions{binary: m.o.binary, store: m.o.store, prefix: prefix, name: "large", pprof: true})
	if err != nil {
		na("broker: " + oneLine(err.Error()))
		return
	}
	defer b.stop()
	q := "large"
	if err := b.createQueue(ctx, q); err != nil {
		na(oneLine(err.Error()))
		return
	}
	tctx, cancel := context.WithTimeout(ctx, m.o.mem.limit)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{}} // no overall timeout: the context bounds it

	// Upload.
	before, err := m.settledRSS(tctx, b)
	if err != nil {
		na(oneLine(err.Error()))
		return
	}
	up := sha256.New()
	var src io.Reader = io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{'t', 'm', 'q'}), size), up)
	src = m.midProfile(tctx, b, src, size, "large-upload")
	req, err := http.NewRequestWithContext(tctx, http.MethodPost, b.base+"/v1/queues/"+q+"/messages", src)
	if err != nil {
		na(err.Error())
		return
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	m.log.Info("uploading", "bytes", size, "rss_mb", mb(before))
	rs := sampleRSS(b.pid(), 50*time.Millisecond)
	t := time.Now()
	err = expect(hc.Do(req))(http.StatusCreated, nil)
	upTime := time.Since(t)
	upPeak, perr := rs.finish()
	if err != nil {
		na("upload: " + oneLine(err.Error()))
		return
	}
	if perr != nil {
		na(perr.Error())
		return
	}
	upSum := hex.EncodeToString(up.Sum(nil))
	m.log.Info("uploaded", "seconds", upTime.Seconds(), "peak_rss_mb", mb(upPeak), "sha256", upSum)

	// Receive and download.
	ds, err := b.recv(tctx, q, 1, "5s")
	if err != nil || len(ds) != 1 {
		na(fmt.Sprintf("receive of the uploaded message: %d messages, %v", len(ds), err))
		return
	}
	d := ds[0]
	if !d.Large || d.Size != size {
		na(fmt.Sprintf("the receive answer does not mark the message large with size %d (large %v, size %d)", size, d.Large, d.Size))
		return
	}
	beforeDown, err := readProcMem(b.pid())
	if err != nil {
		na(err.Error())
		return
	}
	path := "/v1/queues/" + q + "/messages/" + url.PathEscape(d.ID) + "/body?receipt=" + url.QueryEscape(d.Receipt)
	req, err = http.NewRequestWithContext(tctx, http.MethodGet, b.base+path, nil)
	if err != nil {
		na(err.Error())
		return
	}
	down := sha256.New()
	var got int64
	rs = sampleRSS(b.pid(), 50*time.Millisecond)
	t = time.Now()
	err = expect(hc.Do(req))(http.StatusOK, func(r io.Reader) error {
		var cerr error
		got, cerr = io.Copy(down, m.midProfile(tctx, b, r, size, "large-download"))
		return cerr
	})
	downTime := time.Since(t)
	downPeak, perr := rs.finish()
	if err != nil {
		na("download: " + oneLine(err.Error()))
		return
	}
	if perr != nil {
		na(perr.Error())
		return
	}
	downSum := hex.EncodeToString(down.Sum(nil))
	m.log.Info("downloaded", "seconds", downTime.Seconds(), "peak_rss_mb", mb(downPeak), "sha256", downSum)
	if err := b.ack(tctx, q, ds); err != nil {
		m.log.Warn("ack of the large message", "err", err)
	}
	if got != size || downSum != upSum {
		err := fmt.Errorf("the downloaded body differs: %d bytes, sha256 %s; uploaded %d bytes, sha256 %s", got, downSum, size, upSum)
		m.failed("large message", err)
		m.rows = append(m.rows, memRow{name: upName, na: "failed: body differs"}, memRow{name: downName, na: "failed: body differs"})
		return
	}
	rate := func(d time.Duration) string { return fmt.Sprintf("%.0f MB/s", float64(size)/1e6/d.Seconds()) }
	m.rows = append(m.rows,
		memRow{name: upName, value: mb(upPeak - before), unit: "MB", base: mb(before), baseLabel: "RSS before the upload", noRatio: true,
			goals: []goal{{"≤ 64 MB", mb(upPeak - before), 64, "MB", false}},
			note:  fmt.Sprintf("peak %.1f MB; %s in %s (%s); SHA-256 of both streams equal", mb(upPeak), byteSize(size), seconds(upTime), rate(upTime))},
		memRow{name: downName, value: mb(downPeak - before), unit: "MB", base: mb(before), baseLabel: "RSS before the upload", noRatio: true,
			goals: []goal{{"≤ 64 MB", mb(downPeak - before), 64, "MB", false}},
			note: fmt.Sprintf("peak %.1f MB; RSS before the download %.1f MB (growth from it %.1f MB); %s in %s (%s)",
				mb(downPeak), mb(beforeDown.rss), mb(downPeak-beforeDown.rss), byteSize(size), seconds(downTime), rate(downTime))})
}

// midProfile returns r, or with -memory-pprof-dir a reader that saves b's heap
// profile (without a GC first) in the background once half of size has been read.
func (m *memRun) midProfile(ctx context.Context, b *broker, r io.Reader, size int64, label string) io.Reader {
	if m.o.mem.pprofDir == "" {
		return r
	}
	return &atHalf{r: r, half: size / 2, f: func() {
		m.bg.Add(1)
		go func() {
			defer m.bg.Done()
			path := filepath.Join(m.o.mem.pprofDir, fmt.Sprintf("%sheap-%s.pb.gz", m.prefix, label))
			if err := b.saveHeapProfile(ctx, path, false); err != nil {
				m.log.Warn("heap profile", "err", err)
				return
			}
			m.savedMu.Lock()
			m.saved = append(m.saved, path)
			m.savedMu.Unlock()
		}()
	}}
}

// atHalf reads r and calls f once when half bytes have been read.
type atHalf struct {
	r    io.Reader
	n    int64
	half int64
	f    func()
}

func (a *atHalf) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if a.n < a.half && a.n+int64(n) >= a.half {
		a.f()
	}
	a.n += int64(n)
	return n, err
}

// settledRSS waits a second and returns the broker's RSS.
func (m *memRun) settledRSS(ctx context.Context, b *broker) (int64, error) {
	pm, _, err := m.settled(ctx, b, "before-large")
	return pm.rss, err
}

// expect checks the answer of an HTTP request: its status is want, and read (when
// set) consumes the body; otherwise the body is discarded.
func expect(resp *http.Response, err error) func(want int, read func(io.Reader) error) error {
	return func(want int, read func(io.Reader) error) error {
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != want {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			return fmt.Errorf("%s %s: status %d: %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, bytes.TrimSpace(msg))
		}
		if read != nil {
			return read(resp.Body)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
}

// report turns the groups' results into rows.
func (m *memRun) report(big, small *groupResult) {
	if big != nil && big.full.rss > 0 {
		n := fmt.Sprintf("%d × %d B", big.queued, m.o.size)
		m.rows = append(m.rows,
			memRow{name: fmt.Sprintf("broker VmRSS, %s in one queue, after one receive", n), value: mb(big.full.rss), unit: "MB",
				base: mb(big.empty.rss), baseLabel: "same broker, queue empty", goals: []goal{{"≤ 200 MB", mb(big.full.rss), 200, "MB", false}},
				note: fmt.Sprintf("Go heap in use %.1f MB (empty: %.1f MB); published at %.0f msgs/s", mb(big.fullHeap.inuse), mb(big.emptyHeap.inuse), big.pubRate)},
			memRow{name: "broker VmHWM (peak RSS), publish of the backlog + one receive", value: mb(big.full.hwm), unit: "MB",
				base: mb(big.empty.hwm), baseLabel: "same broker, queue empty", note: "no goal; the peak while publishing"})
	}
	if big != nil && small != nil && len(big.kill) > 0 && len(small.kill) > 0 {
		km, kw := medianWorst(big.kill)
		bm, _ := medianWorst(small.kill)
		lm, lw := medianWorst(big.fromLive)
		sm, _ := medianWorst(small.fromLive)
		tm, _ := medianWorst(big.toLive)
		um, _ := medianWorst(small.toLive)
		rb := medianI(big.newLiveRSS)
		rs := medianI(small.newLiveRSS)
		msf := func(d time.Duration) float64 { return float64(d) / 1e6 }
		m.rows = append(m.rows,
			memRow{name: "kill -9 of the live → first delivery, backlog", value: msf(km), unit: "ms",
				base: msf(bm), baseLabel: "1-message queue", goals: []goal{{"≤ 2 × empty", msf(km) / msf(bm), 2, "×", false}},
				note: fmt.Sprintf("worst %s ms; includes the lock expiry (%s)", ms(kw), m.o.ha.expiration)},
			memRow{name: "backup live (/readyz 200) → first delivery, backlog", value: msf(lm), unit: "ms",
				base: msf(sm), baseLabel: "1-message queue", goals: []goal{{"≤ 1 s", msf(lm), 1000, "ms", false}},
				note: fmt.Sprintf("worst %s ms; /readyz polled every %s", ms(lw), pollStep)},
			memRow{name: "kill -9 of the live → backup /readyz 200, backlog", value: msf(tm), unit: "ms",
				base: msf(um), baseLabel: "1-message queue", note: "no goal; the activation without the backlog (lazy)"},
			memRow{name: "new live's VmRSS right after its first delivery, backlog", value: mb(rb), unit: "MB",
				base: mb(rs), baseLabel: "1-message queue", note: "no goal; median over the rounds"})
	}
	if big != nil && small != nil && big.consumeRate > 0 && small.consumeRate > 0 {
		m.rows = append(m.rows,
			memRow{name: fmt.Sprintf("consume rate of the %d-message backlog", big.consumed), value: big.consumeRate, unit: "msgs/s",
				base: small.consumeRate, baseLabel: fmt.Sprintf("%d-message queue", small.consumed), pct: true,
				goals: []goal{{"≥ 80 %", 100 * big.consumeRate / small.consumeRate, 80, "%", true}},
				note: strings.TrimSuffix(fmt.Sprintf("%d consumers × receive max %d + ack, to the end of the queue, on %s; %s",
					m.o.mem.consumers, m.o.mem.recvMax, big.drainedOn, strings.TrimSpace(big.consumeNote+" "+small.consumeNote)), "; ")},
			memRow{name: "broker peak VmRSS while the backlog was drained", value: mb(big.consumePeak), unit: "MB",
				base: mb(small.consumePeak), baseLabel: "small queue drained",
				note: fmt.Sprintf("no goal; RSS before the drain %.1f MB (small: %.1f MB)", mb(big.consumeStart), mb(small.consumeStart))})
	}
}

// goal is one condition of a row.
type goal struct {
	label    string
	measured float64
	target   float64
	unit     string
	atLeast  bool
}

// memRow is one line of the -memory table.
type memRow struct {
	name      string
	value     float64
	unit      string
	base      float64 // 0: no baseline
	baseLabel string
	pct       bool // ratio in percent
	noRatio   bool // the baseline is context, not a comparable figure
	goals     []goal
	note      string
	na        string // why it was not measured
}

// printMemRows prints the rows as a Markdown table.
func printMemRows(w io.Writer, rows []memRow) {
	fmt.Fprintln(w, "| measurement | value | baseline | ratio | goal | result | notes |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---|---|---|")
	for _, r := range rows {
		if r.na != "" {
			fmt.Fprintf(w, "| %s | | | | %s | not available: %s | |\n", r.name, goalLabels(r.goals), cell(r.na))
			continue
		}
		base, ratio := "", ""
		if r.base > 0 {
			base = fmtVal(r.base, r.unit) + " (" + r.baseLabel + ")"
			switch {
			case r.noRatio:
			case r.pct:
				ratio = fmt.Sprintf("%.0f %%", 100*r.value/r.base)
			default:
				ratio = fmt.Sprintf("%.2f ×", r.value/r.base)
			}
		}
		res := "—"
		if len(r.goals) > 0 {
			var parts []string
			for _, g := range r.goals {
				if v := verdict(g.measured, g.target, g.unit, g.atLeast); v != "met" {
					parts = append(parts, g.label+" "+v)
				}
			}
			res = "met"
			if len(parts) > 0 {
				res = strings.Join(parts, "; ")
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.name, fmtVal(r.value, r.unit), base, ratio, goalLabels(r.goals), res, cell(r.note))
	}
}

// cell makes s safe in a Markdown table cell.
func cell(s string) string {
	return strings.ReplaceAll(strings.Join(strings.Fields(s), " "), "|", `\|`)
}

func goalLabels(gs []goal) string {
	var l []string
	for _, g := range gs {
		l = append(l, g.label)
	}
	if len(l) == 0 {
		return "—"
	}
	return strings.Join(l, ", ")
}

// procMem is the memory of a process from /proc/<pid>/status, in bytes.
type procMem struct {
	rss int64 // VmRSS
	hwm int64 // VmHWM: the peak RSS
}

// readProcMem reads VmRSS and VmHWM of pid.
func readProcMem(pid int) (procMem, error) {
	var pm procMem
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return pm, fmt.Errorf("memory of process %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		fs := strings.Fields(v) // "123456 kB"
		if len(fs) != 2 || fs[1] != "kB" {
			return pm, fmt.Errorf("memory of process %d: unexpected %s line %q", pid, k, v)
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			return pm, fmt.Errorf("memory of process %d: %s: %w", pid, k, err)
		}
		if k == "VmRSS" {
			pm.rss = n << 10
		} else {
			pm.hwm = n << 10
		}
	}
	if err := sc.Err(); err != nil {
		return pm, fmt.Errorf("memory of process %d: %w", pid, err)
	}
	if pm.rss == 0 {
		return pm, fmt.Errorf("memory of process %d: no VmRSS (has it exited?)", pid)
	}
	return pm, nil
}

// rssSampler samples a process's VmRSS at a fixed interval and keeps the peak.
type rssSampler struct {
	stop chan struct{}
	done chan struct{}
	peak int64
	err  error
}

// sampleRSS starts sampling pid every interval, at once and until finish.
func sampleRSS(pid int, every time.Duration) *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			pm, err := readProcMem(pid)
			if err != nil {
				s.err = err
				return
			}
			s.peak = max(s.peak, pm.rss)
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// finish stops the sampling (after one last sample) and returns the peak RSS.
func (s *rssSampler) finish() (int64, error) {
	close(s.stop)
	<-s.done
	return s.peak, s.err
}

// heapStats are figures of the Go runtime of a broker, from its pprof heap page.
type heapStats struct {
	inuse int64 // HeapInuse
	sys   int64 // Sys
}

// heap reads the runtime.MemStats part of /debug/pprof/heap?debug=1.
func (b *broker) heap(ctx context.Context) (heapStats, error) {
	var hs heapStats
	if b.pprof == "" {
		return hs, errors.New("no pprof listener")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.pprof+"/debug/pprof/heap?debug=1", nil)
	if err != nil {
		return hs, err
	}
	err = expect(b.hc.Do(req))(http.StatusOK, func(r io.Reader) error {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			for _, f := range []struct {
				key string
				dst *int64
			}{{"# HeapInuse = ", &hs.inuse}, {"# Sys = ", &hs.sys}} {
				if v, ok := strings.CutPrefix(line, f.key); ok {
					*f.dst, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				}
			}
		}
		return sc.Err()
	})
	if err != nil {
		return hs, fmt.Errorf("heap statistics: %w", err)
	}
	return hs, nil
}

// saveHeapProfile writes the broker's heap profile (after a GC with gc) to path.
func (b *broker) saveHeapProfile(ctx context.Context, path string, gc bool) error {
	u := "http://" + b.pprof + "/debug/pprof/heap"
	if gc {
		u += "?gc=1"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	return expect(b.hc.Do(req))(http.StatusOK, func(r io.Reader) error {
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("heap profile: %w", err)
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return fmt.Errorf("heap profile %s: %w", path, err)
		}
		return f.Close()
	})
}

// mb is bytes in MB (10⁶ bytes).
func mb(b int64) float64 { return float64(b) / 1e6 }

// byteSize formats n bytes with a binary unit when it is a whole one.
func byteSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// analyzeTables runs ANALYZE on the tables of store whose names start with prefix.
func analyzeTables(ctx context.Context, store, prefix string) error {
	return withTables(ctx, store, prefix, func(conn *sql.Conn, driver string, names []string) error {
		stmt := "ANALYZE %s"
		if driver == "mysql" {
			stmt = "ANALYZE TABLE %s"
		}
		for _, n := range names {
			if _, err := conn.ExecContext(ctx, fmt.Sprintf(stmt, n)); err != nil {
				return fmt.Errorf("analyze %s: %w", n, err)
			}
		}
		return nil
	})
}

// pgSetting returns a setting of a postgres store ("" for another store or on error).
func pgSetting(ctx context.Context, store, name string) string {
	if !strings.HasPrefix(store, "postgres://") && !strings.HasPrefix(store, "postgresql://") {
		return ""
	}
	db, err := sql.Open("pgx", store)
	if err != nil {
		return ""
	}
	defer db.Close()
	var v string
	if err := db.QueryRowContext(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
		return ""
	}
	return v
}

// loadAvg is the 1, 5 and 15 minute load averages of the machine, "?" when unknown.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], "/")
	}
	return "?"
}

// medianI is the median of xs (the upper one of two), 0 when empty.
func medianI(xs []int64) int64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
