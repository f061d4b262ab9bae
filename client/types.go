package client

import (
	"encoding/json"
	"fmt"
	"time"
)

// QueueConfig holds the settings of a queue. Zero fields are left to the broker's
// defaults (and left out of the request).
type QueueConfig struct {
	// MaxDeliveries moves a message to DeadLetterQueue after this many deliveries
	// without an ack; 0 means unlimited.
	MaxDeliveries int
	// DeadLetterQueue names the queue that receives messages past MaxDeliveries.
	DeadLetterQueue string
	// Lease is the default lease of a receive (100ms..12h); 0 means 30s.
	Lease time.Duration
	// TTL is the default time to live of a message; 0 means none.
	TTL time.Duration
}

// queueConfigJSON is the wire form of QueueConfig.
type queueConfigJSON struct {
	MaxDeliveries   int    `json:"max_deliveries,omitempty"`
	DeadLetterQueue string `json:"dead_letter_queue,omitempty"`
	Lease           string `json:"lease,omitempty"`
	TTL             string `json:"ttl,omitempty"`
}

func (q QueueConfig) wire() queueConfigJSON {
	return queueConfigJSON{
		MaxDeliveries:   q.MaxDeliveries,
		DeadLetterQueue: q.DeadLetterQueue,
		Lease:           fmtDuration(q.Lease),
		TTL:             fmtDuration(q.TTL),
	}
}

func (w queueConfigJSON) config() (QueueConfig, error) {
	lease, err := parseDuration("lease", w.Lease)
	if err != nil {
		return QueueConfig{}, err
	}
	ttl, err := parseDuration("ttl", w.TTL)
	if err != nil {
		return QueueConfig{}, err
	}
	return QueueConfig{MaxDeliveries: w.MaxDeliveries, DeadLetterQueue: w.DeadLetterQueue, Lease: lease, TTL: ttl}, nil
}

// QueueInfo describes a queue and its counters.
type QueueInfo struct {
	// Name is the queue's name.
	Name string
	// Depth counts the messages stored and not acked, in flight included.
	Depth int64
	// InFlight counts the messages leased to a receiver and not acked yet.
	InFlight int64
	// Delayed counts the messages waiting for their delivery time.
	Delayed int64
	// WaitingReceivers counts the long polls waiting on this queue.
	WaitingReceivers int
	// Config is the queue's settings (zero fields are the broker's defaults).
	Config QueueConfig
	// Addresses lists the addresses the queue is bound to.
	Addresses []string
	// CreatedAt is when the queue was created.
	CreatedAt time.Time
}

// queueJSON is the wire form of QueueInfo.
type queueJSON struct {
	Name             string          `json:"name"`
	Depth            int64           `json:"depth"`
	InFlight         int64           `json:"in_flight"`
	Delayed          int64           `json:"delayed"`
	WaitingReceivers int             `json:"waiting_receivers"`
	Config           queueConfigJSON `json:"config"`
	Addresses        []string        `json:"addresses"`
	CreatedAt        time.Time       `json:"created_at"`
}

func (w queueJSON) info() (QueueInfo, error) {
	cfg, err := w.Config.config()
	if err != nil {
		return QueueInfo{}, fmt.Errorf("queue %q: %w", w.Name, err)
	}
	return QueueInfo{
		Name: w.Name, Depth: w.Depth, InFlight: w.InFlight, Delayed: w.Delayed,
		WaitingReceivers: w.WaitingReceivers, Config: cfg, Addresses: w.Addresses, CreatedAt: w.CreatedAt,
	}, nil
}

// Routing is how an address routes a message to its bound queues.
type Routing string

// The routing types of an address.
const (
	// Anycast delivers each message to one of the bound queues.
	Anycast Routing = "anycast"
	// Multicast delivers each message to every bound queue.
	Multicast Routing = "multicast"
)

// AddressInfo describes an address.
type AddressInfo struct {
	// Name is the address's name.
	Name string `json:"name"`
	// Routing is anycast or multicast.
	Routing Routing `json:"routing"`
	// Queues lists the bound queues.
	Queues []string `json:"queues"`
	// CreatedAt is when the address was created.
	CreatedAt time.Time `json:"created_at"`
}

// Message is a message to publish.
type Message struct {
	// Body is the message, any bytes.
	Body []byte
	// ContentType is kept with the message; "" means application/octet-stream.
	ContentType string
	// Headers are stored with the message; names are lowercased by the broker.
	Headers map[string]string
	// IdempotencyKey makes a second publish of the same key to the same queue or
	// address within the broker's duplicate window store nothing and answer the
	// first message's id. Publish generates one (NewIdempotencyKey) when it is empty,
	// so that its own retries are stored once.
	IdempotencyKey string
	// Priority is 0 (lowest) to 9; nil means the default, 4.
	Priority *int
	// Delay postpones the first delivery (0..168h).
	Delay time.Duration
	// TTL is the time to live (0..8760h); 0 means the queue's.
	TTL time.Duration
	// NonPersistent keeps the message in the broker's memory only: it is lost on a
	// restart or a failover, and retries cannot be deduplicated after a failover.
	NonPersistent bool
}

// Priority returns a pointer to p, for Message.Priority.
func Priority(p int) *int { return &p }

