package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Writer defaults.
const (
	MaxBatchRowsDefault  = 2000
	MaxBatchBytesDefault = 16 << 20
	CommitTimeoutDefault = 30 * time.Second
	// LanesDefault is the number of transactions a Writer keeps in flight at once when
	// WriterConfig.Lanes is 0 (on PostgreSQL; DialectMaxLanes caps the others at 1).
	// Measured (2026-11-22, PostgreSQL 15 on the same 2 vCPU as the broker and the
	// load generator, see BENCHMARKS.md): with one lane the writer was busy 96 % of
	// the time under batch publishing while the machine still had CPU to spare (the
	// broker encodes a batch while PostgreSQL waits, and the other way round); a
	// second lane, opened only for batches of LaneMinRows or more, raised batch
	// publishing by about a tenth and left one-message publishing as it was. 4 lanes
	// did no better than 2 on that CPU-bound machine; more are for a database whose
	// commits wait on something other than this machine's CPU (a remote server, a
	// slow disk).
	LanesDefault = 2
	// LanesMax is the largest number of lanes: each lane commits on a counter slot of
	// its own (0..SlotMax).
	LanesMax = SlotMax + 1
	// LaneMinRowsDefault is the smallest batch for which the writer opens another
	// transaction while one is in flight. Smaller batches wait for a lane to finish
	// and grow meanwhile: every transaction costs the database a fixed amount of work
	// (the fence, the counters, the commit record), and a group commit shares one WAL
	// flush among all its requests anyway. Measured on 2 vCPU (see BENCHMARKS.md):
	// without this rule, parallel transactions of a few one-message publishes each
	// lowered throughput by a quarter or more; batches of 100 messages did about as
	// well as one lane, or a little better.
	LaneMinRowsDefault = 64
)

// DialectMaxLanes returns the most lanes a Writer uses on a dialect. SQLite writes one
// transaction at a time anyway: 1. MySQL/MariaDB: 1 for now. Its batch deletes lock the
// rows they delete with a locking read (MySQL has no DELETE ... RETURNING), and on a
// nearly empty messages table (the steady state of a broker that keeps up) InnoDB
// plans that read as a scan of the whole primary key, which waits for the rows other
// transactions inserted: concurrent lanes deadlock (1213) often enough to exhaust the
// driver's retries (storetest WriterLanesConcurrent). PostgreSQL locks only the rows a
// statement really deletes: LanesMax.
func DialectMaxLanes(dialect string) int {
	switch dialect {
	case "sqlite", "mysql":
		return 1
	}
	return LanesMax
}

// WriterConfig configures a Writer. Zero values mean the defaults.
type WriterConfig struct {
	// MaxBatchRows bounds the rows merged into one transaction.
	MaxBatchRows int
	// MaxBatchBytes bounds the message payload bytes merged into one transaction.
	MaxBatchBytes int
	// SyncPeriod (journal-sync-period) is the longest the writer waits for more requests
	// to fill a batch once it has one. 0, the default, commits what is queued at once:
	// batches still grow under load because requests queue while a commit is in flight.
	SyncPeriod time.Duration
	// CommitTimeout bounds one transaction.
	CommitTimeout time.Duration
	// Lanes (writer-lanes) is the number of merged transactions in flight at once,
	// each on a connection and a counter slot of its own. 0 means LanesDefault; values
	// above DialectMaxLanes of the driver's dialect mean that (with a warning).
	Lanes int
	// LaneMinRows is the smallest batch (in rows) that starts a transaction while
	// another is in flight; a smaller one waits for a lane to finish, taking in the
	// requests that arrive meanwhile. 0 means LaneMinRowsDefault; 1 starts every
	// batch at once on a free lane.
	LaneMinRows int
	// Logger receives the writer's logs; nil means slog.Default().
	Logger *slog.Logger
	// OnFenced, if set, is called once (from a writer goroutine) when a commit fails
	// with ErrFenced.
	OnFenced func()
	// OnCommit, if set, is called after every commit attempt with the number of rows,
	// the time it took and its error. It must not block; with several lanes it is
	// called from several goroutines at once.
	OnCommit func(rows int, took time.Duration, err error)
}

