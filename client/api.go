package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Request headers of a single publish.
const (
	headerIdempotencyKey = "Idempotency-Key"
	headerPriority       = "Tmq-Priority"
	headerDelay          = "Tmq-Delay"
	headerTTL            = "Tmq-Ttl"
	headerPersistent     = "Tmq-Persistent"
	headerPrefix         = "Tmq-Header-"
)

// pathOf returns the escaped path /v1/<kind>/<name><suffix>, or an ErrInvalid error
// when name is empty.
func pathOf(kind, name, suffix string) (string, error) {
	if name == "" {
		return "", invalidf("%s name is empty", kind[:len(kind)-1])
	}
	return "/v1/" + kind + "/" + url.PathEscape(name) + suffix, nil
}

// CreateQueue creates the queue name with cfg. created is true when it was created,
// false when it existed already with the same settings; a queue that exists with
// other settings is ErrConflict. A retry after a lost answer reports created=false.
func (c *Client) CreateQueue(ctx context.Context, name string, cfg QueueConfig) (created bool, err error) {
	p, err := pathOf("queues", name, "")
	if err != nil {
		return false, err
	}
	resp, err := c.call(ctx, request{method: http.MethodPut, path: p, body: mustJSON(cfg.wire())}, nil)
	if err != nil {
		return false, err
	}
	return resp.status == http.StatusCreated, nil
}

// GetQueue describes the queue name; ErrQueueNotFound when it does not exist.
func (c *Client) GetQueue(ctx context.Context, name string) (QueueInfo, error) {
	p, err := pathOf("queues", name, "")
	if err != nil {
		return QueueInfo{}, err
	}
	var out queueJSON
	if _, err := c.call(ctx, request{method: http.MethodGet, path: p}, &out); err != nil {
		return QueueInfo{}, err
	}
	return out.info()
}

// ListQueues lists every queue, ordered by name.
func (c *Client) ListQueues(ctx context.Context) ([]QueueInfo, error) {
	var out struct {
		Queues []queueJSON `json:"queues"`
	}
	if _, err := c.call(ctx, request{method: http.MethodGet, path: "/v1/queues"}, &out); err != nil {
		return nil, err
	}
	qs := make([]QueueInfo, 0, len(out.Queues))
	for _, w := range out.Queues {
		qi, err := w.info()
		if err != nil {
			return nil, err
		}
		qs = append(qs, qi)
	}
	return qs, nil
}

// DeleteQueue deletes the queue name, its messages and its bindings. A retry after a
// lost answer reports ErrQueueNotFound (the first attempt deleted it).
func (c *Client) DeleteQueue(ctx context.Context, name string) error {
	p, err := pathOf("queues", name, "")
	if err != nil {
		return err
	}
	_, err = c.call(ctx, request{method: http.MethodDelete, path: p}, nil)
	return err
}

// PurgeQueue deletes every message of the queue that is not leased and returns how
// many were deleted (by the attempt whose answer arrived: after a retry the count
// of a lost first answer is not included).
func (c *Client) PurgeQueue(ctx context.Context, name string) (int64, error) {
	p, err := pathOf("queues", name, "/purge")
	if err != nil {
		return 0, err
	}
	var out struct {
		Purged int64 `json:"purged"`
	}
	if _, err := c.call(ctx, request{method: http.MethodPost, path: p}, &out); err != nil {
		return 0, err
	}
	return out.Purged, nil
}

// CreateAddress creates the address name with the given routing. created is true
// when it was created, false when it existed with the same routing; ErrConflict when
// it exists with another.
func (c *Client) CreateAddress(ctx context.Context, name string, routing Routing) (created bool, err error) {
	p, err := pathOf("addresses", name, "")
	if err != nil {
		return false, err
	}
	body := mustJSON(struct {
		Routing Routing `json:"routing"`
	}{routing})
	resp, err := c.call(ctx, request{method: http.MethodPut, path: p, body: body}, nil)
	if err != nil {
		return false, err
	}
	return resp.status == http.StatusCreated, nil
}

// GetAddress describes the address name; ErrAddressNotFound when it does not exist.
func (c *Client) GetAddress(ctx context.Context, name string) (AddressInfo, error) {
	p, err := pathOf("addresses", name, "")
	if err != nil {
		return AddressInfo{}, err
	}
	var out AddressInfo
	_, err = c.call(ctx, request{method: http.MethodGet, path: p}, &out)
	return out, err
}

