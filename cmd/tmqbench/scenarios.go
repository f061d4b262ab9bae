package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// result is one scenario of one run.
type result struct {
	id      string // stable across runs: the key of the median and of the goals
	name    string
	clients int
	s       *sample // nil when the scenario failed or was skipped
	base    string  // id of the baseline row, or ""
	note    string
}

// runner runs the scenarios of one run and collects their results.
type runner struct {
	log  *slog.Logger
	o    options
	body []byte
	out  []result

	recvBest float64 // best receive+ack rate so far, to size the next prefill
}

func (r *runner) want(name string) bool { return r.o.only == "" || containsFold(name, r.o.only) }

func (r *runner) add(x result) {
	if x.s != nil {
		r.log.Info("scenario done", "scenario", x.name, "clients", x.clients, "msgs_per_s", int(x.s.rate()),
			"p99_ms", ms(x.s.pct(0.99)), "errors", x.s.errs, "note", x.note)
		if x.s.errs > 0 && x.s.lastErr != nil {
			r.log.Warn("scenario had errors", "scenario", x.name, "clients", x.clients, "last_error", x.s.lastErr)
		}
	}
	r.out = append(r.out, x)
}

// failed records a scenario that could not be measured; the run goes on.
func (r *runner) failed(id, name string, clients int, err error) {
	r.log.Error("scenario failed", "scenario", name, "clients", clients, "err", err)
	r.out = append(r.out, result{id: id, name: name, clients: clients, note: "failed: " + oneLine(err.Error())})
}

// rate returns the msgs/s of the result id of this run, 0 when absent.
func (r *runner) rate(id string) float64 {
	for _, x := range r.out {
		if x.id == id && x.s != nil {
			return x.s.rate()
		}
	}
	return 0
}

// measure starts measuring a broker scenario: the CPU of the broker and of the
// database (cpu.go), and a CPU profile of the broker when -profile-dir is set. The
// returned func records the CPU in s (nil: the scenario failed) and waits for the
// profile.
func (r *runner) measure(b *broker, id string) func(s *sample) {
	m := startCPU(b.pid(), dbProcess(r.o.store))
	wait := r.profile(b, id)
	return func(s *sample) {
		m.stop(s)
		wait()
	}
}

// profile starts a CPU profile of b for the scenario's duration when -profile-dir is
// set (b serves pprof then); the returned func waits for it and saves it as
// <dir>/<id>.pprof. Failures are logged, never fatal.
func (r *runner) profile(b *broker, id string) func() {
	if r.o.profiles == "" || b.pprof == "" {
		return func() {}
	}
	secs := max(1, int(r.o.duration.Seconds()))
	file := filepath.Join(r.o.profiles, strings.NewReplacer("/", "_", " ", "_").Replace(id)+".pprof")
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := func() error {
			if err := os.MkdirAll(r.o.profiles, 0o755); err != nil {
				return err
			}
			resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", b.pprof, secs))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("pprof: %s", resp.Status)
			}
			f, err := os.Create(file)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, resp.Body); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		}()
		if err != nil {
			r.log.Warn("cpu profile", "scenario", id, "err", err)
		}
	}()
	return func() { <-done }
}

// publishOne: confirmed publish, one message per request, c clients.
func (r *runner) publishOne(ctx context.Context, b *broker, c int) {
	name := "publish, 1 msg/request"
	id := fmt.Sprintf("pub/%d", c)
	q := fmt.Sprintf("pub%d", c)
	if err := b.ensureQueue(ctx, q); err != nil {
		r.failed(id, name, c, err)
		return
	}
	sctx, cancel := context.WithTimeout(ctx, r.o.duration)
	done := r.measure(b, id)
	s, err := runWorkers(sctx, c, 1, func(ctx context.Context, _ int) (int, error) {
		return 1, b.publish(ctx, q, r.body)
	})
	cancel()
	done(s)
	if err != nil {
		r.failed(id, name, c, err)
		return
	}
	r.add(result{id: id, name: name, clients: c, s: s, base: "raw-copy"})
}

