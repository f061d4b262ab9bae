package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// binary is the tablemq binary built by TestMain.
var binary string

// httpClient is shared by every test; TestMain closes its idle connections.
var httpClient = &http.Client{Timeout: time.Minute}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tablemq-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "tablemq")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/tablemq")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: go build ../cmd/tablemq:", err)
		return 1
	}
	code := m.Run()
	httpClient.CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: goroutine leak:", err)
			return 1
		}
	}
	return code
}

// testTimeout bounds each test; the race detector makes the binary several times slower.
func testTimeout() time.Duration {
	if raceEnabled {
		return 6 * time.Minute
	}
	return 3 * time.Minute
}

// deadline returns a context bounded by testTimeout and cancelled at the end of t.
func deadline(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout())
	t.Cleanup(cancel)
	return ctx
}

// logBuffer collects a process's stderr and tells waiters about the line that
// announces the broker live.
type logBuffer struct {
	mu      sync.Mutex // guards buf, partial, listen
	buf     bytes.Buffer
	partial []byte
	listen  string
	live    chan struct{} // closed once listen is known
}

// Write implements io.Writer.
func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := l.partial[:i]
		l.partial = l.partial[i+1:]
		var rec struct {
			Msg    string `json:"msg"`
			Listen string `json:"listen"`
		}
		if l.listen == "" && json.Unmarshal(line, &rec) == nil && rec.Msg == "listening" && rec.Listen != "" {
			l.listen = rec.Listen
			close(l.live)
		}
	}
	return len(p), nil
}

// String returns everything written so far.
func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// count returns how many lines of the output so far contain substr.
func (l *logBuffer) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.buf.String(), "\n") {
		if strings.Contains(line, substr) {
			n++
		}
	}
	return n
}

// broker is one tablemq process.
type broker struct {
	t     *testing.T
	name  string
	store string
	cmd   *exec.Cmd
	log   *logBuffer
	done  chan struct{} // closed when the process has exited
	err   error         // cmd.Wait's error, set before done is closed
	base  string        // http://host:port once live
}

// launch starts `tablemq <args...>` without waiting for anything. Its stderr goes to
// the test log when the test fails; it is killed at the end of the test if still
// running.
func launch(t *testing.T, name string, args ...string) *broker {
	t.Helper()
	b := &broker{t: t, name: name, log: &logBuffer{live: make(chan struct{})}, done: make(chan struct{})}
	b.cmd = exec.Command(binary, args...)
	b.cmd.Stdout = b.log
	b.cmd.Stderr = b.log
	b.cmd.Dir = t.TempDir()
	require.NoError(t, b.cmd.Start(), "start %s", name)
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			_ = b.cmd.Process.Kill()
			<-b.done
		}
		if t.Failed() {
			t.Logf("--- output of %s (%s):\n%s", b.name, strings.Join(args, " "), b.log.String())
		}
	})
	return b
}

// Lock settings of every instance the tests start: fast, so that a takeover after
// kill -9 (or a restart of a policy-none instance after one) takes about a second.
const (
	lockRenewPeriod = 200 * time.Millisecond
	lockExpiration  = time.Second
	networkTimeout  = 500 * time.Millisecond
	pollInterval    = 100 * time.Millisecond
)

// serveArgs are the arguments of `tablemq serve` for an instance named name on store;
// extra comes last, so it overrides the defaults.
func serveArgs(name, store string, extra ...string) []string {
	args := []string{"serve", "--store", store, "--listen", "127.0.0.1:0", "--node-name", name,
		"--log-format", "json", "--shutdown-timeout", "20s",
		"--lock-renew-period", lockRenewPeriod.String(), "--lock-expiration", lockExpiration.String(),
		"--network-timeout", networkTimeout.String(), "--backup-poll-interval", pollInterval.String()}
	return append(args, extra...)
}

// launchServe starts `tablemq serve` on store and waits for its "listening" line,
// which every instance prints, live or backup; base is set then.
func launchServe(ctx context.Context, t *testing.T, name, store string, extra ...string) *broker {
	t.Helper()
	b := launch(t, name, serveArgs(name, store, extra...)...)
	b.store = store
	select {
	case <-b.log.live:
	case <-b.done:
		t.Fatalf("%s exited before it was listening: %v", name, b.err)
	case <-ctx.Done():
		t.Fatalf("%s was not listening in time", name)
	}
	b.log.mu.Lock()
	b.base = "http://" + b.log.listen
	b.log.mu.Unlock()
	return b
}

// startBroker starts `tablemq serve` on store, on a free port, and waits until it is
// live and /readyz answers 200. With no --ha-policy in extra it runs with policy none.
func startBroker(ctx context.Context, t *testing.T, name, store string, extra ...string) *broker {
	t.Helper()
	b := launchServe(ctx, t, name, store, extra...)
	b.awaitReady(ctx)
	return b
}

