package client_test

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/client"
)

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		urls []string
		opts []client.Option
	}{
		"no urls":        {urls: nil},
		"bad scheme":     {urls: []string{"ftp://x"}},
		"no host":        {urls: []string{"http://"}},
		"query":          {urls: []string{"http://x?a=1"}},
		"twice":          {urls: []string{"http://x:1", "http://x:1/"}},
		"zero backoff":   {urls: []string{"http://x"}, opts: []client.Option{client.WithBackoff(0, time.Second)}},
		"max below":      {urls: []string{"http://x"}, opts: []client.Option{client.WithBackoff(time.Second, time.Millisecond)}},
		"zero timeout":   {urls: []string{"http://x"}, opts: []client.Option{client.WithRequestTimeout(0)}},
		"negative retry": {urls: []string{"http://x"}, opts: []client.Option{client.WithRetryDeadline(-1)}},
	} {
		_, err := client.New(tc.urls, tc.opts...)
		require.ErrorIs(t, err, client.ErrInvalid, name)
	}
	c, err := client.New([]string{"http://a:1/", "https://b:2/prefix/"})
	require.NoError(t, err)
	require.Equal(t, []string{"http://a:1", "https://b:2/prefix"}, c.URLs())
	require.Equal(t, "http://a:1", c.LiveURL())
}

// TestRoundTrip publishes, receives and acks through a real broker.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	b := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{b.url})
	ctx := ctxT(t)

	created, err := c.CreateQueue(ctx, "orders", client.QueueConfig{Lease: 5 * time.Second, MaxDeliveries: 3})
	require.NoError(t, err)
	require.True(t, created)
	created, err = c.CreateQueue(ctx, "orders", client.QueueConfig{Lease: 5 * time.Second, MaxDeliveries: 3})
	require.NoError(t, err)
	require.False(t, created)

	res, err := c.Publish(ctx, "orders", client.Message{
		Body: []byte(`{"n":1}`), ContentType: "application/json",
		Headers: map[string]string{"Trace-Id": "abc"}, Priority: client.Priority(7),
	})
	require.NoError(t, err)
	require.NotEmpty(t, res.ID)
	require.False(t, res.Duplicate)
	require.Len(t, res.IdempotencyKey, 32, "a generated key: 16 bytes in hex")

	qi, err := c.GetQueue(ctx, "orders")
	require.NoError(t, err)
	require.Equal(t, "orders", qi.Name)
	require.EqualValues(t, 1, qi.Depth)
	require.Equal(t, 5*time.Second, qi.Config.Lease)
	require.Equal(t, 3, qi.Config.MaxDeliveries)

	ds, err := c.Receive(ctx, "orders", client.ReceiveOptions{Max: 10, Wait: time.Second, Lease: 2 * time.Second})
	require.NoError(t, err)
	require.Len(t, ds, 1)
	d := ds[0]
	require.Equal(t, res.ID, d.ID)
	require.Equal(t, []byte(`{"n":1}`), d.Body)
	require.Equal(t, "application/json", d.ContentType)
	require.Equal(t, map[string]string{"trace-id": "abc"}, d.Headers)
	require.Equal(t, 7, d.Priority)
	require.Equal(t, 1, d.DeliveryCount)
	require.False(t, d.Redelivered)
	require.NotEmpty(t, d.Receipt)
	require.False(t, d.LeaseExpiresAt.IsZero())

	ext, err := c.Extend(ctx, "orders", 3*time.Second, d.Receipt)
	require.NoError(t, err)
	require.Equal(t, []client.ReceiptResult{{Receipt: d.Receipt, OK: true}}, ext)

	acks, err := c.Ack(ctx, "orders", d.Receipt, "garbage")
	require.NoError(t, err)
	require.Len(t, acks, 2)
	require.Equal(t, client.ReceiptResult{Receipt: d.Receipt, OK: true}, acks[0])
	require.False(t, acks[1].OK)
	require.Error(t, acks[1].Err)
	require.True(t, errors.Is(acks[1].Err, client.ErrReceiptInvalid) || errors.Is(acks[1].Err, client.ErrReceiptUnknown), acks[1].Err)
	require.EqualValues(t, 0, depth(t, c, "orders"))

	// A second ack of the same receipt is reported per receipt, not as a failure.
	acks, err = c.Ack(ctx, "orders", d.Receipt)
	require.NoError(t, err)
	require.ErrorIs(t, acks[0].Err, client.ErrReceiptUnknown)

	// Nothing left: a short long poll answers an empty list.
	ds, err = c.Receive(ctx, "orders", client.ReceiveOptions{Wait: 100 * time.Millisecond})
	require.NoError(t, err)
	require.Empty(t, ds)

	// Nack hands a message back at once, redelivered.
	_, err = c.Publish(ctx, "orders", client.Message{Body: []byte("again")})
	require.NoError(t, err)
	ds, err = c.Receive(ctx, "orders", client.ReceiveOptions{Wait: time.Second})
	require.NoError(t, err)
	require.Len(t, ds, 1)
	nacks, err := c.Nack(ctx, "orders", 0, ds[0].Receipt)
	require.NoError(t, err)
	require.True(t, nacks[0].OK)
	ds, err = c.Receive(ctx, "orders", client.ReceiveOptions{Wait: 5 * time.Second})
	require.NoError(t, err)
	require.Len(t, ds, 1)
	require.True(t, ds[0].Redelivered)
	require.Equal(t, 2, ds[0].DeliveryCount)
	require.Equal(t, "application/octet-stream", ds[0].ContentType)

	n, err := c.PurgeQueue(ctx, "orders")
	require.NoError(t, err)
	require.EqualValues(t, 0, n, "the leased message is not purged")

	qs, err := c.ListQueues(ctx)
	require.NoError(t, err)
	require.Len(t, qs, 1)
	require.Equal(t, "orders", qs[0].Name)

	require.NoError(t, c.DeleteQueue(ctx, "orders"))
	_, err = c.GetQueue(ctx, "orders")
	require.ErrorIs(t, err, client.ErrQueueNotFound)
}