// publishBatch: confirmed publish, 100 messages per request, c clients.
func (r *runner) publishBatch(ctx context.Context, b *broker, c int) {
	name := "publish, batch of 100/request"
	id := fmt.Sprintf("batch/%d", c)
	q := fmt.Sprintf("batch%d", c)
	if err := b.ensureQueue(ctx, q); err != nil {
		r.failed(id, name, c, err)
		return
	}
	req := batchBody(r.body, 100)
	sctx, cancel := context.WithTimeout(ctx, r.o.duration)
	done := r.measure(b, id)
	s, err := runWorkers(sctx, c, 100, func(ctx context.Context, _ int) (int, error) {
		return 100, b.postBatch(ctx, "/v1/queues/"+q+"/messages/batch", req, 100)
	})
	cancel()
	done(s)
	if err != nil {
		r.failed(id, name, c, err)
		return
	}
	r.add(result{id: id, name: name, clients: c, s: s, base: "raw-copy"})
}

// fill publishes n messages to q by batches of up to 100 on clients clients, within
// limit; it returns the publish sample (its rate is the fill's publish rate).
func fill(ctx context.Context, b *broker, q string, n int64, body []byte, clients int, limit time.Duration) (*sample, error) {
	if n <= 0 {
		return &sample{}, nil
	}
	req := batchBody(body, 100)
	var left atomic.Int64
	left.Store(n)
	fctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	s, err := runWorkers(fctx, clients, 100, func(ctx context.Context, _ int) (int, error) {
		k := left.Add(-100) + 100 // messages left before this batch
		if k <= 0 {
			return 0, errExhausted
		}
		if k >= 100 {
			return 100, b.postBatch(ctx, "/v1/queues/"+q+"/messages/batch", req, 100)
		}
		return int(k), b.postBatch(ctx, "/v1/queues/"+q+"/messages/batch", batchBody(body, int(k)), int(k))
	})
	if err == nil && fctx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("not done within %s", limit)
	}
	if err == nil && s.errs > 0 {
		err = fmt.Errorf("%d batches failed: %w", s.errs, s.lastErr)
	}
	if err != nil {
		return s, fmt.Errorf("prefill %s: %w", q, err)
	}
	return s, nil
}

// receiveAck: receive up to batch per request and ack, c consumers, on a queue
// prefilled by batch publish. It ends when the duration ends or the queue is empty.
func (r *runner) receiveAck(ctx context.Context, b *broker, batch, c int) {
	name := fmt.Sprintf("receive+ack, max %d/request", batch)
	id := fmt.Sprintf("recv/%d/%d", batch, c)
	q := "cons"
	if err := b.ensureQueue(ctx, q); err != nil {
		r.failed(id, name, c, err)
		return
	}
	// Enough for the whole duration at a generous guess of the rate (twice the best
	// receive rate so far in this run); what is left over serves the next scenario, and
	// a queue that empties early ends the scenario early, which the note says.
	// Without an earlier receive scenario (--only), guess by the batch size.
	est := max(2*r.recvBest, 2000, 600*float64(batch))
	target := min(int64(est*r.o.duration.Seconds()*1.2), int64(r.o.more.prefillMax))
	have, err := b.depth(ctx, q)
	if err != nil {
		r.failed(id, name, c, err)
		return
	}
	if have < target {
		r.log.Info("prefilling", "queue", q, "messages", target-have)
		if _, err := fill(ctx, b, q, target-have, r.body, 8, 5*time.Minute); err != nil {
			r.failed(id, name, c, err)
			return
		}
		if have, err = b.depth(ctx, q); err != nil {
			r.failed(id, name, c, err)
			return
		}
	}
	sctx, cancel := context.WithTimeout(ctx, r.o.duration)
	done := r.measure(b, id)
	s, err := runWorkers(sctx, c, batch, func(ctx context.Context, _ int) (int, error) {
		return b.recvAck(ctx, q, batch, "0s")
	})
	cancel()
	done(s)
	if err != nil {
		r.failed(id, name, c, err)
		return
	}
	r.recvBest = max(r.recvBest, s.rate())
	note := fmt.Sprintf("consumed %d of %d ready", s.msgs, have)
	if s.elapsed < r.o.duration-100*time.Millisecond {
		note += ", queue empty after " + seconds(s.elapsed)
	}
	r.add(result{id: id, name: name, clients: c, s: s, base: "raw-delete", note: note})
}

