package client_test

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/client"
)

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// onlyReader hides the type of its reader (not an io.Seeker).
type onlyReader struct{ io.Reader }

// readAll reads a message body through Client.Body and closes it.
func readAll(t *testing.T, c *client.Client, queue string, d client.Delivery) []byte {
	t.Helper()
	mb, err := c.Body(ctxT(t), queue, d.ID, d.Receipt)
	require.NoError(t, err)
	defer mb.Close()
	require.Equal(t, d.Size, mb.Size)
	data, err := io.ReadAll(mb)
	require.NoError(t, err)
	return data
}

// TestLargeRoundTrip publishes large bodies with PublishStream (seekable or not, to a
// queue and to an address) and reads them back with Body.
func TestLargeRoundTrip(t *testing.T) {
	t.Parallel()
	b := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{b.url})
	ctx := ctxT(t)
	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)
	_, err = c.CreateAddress(ctx, "a", client.Multicast)
	require.NoError(t, err)
	_, err = c.BindQueue(ctx, "a", "q")
	require.NoError(t, err)

	bodies := [][]byte{randomBytes(1, 3<<20+1), randomBytes(2, 500<<10), randomBytes(3, 10), randomBytes(4, 200<<10)}
	r1, err := c.PublishStream(ctx, "q", bytes.NewReader(bodies[0]), client.Message{ContentType: "application/x-one"})
	require.NoError(t, err)
	require.NotEmpty(t, r1.IdempotencyKey)
	_, err = c.PublishStream(ctx, "q", onlyReader{bytes.NewReader(bodies[1])}, client.Message{})
	require.NoError(t, err)
	_, err = c.PublishStream(ctx, "q", bytes.NewReader(bodies[2]), client.Message{})
	require.NoError(t, err)
	_, err = c.PublishAddressStream(ctx, "a", onlyReader{bytes.NewReader(bodies[3])}, client.Message{})
	require.NoError(t, err)
	// The same key again: a duplicate, nothing read.
	again, err := c.PublishStream(ctx, "q", onlyReader{bytes.NewReader(bodies[0])}, client.Message{IdempotencyKey: r1.IdempotencyKey})
	require.NoError(t, err)
	require.True(t, again.Duplicate)
	require.Equal(t, r1.ID, again.ID)

	ds, err := c.Receive(ctx, "q", client.ReceiveOptions{Max: 10, Wait: time.Second})
	require.NoError(t, err)
	require.Len(t, ds, 4)
	for i, d := range ds {
		require.Equal(t, int64(len(bodies[i])), d.Size)
		require.Equal(t, len(bodies[i]) > 100<<10, d.Large)
		if d.Large {
			require.Empty(t, d.Body)
		} else {
			require.Equal(t, bodies[i], d.Body)
		}
		require.Equal(t, sha256.Sum256(bodies[i]), sha256.Sum256(readAll(t, c, "q", d)))
	}
	mb, err := c.Body(ctx, "q", ds[0].ID, ds[0].Receipt)
	require.NoError(t, err)
	require.Equal(t, "application/x-one", mb.ContentType)
	require.NoError(t, mb.Close())

	for _, d := range ds {
		res, err := c.Ack(ctx, "q", d.Receipt)
		require.NoError(t, err)
		require.True(t, res[0].OK)
	}
	_, err = c.Body(ctx, "q", ds[0].ID, ds[0].Receipt)
	require.ErrorIs(t, err, client.ErrReceiptUnknown)
	_, err = c.Body(ctx, "q", "", ds[0].Receipt)
	require.ErrorIs(t, err, client.ErrInvalid)
}

// TestLargeTooLarge: a streamed body past max-message-size fails with ErrTooLarge,
// whether its length is known or not.
func TestLargeTooLarge(t *testing.T) {
	t.Parallel()
	b := newBroker(t, nil, brokerConfig{maxMessageSize: 256 << 10})
	c := newClient(t, []string{b.url})
	ctx := ctxT(t)
	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)
	body := randomBytes(5, 256<<10+1)
	_, err = c.PublishStream(ctx, "q", bytes.NewReader(body), client.Message{})
	require.ErrorIs(t, err, client.ErrTooLarge)
	_, err = c.PublishStream(ctx, "q", onlyReader{bytes.NewReader(body)}, client.Message{})
	require.ErrorIs(t, err, client.ErrTooLarge)
	require.Zero(t, depth(t, c, "q"))
}

