package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// Large messages. A body above the broker's large-message threshold (100 KiB by
// default) is streamed into chunks by the broker and never inlined in a receive
// answer: Delivery.Large is set, Delivery.Body is empty and Client.Body reads it.
// PublishStream publishes a body of any size from an io.Reader without holding it in
// memory.

// PublishStream publishes one message to queue whose body is read from body (msg.Body
// is ignored), streamed to the broker without being held in memory. It returns the
// message's id once the broker committed it; bodies above the broker's
// max-message-size fail with ErrTooLarge.
//
// Failover: every attempt carries the same Idempotency-Key (msg.IdempotencyKey, or
// one generated for this call), as for Publish. Each attempt asks the broker before
// sending the body (Expect: 100-continue), so an answer of a backup consumes none of
// it. A body that is an io.Seeker (an *os.File, a *bytes.Reader) is sent again from
// its start when an attempt fails midway, so a publish cut by a failover is retried
// on the new live. Any other reader can be sent only once: the call is retried only
// while no byte of it was read, and otherwise fails with the error of the cut
// attempt; publish again with the same IdempotencyKey to be safe from duplicates.
// Attempts are bounded by ctx only (not by the request timeout), as an upload can
// take long.
func (c *Client) PublishStream(ctx context.Context, queue string, body io.Reader, msg Message) (PublishResult, error) {
	p, err := pathOf("queues", queue, "/messages")
	if err != nil {
		return PublishResult{}, err
	}
	return c.publishStream(ctx, p, body, msg)
}

// PublishAddressStream is PublishStream to an address, routed to its bound queues.
func (c *Client) PublishAddressStream(ctx context.Context, address string, body io.Reader, msg Message) (PublishResult, error) {
	p, err := pathOf("addresses", address, "/messages")
	if err != nil {
		return PublishResult{}, err
	}
	return c.publishStream(ctx, p, body, msg)
}

// errNotReplayable ends the retries of a streamed publish whose body was partly read
// and cannot be read again.
var errNotReplayable = errors.New("the body is not an io.Seeker and was partly sent, so it cannot be sent again")

// publishStream sends a streamed single publish to path.
func (c *Client) publishStream(ctx context.Context, path string, body io.Reader, msg Message) (PublishResult, error) {
	if body == nil {
		return PublishResult{}, invalidf("publish stream: body is nil")
	}
	h, key, err := publishHeaders(msg)
	if err != nil {
		return PublishResult{}, err
	}
	src := &replayBody{r: body, length: -1}
	if s, ok := body.(io.Seeker); ok {
		start, err := s.Seek(0, io.SeekCurrent)
		if err == nil {
			end, err2 := s.Seek(0, io.SeekEnd)
			_, err3 := s.Seek(start, io.SeekStart)
			if err2 == nil && err3 == nil {
				src.seeker, src.start, src.length = s, start, end-start
			}
		}
	}
	req := request{method: http.MethodPost, path: path, header: h}
	var last error
	req.send = func(ctx context.Context, idx int) (*response, error) {
		r, n, err := src.rewind()
		if err != nil {
			if last != nil {
				return nil, fmt.Errorf("tablemq: POST %s: %w (last error: %v)", path, err, last)
			}
			return nil, fmt.Errorf("tablemq: POST %s: %w", path, err)
		}
		resp, err := c.attemptStream(ctx, idx, req, r, n, false)
		if err != nil {
			last = err
		}
		return resp, err
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return PublishResult{IdempotencyKey: key}, err
	}
	var out publishResultJSON
	if err := json.Unmarshal(resp.body, &out); err != nil {
		return PublishResult{IdempotencyKey: key}, fmt.Errorf("tablemq: POST %s: decoding the answer of %s: %w", path, resp.url, err)
	}
	return PublishResult{ID: out.ID, Duplicate: out.Duplicate, IdempotencyKey: key}, nil
}

// replayBody hands each attempt of a streamed publish its body: the seeker rewound
// to its start, or the reader itself while nothing of it has been read. The
// transport may go on reading an attempt's body after the attempt returned, until
// it closes it: the next attempt waits for that.
type replayBody struct {
	r      io.Reader
	seeker io.Seeker
	start  int64
	length int64 // -1 when unknown
	read   int64 // bytes read by earlier attempts (non-seekers)
	prev   *attemptBody
}

// rewind returns the body of the next attempt and its length (-1 when unknown).
func (b *replayBody) rewind() (*attemptBody, int64, error) {
	if b.prev != nil {
		<-b.prev.closed
	}
	var r io.Reader
	if b.seeker != nil {
		if _, err := b.seeker.Seek(b.start, io.SeekStart); err != nil {
			return nil, 0, fmt.Errorf("rewinding the body: %w", err)
		}
		r = io.LimitReader(b.r, b.length)
	} else {
		if b.prev != nil && b.read > 0 {
			return nil, 0, errNotReplayable
		}
		r = &countingReader{r: b.r, n: &b.read}
	}
	b.prev = &attemptBody{r: r, closed: make(chan struct{})}
	return b.prev, b.length, nil
}

