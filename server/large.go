package server

// Large messages: bodies above Config.LargeMessageThreshold are streamed from the
// publisher into chunk rows of the large-messages table (sqlstore LargePut) and
// streamed back to consumers (Server.Body), so that no whole body is ever held in
// memory.
//
// Life of a large message:
//
//  1. PublishStream reads the body in chunks of Config.LargeChunkSize and writes them
//     under a message id of this live, several chunks per fenced transaction
//     (LargePut). The chunks are invisible: no message row names them yet.
//  2. It then publishes the message through the ordinary publish path with the id of
//     the chunks: the message rows (one per target queue, each holding a reference to
//     the chunks) and the idempotency row commit in one transaction.
//  3. Every delete of a message row (ack, expiry, purge, queue delete, the source row
//     of a dead-letter move) drops one reference; the transaction that drops the last
//     one deletes the chunks (the driver keeps the count on chunk 0). A dead-lettered
//     large message keeps its id, so its dead-letter row names the same chunks.
//
// An upload that fails (the publisher went away, the body is too large, the store
// failed, the idempotency key turned out to be a duplicate) deletes its chunks at
// once (LargeDelete, best effort; a failed delete is retried in the background). An
// upload cut by the death of its live cannot clean up: the next live sweeps the
// unreferenced chunks of every id below its own first id (LargeSweep) once, in the
// background, right after it activates. Ids of earlier epochs can never be published
// again (their lives are fenced), so those chunks can go.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/tablemq/tablemq/sqlstore"
)

// Defaults and limits of the large-message settings of Config.
const (
	// LargeMessageThresholdDefault is the body size above which PublishStream stores a
	// message as a large message (100 KiB).
	LargeMessageThresholdDefault = 100 << 10
	// LargeMessageThresholdMax bounds Config.LargeMessageThreshold: bodies up to the
	// threshold are stored in one row and inlined in receive answers.
	LargeMessageThresholdMax = 16 << 20
	// LargeChunkSizeDefault is the size of one chunk row of a large message (256 KiB).
	LargeChunkSizeDefault = 256 << 10
	// LargeChunkSizeMin and LargeChunkSizeMax bound Config.LargeChunkSize.
	LargeChunkSizeMin = 4 << 10
	LargeChunkSizeMax = 4 << 20
)

const (
	// largePutBytes bounds the chunk bytes of one LargePut transaction (at least one
	// chunk): the memory one upload holds.
	largePutBytes = 4 << 20
	// largeScanBytes bounds the chunk bytes one LargeScan of a body reader returns (at
	// least one chunk): the memory one download holds.
	largeScanBytes = 1 << 20
	// largeSweepLimit is the number of messages one LargeSweep transaction removes.
	largeSweepLimit = 100
	// largeRetryInterval is the pause before a failed sweep or cleanup is tried again.
	largeRetryInterval = 5 * time.Second
	// largeCleanupTimeout bounds the deletion of the chunks of a failed upload.
	largeCleanupTimeout = 30 * time.Second
)

// largeDefaults sets the zero large-message fields of c to their defaults.
func (c Config) largeDefaults() Config {
	if c.LargeMessageThreshold <= 0 {
		c.LargeMessageThreshold = LargeMessageThresholdDefault
	}
	if c.LargeChunkSize <= 0 {
		c.LargeChunkSize = LargeChunkSizeDefault
	}
	return c
}

// validateLarge checks the large-message settings of c (defaults applied).
func (c Config) validateLarge() error {
	if c.LargeMessageThreshold > LargeMessageThresholdMax {
		return fmt.Errorf("large-message-threshold: at most %d (16MiB), got %d", LargeMessageThresholdMax, c.LargeMessageThreshold)
	}
	if c.LargeChunkSize < LargeChunkSizeMin || c.LargeChunkSize > LargeChunkSizeMax {
		return fmt.Errorf("large-chunk-size: must be %d (4KiB) to %d (4MiB), got %d", LargeChunkSizeMin, LargeChunkSizeMax, c.LargeChunkSize)
	}
	return nil
}