// TestPublishKeys checks that a caller's idempotency key deduplicates, and that
// batches get one key per message.
func TestPublishKeys(t *testing.T) {
	t.Parallel()
	b := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{b.url})
	ctx := ctxT(t)
	_, err := c.CreateQueue(ctx, "q", client.QueueConfig{})
	require.NoError(t, err)

	first, err := c.Publish(ctx, "q", client.Message{Body: []byte("a"), IdempotencyKey: "k1"})
	require.NoError(t, err)
	require.False(t, first.Duplicate)
	require.Equal(t, "k1", first.IdempotencyKey)
	again, err := c.Publish(ctx, "q", client.Message{Body: []byte("a"), IdempotencyKey: "k1"})
	require.NoError(t, err)
	require.True(t, again.Duplicate)
	require.Equal(t, first.ID, again.ID)

	res, err := c.PublishBatch(ctx, "q", []client.Message{
		{Body: []byte("b1")},
		{Body: []byte("b2"), IdempotencyKey: "k1"}, // seen: a duplicate of the first
		{Body: []byte("b3"), Priority: client.Priority(42)},
		{Body: nil, NonPersistent: true, Delay: time.Hour},
	})
	require.NoError(t, err)
	require.Len(t, res, 4)
	require.NoError(t, res[0].Err)
	require.Len(t, res[0].IdempotencyKey, 32)
	require.True(t, res[1].Duplicate)
	require.Equal(t, first.ID, res[1].ID)
	require.ErrorIs(t, res[2].Err, client.ErrInvalid)
	require.Empty(t, res[2].ID)
	require.NoError(t, res[3].Err)
	require.NotEqual(t, res[0].IdempotencyKey, res[3].IdempotencyKey)

	qi, err := c.GetQueue(ctx, "q")
	require.NoError(t, err)
	require.EqualValues(t, 3, qi.Depth)
	require.EqualValues(t, 1, qi.Delayed)
}