// steady: open-loop publish at a fixed rate (one message per request, sends scheduled
// at the rate whatever the answers, latency from the scheduled time to the 201) with
// consumers receiving and acking beside it; the second row is the end-to-end latency
// from the scheduled publish time to the answer of the receive that delivered it.
func (r *runner) steady(ctx context.Context, b *broker, rate float64, why string) {
	name := fmt.Sprintf("steady publish at %.0f/s (%s)", rate, why)
	e2eName := "steady end-to-end publish→receive"
	q := "steady"
	if err := b.ensureQueue(ctx, q); err != nil {
		r.failed("steady-pub", name, r.o.more.steadySenders, err)
		return
	}
	d := r.o.duration
	interval := time.Duration(float64(time.Second) / rate)
	tickets := make(chan time.Time, int(rate*d.Seconds())+16) // the schedule never blocks
	start := time.Now()
	end := start.Add(d)
	go func() { // the schedule: every ticket is due at start + i*interval
		defer close(tickets)
		i := 0
		for ctx.Err() == nil {
			now := time.Now()
			for ; ; i++ {
				t := start.Add(time.Duration(i) * interval)
				if t.After(now) || !t.Before(end) {
					break
				}
				tickets <- t
			}
			if !start.Add(time.Duration(i) * interval).Before(end) {
				return
			}
			time.Sleep(500 * time.Microsecond)
		}
	}()

	var mu sync.Mutex
	pub := &sample{}
	var published, received atomic.Int64
	var pubDone atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < r.o.more.steadySenders; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			errs := 0
			var lastErr error
			for t := range tickets {
				hdr := []string{"Tmq-Header-Sched", strconv.FormatInt(t.UnixNano(), 10)}
				if err := b.publishTo(ctx, "/v1/queues/"+q+"/messages", r.body, hdr); err != nil {
					errs++
					lastErr = err
					continue
				}
				lat = append(lat, time.Since(t))
				published.Add(1)
			}
			mu.Lock()
			pub.lat = append(pub.lat, lat...)
			pub.errs += errs
			if lastErr != nil {
				pub.lastErr = lastErr
			}
			mu.Unlock()
		}()
	}

	e2e := &sample{}
	var lastRecv atomic.Int64
	cctx, ccancel := context.WithTimeout(ctx, d+10*time.Second) // time to drain
	defer ccancel()
	var cwg sync.WaitGroup
	for w := 0; w < r.o.more.steadyConsumers; w++ {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			var lat []time.Duration
			errs := 0
			var lastErr error
			for cctx.Err() == nil {
				if pubDone.Load() && received.Load() >= published.Load() {
					break
				}
				ds, err := b.recv(cctx, q, 100, "1s")
				now := time.Now()
				if err != nil {
					if cctx.Err() == nil {
						errs++
						lastErr = err
					}
					continue
				}
				if len(ds) == 0 {
					continue
				}
				for _, dl := range ds {
					if ns, err := strconv.ParseInt(dl.Headers["sched"], 10, 64); err == nil {
						lat = append(lat, now.Sub(time.Unix(0, ns)))
					}
				}
				received.Add(int64(len(ds)))
				lastRecv.Store(now.UnixNano())
				if err := b.ack(cctx, q, ds); err != nil && cctx.Err() == nil {
					errs++
					lastErr = err
				}
			}
			mu.Lock()
			e2e.lat = append(e2e.lat, lat...)
			e2e.errs += errs
			if lastErr != nil {
				e2e.lastErr = lastErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	pub.elapsed = time.Since(start)
	pub.msgs = int(published.Load())
	pubDone.Store(true)
	cwg.Wait()
	e2e.msgs = int(received.Load())
	if l := lastRecv.Load(); l > 0 {
		e2e.elapsed = time.Unix(0, l).Sub(start)
	}
	sort.Slice(pub.lat, func(i, j int) bool { return pub.lat[i] < pub.lat[j] })
	sort.Slice(e2e.lat, func(i, j int) bool { return e2e.lat[i] < e2e.lat[j] })
	note := fmt.Sprintf("offered %.0f/s, %d senders; latency from the scheduled send", rate, r.o.more.steadySenders)
	r.add(result{id: "steady-pub", name: name, clients: r.o.more.steadySenders, s: pub, base: "raw-copy", note: note})
	e2eNote := fmt.Sprintf("received %d of %d published; %d consumers × max 100", e2e.msgs, pub.msgs, r.o.more.steadyConsumers)
	r.add(result{id: "steady-e2e", name: e2eName, clients: r.o.more.steadyConsumers, s: e2e, note: e2eNote})
}

// fanout: publish one message per request to a multicast address with 10 bound
// queues; the rate counts deliveries (10 per publish), checked against the depths.
func (r *runner) fanout(ctx context.Context, b *broker) {
	const n = 10
	c := r.o.more.fanoutClients
	name := fmt.Sprintf("fan-out to %d queues, 1 msg/request (deliveries)", n)
	id := "fanout"
	if err := b.put(ctx, "/v1/addresses/fan", []byte(`{"routing":"multicast"}`)); err != nil {
		r.failed(id, name, c, err)
		return
	}
	for i := 0; i < n; i++ {
		q := fmt.Sprintf("fan%d", i)
		if err := b.ensureQueue(ctx, q); err != nil {
			r.failed(id, name, c, err)
			return
		}
		if err := b.put(ctx, "/v1/addresses/fan/bindings/"+q, nil); err != nil {
			r.failed(id, name, c, err)
			return
		}
	}
	sctx, cancel := context.WithTimeout(ctx, r.o.duration)
	done := r.measure(b, id)
	s, err := runWorkers(sctx, c, n, func(ctx context.Context, _ int) (int, error) {
		return n, b.publishTo(ctx, "/v1/addresses/fan/messages", r.body, nil)
	})
	cancel()
	done(s)
	if err != nil {
		r.failed(id, name, c, err)
		return
	}
	var stored int64
	for i := 0; i < n; i++ {
		d, err := b.depth(ctx, fmt.Sprintf("fan%d", i))
		if err != nil {
			r.failed(id, name, c, err)
			return
		}
		stored += d
	}
	note := fmt.Sprintf("%d publishes, %d deliveries counted in the queues", s.msgs/n, stored)
	r.add(result{id: id, name: name, clients: c, s: s, base: "raw-copy", note: note})
}

// sqlite: a second broker on an embedded SQLite store in a temporary directory,
// batch publishers (100 per request) and consumers (receive 100 + ack) at once; the
// rate counts acked messages.
func (r *runner) sqlite(ctx context.Context, prefix string) {
	c := r.o.more.sqliteClients
	name := "embedded SQLite: batch publish+receive+ack (acked)"
	id := "sqlite"
	dir, err := os.MkdirTemp("", "tmqbench-sqlite-")
	if err != nil {
		r.failed(id, name, c, err)
		return
	}
	defer os.RemoveAll(dir)
	b, err := startBrokerWith(ctx, r.log, launchOptions{binary: r.o.binary, store: "sqlite:" + filepath.Join(dir, "tablemq.db"),
		prefix: prefix, name: "bench", pprof: r.o.profiles != ""})
	if err != nil {
		r.failed(id, name, c, err)
		return
	}
	defer b.stop()
	q := "sq"
	if err := b.ensureQueue(ctx, q); err != nil {
		r.failed(id, name, c, err)
		return
	}
	req := batchBody(r.body, 100)
	sctx, cancel := context.WithTimeout(ctx, r.o.duration)
	defer cancel()
	var pubS *sample
	var pubErr error
	m := startCPU(b.pid(), "") // the database is inside the broker
	wait := r.profile(b, id)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pubS, pubErr = runWorkers(sctx, c, 100, func(ctx context.Context, _ int) (int, error) {
			return 100, b.postBatch(ctx, "/v1/queues/"+q+"/messages/batch", req, 100)
		})
	}()
	s, err := runWorkers(sctx, c, 100, func(ctx context.Context, _ int) (int, error) {
		n, err := b.recvAck(ctx, q, 100, "1s")
		if err == errExhausted {
			return 0, nil // the publishers are behind: ask again
		}
		return n, err
	})
	<-done
	m.stop(s)
	wait()
	if err == nil {
		err = pubErr
	}
	if err != nil {
		r.failed(id, name, c, err)
		return
	}
	note := fmt.Sprintf("%d publishers at %.0f msgs/s + %d consumers; latency of receive+ack", c, pubS.rate(), c)
	r.add(result{id: id, name: name, clients: 2 * c, s: s, note: note})
}
