package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbitOn reports whether the RabbitMQ comparison is enabled.
func (r *runner) rabbitOn() bool {
	u := strings.TrimSpace(r.o.more.rabbit)
	return u != "" && u != "off"
}

// rabbit measures RabbitMQ in the same run: a durable queue of type qtype ("classic"
// or "quorum"), persistent messages of the same payload published with publisher
// confirms (each publisher its own connection and channel with a window of
// unconfirmed messages), then consumed with manual acks (one ack per message, each
// consumer its own connection and channel with the prefetch) until the queue is empty
// or the duration ends. The queue is deleted afterwards. It never fails the run: when
// RabbitMQ is unreachable it records why and returns false.
func (r *runner) rabbit(ctx context.Context, qtype, prefix string) bool {
	m := r.o.more
	pubName := fmt.Sprintf("RabbitMQ %s: publish, confirms (window %d)", qtype, m.rabbitWindow)
	consName := fmt.Sprintf("RabbitMQ %s: consume, manual ack (prefetch %d)", qtype, m.rabbitPrefetch)
	pubID, consID := "rmq-"+qtype+"-pub", "rmq-"+qtype+"-cons"
	conn, err := amqp.Dial(m.rabbit)
	if err != nil {
		r.log.Warn("RabbitMQ unreachable: its rows are skipped", "url", redact(m.rabbit), "err", err)
		r.out = append(r.out, result{id: pubID, name: pubName, clients: m.rabbitPubs, note: "skipped: RabbitMQ unreachable"})
		r.out = append(r.out, result{id: consID, name: consName, clients: m.rabbitConsumers, note: "skipped: RabbitMQ unreachable"})
		return false
	}
	defer conn.Close()
	q := strings.TrimSuffix(prefix, "_") + "-" + qtype
	ch, err := conn.Channel()
	if err == nil {
		_, err = ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": qtype})
	}
	if err != nil {
		r.failed(pubID, pubName, m.rabbitPubs, fmt.Errorf("declare %s: %w", q, err))
		return false
	}
	defer func() {
		// A fresh channel: the first one may have been closed by an error.
		if dch, err := conn.Channel(); err == nil {
			if _, err := dch.QueueDelete(q, false, false, false); err != nil {
				r.log.Warn("RabbitMQ: delete queue", "queue", q, "err", err)
			}
			_ = dch.Close()
		}
	}()

	beam := 0 // RabbitMQ's server process, when it runs on this machine
	if pids := pidsNamed("beam.smp"); len(pids) == 1 {
		beam = pids[0]
	}
	cpu := startCPU(beam, "")
	pub, err := r.rabbitPublish(ctx, q)
	cpu.stop(pub)
	if err != nil {
		r.failed(pubID, pubName, m.rabbitPubs, err)
		return true
	}
	r.add(result{id: pubID, name: pubName, clients: m.rabbitPubs, s: pub,
		note: fmt.Sprintf("durable %s queue, persistent, %d publishers × %d unconfirmed", qtype, m.rabbitPubs, m.rabbitWindow)})

	ready := int64(pub.msgs)
	if qi, err := ch.QueueDeclarePassive(q, true, false, false, false, amqp.Table{"x-queue-type": qtype}); err == nil {
		ready = int64(qi.Messages)
	}
	cpu = startCPU(beam, "")
	cons, err := r.rabbitConsume(ctx, q, ready)
	cpu.stop(cons)
	if err != nil {
		r.failed(consID, consName, m.rabbitConsumers, err)
		return true
	}
	note := fmt.Sprintf("%d consumers, one ack per message; consumed %d of %d ready", m.rabbitConsumers, cons.msgs, ready)
	if cons.elapsed < r.o.duration-100*time.Millisecond {
		note += ", queue empty after " + seconds(cons.elapsed)
	}
	r.add(result{id: consID, name: consName, clients: m.rabbitConsumers, s: cons, note: note})
	return true
}