// TestAPIErrors checks the typed errors and that 4xx answers are not retried.
func TestAPIErrors(t *testing.T) {
	t.Parallel()
	var cnt counter
	b := newBroker(t, nil, brokerConfig{maxMessageSize: 1024, wrap: cnt.wrap})
	other := startHandler(t, &notLiveHandler{})
	c := newClient(t, []string{b.url, other.URL})
	ctx := ctxT(t)

	_, err := c.GetQueue(ctx, "nope")
	require.ErrorIs(t, err, client.ErrNotFound)
	require.ErrorIs(t, err, client.ErrQueueNotFound)
	require.NotErrorIs(t, err, client.ErrConflict)
	var ae *client.APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusNotFound, ae.Status)
	require.Equal(t, client.CodeQueueNotFound, ae.Code)
	require.Equal(t, b.url, ae.URL)
	require.NotEmpty(t, ae.Message)
	require.Contains(t, err.Error(), "queue_not_found")
	require.Equal(t, 1, cnt.get("GET /v1/queues/nope"), "a 404 is not retried")

	_, err = c.CreateQueue(ctx, "bad name!", client.QueueConfig{})
	require.ErrorIs(t, err, client.ErrInvalid)
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusBadRequest, ae.Status)

	_, err = c.CreateQueue(ctx, "q", client.QueueConfig{Lease: time.Millisecond})
	require.ErrorIs(t, err, client.ErrInvalid)
	require.Equal(t, 1, cnt.get("PUT /v1/queues/q"), "a 400 is not retried")

	_, err = c.CreateQueue(ctx, "q", client.QueueConfig{Lease: time.Second})
	require.NoError(t, err)
	_, err = c.CreateQueue(ctx, "q", client.QueueConfig{Lease: 2 * time.Second})
	require.ErrorIs(t, err, client.ErrConflict)
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusConflict, ae.Status)
	require.Equal(t, 3, cnt.get("PUT /v1/queues/q"), "a 409 is not retried")

	_, err = c.Publish(ctx, "q", client.Message{Body: make([]byte, 2048)})
	require.ErrorIs(t, err, client.ErrTooLarge)
	require.Equal(t, 1, cnt.get("POST /v1/queues/q/messages"), "a 413 is not retried")

	_, err = c.Publish(ctx, "nope", client.Message{Body: []byte("x")})
	require.ErrorIs(t, err, client.ErrQueueNotFound)

	_, err = c.Receive(ctx, "q", client.ReceiveOptions{Max: 5000})
	require.ErrorIs(t, err, client.ErrInvalid)

	// Refused before sending.
	_, err = c.GetQueue(ctx, "")
	require.ErrorIs(t, err, client.ErrInvalid)
	_, err = c.Ack(ctx, "q")
	require.ErrorIs(t, err, client.ErrInvalid)
	_, err = c.Extend(ctx, "q", 0, "r")
	require.ErrorIs(t, err, client.ErrInvalid)
	_, err = c.PublishBatch(ctx, "q", nil)
	require.ErrorIs(t, err, client.ErrInvalid)
	before := cnt.get("total")
	_, err = c.Publish(ctx, "q", client.Message{Headers: map[string]string{"bad name": "v"}})
	require.ErrorIs(t, err, client.ErrInvalid)
	_, err = c.Publish(ctx, "q", client.Message{Headers: map[string]string{"ok": "line\nbreak"}})
	require.ErrorIs(t, err, client.ErrInvalid)
	_, err = c.Publish(ctx, "q", client.Message{IdempotencyKey: "a\x00b"})
	require.ErrorIs(t, err, client.ErrInvalid)
	require.Equal(t, before, cnt.get("total"), "refused without a request")

	require.Equal(t, b.url, c.LiveURL())
}