// batchMessageJSON is the wire form of one message of a batch publish.
type batchMessageJSON struct {
	Data           []byte            `json:"data"` // base64 by encoding/json
	ContentType    string            `json:"content_type,omitempty"`
	Headers        map[string]string `json:"headers,omitempty"`
	IdempotencyKey string            `json:"idempotency_key,omitempty"`
	Priority       *int              `json:"priority,omitempty"`
	Delay          string            `json:"delay,omitempty"`
	TTL            string            `json:"ttl,omitempty"`
	Persistent     *bool             `json:"persistent,omitempty"`
}

// PublishResult is the outcome of one published message.
type PublishResult struct {
	// ID is the message's id; for a duplicate, the id of the first message stored
	// under the idempotency key.
	ID string
	// Duplicate is what the broker said: the idempotency key was seen before and
	// nothing new was stored. It is also true when an earlier attempt of the same
	// call was stored and its answer lost (a failover): with a generated key, a
	// duplicate can only come from such an attempt.
	Duplicate bool
	// IdempotencyKey is the key the message was published with (the caller's, or
	// the one generated).
	IdempotencyKey string
	// Err is set, for a message of a batch, when this message was refused (an
	// *APIError with Status 0, e.g. invalid_request); ID is then empty.
	Err error
}

// publishResultJSON is the wire form of one publish result.
type publishResultJSON struct {
	ID        string       `json:"id"`
	Duplicate bool         `json:"duplicate"`
	Error     *errorDetail `json:"error"`
}

// ReceiveOptions are the parameters of a receive.
type ReceiveOptions struct {
	// Max is the most messages to lease (1..1000); 0 means 1.
	Max int
	// Wait is the long poll: how long to wait for a first message (0..30s).
	Wait time.Duration
	// Lease is how long the messages stay invisible to other receivers
	// (100ms..12h); 0 means the queue's lease.
	Lease time.Duration
}

// receiveJSON is the wire form of ReceiveOptions.
type receiveJSON struct {
	Max   int    `json:"max,omitempty"`
	Wait  string `json:"wait,omitempty"`
	Lease string `json:"lease,omitempty"`
}

// Delivery is a received message, leased to this receiver until LeaseExpiresAt.
type Delivery struct {
	// ID is the message's id.
	ID string
	// Receipt acks, nacks or extends this delivery only.
	Receipt string
	// Body is the message.
	Body []byte
	// ContentType is the message's content type.
	ContentType string
	// DeliveryCount counts the deliveries of the message, this one included.
	DeliveryCount int
	// Redelivered is true when the message was delivered before.
	Redelivered bool
	// Headers are the message's headers (never nil).
	Headers map[string]string
	// Priority is the message's priority, 0..9.
	Priority int
	// PublishedAt is when the message was published (broker clock).
	PublishedAt time.Time
	// LeaseExpiresAt is when the lease ends (broker clock).
	LeaseExpiresAt time.Time
	// Large marks a message whose body the broker does not inline: Body is empty;
	// read it with Client.Body(ctx, queue, ID, Receipt).
	Large bool
	// Size is the body size in bytes.
	Size int64
}

// deliveryJSON is the wire form of Delivery.
type deliveryJSON struct {
	ID             string            `json:"id"`
	Receipt        string            `json:"receipt"`
	Data           []byte            `json:"data"`
	ContentType    string            `json:"content_type"`
	DeliveryCount  int               `json:"delivery_count"`
	Redelivered    bool              `json:"redelivered"`
	Headers        map[string]string `json:"headers"`
	Priority       int               `json:"priority"`
	PublishedAt    time.Time         `json:"published_at"`
	LeaseExpiresAt time.Time         `json:"lease_expires_at"`
	Large          bool              `json:"large"`
	Size           int64             `json:"size"`
}

// ReceiptResult is the outcome of an ack, nack or extend of one receipt, exactly as
// the broker reported it.
type ReceiptResult struct {
	// Receipt is the receipt.
	Receipt string
	// OK is true when the operation succeeded for this receipt.
	OK bool
	// Err is nil when OK; else an *APIError with Status 0 matching
	// ErrReceiptUnknown, ErrReceiptStale or ErrReceiptInvalid.
	Err error
}

// receiptResultJSON is the wire form of ReceiptResult.
type receiptResultJSON struct {
	Receipt string       `json:"receipt"`
	OK      bool         `json:"ok"`
	Error   *errorDetail `json:"error"`
}

// receiptsJSON is the body of ack, nack and extend.
type receiptsJSON struct {
	Receipts []string `json:"receipts"`
	Delay    string   `json:"delay,omitempty"`
	Lease    string   `json:"lease,omitempty"`
}

// ClusterStatus is one instance's view of its live-backup group (GET /v1/cluster).
type ClusterStatus struct {
	// NodeName is the instance's name.
	NodeName string `json:"node_name"`
	// Role is "live", "backup", "starting" or "stopping".
	Role string `json:"role"`
	// Epoch is the fencing epoch of the current (or last) live.
	Epoch int64 `json:"epoch"`
	// LiveNode names the instance holding the live lock.
	LiveNode string `json:"live_node"`
	// LockExpiresAt is when the live lock expires unless renewed.
	LockExpiresAt time.Time `json:"lock_expires_at"`
	// Backups names the waiting backups, when the broker reports them.
	Backups []string `json:"backups"`
}

// fmtDuration formats d for the API ("" for 0).
func fmtDuration(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

// parseDuration parses a duration of an answer ("" is 0).
func parseDuration(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	return d, nil
}

// mustJSON encodes v; the types encoded here always encode.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("tablemq client: encoding %T: %v", v, err))
	}
	return b
}