// attemptBody is the body of one attempt; closed is closed once the transport is
// done with it.
type attemptBody struct {
	r      io.Reader
	closed chan struct{}
	once   sync.Once
}

func (a *attemptBody) Read(p []byte) (int, error) { return a.r.Read(p) }

// Close implements io.Closer.
func (a *attemptBody) Close() error {
	a.once.Do(func() { close(a.closed) })
	return nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n *int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

// attemptStream sends req once to broker idx with body (of length bytes, -1 when
// unknown; nil for none), which is closed in every case. With streamAnswer a 2xx
// answer is returned unread in response.stream, and the request timeout bounds only
// the wait for the answer's headers; otherwise the answer is read whole and only ctx
// bounds the attempt (an upload may be long).
func (c *Client) attemptStream(ctx context.Context, idx int, req request, body *attemptBody, length int64, streamAnswer bool) (*response, error) {
	base := c.urls[idx]
	var rd io.Reader
	if body != nil {
		rd = body
		if length == 0 {
			_ = body.Close()
			rd = http.NoBody
		}
	}
	actx, cancel := context.WithCancel(ctx)
	var timer *time.Timer
	if streamAnswer {
		timer = time.AfterFunc(c.cfg.requestTimeout+req.extra, cancel)
	}
	fail := func(err error) (*response, error) {
		if timer != nil {
			timer.Stop()
		}
		cancel()
		return nil, err
	}
	hr, err := http.NewRequestWithContext(actx, req.method, base+req.path, rd)
	if err != nil {
		if body != nil {
			_ = body.Close()
		}
		return fail(fmt.Errorf("tablemq: %s %s: %w", req.method, req.path, err))
	}
	for k, vs := range req.header {
		hr.Header[k] = vs
	}
	if body != nil {
		hr.ContentLength = length
		if length != 0 {
			// The body goes out only once the broker asked for it: a backup's 503 (or
			// a 413 on the Content-Length) consumes none of it, so the attempt on the
			// next broker still has the whole body, seekable or not.
			hr.Header.Set("Expect", "100-continue")
		}
	}
	if !streamAnswer {
		hr.Header.Set("Accept", "application/json")
	}
	r, err := c.hc.Do(hr)
	if err != nil {
		return fail(&transportError{url: base, err: err})
	}
	if timer != nil && !timer.Stop() {
		_ = r.Body.Close()
		return fail(&transportError{url: base, err: fmt.Errorf("no answer within %s", c.cfg.requestTimeout+req.extra)})
	}
	if r.StatusCode >= 200 && r.StatusCode < 300 && streamAnswer {
		return &response{status: r.StatusCode, url: base, header: r.Header,
			stream: &cancelOnClose{ReadCloser: r.Body, cancel: cancel}}, nil
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	_ = r.Body.Close()
	cancel()
	if err != nil {
		return nil, &transportError{url: base, err: fmt.Errorf("reading the answer: %w", err)}
	}
	if r.StatusCode >= 200 && r.StatusCode < 300 {
		return &response{status: r.StatusCode, body: data, url: base}, nil
	}
	return nil, c.answerError(idx, r, data)
}

// cancelOnClose ends the request of a streamed answer when it is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
	once   sync.Once
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.once.Do(c.cancel)
	return err
}

// MessageBody is the body of a received message, streamed from the broker.
type MessageBody struct {
	io.ReadCloser
	// Size is the body size in bytes.
	Size int64
	// ContentType is the message's content type.
	ContentType string
}

// Body streams the body of a received message: the one of Delivery.ID, for its
// receipt (the current delivery, as for Ack). It works for every message and is the
// way to read a large one (Delivery.Large). The caller must Close it.
//
// Finding the live broker fails over as for the other calls. A read that fails
// midway (the live broker died, a failover) returns an error wrapping
// io.ErrUnexpectedEOF; call Body again with the same receipt: the new live serves
// the whole body again as long as it has not delivered the message to someone else.
func (c *Client) Body(ctx context.Context, queue, id, receipt string) (*MessageBody, error) {
	if id == "" || receipt == "" {
		return nil, invalidf("body: message id and receipt are required")
	}
	p, err := pathOf("queues", queue, "/messages/"+url.PathEscape(id)+"/body?receipt="+url.QueryEscape(receipt))
	if err != nil {
		return nil, err
	}
	req := request{method: http.MethodGet, path: p}
	req.send = func(ctx context.Context, idx int) (*response, error) {
		return c.attemptStream(ctx, idx, req, nil, 0, true)
	}
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	return &MessageBody{
		ReadCloser:  resp.stream,
		Size:        parseSize(resp.header.Get("Content-Length")),
		ContentType: resp.header.Get("Content-Type"),
	}, nil
}

// parseSize reads a Content-Length header; -1 when absent or malformed.
func parseSize(v string) int64 {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}
