package httpapi

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/server"
)

// TestRealLimits checks the size limits and full policies over HTTP on the real broker:
// settings round-trip, FAIL answers 507, DROP 202 with dropped, a BLOCK timeout 503
// with Retry-After, PAGE keeps answering 201 and shows the paged count.
func TestRealLimits(t *testing.T) {
	t.Parallel()
	h := realServer(t, server.Config{NodeName: "limits", BlockTimeout: 100 * time.Millisecond, Logger: testLogger(t)},
		Config{Logger: testLogger(t)}).h

	for name, policy := range map[string]string{"f": "FAIL", "d": "DROP", "b": "BLOCK", "p": "PAGE"} {
		r := do(t, h, http.MethodPut, "/v1/queues/"+name, `{"max_size_bytes": 10, "address_full_policy": "`+policy+`"}`)
		require.Equal(t, http.StatusCreated, r.Status, "%s", r.Body)
		require.Equal(t, http.StatusCreated, do(t, h, http.MethodPost, "/v1/queues/"+name+"/messages", "0123456789").Status)
	}
	cfg := do(t, h, http.MethodGet, "/v1/queues/f", nil).JSON(t)["config"].(map[string]any)
	require.Equal(t, float64(10), cfg["max_size_bytes"])
	require.Equal(t, "FAIL", cfg["address_full_policy"])

	requireError(t, do(t, h, http.MethodPost, "/v1/queues/f/messages", "x"), http.StatusInsufficientStorage, CodeAddressFull)

	r := do(t, h, http.MethodPost, "/v1/queues/d/messages", "x")
	require.Equal(t, http.StatusAccepted, r.Status)
	require.Equal(t, map[string]any{"dropped": true}, r.JSON(t))

	r = do(t, h, http.MethodPost, "/v1/queues/b/messages", "x")
	requireError(t, r, http.StatusServiceUnavailable, CodePublishBlocked)
	require.Equal(t, "1", r.Header.Get("Retry-After"))

	for range 3 {
		require.Equal(t, http.StatusCreated, do(t, h, http.MethodPost, "/v1/queues/p/messages", "more").Status)
	}
	q := do(t, h, http.MethodGet, "/v1/queues/p", nil).JSON(t)
	require.Equal(t, float64(4), q["depth"])
	require.Equal(t, float64(3), q["paged"])
	require.Equal(t, float64(10), q["bytes"])

	// Addresses take limits too, and show their size.
	r = do(t, h, http.MethodPut, "/v1/addresses/a", `{"routing": "multicast", "max_size_bytes": 5, "address_full_policy": "FAIL"}`)
	require.Equal(t, http.StatusCreated, r.Status, "%s", r.Body)
	require.Equal(t, http.StatusCreated, do(t, h, http.MethodPut, "/v1/addresses/a/bindings/f", nil).Status)
	a := do(t, h, http.MethodGet, "/v1/addresses/a", nil).JSON(t)
	require.Equal(t, float64(5), a["max_size_bytes"])
	require.Equal(t, float64(10), a["bytes"])
	require.Equal(t, false, a["paging"])
	requireError(t, do(t, h, http.MethodPost, "/v1/addresses/a/messages", "x"), http.StatusInsufficientStorage, CodeAddressFull)

	requireError(t, do(t, h, http.MethodPut, "/v1/queues/bad", `{"address_full_policy": "SPILL"}`), http.StatusBadRequest, CodeInvalidRequest)
	requireError(t, do(t, h, http.MethodPut, "/v1/queues/bad", `{"max_size_bytes": -2}`), http.StatusBadRequest, CodeInvalidRequest)
}