// largeState is the large-message machinery of one activation: the sweeper
// goroutine and the chunk deletions it retries. Its mutex is a leaf.
type largeState struct {
	mu      sync.Mutex
	pending []int64       // ids whose chunks could not be deleted yet
	wake    chan struct{} // buffered(1): pending grew
	done    chan struct{} // closed when the sweeper returned
}

// startLarge starts the sweeper of this activation. It runs until deactivation.
func (l *live) startLarge() {
	l.large = &largeState{wake: make(chan struct{}, 1), done: make(chan struct{})}
	go l.largeSweeper()
}

// stopLarge waits for the sweeper, which returns once l.stopping is closed.
func (l *live) stopLarge() {
	if l.large != nil {
		<-l.large.done
	}
}

// stoppingCtx returns a context of parent that also ends when this activation
// stops, with ErrNotLive as its cause.
func (l *live) stoppingCtx(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	go func() {
		select {
		case <-l.stopping:
			cancel(fmt.Errorf("server: %w: the broker is deactivating", ErrNotLive))
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// largeSweeper deletes the chunks that earlier lives left unreferenced, then retries
// the chunk deletions of this live's failed uploads whenever there are some.
func (l *live) largeSweeper() {
	st := l.large
	defer close(st.done)
	ctx, cancel := l.stoppingCtx(context.Background())
	defer cancel()
	below := l.epoch << idCounterBits // the first id of this epoch
	swept := false
	var total int64
	for {
		retry := false
		if !swept {
			n, err := l.s.drv.LargeSweep(ctx, &sqlstore.LargeSweepParams{Epoch: l.epoch, Below: below, Limit: largeSweepLimit})
			switch {
			case ctx.Err() != nil:
				return
			case errors.Is(err, sqlstore.ErrFenced):
				return // another live took over: it sweeps
			case err != nil:
				l.log.Warn("sweeping abandoned large-message uploads failed; retrying", "error", err)
				retry = true
			case n >= largeSweepLimit:
				total += n
				continue
			default:
				total += n
				swept = true
				if total > 0 {
					l.log.Info("abandoned large-message uploads swept", "messages", total)
				}
			}
		}
		st.mu.Lock()
		ids := st.pending
		st.pending = nil
		st.mu.Unlock()
		for i, id := range ids {
			if err := l.s.drv.LargeDelete(ctx, l.epoch, id); err != nil {
				if ctx.Err() != nil || errors.Is(err, sqlstore.ErrFenced) {
					return // the next live sweeps them
				}
				l.log.Warn("deleting the chunks of a failed upload failed; retrying", "message_id", id, "error", err)
				st.mu.Lock()
				st.pending = append(st.pending, ids[i:]...)
				st.mu.Unlock()
				retry = true
				break
			}
		}
		var timer *time.Timer
		var tick <-chan time.Time
		if retry {
			timer = time.NewTimer(largeRetryInterval)
			tick = timer.C
		}
		select {
		case <-ctx.Done():
		case <-st.wake:
		case <-tick:
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// dropUpload deletes the chunks of an upload that will not be published. A failure
// is logged and the deletion handed to the sweeper.
func (l *live) dropUpload(id int64, why error) {
	ctx, cancel := context.WithTimeout(context.Background(), largeCleanupTimeout)
	defer cancel()
	err := l.s.drv.LargeDelete(ctx, l.epoch, id)
	if err == nil {
		l.log.Debug("chunks of a failed large-message upload deleted", "message_id", id, "reason", why)
		return
	}
	if errors.Is(err, sqlstore.ErrFenced) {
		l.log.Info("chunks of a failed large-message upload left for the next live to sweep", "message_id", id, "error", err)
		return
	}
	l.log.Warn("deleting the chunks of a failed large-message upload failed; retrying in the background", "message_id", id, "error", err)
	if st := l.large; st != nil {
		st.mu.Lock()
		st.pending = append(st.pending, id)
		st.mu.Unlock()
		select {
		case st.wake <- struct{}{}:
		default:
		}
	}
}

// storeErr maps a driver error to the server's sentinels.
func storeErr(what string, err error) error {
	if errors.Is(err, sqlstore.ErrFenced) || errors.Is(err, sqlstore.ErrClosed) {
		return fmt.Errorf("server: %s: %w: %w", what, ErrNotLive, err)
	}
	return fmt.Errorf("server: %s: %w: %w", what, ErrUnavailable, err)
}

// PublishStream publishes one message to a queue, reading its body from body: m.Body
// (usually empty) followed by everything body yields until io.EOF. A body of at most
// Config.LargeMessageThreshold bytes is published as PublishQueue does. A larger body
// is streamed into chunk rows of the store, a few chunks at a time, never whole in
// memory, and the message is then committed with its idempotency row in one
// transaction; a large message is always persistent (m.NonPersistent is ignored).
//
// A body above Config.MaxMessageSize fails with ErrTooLarge; an error of body fails
// with ErrInvalid wrapping it. On any failure the chunks already written are deleted.
// A publish whose idempotency key is a known duplicate answers the first message's
// id without reading the body. The error is the failure of the publish
// (PublishResult.Err is never set).
func (s *Server) PublishStream(ctx context.Context, queueName string, m Message, body io.Reader) (PublishResult, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return PublishResult{}, err
	}
	if _, err := l.queue(queueName); err != nil {
		return PublishResult{}, err
	}
	publish := func(ctx context.Context, msgs []Message) ([]PublishResult, error) {
		return l.publishQueue(ctx, queueName, msgs) // looks the queue up again: it may have been deleted during the upload
	}
	return l.publishStream(ctx, queueName, m, body, publish)
}

// PublishAddressStream is PublishStream to an address, routed to its bound queues
// when the message is committed. A large message fanned out to several queues stores
// its chunks once.
func (s *Server) PublishAddressStream(ctx context.Context, address string, m Message, body io.Reader) (PublishResult, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return PublishResult{}, err
	}
	info, err := l.addressInfo(address)
	if err != nil {
		return PublishResult{}, err
	}
	if len(info.Queues) == 0 {
		return PublishResult{}, fmt.Errorf("server: address %q has no bound queue, nothing was stored: %w", address, ErrConflict)
	}
	publish := func(ctx context.Context, msgs []Message) ([]PublishResult, error) {
		return l.publishAddress(ctx, address, msgs)
	}
	return l.publishStream(ctx, addressDupScope(address), m, body, publish)
}

// publishStream implements PublishStream and PublishAddressStream; scope is the
// idempotency scope and publish the ordinary publish path of the target.
func (l *live) publishStream(ctx context.Context, scope string, m Message, body io.Reader,
	publish func(context.Context, []Message) ([]PublishResult, error)) (PublishResult, error) {
	maxSize := l.cfg.MaxMessageSize
	if err := m.validate(maxSize); err != nil {
		return PublishResult{}, err
	}
	if m.large != nil {
		return PublishResult{}, invalidf("message already names uploaded chunks")
	}
	if key := m.IdempotencyKey; key != "" {
		if id, ok := l.knownDuplicate(ctx, scope, key); ok {
			l.s.ctr.duplicates.Add(1)
			return PublishResult{ID: formatID(id), Duplicate: true}, nil
		}
	}
	if body == nil {
		body = bytes.NewReader(nil)
	}
	// The head decides: at most the threshold is an ordinary message.
	threshold := l.cfg.LargeMessageThreshold
	head, src := m.Body, body
	if int64(len(head)) <= threshold {
		src = io.MultiReader(bytes.NewReader(m.Body), body)
		var buf bytes.Buffer
		if _, err := buf.ReadFrom(io.LimitReader(src, threshold+1)); err != nil {
			return PublishResult{}, readErr(err)
		}
		head = buf.Bytes()
		if int64(len(head)) <= threshold {
			m.Body = head
			return onePublishResult(publish(ctx, []Message{m}))
		}
	}

	id, err := l.nextID()
	if err != nil {
		return PublishResult{}, err
	}
	uctx, cancel := l.stoppingCtx(ctx)
	size, err := l.upload(uctx, id, io.MultiReader(bytes.NewReader(head), src))
	if err != nil && uctx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("server: large message upload: %w", context.Cause(uctx)) // deactivated
	}
	cancel()
	if err != nil {
		l.dropUpload(id, err)
		return PublishResult{}, err
	}
	m.Body = nil
	m.NonPersistent = false
	m.large = &largeRef{id: id, size: size}
	res, err := onePublishResult(publish(ctx, []Message{m}))
	switch {
	case err != nil:
		// A write that failed may still have committed; LargeDelete leaves referenced
		// chunks alone.
		l.dropUpload(id, err)
		return PublishResult{}, err
	case res.Duplicate:
		l.dropUpload(id, errors.New("duplicate idempotency key"))
	}
	return res, nil
}

// onePublishResult turns the answer of a publish of one message into its result.
func onePublishResult(res []PublishResult, err error) (PublishResult, error) {
	if err != nil {
		return PublishResult{}, err
	}
	if len(res) != 1 {
		return PublishResult{}, fmt.Errorf("server: publish returned %d results for one message", len(res))
	}
	if res[0].Err != nil {
		return PublishResult{}, res[0].Err
	}
	return res[0], nil
}

// readErr wraps an error of the publisher's body reader.
func readErr(err error) error {
	return fmt.Errorf("server: reading the message body: %w: %w", ErrInvalid, err)
}

// knownDuplicate reports the message id of an idempotency key this scope has
// committed already, from memory or (when memory may not know every key) from the
// store. It never claims the key: the publish does that, and finds a duplicate that
// appeared meanwhile.
func (l *live) knownDuplicate(ctx context.Context, scope, key string) (int64, bool) {
	d := l.dedupFor(scope)
	d.mu.Lock()
	e := d.m[key]
	if e != nil && e.settled {
		id := e.id
		d.mu.Unlock()
		return id, true
	}
	d.mu.Unlock()
	if e != nil || l.keysAllKnown() {
		return 0, false // pending: the publish waits for it
	}
	id, err := l.s.drv.DuplicateGet(ctx, &sqlstore.DuplicateGetParams{Queue: scope, Key: key})
	if err != nil {
		return 0, false // not found, or the publish will ask again
	}
	return id, true
}

// upload writes the body read from r as the chunks of message id and returns its
// size. It holds at most largePutBytes of the body at a time.
func (l *live) upload(ctx context.Context, id int64, r io.Reader) (int64, error) {
	chunkSize := l.cfg.LargeChunkSize
	perPut := max(1, largePutBytes/chunkSize)
	bufs := make([][]byte, 0, perPut)
	var size int64
	var next int32
	for eof := false; !eof; {
		chunks := bufs[:0]
		for len(chunks) < perPut {
			var b []byte
			if len(chunks) < len(bufs) {
				b = bufs[len(chunks)]
			} else {
				b = make([]byte, chunkSize)
				bufs = append(bufs, b)
			}
			n, err := io.ReadFull(r, b)
			if n > 0 {
				chunks = append(chunks, b[:n])
				size += int64(n)
			}
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					if cerr := context.Cause(ctx); cerr != nil {
						return 0, fmt.Errorf("server: large message upload: %w", cerr)
					}
					return 0, readErr(err)
				}
				eof = true
				break
			}
			if size > l.cfg.MaxMessageSize {
				break
			}
		}
		if size > l.cfg.MaxMessageSize {
			return 0, fmt.Errorf("%w: message body of more than %d bytes, at most %d", ErrTooLarge, l.cfg.MaxMessageSize, l.cfg.MaxMessageSize)
		}
		if len(chunks) == 0 {
			break
		}
		err := l.s.drv.LargePut(ctx, &sqlstore.LargePutParams{Epoch: l.epoch, MessageID: id, FirstChunk: next, Chunks: chunks})
		if err != nil {
			if cerr := context.Cause(ctx); cerr != nil {
				return 0, fmt.Errorf("server: large message upload: %w", cerr)
			}
			return 0, storeErr("write large message chunks", err)
		}
		next += int32(len(chunks))
	}
	return size, nil
}

// BodyReader streams the body of a received message: an io.ReadCloser that reads a
// large message's chunks from the store a few at a time (bounded memory), or serves
// an inline body from memory. It is not safe for concurrent use. The ctx given to
// Server.Body bounds its reads.
type BodyReader struct {
	// Size is the body size in bytes.
	Size int64
	// ContentType is the message's content type.
	ContentType string
	// Large reports whether the body is read from chunk rows.
	Large bool

	ctx    context.Context
	l      *live
	id     int64
	inline *bytes.Reader // an inline body; nil for a large one

	buf    [][]byte // chunks read, not yet consumed
	next   int32    // the next chunk to read from the store
	last   bool     // the last chunk has been read from the store
	read   int64    // bytes handed out
	err    error    // sticky error
	closed bool
}

// Read implements io.Reader. A large message whose chunks disappear while it is read
// (acked meanwhile) ends with io.ErrUnexpectedEOF; a broker that stops being live
// ends the read with ErrNotLive.
func (b *BodyReader) Read(p []byte) (int, error) {
	if b.closed {
		return 0, fmt.Errorf("server: read of a closed message body: %w", ErrInvalid)
	}
	if b.inline != nil {
		return b.inline.Read(p)
	}
	if b.err != nil {
		return 0, b.err
	}
	for len(b.buf) == 0 {
		if b.last {
			if b.read != b.Size {
				b.err = fmt.Errorf("server: message %d: body ended after %d of %d bytes (deleted meanwhile?): %w",
					b.id, b.read, b.Size, io.ErrUnexpectedEOF)
				return 0, b.err
			}
			b.err = io.EOF
			return 0, io.EOF
		}
		if err := b.fill(); err != nil {
			b.err = err
			return 0, err
		}
	}
	n := copy(p, b.buf[0])
	b.buf[0] = b.buf[0][n:]
	if len(b.buf[0]) == 0 {
		b.buf[0] = nil
		b.buf = b.buf[1:]
	}
	b.read += int64(n)
	if b.read > b.Size {
		b.err = fmt.Errorf("server: message %d: body longer than its size %d: %w", b.id, b.Size, ErrUnavailable)
		return n, b.err
	}
	return n, nil
}

// fill reads the next chunks from the store.
func (b *BodyReader) fill() error {
	if b.l.isStopping() {
		return fmt.Errorf("server: reading message %d: %w: the broker is deactivating", b.id, ErrNotLive)
	}
	limit := max(1, largeScanBytes/b.l.cfg.LargeChunkSize)
	chunks, err := b.l.s.drv.LargeScan(b.ctx, &sqlstore.LargeScanParams{MessageID: b.id, FromChunk: b.next, Limit: limit})
	if err != nil {
		if b.ctx.Err() != nil {
			return fmt.Errorf("server: reading message %d: %w", b.id, b.ctx.Err())
		}
		return storeErr(fmt.Sprintf("read large message %d", b.id), err)
	}
	b.next += int32(len(chunks))
	b.last = len(chunks) < limit
	for _, c := range chunks {
		if len(c) > 0 {
			b.buf = append(b.buf, c)
		}
	}
	return nil
}

// Close implements io.Closer. It releases the chunks held; it never fails.
func (b *BodyReader) Close() error {
	b.closed = true
	b.buf = nil
	b.inline = nil
	return nil
}

// bodySource is what Body found for a receipt.
type bodySource struct {
	id          int64
	large       bool
	size        int64
	contentType string
	body        []byte
}

// Body returns a reader of the body of message id of queue, for the receipt of its
// current delivery. The receipt follows the rules of Ack: a receipt of this live
// must be the message's latest delivery (its lease may have ended as long as nobody
// received the message since); a receipt of an earlier live is accepted while this
// live has not delivered the message, so a download cut by a failover can start
// again on the new live. Errors: ErrReceiptInvalid (malformed, or of another
// message), ErrReceiptUnknown, ErrReceiptStale, ErrQueueNotFound.
//
// The reader works for every message; for a small one it serves the body from
// memory. ctx bounds the reads of the returned reader as well.
func (s *Server) Body(ctx context.Context, queue, id, receiptStr string) (*BodyReader, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return nil, err
	}
	q, err := l.queue(queue)
	if err != nil {
		return nil, err
	}
	mid, err := strconv.ParseInt(id, 10, 64)
	if err != nil || mid < 1 {
		return nil, invalidf("message id %q: not a message id", id)
	}
	r, err := parseReceipt(receiptStr)
	if err != nil {
		return nil, err
	}
	if r.id != mid {
		return nil, fmt.Errorf("server: receipt %q is not a receipt of message %d: %w", receiptStr, mid, ErrReceiptInvalid)
	}
	src, err := q.bodySource(ctx, receiptStr, r)
	if err != nil {
		return nil, err
	}
	br := &BodyReader{Size: src.size, ContentType: src.contentType, Large: src.large, ctx: ctx, l: l, id: src.id}
	if !src.large {
		br.inline = bytes.NewReader(src.body)
		return br, nil
	}
	// Read the first chunks now, so that a message deleted meanwhile is an error
	// before anything is sent.
	if err := br.fill(); err != nil {
		return nil, err
	}
	if br.Size > 0 && len(br.buf) == 0 {
		return nil, receiptErr(receiptStr, ErrReceiptUnknown)
	}
	return br, nil
}

