package httpapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// largeAnswer is the answer of a receive with the large-message fields.
type largeAnswer struct {
	Messages []struct {
		ID          string `json:"id"`
		Receipt     string `json:"receipt"`
		Data        string `json:"data"`
		ContentType string `json:"content_type"`
		Large       *bool  `json:"large"`
		Size        *int64 `json:"size"`
	} `json:"messages"`
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// onlyReader hides the type of its reader, so that a request built on it has no
// Content-Length (chunked).
type onlyReader struct{ io.Reader }

func bodyPath(queue, id, receipt string) string {
	return "/v1/queues/" + queue + "/messages/" + id + "/body?receipt=" + url.QueryEscape(receipt)
}

// TestLargeMessages publishes bodies below and above the threshold (with and without
// a Content-Length), receives them marked as large or not, and reads them back from
// the body endpoint byte for byte.
func TestLargeMessages(t *testing.T) {
	t.Parallel()
	forEachBroker(t, Config{LargeMessageThreshold: 1024, MaxBodyBytes: 1 << 20}, func(t *testing.T, b *bundle) {
		h := b.h
		createQueue(t, h, "q")
		small := randomBytes(1, 1024)
		big := randomBytes(2, 300<<10)
		chunked := randomBytes(3, 200<<10)
		publish(t, h, "q", string(small), "Content-Type", "text/x-small")
		r := do(t, h, http.MethodPost, "/v1/queues/q/messages", big, "Content-Type", "application/x-big")
		require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
		req := httptest.NewRequest(http.MethodPost, "/v1/queues/q/messages", onlyReader{bytes.NewReader(chunked)})
		require.Equal(t, int64(-1), req.ContentLength)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		require.Equal(t, http.StatusCreated, rec.Code, "body: %s", rec.Body)

		rr := do(t, h, http.MethodPost, "/v1/queues/q/receive", `{"max":10}`)
		require.Equal(t, http.StatusOK, rr.Status)
		var out largeAnswer
		require.NoError(t, json.Unmarshal(rr.Body, &out))
		require.Len(t, out.Messages, 3)
		want := [][]byte{small, big, chunked}
		for i, m := range out.Messages {
			require.NotNil(t, m.Large, "large is always present")
			require.NotNil(t, m.Size, "size is always present")
			require.Equal(t, int64(len(want[i])), *m.Size)
			require.Equal(t, len(want[i]) > 1024, *m.Large)
			if *m.Large {
				require.Empty(t, m.Data)
			} else {
				require.Equal(t, base64.StdEncoding.EncodeToString(want[i]), m.Data)
			}
			br := do(t, h, http.MethodGet, bodyPath("q", m.ID, m.Receipt), nil)
			require.Equal(t, http.StatusOK, br.Status, "body: %s", br.Body)
			require.Equal(t, strconv.Itoa(len(want[i])), br.Header.Get("Content-Length"))
			require.Equal(t, sha256.Sum256(want[i]), sha256.Sum256(br.Body))
		}
		require.Equal(t, "text/x-small", do(t, h, http.MethodGet, bodyPath("q", out.Messages[0].ID, out.Messages[0].Receipt), nil).Header.Get("Content-Type"))
		require.Equal(t, "application/x-big", do(t, h, http.MethodGet, bodyPath("q", out.Messages[1].ID, out.Messages[1].Receipt), nil).Header.Get("Content-Type"))
		require.Equal(t, "application/octet-stream", do(t, h, http.MethodGet, bodyPath("q", out.Messages[2].ID, out.Messages[2].Receipt), nil).Header.Get("Content-Type"))

		// Errors: no receipt, unknown queue, a receipt of an acked message.
		m := out.Messages[1]
		requireError(t, do(t, h, http.MethodGet, "/v1/queues/q/messages/"+m.ID+"/body", nil), http.StatusBadRequest, CodeInvalidRequest)
		requireError(t, do(t, h, http.MethodGet, bodyPath("nope", m.ID, m.Receipt), nil), http.StatusNotFound, CodeQueueNotFound)
		ack := receipts(t, h, "q", "ack", map[string]any{"receipts": []string{m.Receipt}})
		require.True(t, ack.Results[0].OK)
		requireError(t, do(t, h, http.MethodGet, bodyPath("q", m.ID, m.Receipt), nil), http.StatusBadRequest, CodeReceiptUnknown)
	})
}

// TestBatchAboveLargeThreshold: a message of a batch is stored whole, so a body above
// the large-message threshold is refused on its own (413 too_large) and the others of
// the batch are published; the same body published alone is stored as a large message.
func TestBatchAboveLargeThreshold(t *testing.T) {
	t.Parallel()
	forEachBroker(t, Config{LargeMessageThreshold: 1024, MaxBodyBytes: 1 << 20}, func(t *testing.T, b *bundle) {
		h := b.h
		createQueue(t, h, "q")
		enc := base64.StdEncoding.EncodeToString
		big := randomBytes(5, 200<<10)
		r := do(t, h, http.MethodPost, "/v1/queues/q/messages/batch", map[string]any{"messages": []any{
			map[string]any{"data": enc(big[:1024])}, // exactly the threshold: stored
			map[string]any{"data": enc(big[:1025])},
			map[string]any{"data": enc(big)},
			map[string]any{"data": enc([]byte("small"))},
		}})
		require.Equal(t, http.StatusOK, r.Status, "body: %s", r.Body)
		var out struct {
			Results []struct {
				ID    string       `json:"id"`
				Error *ErrorDetail `json:"error"`
			} `json:"results"`
		}
		require.NoError(t, json.Unmarshal(r.Body, &out))
		require.Len(t, out.Results, 4)
		require.NotEmpty(t, out.Results[0].ID)
		require.NotEmpty(t, out.Results[3].ID)
		for i := 1; i <= 2; i++ {
			require.Empty(t, out.Results[i].ID)
			require.NotNil(t, out.Results[i].Error, "body: %s", r.Body)
			require.Equal(t, CodeTooLarge, out.Results[i].Error.Code)
			require.Contains(t, out.Results[i].Error.Message, fmt.Sprintf("messages[%d].data", i))
			require.Contains(t, out.Results[i].Error.Message, "1024 bytes")
		}
		d, _ := depth(t, h, "q")
		require.Equal(t, 2, d)

		// Alone, the same body is a large message.
		require.Equal(t, http.StatusCreated, do(t, h, http.MethodPost, "/v1/queues/q/messages", big).Status)
		rr := do(t, h, http.MethodPost, "/v1/queues/q/receive", map[string]any{"max": 10})
		require.Equal(t, http.StatusOK, rr.Status, "body: %s", rr.Body)
		var got largeAnswer
		require.NoError(t, json.Unmarshal(rr.Body, &got))
		require.Len(t, got.Messages, 3)
		require.False(t, *got.Messages[0].Large)
		require.Equal(t, enc(big[:1024]), got.Messages[0].Data)
		require.True(t, *got.Messages[2].Large)
		require.EqualValues(t, 200<<10, *got.Messages[2].Size)
	})
}

// TestLargeTooLarge: a body above max-message-size answers 413 with the JSON error,
// before reading when the Content-Length says so, and while streaming otherwise.
func TestLargeTooLarge(t *testing.T) {
	t.Parallel()
	forEachBroker(t, Config{LargeMessageThreshold: 1024, MaxBodyBytes: 64 << 10}, func(t *testing.T, b *bundle) {
		h := b.h
		createQueue(t, h, "q")
		body := randomBytes(4, 64<<10+1)
		requireError(t, do(t, h, http.MethodPost, "/v1/queues/q/messages", body), http.StatusRequestEntityTooLarge, CodeTooLarge)
		req := httptest.NewRequest(http.MethodPost, "/v1/queues/q/messages", onlyReader{bytes.NewReader(body)})
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		requireError(t, resp{Status: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}, http.StatusRequestEntityTooLarge, CodeTooLarge)
		// To an address as well.
		require.Equal(t, http.StatusCreated, do(t, h, http.MethodPut, "/v1/addresses/a", `{"routing":"multicast"}`).Status)
		require.Equal(t, http.StatusCreated, do(t, h, http.MethodPut, "/v1/addresses/a/bindings/q", nil).Status)
		req = httptest.NewRequest(http.MethodPost, "/v1/addresses/a/messages", onlyReader{bytes.NewReader(body)})
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		requireError(t, resp{Status: rec.Code, Header: rec.Header(), Body: rec.Body.Bytes()}, http.StatusRequestEntityTooLarge, CodeTooLarge)
		// Exactly the limit is stored, through the address.
		r := do(t, h, http.MethodPost, "/v1/addresses/a/messages", body[:64<<10])
		require.Equal(t, http.StatusCreated, r.Status, "body: %s", r.Body)
		d, _ := depth(t, h, "q")
		require.Equal(t, 1, d)
	})
}
