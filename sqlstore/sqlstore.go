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
	// KindCursor rows are owned by the broker core: the position of one queue in one
	// page log (Name: the queue, Target: the log, Config: JSON). The driver stores them
	// like any other binding row.
	KindCursor = "cursor"
)

// Counter kinds. The driver keeps the counters table up to date inside BatchCommit,
// from the rows each statement actually wrote, so the counters are exact whatever the
// caller believed:
//
//   - CounterQueue, named by the queue: +1 and +Size for every message row inserted,
//     -1 and -size for every message row deleted (MessageDeletes, QueuePurges). A
//     QueuePurge removes the queue's counter rows.
//   - CounterPages, named by the page log: +1 and +Size for every page row inserted.
//     Page trims do not change it: it counts every row ever appended to the log.
//
// Counter rows are keyed by (kind, name, slot); BatchCommitParams.Slot picks the slot,
// so that transactions committing at the same time on different slots never wait for
// each other's counter row. Readers sum the slots.
const (
	CounterQueue = "queue"
	CounterPages = "pages"
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
	// Size is the body size in bytes: len(Body), or for a large message the total
	// size of its chunks. Counters add it up.
	Size int64
	// Large marks a message whose body lives in chunks in the large-messages table
	// (LargePut); Body is then empty. Inserting a large message row adds one reference
	// to its chunks; deleting one removes it (see LargePut).
	Large bool
}