// ListAddresses lists every address.
func (c *Client) ListAddresses(ctx context.Context) ([]AddressInfo, error) {
	var out struct {
		Addresses []AddressInfo `json:"addresses"`
	}
	if _, err := c.call(ctx, request{method: http.MethodGet, path: "/v1/addresses"}, &out); err != nil {
		return nil, err
	}
	return out.Addresses, nil
}

// DeleteAddress deletes the address name and its bindings (not the queues).
func (c *Client) DeleteAddress(ctx context.Context, name string) error {
	p, err := pathOf("addresses", name, "")
	if err != nil {
		return err
	}
	_, err = c.call(ctx, request{method: http.MethodDelete, path: p}, nil)
	return err
}

// BindQueue binds queue to address. created is false when it was bound already.
func (c *Client) BindQueue(ctx context.Context, address, queue string) (created bool, err error) {
	p, err := pathOf("addresses", address, "/bindings/")
	if err != nil {
		return false, err
	}
	if queue == "" {
		return false, invalidf("queue name is empty")
	}
	resp, err := c.call(ctx, request{method: http.MethodPut, path: p + url.PathEscape(queue)}, nil)
	if err != nil {
		return false, err
	}
	return resp.status == http.StatusCreated, nil
}

// UnbindQueue unbinds queue from address; ErrBindingNotFound when it was not bound
// (also after a retry whose first attempt unbound it).
func (c *Client) UnbindQueue(ctx context.Context, address, queue string) error {
	p, err := pathOf("addresses", address, "/bindings/")
	if err != nil {
		return err
	}
	if queue == "" {
		return invalidf("queue name is empty")
	}
	_, err = c.call(ctx, request{method: http.MethodDelete, path: p + url.PathEscape(queue)}, nil)
	return err
}

// Publish publishes msg to queue and returns its id once the broker has committed it.
//
// A publish is retried on another broker (failover) when its answer is lost, and
// that retry is safe only because every attempt carries the same Idempotency-Key:
// msg.IdempotencyKey, or a random key generated once for this call when it is empty.
// A first attempt that was committed but whose answer was lost is then found by the
// retry, which answers the first id (Duplicate true) and stores nothing. The key
// lives in the store, so this holds across a failover to another instance, within
// the broker's duplicate window. Non-persistent messages are the exception: their
// keys are not kept across a failover.
func (c *Client) Publish(ctx context.Context, queue string, msg Message) (PublishResult, error) {
	p, err := pathOf("queues", queue, "/messages")
	if err != nil {
		return PublishResult{}, err
	}
	return c.publishOne(ctx, p, msg)
}

// PublishAddress publishes msg to address, routed to its bound queues (ErrConflict
// when none is bound). Retries carry the same Idempotency-Key, as for Publish.
func (c *Client) PublishAddress(ctx context.Context, address string, msg Message) (PublishResult, error) {
	p, err := pathOf("addresses", address, "/messages")
	if err != nil {
		return PublishResult{}, err
	}
	return c.publishOne(ctx, p, msg)
}

// publishOne sends a single publish to path.
func (c *Client) publishOne(ctx context.Context, path string, msg Message) (PublishResult, error) {
	h, key, err := publishHeaders(msg)
	if err != nil {
		return PublishResult{}, err
	}
	body := msg.Body
	if body == nil {
		body = []byte{} // a POST with an empty body, not none
	}
	var out publishResultJSON
	if _, err := c.call(ctx, request{method: http.MethodPost, path: path, header: h, body: body}, &out); err != nil {
		return PublishResult{IdempotencyKey: key}, err
	}
	return PublishResult{ID: out.ID, Duplicate: out.Duplicate, IdempotencyKey: key}, nil
}

// publishHeaders returns the headers of a single publish of msg (its body aside) and
// its idempotency key: msg's, or a generated one.
func publishHeaders(msg Message) (http.Header, string, error) {
	key := msg.IdempotencyKey
	if key == "" {
		key = NewIdempotencyKey()
	}
	// The transport refuses bad header names and values without sending anything;
	// refuse them here, so that they are not mistaken for a broker out of reach.
	if err := checkHeaderValue("idempotency key", key); err != nil {
		return nil, "", err
	}
	if err := checkHeaderValue("content type", msg.ContentType); err != nil {
		return nil, "", err
	}
	for k, v := range msg.Headers {
		if err := checkHeaderName(k); err != nil {
			return nil, "", err
		}
		if err := checkHeaderValue("header "+strconv.Quote(k), v); err != nil {
			return nil, "", err
		}
	}
	h := http.Header{}
	h.Set(headerIdempotencyKey, key)
	ct := msg.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	h.Set("Content-Type", ct)
	if msg.Priority != nil {
		h.Set(headerPriority, strconv.Itoa(*msg.Priority))
	}
	if msg.Delay != 0 {
		h.Set(headerDelay, msg.Delay.String())
	}
	if msg.TTL != 0 {
		h.Set(headerTTL, msg.TTL.String())
	}
	if msg.NonPersistent {
		h.Set(headerPersistent, "false")
	}
	for k, v := range msg.Headers {
		h.Set(headerPrefix+k, v)
	}
	return h, key, nil
}

