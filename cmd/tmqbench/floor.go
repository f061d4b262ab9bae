package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"time"
)

// The HTTP floor: what one request costs a Go net/http server that does nothing but
// read a 1 KiB body and answer 201 with a publish's JSON, measured like the broker
// (its own process, the same load generator, the same client counts). No broker can
// spend less per request on net/http; the broker's row minus this one is the broker's
// own work (routing, the store, the group commit).

// floorServeFlag makes tmqbench the bare server, listening on its value: the floor
// scenario starts tmqbench itself with it, so that the server's CPU is its own process's.
const floorServeFlag = "-serve-http-floor"

// floorAnswer is the answer of the bare server: a publish's answer, same size.
var floorAnswer = []byte(`{"id":"00000000000000000001","duplicate":false}` + "\n")

// serveFloor runs the bare server on addr until the process is killed.
func serveFloor(addr string) error {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/queues/floor/messages", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(floorAnswer)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return srv.ListenAndServe()
}

// httpFloor measures the bare server with c clients publishing one message per request.
func (r *runner) httpFloor(ctx context.Context, clients []int) {
	const name = "bare net/http server, 1 msg/request (no broker)"
	port, err := freePort()
	if err != nil {
		r.failed("floor", name, 0, err)
		return
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	self, err := os.Executable()
	if err != nil {
		r.failed("floor", name, 0, err)
		return
	}
	cmd := exec.Command(self, floorServeFlag, addr)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		r.failed("floor", name, 0, fmt.Errorf("start the bare server: %w", err))
		return
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	h := newH1Client(addr)
	defer h.close()
	publish := func(ctx context.Context) error {
		return h.do(ctx, http.MethodPost, "/v1/queues/floor/messages", "application/octet-stream", nil, r.body, func(status int, resp []byte) error {
			if status != http.StatusCreated {
				return statusError(http.MethodPost, "/v1/queues/floor/messages", status, resp)
			}
			return nil
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for publish(ctx) != nil {
		if time.Now().After(deadline) || ctx.Err() != nil {
			r.failed("floor", name, 0, fmt.Errorf("the bare server at %s did not answer", addr))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range clients {
		m := startCPU(cmd.Process.Pid, "")
		rctx, cancel := context.WithTimeout(ctx, r.o.duration)
		s, err := runWorkers(rctx, c, 0, func(ctx context.Context, _ int) (int, error) { return 1, publish(ctx) })
		cancel()
		if err != nil {
			r.failed(fmt.Sprintf("floor/%d", c), name, c, err)
			continue
		}
		m.stop(s)
		r.add(result{id: fmt.Sprintf("floor/%d", c), name: name, clients: c, s: s,
			note: "net/http reading 1 KiB and answering 201, nothing else: the HTTP part of a broker's cost per request"})
	}
}
