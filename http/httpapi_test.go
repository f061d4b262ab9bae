package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/tablemq/tablemq/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// bundle is what a test needs: the handler and a way to take the broker out of the
// live role.
type bundle struct {
	h          http.Handler
	b          Broker
	deactivate func()
}

// brokerFactory builds a bundle on one kind of broker.
type brokerFactory func(t *testing.T, cfg Config) *bundle

var (
	factoriesMu sync.Mutex
	// factories holds the brokers every flow test runs on: the fake always, the real
	// server on SQLite when realserver_test.go registers it.
	factories = map[string]brokerFactory{"fake": fakeFactory}
)

func fakeFactory(t *testing.T, cfg Config) *bundle {
	t.Helper()
	f := newFakeBroker()
	return &bundle{h: New(f, cfg), b: f, deactivate: func() { f.setRole(server.RoleStopping) }}
}

// forEachBroker runs fn as a parallel subtest on every registered broker.
func forEachBroker(t *testing.T, cfg Config, fn func(t *testing.T, b *bundle)) {
	t.Helper()
	factoriesMu.Lock()
	names := make([]string, 0, len(factories))
	fs := make(map[string]brokerFactory, len(factories))
	for n, f := range factories {
		names = append(names, n)
		fs[n] = f
	}
	factoriesMu.Unlock()
	for _, n := range names {
		t.Run(n, func(t *testing.T) {
			t.Parallel()
			c := cfg // each subtest its own copy: they run in parallel
			if c.Logger == nil {
				c.Logger = testLogger(t)
			}
			fn(t, fs[n](t, c))
		})
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// resp is a recorded answer.
type resp struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into a generic map.
func (r resp) JSON(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.Body, &m), "body: %s", r.Body)
	return m
}

// do sends one request to h. body may be nil, a string, []byte or any (JSON-encoded).
func do(t *testing.T, h http.Handler, method, path string, body any, headers ...string) resp {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		require.NoError(t, err)
		rd = bytes.NewReader(data)
	}
	req := httptest.NewRequest(method, path, rd)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return resp{Status: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}
}