// PublishBatch publishes up to 1000 messages to queue in one request and returns one
// result per message, in order; a message refused on its own has its Err set while
// the others are published (a body above the broker's large-message threshold, 100
// KiB by default, is refused: publish it with Publish, which streams it). Each
// message without an IdempotencyKey gets a generated one, the same on every retry of
// this call, so a retry after a lost answer stores each message once (see Publish).
func (c *Client) PublishBatch(ctx context.Context, queue string, msgs []Message) ([]PublishResult, error) {
	p, err := pathOf("queues", queue, "/messages/batch")
	if err != nil {
		return nil, err
	}
	return c.publishBatch(ctx, p, msgs)
}

// PublishAddressBatch is PublishBatch to an address.
func (c *Client) PublishAddressBatch(ctx context.Context, address string, msgs []Message) ([]PublishResult, error) {
	p, err := pathOf("addresses", address, "/messages/batch")
	if err != nil {
		return nil, err
	}
	return c.publishBatch(ctx, p, msgs)
}

// publishBatch sends a batch publish to path.
func (c *Client) publishBatch(ctx context.Context, path string, msgs []Message) ([]PublishResult, error) {
	if len(msgs) == 0 {
		return nil, invalidf("publish batch: no messages")
	}
	wire := make([]batchMessageJSON, len(msgs))
	keys := make([]string, len(msgs))
	for i, m := range msgs {
		keys[i] = m.IdempotencyKey
		if keys[i] == "" {
			keys[i] = NewIdempotencyKey()
		}
		data := m.Body
		if data == nil {
			data = []byte{} // "" rather than null
		}
		wire[i] = batchMessageJSON{
			Data: data, ContentType: m.ContentType, Headers: m.Headers, IdempotencyKey: keys[i],
			Priority: m.Priority, Delay: fmtDuration(m.Delay), TTL: fmtDuration(m.TTL),
		}
		if m.NonPersistent {
			f := false
			wire[i].Persistent = &f
		}
	}
	body := mustJSON(struct {
		Messages []batchMessageJSON `json:"messages"`
	}{wire})
	var out struct {
		Results []publishResultJSON `json:"results"`
	}
	if _, err := c.call(ctx, request{method: http.MethodPost, path: path, body: body}, &out); err != nil {
		return nil, err
	}
	if len(out.Results) != len(msgs) {
		return nil, fmt.Errorf("tablemq: POST %s: %d results for %d messages", path, len(out.Results), len(msgs))
	}
	res := make([]PublishResult, len(msgs))
	for i, r := range out.Results {
		res[i] = PublishResult{ID: r.ID, Duplicate: r.Duplicate, IdempotencyKey: keys[i], Err: itemError(r.Error)}
	}
	return res, nil
}

// Receive leases up to opts.Max messages of queue, waiting up to opts.Wait for the
// first. It returns an empty slice when nothing arrived within the wait.
//
// A receive is retried on another broker like every call. That is safe for
// at-least-once delivery: if a broker leased messages but its answer was lost, those
// messages stay invisible until their lease ends (or the broker fails over) and are
// then delivered again, with Redelivered set. Nothing is lost; the only cost is the
// delay of one lease. Each attempt may wait opts.Wait on top of the request timeout.
func (c *Client) Receive(ctx context.Context, queue string, opts ReceiveOptions) ([]Delivery, error) {
	p, err := pathOf("queues", queue, "/receive")
	if err != nil {
		return nil, err
	}
	body := mustJSON(receiveJSON{Max: opts.Max, Wait: fmtDuration(opts.Wait), Lease: fmtDuration(opts.Lease)})
	var out struct {
		Messages []deliveryJSON `json:"messages"`
	}
	req := request{method: http.MethodPost, path: p, body: body, extra: max(opts.Wait, 0)}
	if _, err := c.call(ctx, req, &out); err != nil {
		return nil, err
	}
	ds := make([]Delivery, len(out.Messages))
	for i, m := range out.Messages {
		h := m.Headers
		if h == nil {
			h = map[string]string{}
		}
		ds[i] = Delivery{
			ID: m.ID, Receipt: m.Receipt, Body: m.Data, ContentType: m.ContentType,
			DeliveryCount: m.DeliveryCount, Redelivered: m.Redelivered, Headers: h, Priority: m.Priority,
			PublishedAt: m.PublishedAt, LeaseExpiresAt: m.LeaseExpiresAt, Large: m.Large, Size: m.Size,
		}
	}
	return ds, nil
}

