package client

import (
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of the options.
const (
	// RequestTimeoutDefault bounds one attempt of a call on one broker (a receive
	// gets its long-poll wait on top).
	RequestTimeoutDefault = 10 * time.Second
	// RetryDeadlineDefault is how long after a call began a new attempt may still
	// start. It should cover a failover: the lock expiration plus a poll interval of
	// the backups, with room to spare.
	RetryDeadlineDefault = 30 * time.Second
	// BackoffInitialDefault is the pause after the first round in which no broker
	// answered as live.
	BackoffInitialDefault = 100 * time.Millisecond
	// BackoffMaxDefault bounds the pause between rounds.
	BackoffMaxDefault = 2 * time.Second
	// RetryAfterMax bounds how long a Retry-After header can hold a broker back.
	RetryAfterMax = time.Minute
)

// config is what the options set.
type config struct {
	hc             *http.Client
	log            *slog.Logger
	backoffInitial time.Duration
	backoffMax     time.Duration
	requestTimeout time.Duration
	retryDeadline  time.Duration
	retryAfterCap  time.Duration
}

// Option configures a Client.
type Option func(*config)

// WithHTTPClient sets the HTTP client the Client sends with (default: a client of its
// own with a cloned http.DefaultTransport and no overall timeout, as each attempt has
// its own). Its Timeout, when set, also bounds each attempt.
func WithHTTPClient(hc *http.Client) Option { return func(c *config) { c.hc = hc } }

// WithLogger sets the logger of failovers and of Consume (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// WithBackoff sets the pause after the first round of attempts in which no broker
// answered as live (initial) and the bound of the exponential growth (max).
// Each pause is drawn at random between half of its value and its value (jitter).
func WithBackoff(initial, max time.Duration) Option {
	return func(c *config) { c.backoffInitial, c.backoffMax = initial, max }
}

// WithRequestTimeout bounds one attempt on one broker. A receive's attempt gets its
// long-poll wait on top. An attempt that times out is retried on the next broker.
func WithRequestTimeout(d time.Duration) Option { return func(c *config) { c.requestTimeout = d } }

// WithRetryDeadline bounds the retries of one call: no new attempt starts later than
// d after the call began (an attempt under way is bounded by its own timeout). The
// call's ctx still ends everything at once. 0 means no bound: a call is retried
// until its ctx ends.
func WithRetryDeadline(d time.Duration) Option { return func(c *config) { c.retryDeadline = d } }

// WithRetryAfterCap bounds how long a Retry-After header keeps a broker out of the
// rotation (default RetryAfterMax; 0 ignores Retry-After). Brokers send
// "Retry-After: 1" from a backup, so a backup that takes over is asked again up to
// a second later; a lower cap lets a client notice a takeover sooner, at the price
// of asking a backup more often.
func WithRetryAfterCap(d time.Duration) Option { return func(c *config) { c.retryAfterCap = d } }

// Client is a client of one live-backup group of tablemq brokers. It is safe for
// concurrent use. See the package documentation for its failover rules.
type Client struct {
	cfg  config
	urls []string // base URLs without a trailing slash
	hc   *http.Client
	log  *slog.Logger

	live atomic.Int32 // index in urls of the broker that last answered as live

	mu       sync.Mutex // guards notUntil
	notUntil []time.Time
}

// New returns a Client for the brokers at urls: the base URLs ("http://host:port",
// optionally with a path prefix) of the instances of one live-backup group, in the
// order they are tried first. It does not contact them.
func New(urls []string, opts ...Option) (*Client, error) {
	if len(urls) == 0 {
		return nil, invalidf("new client: at least one broker URL is required")
	}
	cfg := config{
		backoffInitial: BackoffInitialDefault,
		backoffMax:     BackoffMaxDefault,
		requestTimeout: RequestTimeoutDefault,
		retryDeadline:  RetryDeadlineDefault,
		retryAfterCap:  RetryAfterMax,
	}
	for _, o := range opts {
		o(&cfg)
	}
	switch {
	case cfg.backoffInitial <= 0:
		return nil, invalidf("new client: backoff initial must be positive, got %s", cfg.backoffInitial)
	case cfg.backoffMax < cfg.backoffInitial:
		return nil, invalidf("new client: backoff max %s is below initial %s", cfg.backoffMax, cfg.backoffInitial)
	case cfg.requestTimeout <= 0:
		return nil, invalidf("new client: request timeout must be positive, got %s", cfg.requestTimeout)
	case cfg.retryDeadline < 0:
		return nil, invalidf("new client: retry deadline must not be negative, got %s", cfg.retryDeadline)
	case cfg.retryAfterCap < 0:
		return nil, invalidf("new client: retry-after cap must not be negative, got %s", cfg.retryAfterCap)
	}
	if cfg.hc == nil {
		cfg.hc = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if cfg.log == nil {
		cfg.log = slog.Default()
	}
	c := &Client{cfg: cfg, hc: cfg.hc, log: cfg.log, notUntil: make([]time.Time, len(urls))}
	seen := map[string]bool{}
	for _, raw := range urls {
		base, err := normalizeURL(raw)
		if err != nil {
			return nil, err
		}
		if seen[base] {
			return nil, invalidf("broker URL %q is listed twice", raw)
		}
		seen[base] = true
		c.urls = append(c.urls, base)
	}
	return c, nil
}

// normalizeURL checks a broker base URL and drops its trailing slash.
func normalizeURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", invalidf("broker URL %q: %v", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", invalidf("broker URL %q: scheme must be http or https", raw)
	}
	if u.Host == "" {
		return "", invalidf("broker URL %q: no host", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", invalidf("broker URL %q: must not have a query or fragment", raw)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// URLs returns the broker base URLs of the client, normalized, in their order.
func (c *Client) URLs() []string { return append([]string(nil), c.urls...) }

// LiveURL returns the base URL of the broker that last answered as live (the first
// URL before any answer). Calls start there.
func (c *Client) LiveURL() string { return c.urls[c.live.Load()] }

// Close releases the idle connections of the client's HTTP client. The Client
// remains usable.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// request is one API call, sent as many times as its retries need. Its body is held
// in memory so every attempt sends the same bytes (and the same Idempotency-Key).
type request struct {
	method string
	path   string // starting with "/"
	header http.Header
	body   []byte
	// extra is added to the request timeout of each attempt (a receive's wait).
	extra time.Duration
	// send, when set, makes each attempt instead of attempt (streamed bodies, see
	// large.go).
	send func(ctx context.Context, idx int) (*response, error)
}

// response is a successful answer (2xx).
type response struct {
	status int
	body   []byte
	url    string
	// stream is the unread answer of a request with send that streams it (see
	// large.go); body is then nil, and header holds the answer's headers.
	stream io.ReadCloser
	header http.Header
}

// call sends req to the live broker, failing over as the package documentation
// says, and decodes a 2xx JSON answer into out (unless out is nil). Any other answer
// is returned as an *APIError.
func (c *Client) call(ctx context.Context, req request, out any) (*response, error) {
	resp, err := c.do(ctx, req)
	if err != nil {
		return nil, err
	}
	if out != nil && resp.status != http.StatusNoContent {
		if err := json.Unmarshal(resp.body, out); err != nil {
			return resp, fmt.Errorf("tablemq: %s %s: decoding the answer of %s: %w", req.method, req.path, resp.url, err)
		}
	}
	return resp, nil
}

// do runs the attempts of req. See the package documentation for the rules.
func (c *Client) do(ctx context.Context, req request) (*response, error) {
	start := time.Now()
	n := len(c.urls)
	var lastErr error
	attempts := 0
	force := false // ignore Retry-After hold-backs for one round
	for round := 0; ; round++ {
		first := int(c.live.Load()) // another call may have found the live broker meanwhile
		for i := range n {
			idx := (first + i) % n
			if !force && c.heldBack(idx) > 0 {
				continue // its Retry-After has not passed yet
			}
			if attempts > 0 && c.cfg.retryDeadline > 0 && time.Since(start) > c.cfg.retryDeadline {
				return nil, c.giveUp(req, attempts, start, lastErr)
			}
			attempts++
			send := c.attemptFunc(req)
			resp, err := send(ctx, idx)
			if err == nil {
				c.markLive(idx)
				return resp, nil
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("tablemq: %s %s: %w (last error: %v)", req.method, req.path, context.Cause(ctx), err)
			}
			var (
				ae *APIError
				te *transportError
			)
			switch {
			case errors.As(err, &te), errors.As(err, &ae) && ae.retryable():
				// No answer, or "not live / unavailable": try the next broker.
			case ae != nil:
				c.markLive(idx) // a definite answer of the live broker: never retried
				return nil, err
			default:
				return nil, err // the request could not be built: retrying cannot help
			}
			lastErr = err
			c.log.DebugContext(ctx, "tablemq: attempt failed, trying the next broker",
				"method", req.method, "path", req.path, "url", c.urls[idx], "attempt", attempts, "err", err)
		}
		force = false
		pause := max(c.backoff(round), c.minHeldBack())
		if c.cfg.retryDeadline > 0 && time.Since(start)+pause > c.cfg.retryDeadline {
			if attempts > 0 {
				return nil, c.giveUp(req, attempts, start, lastErr)
			}
			// Every broker is held back past the deadline: try each once anyway.
			force, pause = true, 0
		}
		if attempts > 0 {
			c.log.DebugContext(ctx, "tablemq: no live broker answered, pausing", "method", req.method, "path", req.path,
				"round", round+1, "pause", pause, "err", lastErr)
		}
		if err := sleep(ctx, pause); err != nil {
			return nil, fmt.Errorf("tablemq: %s %s: %w (last error: %v)", req.method, req.path, err, lastErr)
		}
	}
}

// giveUp is the error of a call whose retry deadline passed.
func (c *Client) giveUp(req request, attempts int, start time.Time, lastErr error) error {
	return fmt.Errorf("tablemq: %s %s: no live broker after %d attempts in %s: %w",
		req.method, req.path, attempts, time.Since(start).Round(time.Millisecond), lastErr)
}

// attempt sends req once to broker idx. It returns a *response for 2xx, an
// *APIError for any other answer, or a *transportError.
func (c *Client) attempt(ctx context.Context, idx int, req request) (*response, error) {
	base := c.urls[idx]
	actx, cancel := context.WithTimeout(ctx, c.cfg.requestTimeout+req.extra)
	defer cancel()
	var body io.Reader
	if req.body != nil {
		body = bytes.NewReader(req.body)
	}
	hr, err := http.NewRequestWithContext(actx, req.method, base+req.path, body)
	if err != nil {
		return nil, fmt.Errorf("tablemq: %s %s: %w", req.method, req.path, err)
	}
	for k, vs := range req.header {
		hr.Header[k] = vs
	}
	if req.body != nil && hr.Header.Get("Content-Type") == "" {
		hr.Header.Set("Content-Type", "application/json")
	}
	hr.Header.Set("Accept", "application/json")
	r, err := c.hc.Do(hr)
	if err != nil {
		return nil, &transportError{url: base, err: err}
	}
	data, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		return nil, &transportError{url: base, err: fmt.Errorf("reading the answer: %w", err)}
	}
	if r.StatusCode >= 200 && r.StatusCode < 300 {
		return &response{status: r.StatusCode, body: data, url: base}, nil
	}
	return nil, c.answerError(idx, r, data)
}

// attemptFunc returns how req sends one attempt.
func (c *Client) attemptFunc(req request) func(ctx context.Context, idx int) (*response, error) {
	if req.send != nil {
		return req.send
	}
	return func(ctx context.Context, idx int) (*response, error) { return c.attempt(ctx, idx, req) }
}

// answerError is the *APIError of a non-2xx answer r of broker idx, whose body is
// data; a retryable one holds the broker back for its Retry-After.
func (c *Client) answerError(idx int, r *http.Response, data []byte) error {
	base := c.urls[idx]
	ae := &APIError{Status: r.StatusCode, URL: base}
	var eb errorBody
	if json.Unmarshal(data, &eb) == nil && eb.Error != nil && eb.Error.Code != "" {
		ae.Code, ae.Message = eb.Error.Code, eb.Error.Message
	} else {
		ae.Message = strings.TrimSpace(string(data))
		if len(ae.Message) > 200 {
			ae.Message = ae.Message[:200] + "..."
		}
		if ae.Message == "" {
			ae.Message = http.StatusText(r.StatusCode)
		}
	}
	if ae.retryable() {
		if d, ok := retryAfter(r.Header.Get("Retry-After"), time.Now()); ok && c.cfg.retryAfterCap > 0 {
			c.holdBack(idx, min(d, c.cfg.retryAfterCap))
		}
	}
	return ae
}

// markLive remembers idx as the broker that answered as live.
func (c *Client) markLive(idx int) {
	if old := c.live.Swap(int32(idx)); int(old) != idx {
		c.log.Info("tablemq: live broker changed", "from", c.urls[old], "to", c.urls[idx])
	}
	c.mu.Lock()
	c.notUntil[idx] = time.Time{}
	c.mu.Unlock()
}

// holdBack keeps broker idx out of the rotation for d (its Retry-After).
func (c *Client) holdBack(idx int, d time.Duration) {
	c.mu.Lock()
	c.notUntil[idx] = time.Now().Add(d)
	c.mu.Unlock()
}

// heldBack is how long broker idx is still held back by its Retry-After.
func (c *Client) heldBack(idx int) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Until(c.notUntil[idx])
}

// minHeldBack is how long until the first broker is free of its Retry-After; 0 when
// one is free now.
func (c *Client) minHeldBack() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var m time.Duration
	for i, t := range c.notUntil {
		d := time.Until(t)
		if d <= 0 {
			return 0
		}
		if i == 0 || d < m {
			m = d
		}
	}
	return m
}

// backoff is the jittered pause after round (0-based): a random duration between
// half and all of min(initial * 2^round, max).
func (c *Client) backoff(round int) time.Duration {
	return jitter(expBackoff(c.cfg.backoffInitial, c.cfg.backoffMax, round))
}

// expBackoff is min(initial * 2^n, max).
func expBackoff(initial, max time.Duration, n int) time.Duration {
	d := initial
	for range n {
		if d >= max/2 {
			return max
		}
		d *= 2
	}
	return min(d, max)
}

// jitter returns a random duration in [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// retryAfter parses a Retry-After header: seconds, or an HTTP date. The result is
// bounded by RetryAfterMax.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(RetryAfterMax/time.Second) {
			return RetryAfterMax, true
		}
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	} else {
		return 0, false
	}
	return min(max(d, 0), RetryAfterMax), true
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// NewIdempotencyKey returns a fresh random idempotency key: 16 random bytes in hex.
// Publish uses one when the message has none.
func NewIdempotencyKey() string {
	var b [16]byte
	_, _ = cryptorand.Read(b[:]) // never fails (see crypto/rand.Read)
	return hex.EncodeToString(b[:])
}
