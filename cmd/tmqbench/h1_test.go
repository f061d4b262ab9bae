package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// h1Server is a net/http server with the answers the load generator meets, counting
// the connections it accepts.
func h1Server(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("X-Ctype", r.Header.Get("Content-Type"))
		w.Header().Set("X-Extra", r.Header.Get("Tmq-Header-Sched"))
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(body)
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 3; i++ {
			_, _ = w.Write(bytes.Repeat([]byte{'a' + byte(i)}, 5000))
			w.(http.Flusher).Flush() // no Content-Length: chunks
		}
	})
	mux.HandleFunc("/close", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		_, _ = w.Write([]byte("bye"))
	})
	mux.HandleFunc("/empty", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func TestH1Client(t *testing.T) {
	srv, conns := h1Server(t)
	h := newH1Client(strings.TrimPrefix(srv.URL, "http://"))
	defer h.close()
	ctx := context.Background()

	// A request with a body, a content type and an extra header, several times: one
	// connection carries them all.
	for i := 0; i < 5; i++ {
		body := bytes.Repeat([]byte{byte('0' + i)}, 100*i)
		err := h.do(ctx, http.MethodPost, "/echo", "application/octet-stream", []string{"Tmq-Header-Sched", "42"}, body, func(status int, resp []byte) error {
			if status != http.StatusCreated || !bytes.Equal(resp, body) {
				t.Errorf("round %d: status %d, %d bytes back for %d sent", i, status, len(resp), len(body))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("5 sequential requests used %d connections, want 1", n)
	}

	// A chunked answer is put together whole.
	err := h.do(ctx, http.MethodGet, "/chunked", "", nil, nil, func(status int, resp []byte) error {
		want := string(bytes.Repeat([]byte{'a'}, 5000)) + string(bytes.Repeat([]byte{'b'}, 5000)) + string(bytes.Repeat([]byte{'c'}, 5000))
		if status != http.StatusOK || string(resp) != want {
			t.Errorf("chunked: status %d, %d bytes", status, len(resp))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// 204 has no body, and the connection stays usable after it.
	for _, path := range []string{"/empty", "/echo"} {
		if err := h.do(ctx, http.MethodPost, path, "", nil, nil, func(int, []byte) error { return nil }); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("after chunked and empty answers: %d connections, want 1", n)
	}

	// Connection: close is honoured: the next request dials again (the first of these
	// two goes on the connection of the requests above).
	for i := 0; i < 2; i++ {
		if err := h.do(ctx, http.MethodGet, "/close", "", nil, nil, func(_ int, resp []byte) error {
			if string(resp) != "bye" {
				t.Errorf("close: body %q", resp)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("after two Connection: close answers: %d connections, want 2", n)
	}

	// fn's error is do's; an unknown path is a 404 passed to fn.
	sentinel := errors.New("sentinel")
	if err := h.do(ctx, http.MethodGet, "/nope", "", nil, nil, func(status int, _ []byte) error {
		if status != http.StatusNotFound {
			t.Errorf("status %d, want 404", status)
		}
		return sentinel
	}); !errors.Is(err, sentinel) {
		t.Fatalf("err %v, want the callback's", err)
	}
}

func TestH1ClientCancel(t *testing.T) {
	srv, _ := h1Server(t)
	h := newH1Client(strings.TrimPrefix(srv.URL, "http://"))
	defer h.close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	err := h.do(ctx, http.MethodGet, "/slow", "", nil, nil, func(int, []byte) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("a cancelled request returned after %s", d)
	}
	// The cancelled connection is not reused; a new request works.
	if err := h.do(context.Background(), http.MethodPost, "/echo", "", nil, []byte("x"), func(status int, resp []byte) error {
		if status != http.StatusCreated || string(resp) != "x" {
			t.Errorf("after cancel: status %d body %q", status, resp)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
