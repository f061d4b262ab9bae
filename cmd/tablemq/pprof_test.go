package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPprofListenOption(t *testing.T) {
	t.Parallel()
	p := parse(t, []string{"serve"}, nil, nil)
	require.Equal(t, 0, p.code, p.stderr)
	require.Empty(t, p.opts.PprofListen)

	p = parse(t, []string{"serve", "--pprof-listen", "127.0.0.1:6060"}, nil, nil)
	require.Equal(t, 0, p.code, p.stderr)
	require.Equal(t, "127.0.0.1:6060", p.opts.PprofListen)
	require.Empty(t, p.opts.warnings)

	p = parse(t, []string{"serve"}, map[string]string{"TABLEMQ_PPROF_LISTEN": "localhost:6060"}, nil)
	require.Equal(t, 0, p.code, p.stderr)
	require.Equal(t, "localhost:6060", p.opts.PprofListen)
	require.Empty(t, p.opts.warnings)

	p = parse(t, []string{"serve", "--pprof-listen", ":6060"}, nil, nil)
	require.Equal(t, 0, p.code, p.stderr)
	require.Len(t, p.opts.warnings, 1)
	require.Contains(t, p.opts.warnings[0], "not a loopback address")

	requireFails(t, parse(t, []string{"serve", "--pprof-listen", "6060"}, nil, nil), "pprof-listen: want HOST:PORT")
	requireFails(t, parse(t, []string{"serve", "--pprof-listen", "localhost:http"}, nil, nil), "pprof-listen: invalid port")
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testClient is an HTTP client whose idle connections are closed when t ends (goleak).
func testClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// get fetches url and returns its status and body, or an error.
func get(c *http.Client, method, url string, body string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	r, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = r.Body.Close() }()
	b, err := io.ReadAll(r.Body)
	return r.StatusCode, string(b), err
}

// TestServeMetricsAndPprof runs tablemq serve on SQLite with --pprof-listen: the API
// listener serves /metrics (with the commit and renew series fed) and no pprof, the
// pprof listener serves pprof.
func TestServeMetricsAndPprof(t *testing.T) {
	t.Parallel()
	api, pp := freeAddr(t), freeAddr(t)
	store := "sqlite:" + filepath.Join(t.TempDir(), "tablemq.db")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	src := sources{
		LookupEnv: func(string) (string, bool) { return "", false },
		ReadFile:  os.ReadFile,
	}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, nil, []string{"serve", "--store", store, "--listen", api, "--pprof-listen", pp,
			"--lock-renew-period", "100ms", "--node-name", "metrics"}, &stdout, &stderr, src)
	}()

	base := "http://" + api
	c := testClient(t)
	require.Eventually(t, func() bool {
		status, _, err := get(c, http.MethodGet, base+"/readyz", "")
		return err == nil && status == http.StatusOK
	}, 20*time.Second, 20*time.Millisecond, "not ready: %s", &stderr)

	status, body, err := get(c, http.MethodPut, base+"/v1/queues/q", "")
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, status, body)
	status, body, err = get(c, http.MethodPost, base+"/v1/queues/q/messages", "hello")
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, status, body)

	// Renewals every 100ms: the renew histogram fills within a few seconds.
	require.Eventually(t, func() bool {
		status, body, err = get(c, http.MethodGet, base+"/metrics", "")
		return err == nil && status == http.StatusOK &&
			strings.Contains(body, "tablemq_lock_renew_duration_seconds_count") &&
			!strings.Contains(body, "tablemq_lock_renew_duration_seconds_count 0")
	}, 10*time.Second, 50*time.Millisecond, "no renewal observed")
	require.Contains(t, body, `tablemq_role{role="live"} 1`)
	require.Contains(t, body, "tablemq_messages_published_total 1")
	require.Contains(t, body, `tablemq_queue_depth{queue="q"} 1`)
	require.Contains(t, body, "tablemq_commit_batch_rows_count")
	require.NotContains(t, body, "tablemq_commit_batch_rows_count 0")

	status, _, err = get(c, http.MethodGet, base+"/debug/pprof/", "")
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, status, "pprof must not be on the API listener")
	status, body, err = get(c, http.MethodGet, "http://"+pp+"/debug/pprof/", "")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, body, "goroutine")
	status, _, err = get(c, http.MethodGet, "http://"+pp+"/debug/pprof/heap?debug=1", "")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status)
	status, _, err = get(c, http.MethodGet, "http://"+pp+"/metrics", "")
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, status)
	c.CloseIdleConnections()

	cancel()
	select {
	case code := <-done:
		require.Equal(t, 0, code, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop within 30s")
	}
	require.Contains(t, stderr.String(), "serving pprof")
	// The pprof listener is closed with the rest.
	conn, err := net.DialTimeout("tcp", pp, time.Second)
	if err == nil {
		_ = conn.Close()
	}
	require.Error(t, err, "the pprof listener is still open")
}
