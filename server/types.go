package server

import "time"

// Role is the role of this instance in its live-backup group.
type Role string

// Roles, as shown by GET /v1/cluster.
const (
	RoleStarting Role = "starting"
	RoleLive     Role = "live"
	RoleBackup   Role = "backup"
	RoleStopping Role = "stopping"
)

// RoutingType decides how an address routes a message to its bound queues.
type RoutingType string

// Routing types.
const (
	// Anycast delivers each message to exactly one bound queue (round robin).
	Anycast RoutingType = "anycast"
	// Multicast delivers each message to every bound queue.
	Multicast RoutingType = "multicast"
)

// Limits and defaults of the messaging API.
const (
	ReceiveMaxLimit      = 1000             // most messages one receive returns
	ReceiveWaitLimit     = 30 * time.Second // longest long poll
	LeaseDefault         = 30 * time.Second // lease of a receive when neither call nor queue sets one
	LeaseMin             = 100 * time.Millisecond
	LeaseMax             = 12 * time.Hour
	NackDelayMax         = 24 * time.Hour
	PublishDelayMax      = 7 * 24 * time.Hour
	TTLMax               = 365 * 24 * time.Hour
	MaxDeliveriesLimit   = 1000
	BatchPublishLimit    = 1000 // most messages in one batch publish
	IdempotencyKeyMaxLen = 255
	NameMaxLen           = 200
	HeaderCountMax       = 64
	HeaderNameMaxLen     = 128
	HeaderValueMaxLen    = 4096
	PriorityMax          = 9
	PriorityDefault      = 4
)

// QueueConfig holds the settings of a queue. Zero values mean "not set": the queue uses
// the broker default.
type QueueConfig struct {
	// MaxDeliveries moves a message to DeadLetterQueue (or drops it, when none is set)
	// once it has been delivered this many times without an ack. 0 means unlimited.
	MaxDeliveries int `json:"max_deliveries,omitempty"`
	// DeadLetterQueue receives messages past MaxDeliveries. It is created if missing.
	DeadLetterQueue string `json:"dead_letter_queue,omitempty"`
	// Lease is the default lease of a receive on this queue.
	Lease time.Duration `json:"lease,omitempty"`
	// TTL is the default time to live of a message published to this queue.
	TTL time.Duration `json:"ttl,omitempty"`
	// Limits apply to messages published to the queue directly (not through an
	// address).
	Limits
}

// FullPolicy says what a publish does when its address (or queue) is full.
type FullPolicy string

// Address-full policies.
const (
	// PolicyPage stores the overflow in the address's page log, read by every bound
	// queue through its own cursor: nothing is refused and a message routed to many
	// queues is stored once while paged. The default.
	PolicyPage FullPolicy = "PAGE"
	// PolicyBlock makes publishers wait until there is room, up to the block timeout;
	// then the publish fails with ErrPublishBlocked (HTTP 503, Retry-After).
	PolicyBlock FullPolicy = "BLOCK"
	// PolicyFail refuses the publish with ErrAddressFull (HTTP 507).
	PolicyFail FullPolicy = "FAIL"
	// PolicyDrop drops the message: the publish answers Dropped and stores nothing.
	PolicyDrop FullPolicy = "DROP"
)

// Limits bound the bytes an address (or a queue published to directly) keeps in its
// queues. The size of an address is the body bytes of the messages of its bound
// queues that are not paged; the size of a queue is its own. Memory does not depend
// on it (each queue keeps a bounded window in memory); the limit bounds the message
// table and, with PolicyPage, moves the overflow to the page log.
type Limits struct {
	// MaxSizeBytes is the size past which FullPolicy applies. 0 means the broker's
	// default (Config.MaxSizeBytes); -1 means no limit.
	MaxSizeBytes int64 `json:"max_size_bytes,omitempty"`
	// FullPolicy is what a publish does past the limit; "" means the broker's default.
	FullPolicy FullPolicy `json:"address_full_policy,omitempty"`
}

// QueueInfo describes a queue and its counters.
type QueueInfo struct {
	Name             string      `json:"name"`
	Config           QueueConfig `json:"config"`
	Depth            int64       `json:"depth"`             // messages stored and not acked, in flight and paged included
	Paged            int64       `json:"paged"`             // messages waiting in page logs for this queue
	Bytes            int64       `json:"bytes"`             // body bytes of the messages not paged: the queue's size
	InFlight         int64       `json:"in_flight"`         // leased to a receiver, not yet acked
	InMemory         int64       `json:"in_memory"`         // messages held in the queue's in-memory window
	Delayed          int64       `json:"delayed"`           // waiting for their delivery time
	WaitingReceivers int         `json:"waiting_receivers"` // long polls waiting on this queue
	Addresses        []string    `json:"addresses"`         // addresses this queue is bound to
	CreatedAt        time.Time   `json:"created_at"`
}

