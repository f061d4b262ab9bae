package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"
)

// Defaults of ConsumeOptions.
const (
	// ConsumeMaxDefault is the default of ConsumeOptions.Max.
	ConsumeMaxDefault = 10
	// ConsumeWaitDefault is the default of ConsumeOptions.Wait.
	ConsumeWaitDefault = 20 * time.Second
	// ConsumeLeaseDefault is the default of ConsumeOptions.Lease.
	ConsumeLeaseDefault = 30 * time.Second
	// consumeLeaseMin is the broker's smallest lease.
	consumeLeaseMin = 100 * time.Millisecond
	// consumeWaitMax is the broker's longest long poll.
	consumeWaitMax = 30 * time.Second
)

// Handler handles one delivery for Consume. Returning nil acks the message;
// returning an error nacks it (it is delivered again, after ConsumeOptions.NackDelay).
// ctx is cancelled when Consume's ctx ends.
type Handler func(ctx context.Context, d Delivery) error

// ConsumeOptions configure Consume. Zero fields mean the defaults.
type ConsumeOptions struct {
	// Max is the most messages one receive leases (1..1000; default 10). Consume
	// never leases more than it has free handler slots.
	Max int
	// Wait is the long poll of each receive (up to 30s; default 20s).
	Wait time.Duration
	// Lease is the lease each receive asks for and each extension renews (at least
	// 100ms; default 30s). It is always sent, so the queue's own lease setting is
	// not used by Consume. While a handler runs, its lease is extended every Lease/2.
	Lease time.Duration
	// Concurrency is how many handlers run at once (default 1).
	Concurrency int
	// NackDelay is the delay of the nack after a handler error (0: deliverable again
	// at once).
	NackDelay time.Duration
}

func (o ConsumeOptions) withDefaults() ConsumeOptions {
	if o.Max == 0 {
		o.Max = ConsumeMaxDefault
	}
	if o.Wait == 0 {
		o.Wait = ConsumeWaitDefault
	}
	if o.Lease == 0 {
		o.Lease = ConsumeLeaseDefault
	}
	if o.Concurrency == 0 {
		o.Concurrency = 1
	}
	return o
}

func (o ConsumeOptions) validate() error {
	switch {
	case o.Max < 1 || o.Max > 1000:
		return invalidf("consume: max %d out of range 1..1000", o.Max)
	case o.Wait < 0 || o.Wait > consumeWaitMax:
		return invalidf("consume: wait %s out of range 0..%s", o.Wait, consumeWaitMax)
	case o.Lease < consumeLeaseMin:
		return invalidf("consume: lease %s below %s", o.Lease, consumeLeaseMin)
	case o.Concurrency < 1:
		return invalidf("consume: concurrency %d below 1", o.Concurrency)
	case o.NackDelay < 0:
		return invalidf("consume: nack delay %s is negative", o.NackDelay)
	}
	return nil
}

// Consume receives messages of queue in a loop and runs handler for each, with up
// to opts.Concurrency handlers at once:
//
//   - while a handler runs, its lease is extended every opts.Lease/2, so a long
//     handler does not see its message delivered to someone else;
//   - when the handler returns nil the message is acked; on an error (or a panic,
//     which is recovered and logged) it is nacked with opts.NackDelay;
//   - errors of receive (a failover, an unreachable broker) are logged and the loop
//     goes on after a jittered exponential backoff; the client's own failover
//     applies to every call;
//   - when ctx ends, Consume stops receiving, cancels the handlers' ctx, waits for
//     every running handler, settles its message (ack or nack, with a short deadline
//     of its own), and returns nil. No goroutine is left behind.
//
// Consume returns an error at once for invalid options, and when a receive is
// refused as invalid (ErrInvalid) or the queue does not exist (ErrNotFound).
//
// Delivery is at least once: a handler may see a message again when its ack was
// lost, its lease could not be extended (the broker was unreachable for longer than
// half a lease), or a failover happened while it ran. Handlers should be idempotent
// or check Delivery.Redelivered.
func (c *Client) Consume(ctx context.Context, queue string, handler Handler, opts ConsumeOptions) error {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return err
	}
	if handler == nil {
		return invalidf("consume: handler is nil")
	}
	if queue == "" {
		return invalidf("consume: queue name is empty")
	}
	log := c.log.With("queue", queue)
	slots := make(chan struct{}, opts.Concurrency) // a token per running handler
	var wg sync.WaitGroup
	defer wg.Wait()
	failures := 0
	for {
		// Hold at least one free slot before receiving, and at most opts.Max.
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		free := 1
	fill:
		for free < opts.Max {
			select {
			case slots <- struct{}{}:
				free++
			default:
				break fill
			}
		}
		ds, err := c.Receive(ctx, queue, ReceiveOptions{Max: free, Wait: opts.Wait, Lease: opts.Lease})
		if len(ds) > free { // more than asked for (a broker bug): hand the extra back
			c.handBack(log, queue, ds[free:])
			ds = ds[:free]
		}
		for range free - len(ds) {
			<-slots
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotFound) {
				return fmt.Errorf("tablemq: consume %q: %w", queue, err)
			}
			pause := jitter(expBackoff(c.cfg.backoffInitial, c.cfg.backoffMax, failures))
			failures++
			log.Warn("tablemq: consume: receive failed, retrying", "err", err, "failures", failures, "pause", pause)
			if sleep(ctx, pause) != nil {
				return nil
			}
			continue
		}
		failures = 0
		for _, d := range ds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				c.handle(ctx, log, queue, d, handler, opts)
			}()
		}
	}
}

