package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/tablemq/tablemq/server"
)

// Large messages over HTTP. A single publish reads at most the large-message
// threshold plus one byte of its body; a body that turns out larger is streamed on
// to the broker (Broker.PublishStream), which stores it in chunks, so no whole body
// is held in memory. A receive answer marks such a message ("large": true, its
// "size", and an empty "data"); its body is read with
// GET /v1/queues/{queue}/messages/{id}/body?receipt=..., which streams the raw bytes.

// uploadIdleTimeout is how long a streamed upload may go without receiving a byte
// before it is cut. It replaces the server's overall read timeout, which a large
// body on a slow link would exceed.
const uploadIdleTimeout = 2 * time.Minute

// streamFunc publishes one message whose body is streamed, to a queue or an address.
type streamFunc func(ctx context.Context, target string, m server.Message, body io.Reader) (server.PublishResult, error)

// readHead checks the declared length of a single publish and reads the first
// threshold+1 bytes of its body. more is true when the body goes on past them; the
// rest is then read from rest.
func (a *api) readHead(w http.ResponseWriter, r *http.Request) (head []byte, rest io.Reader, more bool, err error) {
	limit := a.cfg.MaxBodyBytes
	if r.ContentLength > limit {
		return nil, nil, false, tooLargef("message body of %d bytes exceeds %d bytes", r.ContentLength, limit)
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	n := a.cfg.LargeMessageThreshold + 1
	if r.ContentLength >= 0 && r.ContentLength < n {
		n = r.ContentLength // a small body costs no more than its size
	}
	var buf bytes.Buffer
	buf.Grow(int(n))
	_, err = buf.ReadFrom(io.LimitReader(body, a.cfg.LargeMessageThreshold+1))
	if err == nil {
		head = buf.Bytes()
		more = int64(len(head)) > a.cfg.LargeMessageThreshold
		return head, body, more, nil
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, nil, false, err
	}
	return nil, nil, false, fmt.Errorf("%w: reading the request body: %w", server.ErrInvalid, err)
}

// publishLarge streams the rest of a single publish whose head is in msg.Body.
func (a *api) publishLarge(w http.ResponseWriter, r *http.Request, target string, msg server.Message, rest io.Reader, stream streamFunc) (server.PublishResult, error) {
	rc := http.NewResponseController(w)
	body := &idleDeadlineReader{r: rest, rc: rc}
	res, err := stream(r.Context(), target, msg, body)
	if err == nil {
		// A duplicate is answered without reading the body: read the rest (bounded by
		// max-message-size), or the client, still sending, would see the connection
		// reset instead of the answer.
		_, _ = io.Copy(io.Discard, body)
	}
	if body.set {
		_ = rc.SetReadDeadline(time.Time{}) // nothing more is read
	}
	return res, err
}

// idleDeadlineReader moves the connection's read deadline uploadIdleTimeout ahead
// as the body arrives (at most once a second), so a large upload is cut only when it
// stalls.
type idleDeadlineReader struct {
	r    io.Reader
	rc   *http.ResponseController
	last time.Time
	set  bool
}

func (d *idleDeadlineReader) Read(p []byte) (int, error) {
	if now := time.Now(); now.Sub(d.last) >= time.Second {
		if d.rc.SetReadDeadline(now.Add(uploadIdleTimeout)) == nil {
			d.set = true
		}
		d.last = now
	}
	return d.r.Read(p)
}

// body serves GET /v1/queues/{queue}/messages/{id}/body?receipt=...: the raw body of
// a received message, streamed, with its Content-Type and Content-Length. The
// receipt must be the message's current delivery (the rules of ack); an unknown,
// stale or malformed receipt answers 400 with the code of the ack results.
func (q queuesResource) body(w http.ResponseWriter, r *http.Request) {
	receipt := r.URL.Query().Get("receipt")
	if receipt == "" {
		q.a.writeError(w, r, invalidf("receipt: query parameter required"))
		return
	}
	br, err := q.a.b.Body(r.Context(), chi.URLParam(r, "queue"), chi.URLParam(r, "id"), receipt)
	if err != nil {
		q.a.writeError(w, r, err)
		return
	}
	defer br.Close()
	ct := br.ContentType
	if ct == "" {
		ct = defaultContentType
	}
	h := w.Header()
	h.Set("Content-Type", ct)
	h.Set("Content-Length", strconv.FormatInt(br.Size, 10))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if n, err := io.Copy(w, br); err != nil {
		// The answer is cut short of its Content-Length: the client sees an unexpected
		// EOF and can fetch the body again (from the new live after a failover).
		q.a.log.WarnContext(r.Context(), "message body cut short", "request_id", requestIDFrom(r.Context()),
			"path", r.URL.Path, "sent", n, "size", br.Size, "err", err)
	}
}