// TestLargeFailover: a streamed publish and a body fetch reach the live broker past
// a backup, and a body fetch cut midway is fetched again, whole, with the same
// receipt from the broker that took over.
func TestLargeFailover(t *testing.T) {
	t.Parallel()
	// Broker a cuts its first body answer after 100 KiB, as a dying live would.
	var cuts atomic.Int32
	a := newBroker(t, nil, brokerConfig{name: "a", wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/body") && cuts.Add(1) == 1 {
				h.ServeHTTP(&cutWriter{ResponseWriter: w, left: 100 << 10}, r)
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	b := newBroker(t, a.drv, brokerConfig{name: "b", backup: true})
	backup := &notLiveHandler{retryAfter: "0"}
	front := startHandler(t, backup)
	ctx := ctxT(t)
	_, err := newClient(t, []string{a.url}).CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)

	// The first URL answers 503 without reading: the body (not seekable) is still
	// whole for the live broker.
	c := newClient(t, []string{front.URL, a.url, b.url})
	body := randomBytes(6, 2<<20+3)
	_, err = c.PublishStream(ctx, "q", onlyReader{bytes.NewReader(body)}, client.Message{})
	require.NoError(t, err)
	require.Equal(t, int64(1), backup.hits.Load())
	require.Equal(t, a.url, c.LiveURL())

	ds, err := c.Receive(ctx, "q", client.ReceiveOptions{Wait: time.Second, Lease: time.Hour})
	require.NoError(t, err)
	require.Len(t, ds, 1)
	d := ds[0]
	require.True(t, d.Large)

	// The cut answer is an error, not a short body.
	mb, err := c.Body(ctx, "q", d.ID, d.Receipt)
	require.NoError(t, err)
	_, err = io.ReadAll(mb)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.NoError(t, mb.Close())

	// Failover: a steps down, b takes over; the receipt of a still reads the body.
	a.srv.Deactivate()
	b.activate()
	require.Equal(t, sha256.Sum256(body), sha256.Sum256(readAll(t, c, "q", d)))
	require.Equal(t, b.url, c.LiveURL())
	res, err := c.Ack(ctx, "q", d.Receipt)
	require.NoError(t, err)
	require.True(t, res[0].OK)
}

// cutWriter passes at most left body bytes, then aborts the answer.
type cutWriter struct {
	http.ResponseWriter
	left int
}

func (w *cutWriter) Write(p []byte) (int, error) {
	if len(p) > w.left {
		_, _ = w.ResponseWriter.Write(p[:w.left])
		w.left = 0
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler)
	}
	w.left -= len(p)
	return w.ResponseWriter.Write(p)
}

// partialReader is a broker that reads part of a publish's body, then answers 503
// not_live, as a live that steps down during an upload.
func partialReader(w http.ResponseWriter, r *http.Request) {
	_, _ = io.CopyN(io.Discard, r.Body, 10<<10)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = io.WriteString(w, `{"error":{"code":"not_live","message":"stepping down"}}`)
}

// TestLargePublishCutMidway: a streamed publish cut after part of its body was sent
// is sent again from the start when the body is an io.Seeker, and fails at once
// otherwise.
func TestLargePublishCutMidway(t *testing.T) {
	t.Parallel()
	a := newBroker(t, nil, brokerConfig{name: "a"})
	ctx := ctxT(t)
	_, err := newClient(t, []string{a.url}).CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)
	front := startHandler(t, http.HandlerFunc(partialReader))
	body := randomBytes(7, 300<<10)

	c := newClient(t, []string{front.URL, a.url})
	_, err = c.PublishStream(ctx, "q", onlyReader{bytes.NewReader(body)}, client.Message{})
	require.ErrorContains(t, err, "cannot be sent again")
	require.Zero(t, depth(t, c, "q"))

	c = newClient(t, []string{front.URL, a.url})
	_, err = c.PublishStream(ctx, "q", bytes.NewReader(body), client.Message{})
	require.NoError(t, err)
	ds, err := c.Receive(ctx, "q", client.ReceiveOptions{Wait: time.Second})
	require.NoError(t, err)
	require.Len(t, ds, 1)
	require.Equal(t, sha256.Sum256(body), sha256.Sum256(readAll(t, c, "q", ds[0])))
}