// TestAddresses covers addresses and bindings.
func TestAddresses(t *testing.T) {
	t.Parallel()
	b := newBroker(t, nil, brokerConfig{})
	c := newClient(t, []string{b.url})
	ctx := ctxT(t)

	for _, q := range []string{"a", "b"} {
		_, err := c.CreateQueue(ctx, q, client.QueueConfig{})
		require.NoError(t, err)
	}
	created, err := c.CreateAddress(ctx, "events", client.Multicast)
	require.NoError(t, err)
	require.True(t, created)
	_, err = c.CreateAddress(ctx, "events", client.Anycast)
	require.ErrorIs(t, err, client.ErrConflict)

	_, err = c.PublishAddress(ctx, "events", client.Message{Body: []byte("x")})
	require.ErrorIs(t, err, client.ErrConflict, "no bound queue")

	for _, q := range []string{"a", "b"} {
		created, err = c.BindQueue(ctx, "events", q)
		require.NoError(t, err)
		require.True(t, created)
	}
	created, err = c.BindQueue(ctx, "events", "a")
	require.NoError(t, err)
	require.False(t, created)

	ai, err := c.GetAddress(ctx, "events")
	require.NoError(t, err)
	require.Equal(t, client.Multicast, ai.Routing)
	require.ElementsMatch(t, []string{"a", "b"}, ai.Queues)
	as, err := c.ListAddresses(ctx)
	require.NoError(t, err)
	require.Len(t, as, 1)

	res, err := c.PublishAddress(ctx, "events", client.Message{Body: []byte("x")})
	require.NoError(t, err)
	require.NotEmpty(t, res.ID)
	br, err := c.PublishAddressBatch(ctx, "events", []client.Message{{Body: []byte("y")}})
	require.NoError(t, err)
	require.NoError(t, br[0].Err)
	require.EqualValues(t, 2, depth(t, c, "a"))
	require.EqualValues(t, 2, depth(t, c, "b"))

	require.NoError(t, c.UnbindQueue(ctx, "events", "b"))
	err = c.UnbindQueue(ctx, "events", "b")
	require.ErrorIs(t, err, client.ErrBindingNotFound)
	require.ErrorIs(t, err, client.ErrNotFound)
	require.NoError(t, c.DeleteAddress(ctx, "events"))
	_, err = c.GetAddress(ctx, "events")
	require.ErrorIs(t, err, client.ErrAddressNotFound)
}

// TestCluster reads /v1/cluster of a live and of a backup instance.
func TestCluster(t *testing.T) {
	t.Parallel()
	live := newBroker(t, nil, brokerConfig{name: "n1"})
	backup := newBroker(t, live.drv, brokerConfig{name: "n2", backup: true})
	c := newClient(t, []string{live.url, backup.url})
	ctx := ctxT(t)

	st, err := c.Cluster(ctx, live.url)
	require.NoError(t, err)
	require.Equal(t, "n1", st.NodeName)
	require.Equal(t, "live", st.Role)
	require.Positive(t, st.Epoch)

	st, err = c.Cluster(ctx, backup.url+"/")
	require.NoError(t, err)
	require.Equal(t, "n2", st.NodeName)
	require.Equal(t, "backup", st.Role)

	_, err = c.Cluster(ctx, "nope://x")
	require.ErrorIs(t, err, client.ErrInvalid)
}

// TestErrorMatching checks APIError.Is for codes and for unknown codes.
func TestErrorMatching(t *testing.T) {
	t.Parallel()
	e := &client.APIError{Status: 503, Code: client.CodeNotLive}
	require.ErrorIs(t, e, client.ErrNotLive)
	require.NotErrorIs(t, e, client.ErrUnavailable)
	e = &client.APIError{Status: 404, Code: "something_new"}
	require.ErrorIs(t, e, client.ErrNotFound)
	e = &client.APIError{Status: 502, Message: "bad gateway"}
	require.ErrorIs(t, e, client.ErrUnavailable)
	require.Equal(t, "tablemq: HTTP 502: bad gateway", e.Error())
	e = &client.APIError{Code: client.CodeReceiptStale, Message: "m"}
	require.ErrorIs(t, e, client.ErrReceiptStale)
	require.Equal(t, "tablemq: receipt_stale: m", e.Error())
}