// bodySource finds the message a receipt names, by the rules of ack.
func (q *queue) bodySource(ctx context.Context, s string, r receipt) (bodySource, error) {
	l := q.l
	q.mu.Lock()
	if q.deleting || q.deleted {
		q.mu.Unlock()
		return bodySource{}, q.notFound()
	}
	m := q.index[r.id]
	var err error
	switch {
	case r.epoch == l.epoch:
		switch {
		case m == nil || m.state == stBusy || !m.leasedHere:
			err = receiptErr(s, ErrReceiptUnknown)
		case m.nonce != r.nonce:
			err = receiptErr(s, ErrReceiptStale)
		}
	case r.epoch < l.epoch:
		_, deleting := q.pendingDeletes[r.id]
		switch {
		case m != nil && m.state == stBusy, deleting:
			err = receiptErr(s, ErrReceiptUnknown)
		case m != nil && m.leasedHere:
			err = receiptErr(s, ErrReceiptStale)
		}
	default:
		err = receiptErr(s, ErrReceiptUnknown)
	}
	if err != nil {
		q.mu.Unlock()
		return bodySource{}, err
	}
	if m != nil {
		src := bodySource{id: m.id, large: m.large, size: m.size, contentType: m.contentType, body: m.body}
		q.mu.Unlock()
		if !src.large {
			src.size = int64(len(src.body))
		}
		return src, nil
	}
	q.mu.Unlock()

	// A receipt of an earlier live for a message this live has not taken into memory:
	// the store knows whether it still exists.
	rows, err := l.s.drv.MessagesByID(ctx, q.name, []int64{r.id})
	if err != nil {
		return bodySource{}, fmt.Errorf("server: receipt %q: %w: %w", s, ErrUnavailable, err)
	}
	if len(rows) != 1 {
		return bodySource{}, receiptErr(s, ErrReceiptUnknown)
	}
	row := &rows[0]
	src := bodySource{id: row.ID, large: row.Large, size: row.Size, contentType: row.ContentType, body: row.Body}
	if !src.large {
		src.size = int64(len(src.body))
	}
	return src, nil
}

// InlineBody returns a BodyReader of a body held in memory, for adapters and tests
// that stand in for Server.Body.
func InlineBody(body []byte, contentType string) *BodyReader {
	return &BodyReader{Size: int64(len(body)), ContentType: contentType, inline: bytes.NewReader(body)}
}