// AddressConfig holds the settings of an address.
type AddressConfig struct {
	Routing RoutingType `json:"routing"`
	Limits
}

// AddressInfo describes an address and the queues bound to it.
type AddressInfo struct {
	Name    string      `json:"name"`
	Routing RoutingType `json:"routing"`
	Limits
	Queues    []string  `json:"queues"`
	Bytes     int64     `json:"bytes"`  // the address's size: body bytes in its bound queues, not paged
	Paging    bool      `json:"paging"` // publishes go to the page log
	Paged     int64     `json:"paged"`  // rows in the page log not yet read by every queue
	CreatedAt time.Time `json:"created_at"`
}

// Message is a message to publish.
type Message struct {
	Body        []byte
	ContentType string
	Headers     map[string]string
	// IdempotencyKey, if set, makes a second publish with the same key to the same
	// queue (or address) within the duplicate-detection window store nothing and answer
	// the first message's ID.
	IdempotencyKey string
	// NonPersistent messages live in memory only: faster, but lost on restart or
	// failover.
	NonPersistent bool
	// Priority from 0 (lowest) to 9; nil means PriorityDefault.
	Priority *int
	// Delay postpones the first delivery.
	Delay time.Duration
	// TTL overrides the queue's time to live; 0 means the queue's.
	TTL time.Duration

	// large, when set, names chunks already uploaded (see PublishStream): the message
	// is stored with that id, its body in the large-messages table. Body is then nil.
	large *largeRef
}

// largeRef names the uploaded chunks of a large message.
type largeRef struct {
	id   int64 // the message id the chunks were written under
	size int64 // total body size in bytes
}

// PublishResult is the outcome of publishing one message. Err is nil on success.
type PublishResult struct {
	ID        string
	Duplicate bool // the idempotency key was seen before: nothing new was stored
	Dropped   bool // the address was full under PolicyDrop: nothing was stored
	Err       error
}

// ReceiveParams are the arguments of a receive.
type ReceiveParams struct {
	Max   int           // 1..ReceiveMaxLimit; 0 means 1
	Wait  time.Duration // 0..ReceiveWaitLimit: how long to wait for a first message
	Lease time.Duration // 0 means the queue's lease, else LeaseDefault
}

// Delivery is one received message.
type Delivery struct {
	ID            string
	Receipt       string
	Body          []byte
	ContentType   string
	Headers       map[string]string
	DeliveryCount int
	Redelivered   bool
	Priority      int
	PublishedAt   time.Time
	LeaseExpires  time.Time
	// Large marks a message whose body is not inlined: Body is nil and the body is
	// read with Server.Body for the receipt. Size is the body size in bytes (of every
	// message, large or not).
	Large bool
	Size  int64
}

// ReceiptResult is the outcome of an ack, nack or extend for one receipt. Err is nil
// on success, or wraps ErrReceiptUnknown / ErrReceiptStale.
type ReceiptResult struct {
	Receipt string
	Err     error
}

// Counters are the running totals of a Server since New, for metrics. They only grow.
type Counters struct {
	Published         int64 `json:"published"`           // messages stored, one per queue they were routed to
	Duplicates        int64 `json:"duplicates"`          // publishes answered as duplicates of an idempotency key
	Delivered         int64 `json:"delivered"`           // deliveries, redeliveries included
	Redelivered       int64 `json:"redelivered"`         // deliveries with a delivery count above 1
	Acked             int64 `json:"acked"`               // messages acked
	Nacked            int64 `json:"nacked"`              // messages nacked
	LeaseExpired      int64 `json:"lease_expired"`       // leases that ended without an ack or nack
	Expired           int64 `json:"expired"`             // messages dropped past their time to live
	DeadLettered      int64 `json:"dead_lettered"`       // messages moved to a dead-letter queue
	DeadLetterDropped int64 `json:"dead_letter_dropped"` // messages dropped past max_deliveries without one
	Paged             int64 `json:"paged"`               // messages written to a page log
	Depaged           int64 `json:"depaged"`             // messages moved from a page log into a queue
	FullDropped       int64 `json:"full_dropped"`        // messages dropped by PolicyDrop
	FullRefused       int64 `json:"full_refused"`        // publishes refused by PolicyFail or a BLOCK timeout
}

// ClusterStatus is what GET /v1/cluster shows.
type ClusterStatus struct {
	NodeName      string    `json:"node_name"`
	Role          Role      `json:"role"`
	Epoch         int64     `json:"epoch"`
	LiveNode      string    `json:"live_node"`
	LockExpiresAt time.Time `json:"lock_expires_at"`
	Backups       []string  `json:"backups"`
}

// HAView is the node manager's view of the live-backup group, shown by ClusterStatus.
type HAView struct {
	// Role is this instance's role while it is not live (starting, backup).
	Role          Role
	Epoch         int64
	LiveNode      string
	LockExpiresAt time.Time // on the database's clock
	Backups       []string
}