// handle runs handler for d, extends d's lease while it runs, then acks or nacks d.
func (c *Client) handle(ctx context.Context, log *slog.Logger, queue string, d Delivery, handler Handler, opts ConsumeOptions) {
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// The extension loop runs until the handler returns, even after ctx ended (then
	// Consume is waiting for this handler, and its lease must not lapse meanwhile).
	stop := make(chan struct{})
	extended := make(chan struct{})
	go func() {
		defer close(extended)
		c.extendLoop(context.WithoutCancel(ctx), log, stop, queue, d, opts.Lease)
	}()
	err := runHandler(hctx, handler, d)
	close(stop)
	<-extended

	// Settle with a deadline of its own: ctx may have ended, and the message must
	// still be acked (or handed back) if the broker can be reached.
	sctx, scancel := c.settleContext(ctx)
	defer scancel()
	var (
		res  []ReceiptResult
		serr error
		op   = "ack"
	)
	if err == nil {
		res, serr = c.Ack(sctx, queue, d.Receipt)
	} else {
		op = "nack"
		log.Warn("tablemq: consume: handler failed, nacking", "id", d.ID, "delivery_count", d.DeliveryCount, "err", err)
		res, serr = c.Nack(sctx, queue, opts.NackDelay, d.Receipt)
	}
	switch {
	case serr != nil:
		log.Warn("tablemq: consume: "+op+" failed; the message will be delivered again when its lease ends",
			"id", d.ID, "err", serr)
	case len(res) == 1 && !res[0].OK:
		// receipt_unknown after a retried ack most likely means the first attempt
		// succeeded; after a lapsed lease it means the message is delivered again.
		log.Warn("tablemq: consume: "+op+" refused for this receipt", "id", d.ID, "err", res[0].Err)
	}
}

// settleContext returns the context of an ack or nack of Consume. It does not end
// with ctx: a message handled before Consume was stopped must still be settled. It
// is bounded by the client's retry deadline while ctx runs, and by one request
// timeout once ctx has ended (so a stop does not wait out a whole retry deadline
// when no broker answers).
func (c *Client) settleContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx.Err() != nil {
		return context.WithTimeout(context.WithoutCancel(ctx), c.cfg.requestTimeout)
	}
	var sctx context.Context
	var cancel context.CancelFunc
	if c.cfg.retryDeadline > 0 {
		sctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), c.cfg.retryDeadline+c.cfg.requestTimeout)
	} else {
		sctx, cancel = context.WithCancel(context.WithoutCancel(ctx))
	}
	var mu sync.Mutex
	var timer *time.Timer
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		timer = time.AfterFunc(c.cfg.requestTimeout, cancel)
	})
	return sctx, func() {
		stop()
		mu.Lock()
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
		cancel()
	}
}

// handBack nacks deliveries Consume cannot handle now.
func (c *Client) handBack(log *slog.Logger, queue string, ds []Delivery) {
	receipts := make([]string, len(ds))
	for i, d := range ds {
		receipts[i] = d.Receipt
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.requestTimeout)
	defer cancel()
	if _, err := c.Nack(ctx, queue, 0, receipts...); err != nil {
		log.Warn("tablemq: consume: handing back extra deliveries failed", "n", len(ds), "err", err)
	}
}

// runHandler calls handler, turning a panic into an error.
func runHandler(ctx context.Context, handler Handler, d Delivery) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("tablemq: consume: handler panicked: %v\n%s", r, debug.Stack())
		}
	}()
	return handler(ctx, d)
}

// extendLoop extends d's lease every lease/2 until stop is closed, or until the
// broker says the receipt is no longer leased.
func (c *Client) extendLoop(ctx context.Context, log *slog.Logger, stop <-chan struct{}, queue string, d Delivery, lease time.Duration) {
	period := lease / 2
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		// Each extension must end before the next is due; stop also ends it.
		ectx, cancel := context.WithTimeout(ctx, period)
		go func() {
			select {
			case <-stop:
				cancel()
			case <-ectx.Done():
			}
		}()
		res, err := c.Extend(ectx, queue, lease, d.Receipt)
		cancel()
		switch {
		case err != nil:
			select {
			case <-stop:
				return
			default:
			}
			log.Warn("tablemq: consume: extending the lease failed, will try again", "id", d.ID, "err", err)
		case len(res) == 1 && !res[0].OK:
			log.Warn("tablemq: consume: lease lost while the handler runs; the message may be delivered again",
				"id", d.ID, "err", res[0].Err)
			return
		}
	}
}