// MessageKey identifies one message reference.
type MessageKey struct {
	Queue string
	ID    int64
	// Large must be set when the message is large: the driver then drops the deleted
	// row's reference to its chunks, and deletes the chunks with their last reference.
	Large bool
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

// PageRow is one message of a page log: the overflow of an address (or of a queue
// published to directly) past its size limit, stored once however many queues will
// read it. Each reading queue keeps its own cursor (a KindCursor binding row).
type PageRow struct {
	Log         string // the page log: "@" and an address name, or a queue name
	ID          int64
	Priority    int16
	DeliverAt   int64 // Unix milliseconds; 0 means deliver at once
	ExpiresAt   int64 // Unix milliseconds; 0 means the reading queue's TTL applies
	CreatedAt   int64 // Unix milliseconds
	ContentType string
	Headers     map[string]string
	Body        []byte
	Size        int64 // as Message.Size
	Large       bool  // as Message.Large: a page row holds one reference to the chunks
}

// PageTrim deletes the rows of a page log with ID <= UpTo, in bulk. Large rows drop
// their reference to their chunks.
type PageTrim struct {
	Log  string
	UpTo int64
}

// CounterKey names one counter (summed over its slots).
type CounterKey struct {
	Kind string // CounterQueue or CounterPages
	Name string
}

// Counter is the value of one counter, summed over its slots.
type Counter struct {
	CounterKey
	Messages int64
	Bytes    int64
}

// Batch is the set of writes committed in one transaction. A driver applies its parts
// in this order: BindingPuts, MessageInserts, PageInserts, DuplicateInserts,
// MessageUpdates, MessageDeletes, QueuePurges, PageTrims, BindingDeletes,
// CounterDeletes, then DuplicatesBefore.
type Batch struct {
	BindingPuts      []Binding // insert or replace
	MessageInserts   []Message
	PageInserts      []PageRow
	DuplicateInserts []Duplicate
	MessageUpdates   []MessageUpdate
	MessageDeletes   []MessageKey
	QueuePurges      []string // delete every message of these queues
	PageTrims        []PageTrim
	BindingDeletes   []BindingKey
	CounterDeletes   []CounterKey // delete every slot of these counters
	// DuplicatesBefore, when > 0, deletes the duplicate-id rows created before it
	// (Unix milliseconds).
	DuplicatesBefore int64
}

// Empty reports whether b writes nothing.
func (b *Batch) Empty() bool {
	return len(b.BindingPuts) == 0 && len(b.MessageInserts) == 0 && len(b.PageInserts) == 0 &&
		len(b.DuplicateInserts) == 0 && len(b.MessageUpdates) == 0 && len(b.MessageDeletes) == 0 &&
		len(b.QueuePurges) == 0 && len(b.PageTrims) == 0 && len(b.BindingDeletes) == 0 &&
		len(b.CounterDeletes) == 0 && b.DuplicatesBefore == 0
}

// barrier reports whether b must be committed alone, because its parts would be
// reordered by a merge with batches queued after it.
func (b *Batch) barrier() bool {
	return len(b.QueuePurges) > 0 || len(b.BindingDeletes) > 0 || len(b.PageTrims) > 0 ||
		len(b.CounterDeletes) > 0
}

// rows counts the rows b writes, to bound merged batches.
func (b *Batch) rows() int {
	return len(b.BindingPuts) + len(b.MessageInserts) + len(b.PageInserts) + len(b.DuplicateInserts) +
		len(b.MessageUpdates) + len(b.MessageDeletes) + len(b.QueuePurges) + len(b.PageTrims) +
		len(b.BindingDeletes) + len(b.CounterDeletes)
}

// bytes estimates the payload bytes b writes, to bound merged batches.
func (b *Batch) bytes() int {
	n := 0
	for i := range b.MessageInserts {
		n += len(b.MessageInserts[i].Body) + 64
	}
	for i := range b.PageInserts {
		n += len(b.PageInserts[i].Body) + 64
	}
	return n
}

// merge appends the parts of o to b.
func (b *Batch) merge(o *Batch) {
	b.BindingPuts = append(b.BindingPuts, o.BindingPuts...)
	b.MessageInserts = append(b.MessageInserts, o.MessageInserts...)
	b.PageInserts = append(b.PageInserts, o.PageInserts...)
	b.DuplicateInserts = append(b.DuplicateInserts, o.DuplicateInserts...)
	b.MessageUpdates = append(b.MessageUpdates, o.MessageUpdates...)
	b.MessageDeletes = append(b.MessageDeletes, o.MessageDeletes...)
	b.QueuePurges = append(b.QueuePurges, o.QueuePurges...)
	b.PageTrims = append(b.PageTrims, o.PageTrims...)
	b.BindingDeletes = append(b.BindingDeletes, o.BindingDeletes...)
	b.CounterDeletes = append(b.CounterDeletes, o.CounterDeletes...)
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
	// Slot is the counter slot this transaction updates (see CounterQueue): two
	// transactions in flight at once use different slots. 0..SlotMax.
	Slot int
}

// SlotMax is the largest counter slot.
const SlotMax = 63

// Lane selects the order of a MessageScan.
type Lane uint8

// Lanes of a queue. Every message is in exactly one of LaneReady and LaneScheduled.
const (
	// LaneID is every message of the queue in ascending ID. From.ID is the key.
	LaneID Lane = iota
	// LaneReady is the messages with deliver_at = 0, by priority descending, then ID
	// ascending. From.Priority and From.ID are the key.
	LaneReady
	// LaneScheduled is the messages with deliver_at > 0, by deliver_at ascending, then
	// priority descending, then ID ascending. From.DeliverAt, From.Priority and From.ID
	// are the key.
	LaneScheduled
)

// ScanKey is a position in a lane: a scan returns the rows strictly after it in the
// lane's order.
type ScanKey struct {
	DeliverAt int64
	Priority  int16
	ID        int64
}

// MessageScanParams is the argument of Driver.MessageScan: a keyset scan of one lane of
// one queue.
type MessageScanParams struct {
	Queue string
	Lane  Lane
	// AfterID is the key of LaneID (kept for callers that scan by ID): return only IDs
	// greater than this; 0 to start at the head. Ignored by the other lanes.
	AfterID int64
	// From, when set, is the key of LaneReady and LaneScheduled: return only rows after
	// it. Nil starts at the head of the lane.
	From  *ScanKey
	Limit int
}

// PageScanParams is the argument of Driver.PageScan.
type PageScanParams struct {
	Log     string
	AfterID int64 // return only IDs greater than this
	Limit   int
}

// LargePutParams is the argument of Driver.LargePut.
type LargePutParams struct {
	// Epoch is the writer's fencing epoch: the chunks are written only under it.
	Epoch     int64
	MessageID int64
	// FirstChunk is the number of Chunks[0]; the others follow it. Chunk 0 starts a
	// message and holds its reference count, 0 until a message or page row names it.
	FirstChunk int32
	Chunks     [][]byte
}

// LargeScanParams is the argument of Driver.LargeScan.
type LargeScanParams struct {
	MessageID int64
	FromChunk int32 // the first chunk number to return
	Limit     int   // most chunks to return
}

// LargeSweepParams is the argument of Driver.LargeSweep.
type LargeSweepParams struct {
	Epoch int64 // the writer's fencing epoch
	// Below bounds the message IDs swept: only uploads of earlier lives (IDs below the
	// first ID of the current epoch) can be abandoned without this live knowing.
	Below int64
	Limit int // most messages whose chunks are deleted
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
	// MessageScan returns up to Limit messages of one lane of a queue after the key, in
	// the lane's order.
	MessageScan(ctx context.Context, params *MessageScanParams) ([]Message, error)
	// MessagesByID returns the stored messages of a queue whose IDs are among ids, in
	// ID order; an ID that is not stored is left out, not an error. It reads by primary
	// key, however many IDs (the driver splits long lists).
	MessagesByID(ctx context.Context, queue string, ids []int64) ([]Message, error)
	// MessageCount returns the number of messages stored for a queue (COUNT(*): for
	// tests and tools; the broker reads CounterList).
	MessageCount(ctx context.Context, queue string) (int64, error)
	// CounterList returns every counter, summed over its slots, ordered by kind and
	// name.
	CounterList(ctx context.Context) ([]Counter, error)
	// PageScan returns up to Limit rows of a page log with ID > AfterID, in ID order.
	PageScan(ctx context.Context, params *PageScanParams) ([]PageRow, error)

	// LargePut writes chunks of a large message in one fenced transaction (ErrFenced
	// when the epoch moved on). Chunks are invisible to consumers until a message or
	// page row with Large set names their message ID in a later BatchCommit; that row
	// adds one reference to chunk 0, and deleting the row removes it again. The
	// transaction that removes the last reference deletes every chunk of the message.
	LargePut(ctx context.Context, params *LargePutParams) error
	// LargeScan returns up to Limit chunks of a large message starting at FromChunk, in
	// order. Fewer than Limit means the last chunk was returned.
	LargeScan(ctx context.Context, params *LargeScanParams) ([][]byte, error)
	// LargeDelete deletes the chunks of a large message nobody references (an upload
	// that failed), in one fenced transaction. Referenced chunks stay.
	LargeDelete(ctx context.Context, epoch, messageID int64) error
	// LargeSweep deletes the chunks of up to Limit unreferenced large messages with ID
	// below Below (uploads an earlier live abandoned when it died), in one fenced
	// transaction, and returns how many messages it swept.
	LargeSweep(ctx context.Context, params *LargeSweepParams) (int64, error)
	// DuplicateGet returns the message ID recorded for an idempotency key, or
	// ErrNotFound.
	DuplicateGet(ctx context.Context, params *DuplicateGetParams) (int64, error)

	// LeaseStore holds the node manager's statements on the live lock.
	LeaseStore

	// Close releases the driver's connections.
	Close() error
}