// WithDefaults returns c with every zero field set to its default.
func (c WriterConfig) WithDefaults() WriterConfig {
	if c.MaxBatchRows <= 0 {
		c.MaxBatchRows = MaxBatchRowsDefault
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = MaxBatchBytesDefault
	}
	if c.CommitTimeout <= 0 {
		c.CommitTimeout = CommitTimeoutDefault
	}
	if c.LaneMinRows <= 0 {
		c.LaneMinRows = LaneMinRowsDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

type writeRequest struct {
	batch *Batch
	done  chan error // buffered(1)
}

// Writer is the group-commit writer. One goroutine, the dispatcher, owns the queue of
// pending requests: it merges queued requests into one Batch and hands it to a free
// lane, which commits it in one fenced transaction on the lane's counter slot, while
// the dispatcher goes on to the next batch. Up to Lanes transactions are in flight at
// once; requests queue (and merge) while every lane is busy, and a batch smaller than
// LaneMinRows waits (and grows) while any lane is busy. A barrier batch (one that
// must not be reordered with others: purges, binding deletes, page trims, counter
// deletes) waits until every lane is idle and commits alone before any later request
// starts, so it is ordered after every request queued before it and before every
// request queued after it. Requests that are in flight at once on different lanes
// commit in no particular order: a caller that needs one write ordered after another
// waits for the first Write to return. See the package documentation.
type Writer struct {
	drv Driver
	cfg WriterConfig

	reqs chan *writeRequest
	// free holds the counter slots of the idle lanes: taking one starts a lane,
	// putting it back ends it. Holding all of them means no transaction is in flight.
	free chan int
	// busy counts the lanes in flight; each sends on finished (without blocking) when
	// it ends, for grow.
	busy     atomic.Int32
	finished chan struct{}
	// With more than one lane, queued counts the rows of the requests in reqs and
	// holding the rows of the batch grow holds back (0 when none); Write sends on
	// enough (without blocking) when the two reach LaneMinRows, so that grow wakes only
	// when another lane is worth opening, not at every request.
	queued  atomic.Int64
	holding atomic.Int64
	enough  chan struct{}

	epoch  atomic.Int64
	fenced atomic.Bool

	mu       sync.Mutex // guards started, stopping
	started  bool
	stopping bool
	stop     chan struct{}
	done     chan struct{}
}

// NewWriter returns a Writer committing through drv under the given fencing epoch. Call
// Start before Write.
func NewWriter(drv Driver, epoch int64, cfg WriterConfig) *Writer {
	cfg = cfg.WithDefaults()
	if cfg.Lanes <= 0 {
		cfg.Lanes = LanesDefault
	}
	if most := DialectMaxLanes(drv.Dialect()); cfg.Lanes > most {
		cfg.Logger.Warn("writer: fewer lanes than asked on this database", "dialect", drv.Dialect(), "asked", cfg.Lanes, "lanes", most)
		cfg.Lanes = most
	}
	w := &Writer{
		drv:  drv,
		cfg:  cfg,
		reqs: make(chan *writeRequest, 4096),
		free: make(chan int, cfg.Lanes),
		// finished is buffered so that a lane never waits on it.
		finished: make(chan struct{}, 1),
		enough:   make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	for slot := range cfg.Lanes {
		w.free <- slot
	}
	w.epoch.Store(epoch)
	return w
}

// Lanes returns the number of transactions the writer keeps in flight at most.
func (w *Writer) Lanes() int { return w.cfg.Lanes }

// Epoch returns the fencing epoch the writer commits under.
func (w *Writer) Epoch() int64 { return w.epoch.Load() }

// SetEpoch gives the writer a new fencing epoch (after this broker took the lock again)
// and lifts a previous fenced state.
func (w *Writer) SetEpoch(epoch int64) {
	w.epoch.Store(epoch)
	w.fenced.Store(false)
}

// Fenced reports whether the writer has seen ErrFenced under its current epoch.
func (w *Writer) Fenced() bool { return w.fenced.Load() }

// Start starts the writer's dispatcher goroutine (lanes run on goroutines of their own
// while they commit). ctx is not retained; use Stop to end it.
func (w *Writer) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started {
		return errors.New("sqlstore: writer already started")
	}
	w.started = true
	go w.run()
	return nil
}

// Stop stops accepting requests, commits everything already queued, and waits until
// every lane has answered its requests and the dispatcher has ended. It is idempotent.
func (w *Writer) Stop() {
	w.mu.Lock()
	if !w.started {
		w.mu.Unlock()
		return
	}
	if !w.stopping {
		w.stopping = true
		close(w.stop)
	}
	w.mu.Unlock()
	<-w.done
}

// Write commits b, merged with other requests, and returns once its transaction has
// committed (nil) or failed (the error). Once queued, a request is always carried to
// its end so that the caller's in-memory state can follow the outcome: ctx bounds only
// the wait to get into the queue.
func (w *Writer) Write(ctx context.Context, b *Batch) error {
	if b.Empty() {
		return nil
	}
	if w.fenced.Load() {
		return ErrFenced
	}
	req := &writeRequest{batch: b, done: make(chan error, 1)}
	w.mu.Lock()
	if !w.started || w.stopping {
		w.mu.Unlock()
		return ErrClosed
	}
	// Holding mu while sending keeps Stop from closing the queue under us; the send
	// only blocks when 4096 requests are queued, and then the writer is draining.
	select {
	case w.reqs <- req:
	case <-ctx.Done():
		w.mu.Unlock()
		return ctx.Err()
	}
	w.mu.Unlock()
	if w.cfg.Lanes > 1 {
		if w.queued.Add(int64(b.rows()))+w.holding.Load() >= int64(w.cfg.LaneMinRows) {
			select {
			case w.enough <- struct{}{}:
			default: // a signal is pending already
			}
		}
	}
	return <-req.done
}

func (w *Writer) run() {
	defer close(w.done)
	var carry *writeRequest // a request taken from the queue that did not fit the last batch
	for {
		// A free lane first: while every lane is busy, requests queue and fill merges
		// them once one is free.
		slot := <-w.free
		first := carry
		carry = nil
		if first == nil {
			if first = w.next(); first == nil {
				w.free <- slot
				w.idle() // every lane has answered its requests
				return
			}
		}
		if first.batch.barrier() {
			for range w.cfg.Lanes - 1 { // wait until the other lanes are idle
				<-w.free
			}
			w.commit([]*writeRequest{first}, slot)
			w.release()
			continue
		}
		batch := []*writeRequest{first}
		carry = w.fill(&batch)
		if carry == nil {
			carry = w.grow(&batch)
		}
		w.busy.Add(1)
		go func() {
			w.commit(batch, slot)
			w.busy.Add(-1)
			select {
			case w.finished <- struct{}{}:
			default: // a signal is pending already
			}
			w.free <- slot
		}()
	}
}

// next returns the next queued request. After Stop it returns what is still queued,
// then nil: Stop refuses new requests before it closes stop, so none can follow.
func (w *Writer) next() *writeRequest {
	select {
	case r := <-w.reqs:
		return w.took(r)
	case <-w.stop:
		select {
		case r := <-w.reqs:
			return w.took(r)
		default:
			return nil
		}
	}
}

// took accounts for r leaving the queue and returns it.
func (w *Writer) took(r *writeRequest) *writeRequest {
	if w.cfg.Lanes > 1 {
		w.queued.Add(-int64(r.batch.rows()))
	}
	return r
}

// idle waits until every lane is idle and takes them all: no transaction is in
// flight until release.
func (w *Writer) idle() {
	for range w.cfg.Lanes {
		<-w.free
	}
}

// release gives back every lane, as when the writer was created.
func (w *Writer) release() {
	for slot := range w.cfg.Lanes {
		w.free <- slot
	}
}

// grow holds back a batch smaller than LaneMinRows while another lane is in flight:
// it adds the queued requests when, together, they reach LaneMinRows rows (Write
// signals enough), or once a lane finishes, whichever comes first. It returns a
// request it took but could not add.
func (w *Writer) grow(batch *[]*writeRequest) *writeRequest {
	rows, bytes := 0, 0
	for _, r := range *batch {
		rows += r.batch.rows()
		bytes += r.batch.bytes()
	}
	if rows >= w.cfg.LaneMinRows {
		return nil
	}
	// A lane sends on finished after it lowered busy: a signal left from before is
	// dropped first, then every lane that ends after the check of busy wakes the wait.
	// Likewise for enough: holding is published before the queue is looked at, so a
	// request queued after that look sees it and signals once the rows suffice.
	select {
	case <-w.finished:
	default:
	}
	select {
	case <-w.enough:
	default:
	}
	w.holding.Store(int64(rows))
	defer w.holding.Store(0)
	for w.busy.Load() > 0 {
		if r := w.drain(batch, &rows, &bytes); r != nil || rows >= w.cfg.LaneMinRows {
			return r
		}
		select {
		case <-w.enough:
		case <-w.finished:
			return w.drain(batch, &rows, &bytes)
		}
	}
	return w.drain(batch, &rows, &bytes)
}

// drain adds the queued requests to batch, without waiting, up to the batch bounds,
// keeping rows, bytes and holding up to date. It returns a request it took but could
// not add.
func (w *Writer) drain(batch *[]*writeRequest, rows, bytes *int) *writeRequest {
	for *rows < w.cfg.MaxBatchRows && *bytes < w.cfg.MaxBatchBytes {
		select {
		case r := <-w.reqs:
			if !w.add(batch, w.took(r), rows, bytes) {
				return r
			}
			w.holding.Store(int64(*rows))
		default:
			return nil
		}
	}
	return nil
}

// fill adds queued requests to batch until the bounds are reached, waiting up to
// SyncPeriod for more. It returns a request it took but could not add.
func (w *Writer) fill(batch *[]*writeRequest) *writeRequest {
	rows, bytes := (*batch)[0].batch.rows(), (*batch)[0].batch.bytes()
	var timer <-chan time.Time
	if w.cfg.SyncPeriod > 0 {
		t := time.NewTimer(w.cfg.SyncPeriod)
		defer t.Stop()
		timer = t.C
	}
	for rows < w.cfg.MaxBatchRows && bytes < w.cfg.MaxBatchBytes {
		var r *writeRequest
		select {
		case r = <-w.reqs:
		default:
			if timer == nil {
				return nil
			}
			select {
			case r = <-w.reqs:
			case <-timer:
				return nil
			}
		}
		if !w.add(batch, w.took(r), &rows, &bytes) {
			return r
		}
	}
	return nil
}

// add appends r to batch and counts its rows and bytes, unless r must commit alone
// (a barrier) or would take the batch past its bounds: then it reports false.
func (w *Writer) add(batch *[]*writeRequest, r *writeRequest, rows, bytes *int) bool {
	if r.batch.barrier() || *rows+r.batch.rows() > w.cfg.MaxBatchRows || *bytes+r.batch.bytes() > w.cfg.MaxBatchBytes {
		return false
	}
	*batch = append(*batch, r)
	*rows += r.batch.rows()
	*bytes += r.batch.bytes()
	return true
}

// commit commits the requests as one transaction on counter slot slot (the lane's) and
// answers them. If a merged batch fails for a reason other than fencing, each request
// is retried alone, on the same lane, so that one bad request cannot fail the others.
func (w *Writer) commit(reqs []*writeRequest, slot int) {
	var b *Batch
	if len(reqs) == 1 {
		b = reqs[0].batch
	} else {
		b = &Batch{}
		for _, r := range reqs {
			b.merge(r.batch)
		}
	}
	err := w.commitOne(b, slot)
	if err != nil && len(reqs) > 1 && !errors.Is(err, ErrFenced) {
		w.cfg.Logger.Warn("group commit failed; retrying its requests one by one", "requests", len(reqs), "error", err)
		for _, r := range reqs {
			r.done <- w.commitOne(r.batch, slot)
		}
		return
	}
	for _, r := range reqs {
		r.done <- err
	}
}

func (w *Writer) commitOne(b *Batch, slot int) error {
	if w.fenced.Load() {
		return ErrFenced
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.CommitTimeout)
	defer cancel()
	start := time.Now()
	epoch := w.epoch.Load()
	err := w.drv.BatchCommit(ctx, &BatchCommitParams{Epoch: epoch, Batch: b, Slot: slot})
	if w.cfg.OnCommit != nil {
		w.cfg.OnCommit(b.rows(), time.Since(start), err)
	}
	if errors.Is(err, ErrFenced) {
		if w.fenced.CompareAndSwap(false, true) {
			w.cfg.Logger.Error("write fenced: another broker took over the store; refusing all further writes", "epoch", epoch)
			if w.cfg.OnFenced != nil {
				w.cfg.OnFenced()
			}
		}
		return ErrFenced
	}
	if err != nil {
		return fmt.Errorf("sqlstore: group commit of %d rows: %w", b.rows(), err)
	}
	return nil
}