// startPrimary starts a live instance with policy shared-store-primary.
func startPrimary(ctx context.Context, t *testing.T, name, store string, extra ...string) *broker {
	t.Helper()
	return startBroker(ctx, t, name, store, append([]string{"--ha-policy", "shared-store-primary"}, extra...)...)
}

// startBackup starts an instance with policy shared-store-backup and waits until
// /v1/cluster shows it waiting as a backup.
func startBackup(ctx context.Context, t *testing.T, name, store string, extra ...string) *broker {
	t.Helper()
	b := launchServe(ctx, t, name, store, append([]string{"--ha-policy", "shared-store-backup"}, extra...)...)
	b.awaitRole(ctx, "backup")
	return b
}

// awaitReady waits until /readyz answers 200.
func (b *broker) awaitReady(ctx context.Context) {
	b.t.Helper()
	eventually(ctx, b.t, b.name+" /readyz 200", func() error {
		if st := b.ready(ctx); st != http.StatusOK {
			return fmt.Errorf("status %d", st)
		}
		return nil
	})
}

// awaitRole waits until /v1/cluster shows role.
func (b *broker) awaitRole(ctx context.Context, role string) clusterStatus {
	b.t.Helper()
	var cs clusterStatus
	eventually(ctx, b.t, b.name+" role "+role, func() error {
		select {
		case <-b.done:
			b.t.Fatalf("%s exited while waiting for role %s: %v", b.name, role, b.err)
		default:
		}
		var err error
		if cs, err = b.cluster(ctx); err != nil {
			return err
		}
		if cs.Role != role {
			return fmt.Errorf("role %q", cs.Role)
		}
		return nil
	})
	return cs
}

// probeTimeout bounds one health or status probe, so that a stopped process does not
// hold a poll loop.
const probeTimeout = 2 * time.Second

// ready returns the status of /readyz (0 when the request failed).
func (b *broker) ready(ctx context.Context) int {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	st, _ := b.request(pctx, http.MethodGet, "/readyz", nil, nil)
	return st
}

// clusterStatus is the answer of GET /v1/cluster.
type clusterStatus struct {
	NodeName      string    `json:"node_name"`
	Role          string    `json:"role"`
	Epoch         int64     `json:"epoch"`
	LiveNode      string    `json:"live_node"`
	LockExpiresAt time.Time `json:"lock_expires_at"`
	Backups       []string  `json:"backups"`
}

// cluster asks /v1/cluster.
func (b *broker) cluster(ctx context.Context) (clusterStatus, error) {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var cs clusterStatus
	st, data := b.request(pctx, http.MethodGet, "/v1/cluster", nil, nil)
	if st != http.StatusOK {
		return cs, fmt.Errorf("/v1/cluster of %s: status %d: %s", b.name, st, data)
	}
	if err := json.Unmarshal(data, &cs); err != nil {
		return cs, fmt.Errorf("/v1/cluster of %s: %w: %s", b.name, err, data)
	}
	return cs, nil
}

// exited reports whether the process has ended.
func (b *broker) exited() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process.
func (b *broker) signal(sig syscall.Signal) {
	b.t.Helper()
	require.NoError(b.t, b.cmd.Process.Signal(sig), "signal %s to %s", sig, b.name)
}

// kill sends SIGKILL and waits for the process to end.
func (b *broker) kill() {
	b.t.Helper()
	require.NoError(b.t, b.cmd.Process.Signal(syscall.SIGKILL))
	<-b.done
}

// stop sends SIGTERM and returns the exit code once the process has ended.
func (b *broker) stop(ctx context.Context) int {
	b.t.Helper()
	require.NoError(b.t, b.cmd.Process.Signal(syscall.SIGTERM))
	return b.wait(ctx)
}

// wait waits for the process to end and returns its exit code.
func (b *broker) wait(ctx context.Context) int {
	b.t.Helper()
	select {
	case <-b.done:
	case <-ctx.Done():
		b.t.Fatalf("%s did not exit in time", b.name)
	}
	return b.cmd.ProcessState.ExitCode()
}