// requireError checks an error answer: status, JSON shape, code.
func requireError(t *testing.T, r resp, status int, code string) string {
	t.Helper()
	require.Equal(t, status, r.Status, "body: %s", r.Body)
	require.Equal(t, "application/json", r.Header.Get("Content-Type"))
	var eb struct {
		Error *struct {
			Code    *string `json:"code"`
			Message *string `json:"message"`
		} `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(r.Body))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&eb), "body: %s", r.Body)
	require.NotNil(t, eb.Error, "body: %s", r.Body)
	require.NotNil(t, eb.Error.Code, "body: %s", r.Body)
	require.NotNil(t, eb.Error.Message, "body: %s", r.Body)
	require.Equal(t, code, *eb.Error.Code, "body: %s", r.Body)
	require.NotEmpty(t, *eb.Error.Message)
	if status == http.StatusServiceUnavailable {
		require.Equal(t, "1", r.Header.Get("Retry-After"))
	}
	return *eb.Error.Message
}

// receiveAnswer is the typed answer of a receive.
type receiveAnswer struct {
	Messages []struct {
		ID             string            `json:"id"`
		Receipt        string            `json:"receipt"`
		Data           string            `json:"data"`
		ContentType    string            `json:"content_type"`
		DeliveryCount  int               `json:"delivery_count"`
		Redelivered    bool              `json:"redelivered"`
		Headers        map[string]string `json:"headers"`
		Priority       int               `json:"priority"`
		PublishedAt    string            `json:"published_at"`
		LeaseExpiresAt string            `json:"lease_expires_at"`
	} `json:"messages"`
}

func receive(t *testing.T, h http.Handler, queue string, body any) receiveAnswer {
	t.Helper()
	r := do(t, h, http.MethodPost, "/v1/queues/"+queue+"/receive", body)
	require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
	var out receiveAnswer
	require.NoError(t, json.Unmarshal(r.Body, &out))
	require.NotNil(t, out.Messages, "messages must be an array, never null: %s", r.Body)
	return out
}

type receiptAnswer struct {
	Results []struct {
		Receipt string       `json:"receipt"`
		OK      bool         `json:"ok"`
		Error   *ErrorDetail `json:"error"`
	} `json:"results"`
}

func receipts(t *testing.T, h http.Handler, queue, op string, body any) receiptAnswer {
	t.Helper()
	r := do(t, h, http.MethodPost, "/v1/queues/"+queue+"/"+op, body)
	require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
	var out receiptAnswer
	require.NoError(t, json.Unmarshal(r.Body, &out))
	return out
}

func createQueue(t *testing.T, h http.Handler, name string) {
	t.Helper()
	r := do(t, h, http.MethodPut, "/v1/queues/"+name, nil)
	require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
}

func publish(t *testing.T, h http.Handler, queue, body string, headers ...string) string {
	t.Helper()
	r := do(t, h, http.MethodPost, "/v1/queues/"+queue+"/messages", body, headers...)
	require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
	id, _ := r.JSON(t)["id"].(string)
	require.NotEmpty(t, id)
	return id
}

func depth(t *testing.T, h http.Handler, queue string) (depth, inFlight int) {
	t.Helper()
	r := do(t, h, http.MethodGet, "/v1/queues/"+queue, nil)
	require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
	m := r.JSON(t)
	return int(m["depth"].(float64)), int(m["in_flight"].(float64))
}

func TestContractFlow(t *testing.T) {
	t.Parallel()
	forEachBroker(t, Config{}, func(t *testing.T, b *bundle) {
		h := b.h

		// PUT: 201 created, 200 when the same, 409 when different.
		r := do(t, h, http.MethodPut, "/v1/queues/orders", map[string]any{"max_deliveries": 5, "lease": "10s"})
		require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
		require.Equal(t, true, r.JSON(t)["created"])
		r = do(t, h, http.MethodPut, "/v1/queues/orders", map[string]any{"max_deliveries": 5, "lease": "10s"})
		require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
		require.Equal(t, false, r.JSON(t)["created"])
		requireError(t, do(t, h, http.MethodPut, "/v1/queues/orders", map[string]any{"max_deliveries": 6}),
			http.StatusConflict, CodeConflict)

		// GET the queue: the contract fields and the config as sent.
		r = do(t, h, http.MethodGet, "/v1/queues/orders", nil)
		require.Equal(t, http.StatusOK, r.Status)
		m := r.JSON(t)
		require.Equal(t, "orders", m["name"])
		require.EqualValues(t, 0, m["depth"])
		require.EqualValues(t, 0, m["in_flight"])
		require.Contains(t, m, "delayed")
		require.Contains(t, m, "waiting_receivers")
		require.Contains(t, m, "created_at")
		require.Equal(t, []any{}, m["addresses"])
		require.Equal(t, map[string]any{"max_deliveries": float64(5), "lease": "10s"}, m["config"])

		// Publish raw bytes with a content type and headers.
		payload := []byte{0, 1, 2, 0xff, 'h', 'i'}
		r = do(t, h, http.MethodPost, "/v1/queues/orders/messages", payload,
			"Content-Type", "application/x-test", "Tmq-Header-Trace-Id", "abc", "Tmq-Priority", "7")
		require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
		id := r.JSON(t)["id"].(string)
		require.NotEmpty(t, id)
		require.Equal(t, false, r.JSON(t)["duplicate"])
		require.Empty(t, r.Header.Get(HeaderDuplicate))

		d, inFlight := depth(t, h, "orders")
		require.Equal(t, 1, d)
		require.Equal(t, 0, inFlight)

		// Receive it.
		got := receive(t, h, "orders", map[string]any{"max": 10, "wait": "0s", "lease": "5s"})
		require.Len(t, got.Messages, 1)
		msg := got.Messages[0]
		require.Equal(t, id, msg.ID)
		require.NotEmpty(t, msg.Receipt)
		require.Equal(t, base64.StdEncoding.EncodeToString(payload), msg.Data)
		require.Equal(t, "application/x-test", msg.ContentType)
		require.Equal(t, 1, msg.DeliveryCount)
		require.False(t, msg.Redelivered)
		require.Equal(t, map[string]string{"trace-id": "abc"}, msg.Headers)
		require.Equal(t, 7, msg.Priority)
		require.NotEmpty(t, msg.PublishedAt)
		require.NotEmpty(t, msg.LeaseExpiresAt)

		d, inFlight = depth(t, h, "orders")
		require.Equal(t, 1, d)
		require.Equal(t, 1, inFlight)

		// Nothing else: an empty array, not null.
		r = do(t, h, http.MethodPost, "/v1/queues/orders/receive", map[string]any{"wait": "0s"})
		require.Equal(t, http.StatusOK, r.Status)
		require.JSONEq(t, `{"messages":[]}`, string(r.Body))

		// Ack: per receipt results; unknown receipts reported, not failing the call.
		ack := receipts(t, h, "orders", "ack", map[string]any{"receipts": []string{msg.Receipt}})
		require.Len(t, ack.Results, 1)
		require.True(t, ack.Results[0].OK)
		require.Nil(t, ack.Results[0].Error)
		require.Equal(t, msg.Receipt, ack.Results[0].Receipt)

		d, inFlight = depth(t, h, "orders")
		require.Equal(t, 0, d)
		require.Equal(t, 0, inFlight)

		// Acking again: the receipt is unknown now.
		ack = receipts(t, h, "orders", "ack", map[string]any{"receipts": []string{msg.Receipt}})
		require.Len(t, ack.Results, 1)
		require.False(t, ack.Results[0].OK)
		require.NotNil(t, ack.Results[0].Error)
		require.Equal(t, CodeReceiptUnknown, ack.Results[0].Error.Code)

		// List and delete.
		r = do(t, h, http.MethodGet, "/v1/queues", nil)
		require.Equal(t, http.StatusOK, r.Status)
		require.Len(t, r.JSON(t)["queues"], 1)
		r = do(t, h, http.MethodDelete, "/v1/queues/orders", nil)
		require.Equal(t, http.StatusNoContent, r.Status, "body: %s", r.Body)
		requireError(t, do(t, h, http.MethodGet, "/v1/queues/orders", nil), http.StatusNotFound, CodeQueueNotFound)
		r = do(t, h, http.MethodGet, "/v1/queues", nil)
		require.JSONEq(t, `{"queues":[]}`, string(r.Body))
	})
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	forEachBroker(t, Config{}, func(t *testing.T, b *bundle) {
		h := b.h
		createQueue(t, h, "dedup")
		first := publish(t, h, "dedup", "one", HeaderIdempotencyKey, "key-1")

		r := do(t, h, http.MethodPost, "/v1/queues/dedup/messages", "one again", HeaderIdempotencyKey, "key-1")
		require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
		require.Equal(t, first, r.JSON(t)["id"])
		require.Equal(t, true, r.JSON(t)["duplicate"])
		require.Equal(t, "true", r.Header.Get(HeaderDuplicate))

		other := publish(t, h, "dedup", "two", HeaderIdempotencyKey, "key-2")
		require.NotEqual(t, first, other)
		d, _ := depth(t, h, "dedup")
		require.Equal(t, 2, d)

		// The same key in a batch is a duplicate too.
		r = do(t, h, http.MethodPost, "/v1/queues/dedup/messages/batch", map[string]any{"messages": []any{
			map[string]any{"data": base64.StdEncoding.EncodeToString([]byte("x")), "idempotency_key": "key-1"},
		}})
		require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
		require.JSONEq(t, fmt.Sprintf(`{"results":[{"id":%q,"duplicate":true}]}`, first), string(r.Body))
	})
}

func TestBatchPublish(t *testing.T) {
	t.Parallel()
	forEachBroker(t, Config{MaxBodyBytes: 16}, func(t *testing.T, b *bundle) {
		h := b.h
		createQueue(t, h, "batch")
		enc := base64.StdEncoding.EncodeToString
		r := do(t, h, http.MethodPost, "/v1/queues/batch/messages/batch", `{"messages":[
			{"data": "`+enc([]byte("first"))+`", "content_type": "text/plain", "headers": {"K": "v"}, "priority": 9},
			{"data": "not base64!"},
			{"data": "`+enc([]byte("x"))+`", "priority": "high"},
			{"data": "`+enc([]byte("x"))+`", "delay": "8d"},
			{"data": "`+enc([]byte("x"))+`", "bogus": 1},
			{"content_type": "text/plain"},
			{"data": "`+enc([]byte("this body is longer than sixteen bytes"))+`"},
			null,
			{"data": "`+enc([]byte("last"))+`", "persistent": true, "ttl": "1h", "delay": "0s"}
		]}`)
		require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
		var out struct {
			Results []struct {
				ID        string       `json:"id"`
				Duplicate *bool        `json:"duplicate"`
				Error     *ErrorDetail `json:"error"`
			} `json:"results"`
		}
		require.NoError(t, json.Unmarshal(r.Body, &out))
		require.Len(t, out.Results, 9)
		for _, i := range []int{0, 8} {
			require.NotEmpty(t, out.Results[i].ID, "result %d: %s", i, r.Body)
			require.NotNil(t, out.Results[i].Duplicate)
			require.False(t, *out.Results[i].Duplicate)
			require.Nil(t, out.Results[i].Error)
		}
		wantCodes := map[int]string{1: CodeInvalidRequest, 2: CodeInvalidRequest, 3: CodeInvalidRequest,
			4: CodeInvalidRequest, 5: CodeInvalidRequest, 6: CodeTooLarge, 7: CodeInvalidRequest}
		wantInMessage := map[int]string{1: "messages[1].data", 2: "priority", 3: "messages[3].delay",
			4: "bogus", 5: "messages[5].data", 6: "messages[6].data", 7: "messages[7]"}
		for i, code := range wantCodes {
			require.Empty(t, out.Results[i].ID, "result %d", i)
			require.NotNil(t, out.Results[i].Error, "result %d: %s", i, r.Body)
			require.Equal(t, code, out.Results[i].Error.Code, "result %d", i)
			require.Contains(t, out.Results[i].Error.Message, wantInMessage[i], "result %d", i)
		}

		got := receive(t, h, "batch", map[string]any{"max": 10})
		require.Len(t, got.Messages, 2)
		require.Equal(t, out.Results[0].ID, got.Messages[0].ID)
		require.Equal(t, "text/plain", got.Messages[0].ContentType)
		require.Equal(t, map[string]string{"k": "v"}, got.Messages[0].Headers)
		require.Equal(t, 9, got.Messages[0].Priority)
		require.Equal(t, "application/octet-stream", got.Messages[1].ContentType)
		require.Equal(t, map[string]string{}, got.Messages[1].Headers)

		// The body as a whole: errors fail the call.
		requireError(t, do(t, h, http.MethodPost, "/v1/queues/batch/messages/batch", `{"messages":[]}`),
			http.StatusBadRequest, CodeInvalidRequest)
		requireError(t, do(t, h, http.MethodPost, "/v1/queues/batch/messages/batch", `{"messages":{}}`),
			http.StatusBadRequest, CodeInvalidRequest)
		many := make([]any, server.BatchPublishLimit+1)
		for i := range many {
			many[i] = map[string]any{"data": ""}
		}
		requireError(t, do(t, h, http.MethodPost, "/v1/queues/batch/messages/batch", map[string]any{"messages": many}),
			http.StatusRequestEntityTooLarge, CodeTooLarge)
		requireError(t, do(t, h, http.MethodPost, "/v1/queues/nope/messages/batch", `{"messages":[{"data":""}]}`),
			http.StatusNotFound, CodeQueueNotFound)
	})
}

func TestReceiptOperations(t *testing.T) {
	t.Parallel()
	forEachBroker(t, Config{}, func(t *testing.T, b *bundle) {
		h := b.h
		createQueue(t, h, "work")
		publish(t, h, "work", "a")
		publish(t, h, "work", "b")

		got := receive(t, h, "work", map[string]any{"max": 2, "lease": "1m"})
		require.Len(t, got.Messages, 2)
		first, second := got.Messages[0], got.Messages[1]

		// Extend one and an unknown receipt.
		ext := receipts(t, h, "work", "extend", map[string]any{"receipts": []string{first.Receipt}, "lease": "2m"})
		require.Len(t, ext.Results, 1)
		require.True(t, ext.Results[0].OK)

		// Nack the first: it is delivered again with a new receipt.
		nack := receipts(t, h, "work", "nack", map[string]any{"receipts": []string{first.Receipt}})
		require.Len(t, nack.Results, 1)
		require.True(t, nack.Results[0].OK, "%+v", nack.Results[0].Error)

		again := receive(t, h, "work", map[string]any{"max": 2})
		require.Len(t, again.Messages, 1)
		require.Equal(t, first.ID, again.Messages[0].ID)
		require.True(t, again.Messages[0].Redelivered)
		require.Equal(t, 2, again.Messages[0].DeliveryCount)
		require.NotEqual(t, first.Receipt, again.Messages[0].Receipt)

		// One call, mixed outcomes, in order: stale, ok, ok, unknown (acked above).
		ack := receipts(t, h, "work", "ack", map[string]any{"receipts": []string{
			first.Receipt, again.Messages[0].Receipt, second.Receipt, second.Receipt}})
		require.Len(t, ack.Results, 4)
		require.False(t, ack.Results[0].OK)
		require.Contains(t, []string{CodeReceiptStale, CodeReceiptUnknown}, ack.Results[0].Error.Code)
		require.True(t, ack.Results[1].OK)
		require.True(t, ack.Results[2].OK)
		require.False(t, ack.Results[3].OK)
		require.Equal(t, CodeReceiptUnknown, ack.Results[3].Error.Code)

		// A malformed receipt is reported per receipt too.
		ack = receipts(t, h, "work", "ack", map[string]any{"receipts": []string{"garbage"}})
		require.Len(t, ack.Results, 1)
		require.False(t, ack.Results[0].OK)
		require.Contains(t, []string{CodeReceiptInvalid, CodeReceiptUnknown}, ack.Results[0].Error.Code)

		d, _ := depth(t, h, "work")
		require.Equal(t, 0, d)
	})
}

func TestAddresses(t *testing.T) {
	t.Parallel()
	forEachBroker(t, Config{}, func(t *testing.T, b *bundle) {
		h := b.h
		createQueue(t, h, "q1")
		createQueue(t, h, "q2")

		r := do(t, h, http.MethodPut, "/v1/addresses/events", `{"routing":"multicast"}`)
		require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
		r = do(t, h, http.MethodPut, "/v1/addresses/events", `{"routing":"multicast"}`)
		require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
		requireError(t, do(t, h, http.MethodPut, "/v1/addresses/events", `{"routing":"anycast"}`),
			http.StatusConflict, CodeConflict)
		requireError(t, do(t, h, http.MethodPut, "/v1/addresses/events2", `{"routing":"broadcast"}`),
			http.StatusBadRequest, CodeInvalidRequest)
		requireError(t, do(t, h, http.MethodPut, "/v1/addresses/events2", nil),
			http.StatusBadRequest, CodeInvalidRequest)

		for _, q := range []string{"q1", "q2"} {
			r = do(t, h, http.MethodPut, "/v1/addresses/events/bindings/"+q, nil)
			require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
		}
		r = do(t, h, http.MethodPut, "/v1/addresses/events/bindings/q1", nil)
		require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
		requireError(t, do(t, h, http.MethodPut, "/v1/addresses/events/bindings/nope", nil),
			http.StatusNotFound, CodeQueueNotFound)
		requireError(t, do(t, h, http.MethodPut, "/v1/addresses/nope/bindings/q1", nil),
			http.StatusNotFound, CodeAddressNotFound)

		r = do(t, h, http.MethodGet, "/v1/addresses/events", nil)
		require.Equal(t, http.StatusOK, r.Status)
		m := r.JSON(t)
		require.Equal(t, "multicast", m["routing"])
		require.Equal(t, []any{"q1", "q2"}, m["queues"])
		r = do(t, h, http.MethodGet, "/v1/addresses", nil)
		require.Equal(t, http.StatusOK, r.Status)
		require.Len(t, r.JSON(t)["addresses"], 1)
		r = do(t, h, http.MethodGet, "/v1/queues/q1", nil)
		require.Equal(t, []any{"events"}, r.JSON(t)["addresses"])

		// Publish to the address: both queues get it.
		r = do(t, h, http.MethodPost, "/v1/addresses/events/messages", "hello", "Content-Type", "text/plain")
		require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
		r = do(t, h, http.MethodPost, "/v1/addresses/events/messages/batch",
			map[string]any{"messages": []any{map[string]any{"data": "aGk="}}})
		require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
		for _, q := range []string{"q1", "q2"} {
			got := receive(t, h, q, map[string]any{"max": 10})
			require.Len(t, got.Messages, 2, q)
			require.Equal(t, "aGVsbG8=", got.Messages[0].Data)
			require.Equal(t, "aGk=", got.Messages[1].Data)
		}

		r = do(t, h, http.MethodDelete, "/v1/addresses/events/bindings/q2", nil)
		require.Equal(t, http.StatusNoContent, r.Status, "body: %s", r.Body)
		requireError(t, do(t, h, http.MethodDelete, "/v1/addresses/events/bindings/q2", nil),
			http.StatusNotFound, CodeBindingNotFound)
		r = do(t, h, http.MethodDelete, "/v1/addresses/events", nil)
		require.Equal(t, http.StatusNoContent, r.Status, "body: %s", r.Body)
		requireError(t, do(t, h, http.MethodGet, "/v1/addresses/events", nil), http.StatusNotFound, CodeAddressNotFound)
		requireError(t, do(t, h, http.MethodPost, "/v1/addresses/events/messages", "x"), http.StatusNotFound, CodeAddressNotFound)
	})
}

func TestPurge(t *testing.T) {
	t.Parallel()
	forEachBroker(t, Config{}, func(t *testing.T, b *bundle) {
		h := b.h
		createQueue(t, h, "p")
		for range 3 {
			publish(t, h, "p", "x")
		}
		got := receive(t, h, "p", map[string]any{"max": 1})
		require.Len(t, got.Messages, 1)
		r := do(t, h, http.MethodPost, "/v1/queues/p/purge", nil)
		require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
		require.JSONEq(t, `{"purged":2}`, string(r.Body))
		requireError(t, do(t, h, http.MethodPost, "/v1/queues/nope/purge", nil), http.StatusNotFound, CodeQueueNotFound)
	})
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 201)
	cases := []struct {
		name    string
		method  string
		path    string
		body    any
		headers []string
		status  int
		code    string
		msgHas  string
	}{
		{"malformed JSON", "POST", "/v1/queues/q/receive", `{"max":`, nil, 400, CodeInvalidRequest, "malformed JSON"},
		{"syntax error", "POST", "/v1/queues/q/receive", `{max: 1}`, nil, 400, CodeInvalidRequest, "malformed JSON"},
		{"not an object", "POST", "/v1/queues/q/receive", `[1,2]`, nil, 400, CodeInvalidRequest, "object"},
		{"trailing data", "POST", "/v1/queues/q/receive", `{"max":1} {"max":2}`, nil, 400, CodeInvalidRequest, "exactly one JSON value"},
		{"trailing garbage", "POST", "/v1/queues/q/receive", `{"max":1} x`, nil, 400, CodeInvalidRequest, "exactly one JSON value"},
		{"wrong type max", "POST", "/v1/queues/q/receive", `{"max":"ten"}`, nil, 400, CodeInvalidRequest, `"max"`},
		{"float max", "POST", "/v1/queues/q/receive", `{"max":1.5}`, nil, 400, CodeInvalidRequest, `"max"`},
		{"wrong type wait", "POST", "/v1/queues/q/receive", `{"wait":5}`, nil, 400, CodeInvalidRequest, `"wait"`},
		{"unknown field", "POST", "/v1/queues/q/receive", `{"maximum":1}`, nil, 400, CodeInvalidRequest, `"maximum"`},
		{"max zero", "POST", "/v1/queues/q/receive", `{"max":0}`, nil, 400, CodeInvalidRequest, "max"},
		{"max too big", "POST", "/v1/queues/q/receive", `{"max":1001}`, nil, 400, CodeInvalidRequest, "1..1000"},
		{"wait too long", "POST", "/v1/queues/q/receive", `{"wait":"31s"}`, nil, 400, CodeInvalidRequest, "wait"},
		{"wait negative", "POST", "/v1/queues/q/receive", `{"wait":"-1s"}`, nil, 400, CodeInvalidRequest, "wait"},
		{"wait not a duration", "POST", "/v1/queues/q/receive", `{"wait":"soon"}`, nil, 400, CodeInvalidRequest, "wait"},
		{"lease too short", "POST", "/v1/queues/q/receive", `{"lease":"10ms"}`, nil, 400, CodeInvalidRequest, "lease"},
		{"lease too long", "POST", "/v1/queues/q/receive", `{"lease":"13h"}`, nil, 400, CodeInvalidRequest, "lease"},
		{"receive unknown queue", "POST", "/v1/queues/nope/receive", `{}`, nil, 404, CodeQueueNotFound, ""},
		{"receive invalid name", "POST", "/v1/queues/-bad/receive", `{}`, nil, 400, CodeInvalidRequest, "invalid name"},
		{"queue name too long", "PUT", "/v1/queues/" + long, nil, nil, 400, CodeInvalidRequest, "invalid name"},
		{"queue name bad char", "PUT", "/v1/queues/a%20b", nil, nil, 400, CodeInvalidRequest, "invalid name"},
		{"queue name escaped slash", "GET", "/v1/queues/a%2Fb", nil, nil, 400, CodeInvalidRequest, "invalid name"},
		{"queue name dot", "PUT", "/v1/queues/.hidden", nil, nil, 400, CodeInvalidRequest, "invalid name"},
		{"address name bad", "PUT", "/v1/addresses/a*b", `{"routing":"anycast"}`, nil, 400, CodeInvalidRequest, "invalid name"},
		{"binding queue name bad", "PUT", "/v1/addresses/a/bindings/_q", nil, nil, 400, CodeInvalidRequest, "invalid name"},
		{"queue config wrong type", "PUT", "/v1/queues/q2", `{"max_deliveries":"5"}`, nil, 400, CodeInvalidRequest, `"max_deliveries"`},
		{"queue config unknown field", "PUT", "/v1/queues/q2", `{"lease":"1s","color":"red"}`, nil, 400, CodeInvalidRequest, `"color"`},
		{"queue config lease range", "PUT", "/v1/queues/q2", `{"lease":"1ms"}`, nil, 400, CodeInvalidRequest, "lease"},
		{"queue config ttl range", "PUT", "/v1/queues/q2", `{"ttl":"9000h"}`, nil, 400, CodeInvalidRequest, "ttl"},
		{"queue config max deliveries", "PUT", "/v1/queues/q2", `{"max_deliveries":-1}`, nil, 400, CodeInvalidRequest, "max_deliveries"},
		{"queue config dlq name", "PUT", "/v1/queues/q2", `{"dead_letter_queue":"a b"}`, nil, 400, CodeInvalidRequest, "dead_letter_queue"},
		{"get unknown queue", "GET", "/v1/queues/nope", nil, nil, 404, CodeQueueNotFound, ""},
		{"delete unknown queue", "DELETE", "/v1/queues/nope", nil, nil, 404, CodeQueueNotFound, ""},
		{"publish unknown queue", "POST", "/v1/queues/nope/messages", "x", nil, 404, CodeQueueNotFound, ""},
		{"publish priority", "POST", "/v1/queues/q/messages", "x", []string{"Tmq-Priority", "10"}, 400, CodeInvalidRequest, "Tmq-Priority"},
		{"publish priority text", "POST", "/v1/queues/q/messages", "x", []string{"Tmq-Priority", "high"}, 400, CodeInvalidRequest, "Tmq-Priority"},
		{"publish delay", "POST", "/v1/queues/q/messages", "x", []string{"Tmq-Delay", "169h"}, 400, CodeInvalidRequest, "Tmq-Delay"},
		{"publish ttl", "POST", "/v1/queues/q/messages", "x", []string{"Tmq-TTL", "-5s"}, 400, CodeInvalidRequest, "Tmq-TTL"},
		{"publish persistent", "POST", "/v1/queues/q/messages", "x", []string{"Tmq-Persistent", "maybe"}, 400, CodeInvalidRequest, "Tmq-Persistent"},
		{"publish key too long", "POST", "/v1/queues/q/messages", "x", []string{"Idempotency-Key", strings.Repeat("k", 256)}, 400, CodeInvalidRequest, "Idempotency-Key"},
		{"publish too large", "POST", "/v1/queues/q/messages", strings.Repeat("x", 1025), nil, 413, CodeTooLarge, ""},
		{"json too large", "POST", "/v1/queues/q/ack", `{"receipts":["` + strings.Repeat("r", 5000) + `"]}`, nil, 413, CodeTooLarge, ""},
		{"batch too large", "POST", "/v1/queues/q/messages/batch", `{"messages":[{"data":"` + strings.Repeat("A", 9000) + `"}]}`, nil, 413, CodeTooLarge, ""},
		{"ack empty body", "POST", "/v1/queues/q/ack", nil, nil, 400, CodeInvalidRequest, "JSON object is required"},
		{"ack no receipts", "POST", "/v1/queues/q/ack", `{"receipts":[]}`, nil, 400, CodeInvalidRequest, "receipts"},
		{"ack too many receipts", "POST", "/v1/queues/q/ack", `{"receipts":[` + strings.Repeat(`"r",`, 1000) + `"r"]}`, nil, 413, CodeTooLarge, "at most 1000"},
		{"ack receipts wrong type", "POST", "/v1/queues/q/ack", `{"receipts":"r"}`, nil, 400, CodeInvalidRequest, `"receipts"`},
		{"ack with delay", "POST", "/v1/queues/q/ack", `{"receipts":["r"],"delay":"1s"}`, nil, 400, CodeInvalidRequest, "delay"},
		{"nack delay range", "POST", "/v1/queues/q/nack", `{"receipts":["r"],"delay":"25h"}`, nil, 400, CodeInvalidRequest, "delay"},
		{"extend without lease", "POST", "/v1/queues/q/extend", `{"receipts":["r"]}`, nil, 400, CodeInvalidRequest, "lease"},
		{"extend lease range", "POST", "/v1/queues/q/extend", `{"receipts":["r"],"lease":"0s"}`, nil, 400, CodeInvalidRequest, "lease"},
		{"ack unknown queue", "POST", "/v1/queues/nope/ack", `{"receipts":["r"]}`, nil, 404, CodeQueueNotFound, ""},
		{"unknown route", "GET", "/v1/nothing", nil, nil, 404, CodeNotFound, ""},
		{"unknown route root", "GET", "/nothing", nil, nil, 404, CodeNotFound, ""},
		{"unknown queue subroute", "POST", "/v1/queues/q/nothing", nil, nil, 404, CodeNotFound, ""},
		{"method not allowed", "PATCH", "/v1/queues/q", nil, nil, 405, CodeMethodNotAllowed, ""},
		{"method not allowed receive", "GET", "/v1/queues/q/receive", nil, nil, 405, CodeMethodNotAllowed, ""},
		{"method not allowed livez", "POST", "/livez", nil, nil, 405, CodeMethodNotAllowed, ""},
	}
	forEachBroker(t, Config{MaxBodyBytes: 1024, MaxRequestBytes: 4096, MaxBatchBytes: 8192, Logger: testLogger(t)},
		func(t *testing.T, b *bundle) {
			createQueue(t, b.h, "q")
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					msg := requireError(t, do(t, b.h, tc.method, tc.path, tc.body, tc.headers...), tc.status, tc.code)
					require.Contains(t, msg, tc.msgHas)
				})
			}
			// Nothing above created anything.
			r := do(t, b.h, http.MethodGet, "/v1/queues", nil)
			require.Equal(t, http.StatusOK, r.Status)
			require.Len(t, r.JSON(t)["queues"], 1)
			d, _ := depth(t, b.h, "q")
			require.Equal(t, 0, d)
		})
}

func TestMethodNotAllowedAllowHeader(t *testing.T) {
	t.Parallel()
	h := New(newFakeBroker(), Config{})
	r := do(t, h, http.MethodPatch, "/v1/queues/q", nil)
	requireError(t, r, http.StatusMethodNotAllowed, CodeMethodNotAllowed)
	require.ElementsMatch(t, []string{"GET", "PUT", "DELETE"}, r.Header.Values("Allow"))
}

func TestNotLive(t *testing.T) {
	t.Parallel()
	forEachBroker(t, Config{}, func(t *testing.T, b *bundle) {
		h := b.h
		r := do(t, h, http.MethodGet, "/readyz", nil)
		require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
		r = do(t, h, http.MethodHead, "/readyz", nil)
		require.Equal(t, http.StatusOK, r.Status, "HEAD /readyz while live")
		createQueue(t, h, "q")

		b.deactivate()

		r = do(t, h, http.MethodGet, "/livez", nil)
		require.Equal(t, http.StatusOK, r.Status)
		r = do(t, h, http.MethodHead, "/livez", nil)
		require.Equal(t, http.StatusOK, r.Status)
		requireError(t, do(t, h, http.MethodGet, "/readyz", nil), http.StatusServiceUnavailable, CodeNotLive)
		r = do(t, h, http.MethodHead, "/readyz", nil)
		require.Equal(t, http.StatusServiceUnavailable, r.Status, "HEAD /readyz when not live")

		r = do(t, h, http.MethodGet, "/v1/cluster", nil)
		require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
		m := r.JSON(t)
		require.NotEqual(t, "live", m["role"])
		for _, k := range []string{"node_name", "role", "epoch", "live_node", "lock_expires_at"} {
			require.Contains(t, m, k)
		}

		for _, rq := range []struct{ method, path, body string }{
			{"GET", "/v1/queues", ""},
			{"GET", "/v1/queues/q", ""},
			{"PUT", "/v1/queues/q", ""},
			{"POST", "/v1/queues/q/messages", "x"},
			{"POST", "/v1/queues/q/receive", "{}"},
			{"POST", "/v1/queues/q/ack", `{"receipts":["r"]}`},
			{"GET", "/v1/addresses", ""},
			{"PUT", "/v1/addresses/a/bindings/q", ""},
		} {
			requireError(t, do(t, h, rq.method, rq.path, rq.body), http.StatusServiceUnavailable, CodeNotLive)
		}
	})
}

// TestNotLiveFromCall checks that server.ErrNotLive returned by a call (the broker
// stepped down after the role check) is answered like the role check.
func TestNotLiveFromCall(t *testing.T) {
	t.Parallel()
	f := newFakeBroker()
	h := New(f, Config{Logger: testLogger(t)})
	createQueue(t, h, "q")
	f.mu.Lock()
	f.failWith = fmt.Errorf("stepping down: %w", server.ErrNotLive)
	f.mu.Unlock()
	requireError(t, do(t, h, http.MethodPost, "/v1/queues/q/messages", "x"), http.StatusServiceUnavailable, CodeNotLive)

	f.mu.Lock()
	f.failWith = fmt.Errorf("insert: %w", server.ErrUnavailable)
	f.mu.Unlock()
	requireError(t, do(t, h, http.MethodPost, "/v1/queues/q/messages", "x"), http.StatusServiceUnavailable, CodeUnavailable)

	f.mu.Lock()
	f.failWith = fmt.Errorf("secret detail of a bug")
	f.mu.Unlock()
	msg := requireError(t, do(t, h, http.MethodGet, "/v1/queues/q", nil), http.StatusInternalServerError, CodeInternal)
	require.NotContains(t, msg, "secret")
}

func TestPanicRecovery(t *testing.T) {
	t.Parallel()
	f := newFakeBroker()
	f.panicOn = "QueueList"
	h := New(f, Config{Logger: testLogger(t)})
	r := do(t, h, http.MethodGet, "/v1/queues", nil, RequestIDHeader, "req-42")
	msg := requireError(t, r, http.StatusInternalServerError, CodeInternal)
	require.NotContains(t, msg, "fake panic")
	require.Equal(t, "req-42", r.Header.Get(RequestIDHeader))
	// The handler still serves.
	r = do(t, h, http.MethodGet, "/livez", nil)
	require.Equal(t, http.StatusOK, r.Status)
	require.NotEmpty(t, r.Header.Get(RequestIDHeader))
}

func TestHealthAndOpenAPI(t *testing.T) {
	t.Parallel()
	h := New(newFakeBroker(), Config{})
	r := do(t, h, http.MethodGet, "/livez", nil)
	require.Equal(t, http.StatusOK, r.Status)
	r = do(t, h, http.MethodGet, "/readyz", nil)
	require.Equal(t, http.StatusOK, r.Status)
	r = do(t, h, http.MethodGet, "/v1/cluster", nil)
	require.Equal(t, http.StatusOK, r.Status)
	require.JSONEq(t, `{"node_name":"fake","role":"live","epoch":1,"live_node":"fake",
		"lock_expires_at":"2030-01-02T03:04:05Z","backups":[]}`, string(r.Body))
	r = do(t, h, http.MethodGet, "/openapi.yaml", nil)
	require.Equal(t, http.StatusOK, r.Status)
	require.Equal(t, "application/yaml", r.Header.Get("Content-Type"))
	require.Equal(t, OpenAPI, r.Body)
}

func TestPublishHeaders(t *testing.T) {
	t.Parallel()
	h := http.Header{}
	h.Set("Tmq-Header-A", "1")
	h.Add("Tmq-Header-Multi", "x")
	h.Add("Tmq-Header-Multi", "y")
	h.Set("Tmq-Persistent", "false")
	h.Set("Tmq-Delay", "1m")
	h.Set("Tmq-TTL", "1h")
	h.Set("Tmq-Priority", " 0 ")
	h.Set("Idempotency-Key", "k")
	h.Set("Tmq-Header-", "ignored: no name")
	m, err := messageFromHeaders(h, []byte("b"))
	require.NoError(t, err)
	require.Equal(t, map[string]string{"a": "1", "multi": "x, y"}, m.Headers)
	require.True(t, m.NonPersistent)
	require.Equal(t, "1m0s", m.Delay.String())
	require.Equal(t, "1h0m0s", m.TTL.String())
	require.NotNil(t, m.Priority)
	require.Equal(t, 0, *m.Priority)
	require.Equal(t, "k", m.IdempotencyKey)
	require.Equal(t, defaultContentType, m.ContentType)

	m, err = messageFromHeaders(http.Header{}, nil)
	require.NoError(t, err)
	require.Nil(t, m.Priority)
	require.False(t, m.NonPersistent)
	require.Nil(t, m.Headers)
}

func TestRequestIDAndLogging(t *testing.T) {
	t.Parallel()
	var buf safeBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := New(newFakeBroker(), Config{Logger: log})

	r := do(t, h, http.MethodGet, "/livez", nil, RequestIDHeader, "abc-123")
	require.Equal(t, "abc-123", r.Header.Get(RequestIDHeader))
	r = do(t, h, http.MethodGet, "/livez", nil, RequestIDHeader, "bad id with spaces")
	id := r.Header.Get(RequestIDHeader)
	require.Len(t, id, 24)
	require.NotContains(t, id, " ")

	out := buf.String()
	require.Contains(t, out, `"msg":"http request"`)
	require.Contains(t, out, `"request_id":"abc-123"`)
	require.Contains(t, out, `"request_id":"`+id+`"`)
	require.Contains(t, out, `"status":200`)
	require.Contains(t, out, `"path":"/livez"`)
}

// safeBuffer is a bytes.Buffer safe for concurrent writes.
type safeBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestOptionalBodies(t *testing.T) {
	t.Parallel()
	forEachBroker(t, Config{}, func(t *testing.T, b *bundle) {
		h := b.h
		// PUT queue and receive accept no body, an empty object, or null.
		for i, body := range []any{nil, "{}", "null", " \n"} {
			r := do(t, h, http.MethodPut, fmt.Sprintf("/v1/queues/opt%d", i), body)
			require.Equal(t, http.StatusCreated, r.Status, "body %q: %s", body, r.Body)
			require.JSONEq(t, fmt.Sprintf(`{"name":"opt%d","created":true,"config":{}}`, i), string(r.Body))
			publish(t, h, fmt.Sprintf("opt%d", i), "m")
			got := receive(t, h, fmt.Sprintf("opt%d", i), body)
			require.Len(t, got.Messages, 1, "receive takes 1 by default")
		}
		// An empty message body is a message too.
		createQueue(t, h, "empty")
		publish(t, h, "empty", "")
		got := receive(t, h, "empty", nil)
		require.Len(t, got.Messages, 1)
		require.Equal(t, "", got.Messages[0].Data)
		require.Equal(t, "application/octet-stream", got.Messages[0].ContentType)
	})
}

// TestCurlFormContentType checks that a JSON body sent with curl -d (which labels it
// application/x-www-form-urlencoded) is read as JSON.
func TestCurlFormContentType(t *testing.T) {
	t.Parallel()
	h := New(newFakeBroker(), Config{Logger: testLogger(t)})
	form := []string{"Content-Type", "application/x-www-form-urlencoded"}
	r := do(t, h, http.MethodPut, "/v1/queues/c", `{"lease":"5s"}`, form...)
	require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
	publish(t, h, "c", "m")
	r = do(t, h, http.MethodPost, "/v1/queues/c/receive", `{"max":5}`, form...)
	require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
	require.Len(t, r.JSON(t)["messages"], 1)
}
