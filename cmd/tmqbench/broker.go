package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
)

// broker is a `tablemq serve` process started for the benchmark.
type broker struct {
	cmd   *exec.Cmd
	base  string
	hc    *http.Client  // for the few requests outside the scenarios
	h1    *h1client     // for the scenarios' requests (see h1client)
	pprof string        // host:port of its --pprof-listen, or ""
	done  chan struct{} // closed when the process has exited
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// defaultTableOptions name the tables of a group as the tablemq flags do
// (--<name>-table-name) when the binary cannot tell (see tableOptions).
var defaultTableOptions = []string{"bindings", "message", "large-message", "page-store", "node-manager-store", "duplicate-ids", "migrations"}

var (
	tableOptionsMu    sync.Mutex
	tableOptionsCache = map[string][]string{}
	tableFlagRE       = regexp.MustCompile(`--([a-z][a-z-]*)-table-name\b`)
)

// tableOptions returns the names of the binary's --<name>-table-name flags, read from
// `binary serve --help` once, so that every table of a new version (a counters table,
// say) gets the benchmark's prefix too; defaultTableOptions when the help says nothing.
func tableOptions(binary string) []string {
	tableOptionsMu.Lock()
	defer tableOptionsMu.Unlock()
	if t, ok := tableOptionsCache[binary]; ok {
		return t
	}
	out, _ := exec.Command(binary, "serve", "--help").CombinedOutput()
	var names []string
	seen := map[string]bool{}
	for _, m := range tableFlagRE.FindAllStringSubmatch(string(out), -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			names = append(names, m[1])
		}
	}
	if len(names) == 0 {
		names = defaultTableOptions
	}
	tableOptionsCache[binary] = names
	return names
}

// launchOptions describe one `tablemq serve` process of the benchmark.
type launchOptions struct {
	binary, store string
	prefix        string   // of every table name
	name          string   // --node-name
	pprof         bool     // serve net/http/pprof on a port of its own
	extra         []string // more flags
}

// launch starts `tablemq serve` on its own port, its tables named with o.prefix; it
// does not wait until it serves (see startBroker and broker.awaitReady).
func launch(o launchOptions) (*broker, error) {
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("free port: %w", err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := []string{"serve", "--store", o.store, "--listen", addr, "--node-name", o.name, "--log-level", "warn"}
	for _, t := range tableOptions(o.binary) {
		args = append(args, "--"+t+"-table-name", o.prefix+strings.ReplaceAll(t, "-", "_"))
	}
	pprof := ""
	if o.pprof {
		pp, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		pprof = fmt.Sprintf("127.0.0.1:%d", pp)
		args = append(args, "--pprof-listen", pprof)
	}
	args = append(args, o.extra...)
	cmd := exec.Command(o.binary, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", o.binary, err)
	}
	b := &broker{cmd: cmd, base: "http://" + addr, h1: newH1Client(addr), pprof: pprof, done: make(chan struct{}), hc: &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute},
	}}
	go func() { _ = cmd.Wait(); close(b.done) }()
	return b, nil
}

// startBrokerWith launches a broker and waits until its /readyz answers 200.
func startBrokerWith(ctx context.Context, log *slog.Logger, o launchOptions) (*broker, error) {
	b, err := launch(o)
	if err != nil {
		return nil, err
	}
	if err := b.awaitReady(ctx, 30*time.Second); err != nil {
		b.stop()
		return nil, err
	}
	log.Info("broker ready", "addr", b.base, "pid", b.pid())
	return b, nil
}

// awaitReady polls /readyz until it answers 200, the process exits, or limit passes.
func (b *broker) awaitReady(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		resp, err := b.hc.Get(b.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-b.done:
			return fmt.Errorf("broker at %s exited before it was ready", b.base)
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("broker did not become ready at %s", b.base)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pid is the broker's process id.
func (b *broker) pid() int { return b.cmd.Process.Pid }

// stop stops the broker with SIGTERM, and with SIGKILL after 30 s.
func (b *broker) stop() {
	b.h1.close()
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(30 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}

func (b *broker) do(ctx context.Context, method, path, ctype string, body []byte, want int, out any) error {
	return b.h1.do(ctx, method, path, ctype, nil, body, func(status int, resp []byte) error {
		if status != want {
			return statusError(method, path, status, resp)
		}
		if out != nil {
			// encoding/json/v2 semantics: a decoder several times faster, so that the load
			// generator, on the same CPUs as the broker, takes as little of them as it can.
			return jsonv2.Unmarshal(resp, out)
		}
		return nil
	})
}

// statusError is the error of an answer with an unexpected status.
func statusError(method, path string, status int, body []byte) error {
	return fmt.Errorf("%s %s: status %d: %s", method, path, status, bytes.TrimSpace(body[:min(len(body), 512)]))
}

func (b *broker) createQueue(ctx context.Context, q string) error {
	err := b.do(ctx, http.MethodPut, "/v1/queues/"+q, "", nil, http.StatusCreated, nil)
	return err
}

func (b *broker) publish(ctx context.Context, q string, body []byte) error {
	return b.do(ctx, http.MethodPost, "/v1/queues/"+q+"/messages", "application/octet-stream", body, http.StatusCreated, nil)
}