// request sends a request and returns the status and the body; status 0 means the
// request failed (connection refused, ...).
func (b *broker) request(ctx context.Context, method, path string, body []byte, hdr map[string]string) (int, []byte) {
	req, err := http.NewRequestWithContext(ctx, method, b.base+path, bytes.NewReader(body))
	if err != nil {
		b.t.Fatalf("request %s %s: %v", method, path, err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, []byte(err.Error())
	}
	return resp.StatusCode, data
}

// mustJSON sends a request with a JSON body, requires one of the statuses and decodes
// the answer into out (when not nil).
func (b *broker) mustJSON(ctx context.Context, method, path string, in, out any, statuses ...int) int {
	b.t.Helper()
	var body []byte
	if in != nil {
		var err error
		body, err = json.Marshal(in)
		require.NoError(b.t, err)
	}
	st, data := b.request(ctx, method, path, body, map[string]string{"Content-Type": "application/json"})
	require.Contains(b.t, statuses, st, "%s %s on %s: %s", method, path, b.name, data)
	if out != nil {
		require.NoError(b.t, json.Unmarshal(data, out), "%s %s: %s", method, path, data)
	}
	return st
}

// publish posts one message and returns the status and the id (when 201).
func (b *broker) publish(ctx context.Context, path string, body string, idemKey string) (int, string, []byte) {
	hdr := map[string]string{"Content-Type": "text/plain"}
	if idemKey != "" {
		hdr["Idempotency-Key"] = idemKey
	}
	st, data := b.request(ctx, http.MethodPost, path, []byte(body), hdr)
	if st != http.StatusCreated {
		return st, "", data
	}
	var out struct {
		ID string `json:"id"`
	}
	require.NoError(b.t, json.Unmarshal(data, &out), "publish answer %s", data)
	require.NotEmpty(b.t, out.ID, "publish answer %s", data)
	return st, out.ID, data
}

// delivery is one received message.
type delivery struct {
	ID            string            `json:"id"`
	Receipt       string            `json:"receipt"`
	Data          string            `json:"data"`
	ContentType   string            `json:"content_type"`
	DeliveryCount int               `json:"delivery_count"`
	Redelivered   bool              `json:"redelivered"`
	Headers       map[string]string `json:"headers"`
}

// body decodes the base64 data.
func (d delivery) body(t *testing.T) string {
	raw, err := base64.StdEncoding.DecodeString(d.Data)
	require.NoError(t, err)
	return string(raw)
}

// receive leases up to max messages of queue, waiting up to wait for the first.
func (b *broker) receive(ctx context.Context, queue string, max int, wait, lease string) []delivery {
	b.t.Helper()
	var out struct {
		Messages []delivery `json:"messages"`
	}
	b.mustJSON(ctx, http.MethodPost, "/v1/queues/"+queue+"/receive",
		map[string]any{"max": max, "wait": wait, "lease": lease}, &out, http.StatusOK)
	return out.Messages
}

// ack acks the receipts and requires every one to succeed.
func (b *broker) ack(ctx context.Context, queue string, receipts []string) {
	b.t.Helper()
	var out struct {
		Results []struct {
			Receipt string          `json:"receipt"`
			OK      bool            `json:"ok"`
			Error   json.RawMessage `json:"error"`
		} `json:"results"`
	}
	b.mustJSON(ctx, http.MethodPost, "/v1/queues/"+queue+"/ack", map[string]any{"receipts": receipts}, &out, http.StatusOK)
	require.Len(b.t, out.Results, len(receipts))
	for _, r := range out.Results {
		require.True(b.t, r.OK, "ack of %s: %s", r.Receipt, r.Error)
	}
}

// queueInfo is the answer of GET /v1/queues/{queue}.
type queueInfo struct {
	Name      string   `json:"name"`
	Depth     int64    `json:"depth"`
	Paged     int64    `json:"paged"`
	InFlight  int64    `json:"in_flight"`
	Addresses []string `json:"addresses"`
}

// queue describes a queue.
func (b *broker) queue(ctx context.Context, name string) queueInfo {
	b.t.Helper()
	var qi queueInfo
	b.mustJSON(ctx, http.MethodGet, "/v1/queues/"+name, nil, &qi, http.StatusOK)
	return qi
}

// eventually calls fn until it returns nil, at most every 50 ms, until ctx ends.
func eventually(ctx context.Context, t *testing.T, what string, fn func() error) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := fn()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not reached in time: %v", what, err)
		case <-tick.C:
		}
	}
}

// runBinary runs `tablemq args...` to its end and returns the exit code and stderr.
func runBinary(ctx context.Context, t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = t.TempDir()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run tablemq %s: %v", strings.Join(args, " "), err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// requireOneLineFailure checks a start-up failure: a non-zero exit and exactly one
// line "tablemq: ..." on stderr.
func requireOneLineFailure(t *testing.T, code int, stderr string, contains ...string) {
	t.Helper()
	require.NotEqual(t, 0, code, "stderr: %s", stderr)
	sc := bufio.NewScanner(strings.NewReader(stderr))
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	require.Len(t, lines, 1, "want exactly one line on stderr, got %q", stderr)
	require.True(t, strings.HasPrefix(lines[0], "tablemq: "), "stderr: %q", stderr)
	for _, c := range contains {
		require.Contains(t, strings.ToLower(lines[0]), strings.ToLower(c))
	}
}
