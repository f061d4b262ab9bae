package sqlstore

import (
	"context"

	"github.com/tablemq/tablemq/migrations"
)

// Node-manager rows. The node-manager table holds exactly these rows, created by the
// first migration.
const (
	NodeRowState      = 0 // group state (column state)
	NodeRowLiveLock   = 1 // the live lock: holder_id, holder_name, expires_us
	NodeRowBackupLock = 2 // reserved for a backup lock
	NodeRowNodeID     = 3 // node id shared by the group (column node_id)
	NodeRowFence      = 4 // the fencing epoch (column epoch), read by every write transaction
)

// Binding kinds stored in the bindings table.
const (
	KindAddress = "address"
	KindQueue   = "queue"
	KindBinding = "binding"
)

// Binding is one row of the bindings table: an address, a queue, or the binding of a
// queue to an address. Config is an opaque JSON document owned by the broker core.
type Binding struct {
	Kind      string // KindAddress, KindQueue or KindBinding
	Name      string // the address or queue name (for KindBinding: the address)
	Target    string // for KindBinding: the bound queue; "" otherwise
	Config    string // JSON settings, "{}" when none
	CreatedAt int64  // Unix milliseconds
}

// BindingKey identifies one row of the bindings table.
type BindingKey struct {
	Kind   string
	Name   string
	Target string
}

// Message is one durable message reference: one row of the messages table. A message
// routed to several queues is one row per queue, all with the same ID.
type Message struct {
	Queue         string
	ID            int64
	Priority      int16
	DeliverAt     int64 // Unix milliseconds; 0 means deliver at once
	ExpiresAt     int64 // Unix milliseconds; 0 means never
	DeliveryCount int32
	CreatedAt     int64 // Unix milliseconds
	ContentType   string
	Headers       map[string]string
	Body          []byte
}

// MessageKey identifies one message reference.
type MessageKey struct {
	Queue string
	ID    int64
}

// MessageUpdate changes the delivery state of one message reference.
type MessageUpdate struct {
	Queue         string
	ID            int64
	DeliveryCount int32
	DeliverAt     int64
}

// Duplicate records the idempotency key of a publish. It is written in the same
// transaction as the message it names.
type Duplicate struct {
	Queue     string
	Key       string
	MessageID int64
	CreatedAt int64 // Unix milliseconds
}

// Batch is the set of writes committed in one transaction. A driver applies its parts
// in this order: BindingPuts, MessageInserts, DuplicateInserts, MessageUpdates,
// MessageDeletes, QueuePurges, BindingDeletes, then DuplicatesBefore.
type Batch struct {
	BindingPuts      []Binding // insert or replace
	MessageInserts   []Message
	DuplicateInserts []Duplicate
	MessageUpdates   []MessageUpdate
	MessageDeletes   []MessageKey
	QueuePurges      []string // delete every message of these queues
	BindingDeletes   []BindingKey
	// DuplicatesBefore, when > 0, deletes the duplicate-id rows created before it
	// (Unix milliseconds).
	DuplicatesBefore int64
}

// Empty reports whether b writes nothing.
func (b *Batch) Empty() bool {
	return len(b.BindingPuts) == 0 && len(b.MessageInserts) == 0 && len(b.DuplicateInserts) == 0 &&
		len(b.MessageUpdates) == 0 && len(b.MessageDeletes) == 0 && len(b.QueuePurges) == 0 &&
		len(b.BindingDeletes) == 0 && b.DuplicatesBefore == 0
}

// barrier reports whether b must be committed alone, because its parts would be
// reordered by a merge with batches queued after it.
func (b *Batch) barrier() bool {
	return len(b.QueuePurges) > 0 || len(b.BindingDeletes) > 0
}

// rows counts the rows b writes, to bound merged batches.
func (b *Batch) rows() int {
	return len(b.BindingPuts) + len(b.MessageInserts) + len(b.DuplicateInserts) +
		len(b.MessageUpdates) + len(b.MessageDeletes) + len(b.QueuePurges) + len(b.BindingDeletes)
}

// bytes estimates the payload bytes b writes, to bound merged batches.
func (b *Batch) bytes() int {
	n := 0
	for i := range b.MessageInserts {
		n += len(b.MessageInserts[i].Body) + 64
	}
	return n
}

// merge appends the parts of o to b.
func (b *Batch) merge(o *Batch) {
	b.BindingPuts = append(b.BindingPuts, o.BindingPuts...)
	b.MessageInserts = append(b.MessageInserts, o.MessageInserts...)
	b.DuplicateInserts = append(b.DuplicateInserts, o.DuplicateInserts...)
	b.MessageUpdates = append(b.MessageUpdates, o.MessageUpdates...)
	b.MessageDeletes = append(b.MessageDeletes, o.MessageDeletes...)
	b.QueuePurges = append(b.QueuePurges, o.QueuePurges...)
	b.BindingDeletes = append(b.BindingDeletes, o.BindingDeletes...)
	if o.DuplicatesBefore > b.DuplicatesBefore {
		b.DuplicatesBefore = o.DuplicatesBefore
	}
}

// BatchCommitParams is the argument of Driver.BatchCommit.
type BatchCommitParams struct {
	// Epoch is the fencing epoch the writer holds. The transaction aborts with
	// ErrFenced, writing nothing, when the epoch row holds another value.
	Epoch int64
	Batch *Batch
}

// MessageScanParams is the argument of Driver.MessageScan: a keyset scan of one queue in
// delivery order (ascending ID).
type MessageScanParams struct {
	Queue   string
	AfterID int64 // return only IDs greater than this; 0 to start at the head
	Limit   int
}

// DuplicateGetParams is the argument of Driver.DuplicateGet.
type DuplicateGetParams struct {
	Queue string
	Key   string
}

// Driver is what every dialect implements. All methods are safe for concurrent use.
// Errors are wrapped with context and map to the sentinels of this package where one
// fits.
type Driver interface {
	// Dialect names the database: "postgres", "mysql" or "sqlite".
	Dialect() string
	// Tables returns the table names this driver uses.
	Tables() migrations.Tables
	// Migrate brings the schema up to date. It is safe to call from several processes
	// at once and returns ErrSchemaTooNew when the database was migrated by a newer
	// binary.
	Migrate(ctx context.Context) error

	// EpochGet returns the fencing epoch stored in the node-manager table.
	EpochGet(ctx context.Context) (int64, error)
	// EpochBump increments the fencing epoch in its own transaction and returns the new
	// value. Every write transaction in flight under the old epoch finishes (or aborts)
	// before it commits; every later one under the old epoch fails with ErrFenced.
	EpochBump(ctx context.Context) (int64, error)

	// BatchCommit applies a Batch in one fenced transaction: all of it or nothing.
	BatchCommit(ctx context.Context, params *BatchCommitParams) error

	// BindingList returns every row of the bindings table, ordered by kind, name, target.
	BindingList(ctx context.Context) ([]Binding, error)
	// MessageScan returns up to Limit messages of a queue with ID > AfterID, in ID order.
	MessageScan(ctx context.Context, params *MessageScanParams) ([]Message, error)
	// MessageCount returns the number of messages stored for a queue.
	MessageCount(ctx context.Context, queue string) (int64, error)
	// DuplicateGet returns the message ID recorded for an idempotency key, or
	// ErrNotFound.
	DuplicateGet(ctx context.Context, params *DuplicateGetParams) (int64, error)

	// LeaseStore holds the node manager's statements on the live lock.
	LeaseStore

	// Close releases the driver's connections.
	Close() error
}