// Ack deletes the messages of receipts durably and reports, per receipt and in
// order, exactly what the broker said.
//
// Acks are idempotent per receipt, so they are retried on another broker when an
// answer is lost. Note what that means: when the first attempt acked a receipt but
// its answer was lost, the retry reports that receipt as ErrReceiptUnknown (nothing
// is leased under it any more). The client cannot tell that case from a lease that
// ended before the ack, so it does not hide it: an ErrReceiptUnknown result on a
// call that needed a retry may well be a success. Either way the message is not
// lost: if it was not acked it is delivered again.
func (c *Client) Ack(ctx context.Context, queue string, receipts ...string) ([]ReceiptResult, error) {
	return c.receipts(ctx, queue, "/ack", receiptsJSON{Receipts: receipts})
}

// Nack ends the leases of receipts at once; the messages are delivered again after
// delay (0..24h; 0 means at once). Results are per receipt, as for Ack; a retry
// after a lost answer reports nacked receipts as ErrReceiptUnknown.
func (c *Client) Nack(ctx context.Context, queue string, delay time.Duration, receipts ...string) ([]ReceiptResult, error) {
	return c.receipts(ctx, queue, "/nack", receiptsJSON{Receipts: receipts, Delay: fmtDuration(delay)})
}

// Extend sets the leases of receipts to end lease (100ms..12h) from now. Results
// are per receipt, as for Ack. Extending is idempotent (a retry sets the same
// lease again from a slightly later now).
func (c *Client) Extend(ctx context.Context, queue string, lease time.Duration, receipts ...string) ([]ReceiptResult, error) {
	if lease <= 0 {
		return nil, invalidf("extend: lease must be positive, got %s", lease)
	}
	return c.receipts(ctx, queue, "/extend", receiptsJSON{Receipts: receipts, Lease: lease.String()})
}

// receipts sends an ack, nack or extend.
func (c *Client) receipts(ctx context.Context, queue, op string, body receiptsJSON) ([]ReceiptResult, error) {
	p, err := pathOf("queues", queue, op)
	if err != nil {
		return nil, err
	}
	if len(body.Receipts) == 0 {
		return nil, invalidf("%s: no receipts", op[1:])
	}
	var out struct {
		Results []receiptResultJSON `json:"results"`
	}
	if _, err := c.call(ctx, request{method: http.MethodPost, path: p, body: mustJSON(body)}, &out); err != nil {
		return nil, err
	}
	res := make([]ReceiptResult, len(out.Results))
	for i, r := range out.Results {
		res[i] = ReceiptResult{Receipt: r.Receipt, OK: r.OK, Err: itemError(r.Error)}
	}
	return res, nil
}

// Cluster returns the status of the one instance at baseURL (GET /v1/cluster),
// which need not be one of the client's URLs. It answers in every role, so it is
// neither failed over nor retried; it uses the client's HTTP client and request
// timeout.
func (c *Client) Cluster(ctx context.Context, baseURL string) (ClusterStatus, error) {
	base, err := normalizeURL(baseURL)
	if err != nil {
		return ClusterStatus{}, err
	}
	c2 := &Client{cfg: c.cfg, urls: []string{base}, hc: c.hc, log: c.log, notUntil: make([]time.Time, 1)}
	resp, err := c2.attempt(ctx, 0, request{method: http.MethodGet, path: "/v1/cluster"})
	if err != nil {
		return ClusterStatus{}, err
	}
	var out ClusterStatus
	if err := json.Unmarshal(resp.body, &out); err != nil {
		return ClusterStatus{}, fmt.Errorf("tablemq: GET %s/v1/cluster: decoding the answer: %w", base, err)
	}
	return out, nil
}

// checkHeaderName refuses a message header name that cannot be sent as an HTTP
// header (Tmq-Header-<name>): it must be a non-empty HTTP token.
func checkHeaderName(name string) error {
	if name == "" {
		return invalidf("message header name is empty")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return invalidf("message header name %q: only letters, digits and !#$%%&'*+-.^_`|~ are allowed", name)
		}
	}
	return nil
}

// checkHeaderValue refuses a value that cannot be sent in an HTTP header (control
// characters other than tab).
func checkHeaderValue(field, v string) error {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return invalidf("%s: control characters cannot be sent in an HTTP header", field)
		}
	}
	return nil
}
