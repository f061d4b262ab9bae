package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// broker is a `tablemq serve` process started for the benchmark.
type broker struct {
	cmd  *exec.Cmd
	base string
	hc   *http.Client
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startBroker(ctx context.Context, log *slog.Logger, binary, store, prefix string) (*broker, error) {
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("free port: %w", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := []string{"serve", "--store", store, "--listen", addr, "--node-name", "bench", "--log-level", "warn"}
	for _, t := range []string{"bindings", "message", "large-message", "page-store", "node-manager-store", "duplicate-ids", "migrations"} {
		args = append(args, "--"+t+"-table-name", prefix+strings.ReplaceAll(t, "-", "_"))
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	b := &broker{cmd: cmd, base: "http://" + addr, hc: &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute},
	}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := b.hc.Get(b.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				log.Info("broker ready", "addr", addr, "pid", cmd.Process.Pid)
				return b, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			b.stop()
			return nil, fmt.Errorf("broker did not become ready at %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *broker) stop() {
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = b.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = b.cmd.Process.Kill()
		<-done
	}
}

func (b *broker) do(ctx context.Context, method, path, ctype string, body []byte, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, b.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s %s: status %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(msg))
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

func (b *broker) createQueue(ctx context.Context, q string) error {
	err := b.do(ctx, http.MethodPut, "/v1/queues/"+q, "", nil, http.StatusCreated, nil)
	return err
}

func (b *broker) publish(ctx context.Context, q string, body []byte) error {
	return b.do(ctx, http.MethodPost, "/v1/queues/"+q+"/messages", "application/octet-stream", body, http.StatusCreated, nil)
}