// rabbitPublish publishes for the duration and waits for the outstanding confirms.
func (r *runner) rabbitPublish(ctx context.Context, q string) (*sample, error) {
	m := r.o.more
	type pubConn struct {
		conn     *amqp.Connection
		ch       *amqp.Channel
		confirms chan amqp.Confirmation
	}
	pubs := make([]pubConn, m.rabbitPubs)
	defer func() {
		for _, p := range pubs {
			if p.conn != nil {
				_ = p.conn.Close()
			}
		}
	}()
	for i := range pubs {
		conn, err := amqp.Dial(m.rabbit)
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
		pubs[i].conn = conn
		ch, err := conn.Channel()
		if err != nil {
			return nil, fmt.Errorf("channel: %w", err)
		}
		if err := ch.Confirm(false); err != nil {
			return nil, fmt.Errorf("confirm mode: %w", err)
		}
		pubs[i].ch = ch
		pubs[i].confirms = ch.NotifyPublish(make(chan amqp.Confirmation, m.rabbitWindow+1))
	}

	total := &sample{}
	var mu sync.Mutex
	var lastConfirm atomic.Int64
	pctx, cancel := context.WithTimeout(ctx, r.o.duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for _, p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			window := m.rabbitWindow
			sem := make(chan struct{}, window)
			sent := make([]time.Time, window) // by delivery tag modulo window
			var sentMu sync.Mutex
			var lat []time.Duration
			acked, nacked := 0, 0
			confirmerDone := make(chan struct{})
			go func() {
				defer close(confirmerDone)
				for c := range p.confirms {
					now := time.Now()
					sentMu.Lock()
					t0 := sent[c.DeliveryTag%uint64(window)]
					sentMu.Unlock()
					if c.Ack {
						acked++
						lat = append(lat, now.Sub(t0))
						lastConfirm.Store(now.UnixNano())
					} else {
						nacked++
					}
					<-sem
				}
			}()
			var pubErr error
		loop:
			for pctx.Err() == nil {
				select {
				case sem <- struct{}{}:
				case <-pctx.Done():
					break loop
				}
				tag := p.ch.GetNextPublishSeqNo()
				sentMu.Lock()
				sent[tag%uint64(window)] = time.Now()
				sentMu.Unlock()
				err := p.ch.PublishWithContext(ctx, "", q, false, false, amqp.Publishing{
					DeliveryMode: amqp.Persistent, ContentType: "application/octet-stream", Body: r.body})
				if err != nil {
					pubErr = err
					<-sem
					break
				}
			}
			// Wait for the outstanding confirms (the window empties), at most 30 s.
			drain := time.After(30 * time.Second)
		wait:
			for i := 0; i < window; i++ {
				select {
				case sem <- struct{}{}:
				case <-drain:
					break wait
				case <-confirmerDone:
					break wait
				}
			}
			_ = p.ch.Close() // ends the confirmer
			<-confirmerDone
			mu.Lock()
			total.msgs += acked
			total.errs += nacked
			total.lat = append(total.lat, lat...)
			if pubErr != nil {
				total.errs++
				total.lastErr = pubErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if l := lastConfirm.Load(); l > 0 {
		total.elapsed = time.Unix(0, l).Sub(start)
	}
	sort.Slice(total.lat, func(i, j int) bool { return total.lat[i] < total.lat[j] })
	if total.msgs == 0 {
		return total, fmt.Errorf("no message confirmed: %v", total.lastErr)
	}
	return total, nil
}

// rabbitConsume consumes with manual acks until ready messages were acked or the
// duration ends. The sample has no latency (there is no request to time).
func (r *runner) rabbitConsume(ctx context.Context, q string, ready int64) (*sample, error) {
	m := r.o.more
	type consConn struct {
		conn *amqp.Connection
		ch   *amqp.Channel
	}
	cs := make([]consConn, m.rabbitConsumers)
	defer func() {
		for _, c := range cs {
			if c.conn != nil {
				_ = c.conn.Close()
			}
		}
	}()
	for i := range cs {
		conn, err := amqp.Dial(m.rabbit)
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
		cs[i].conn = conn
		ch, err := conn.Channel()
		if err != nil {
			return nil, fmt.Errorf("channel: %w", err)
		}
		if err := ch.Qos(m.rabbitPrefetch, 0, false); err != nil {
			return nil, fmt.Errorf("qos: %w", err)
		}
		cs[i].ch = ch
	}
	cctx, cancel := context.WithTimeout(ctx, r.o.duration)
	defer cancel()
	var consumed atomic.Int64
	var lastAck atomic.Int64
	var errs atomic.Int64
	var errMu sync.Mutex
	var lastErrV error
	setErr := func(err error) {
		errs.Add(1)
		errMu.Lock()
		lastErrV = err
		errMu.Unlock()
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() { // registered at once: a slow consume-ok must not hold back the others
			defer wg.Done()
			deliveries, err := c.ch.Consume(q, fmt.Sprintf("tmqbench-%d", i), false, false, false, false, nil)
			if err != nil {
				if cctx.Err() == nil {
					setErr(fmt.Errorf("consume: %w", err))
				}
				return
			}
			for {
				select {
				case <-cctx.Done():
					return
				case d, ok := <-deliveries:
					if !ok {
						return
					}
					if err := d.Ack(false); err != nil {
						setErr(err)
						continue
					}
					lastAck.Store(time.Now().UnixNano())
					if consumed.Add(1) >= ready {
						cancel()
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	s := &sample{msgs: int(consumed.Load()), errs: int(errs.Load())}
	if l := lastAck.Load(); l > 0 {
		s.elapsed = time.Unix(0, l).Sub(start)
	}
	errMu.Lock()
	s.lastErr = lastErrV
	errMu.Unlock()
	if s.msgs == 0 {
		if s.lastErr != nil {
			return s, fmt.Errorf("no message consumed: %w", s.lastErr)
		}
		return s, errors.New("no message consumed")
	}
	return s, nil
}
