// Package server is the broker core: queues, addresses and bindings, routing, the
// in-memory window of each queue, leases, acks, nacks, redelivery, dead-lettering,
// expiry, delays, priorities and duplicate detection. It keeps its durable state in a
// sqlstore.Driver and writes only through the group-commit sqlstore.Writer; it imports
// no database driver and no HTTP code.
//
// # Lifecycle
//
//	New ──► backup ──Activate(epoch)──► starting ──► live
//	                                                   │ Deactivate, or the writer is fenced
//	                                                   ▼
//	          backup ◄──────────────────────────── stopping
//
// New touches nothing. Activate(ctx, epoch) loads the bindings table (BindingList) and
// the counters (CounterList), starts a Writer under that fencing epoch, the reaper and
// the large-message sweeper goroutines, and turns live; it reads no message (queues fill lazily, so failover time does not grow with the
// backlog). Everything an activation builds lives in one value that the next
// activation rebuilds from the store.
//
// Deactivate turns the role to stopping, refuses new calls with ErrNotLive, wakes every
// waiting receiver (they return an empty result), stops the reaper, stops the writer
// (it commits what is queued) and turns the role to backup. It is idempotent; a
// concurrent caller waits for the first. When a commit fails with sqlstore.ErrFenced
// (another broker bumped the epoch) the server deactivates itself the same way and
// closes Done: it never becomes live again on its own; the node manager, which drives
// Activate and Deactivate, notices the lost lock at its next renewal. Role is an
// atomic read. ClusterStatus shows the node name, role and epoch, with the group view
// (live node, lock expiry, waiting backups, the role while not live) supplied by
// Config.HA, the node manager's status.
//
// # Message ids
//
// A message id is epoch<<43 | counter, the counter counting from 1 per activation, so
// ids grow across failovers without a round trip. The API shows them as decimal
// strings. The epoch must be at most EpochMax (2^20-1). If the counter of an epoch ran
// out (2^43 messages), publishes fail with ErrUnavailable and an error is logged: the
// node manager must take a new epoch.
//
// # Queues: the window
//
// Each queue has one mutex guarding all of its state; nothing does I/O while holding
// it (store reads and writes happen with it released, and the state is re-checked
// after). The state:
//
//   - a ready heap ordered by priority (descending), then id (ascending), so a message
//     that goes back (nack, lease expiry) returns to its place;
//   - a delayed heap ordered by delivery time, for messages whose deliver-at is in the
//     future; the reaper (and every receive) moves due ones to the ready heap;
//   - the in-flight deliveries (lease deadline, receipt nonce) with a heap of lease
//     ends, and an index of every message in memory;
//   - two lanes, each with a cursor (a sqlstore.ScanKey): the ready lane holds the
//     stored messages with deliver_at = 0 in delivery order (priority descending, then
//     id), the scheduled lane those with deliver_at > 0 by deliver_at, then priority,
//     then id. The window holds every stored message of a lane up to its cursor.
//     Refills are keyset scans of one lane after its cursor (MessageScan, at most
//     Config.WindowSize rows and about Config.WindowBytes bytes, fewer rows when the
//     queue's messages are big). A receive that wants more than the ready heap holds
//     reads the ready lane; then, when the scheduled lane's cursor is not in the
//     future, the scheduled lane (so due messages are found, but messages due in an
//     hour do not fill memory; the reaper wakes a receiver when the cursor comes due);
//     then, once the ready lane is exhausted, the page logs (see below). A receive
//     that leaves fewer than half a refill of ready messages starts the same reads in
//     the background (prefetchLocked, one per queue, sharing the refill slot and
//     waited for by deactivation), so receivers of a backlog seldom wait. A scan
//     returning fewer rows than its limit makes its lane exhausted: newly committed
//     messages of that lane are then put in memory directly. Otherwise a newly
//     committed persistent message stays only in the store when its key is past the
//     lane's cursor, and later scans pick it up; a high-priority message published
//     now lands before the cursor of a backlog of lower ones and goes to memory at
//     once. When an exhausted window grows past twice its size (messages or bytes) the
//     lane stops being exhausted (its cursor moves to the largest key in memory),
//     which bounds memory when consumers fall behind;
//   - the exact message count and byte size, read at activation from the counters
//     table (CounterList: a few rows per queue, no COUNT(*)), which the driver keeps
//     exact in every write transaction, then maintained in memory.
//
// A nack with a delay moves a message to the scheduled lane; it stays in memory (the
// refill that meets its row skips it). Non-persistent messages live only in memory,
// whatever the window; they are lost on restart or failover. QueueInfo.Delayed counts
// the delayed messages in memory; InMemory counts the window.
//
// # Sizes and paging
//
// The size of a queue is the body bytes of its messages that are not paged (in flight
// included); the size of an address is the sum over its bound queues; the global size
// is the sum over all queues. Limits (per queue for direct publishes, per address,
// defaults Config.MaxSizeBytes and Config.FullPolicy, and Config.GlobalMaxSize) are
// checked before a publish writes: an address (or queue) whose size, or the global
// size, has reached its limit is full, and the publish applies its FullPolicy:
// PolicyFail refuses it (ErrAddressFull), PolicyDrop answers Dropped and stores
// nothing, PolicyBlock waits for acks to make room up to Config.BlockTimeout
// (ErrPublishBlocked), PolicyPage (the default) appends it to a page log. Concurrent
// publishes can overshoot a limit by their own size.
//
// A page log is an address-level log in the pages table: one per multicast address
// ("@" and its name), read by every bound queue, so a message fanned out to many
// queues is stored once while paged; and one per queue (its name) for its direct
// publishes and its share of anycast addresses. Once a log has rows, every publish to
// it pages too, until every reader caught up, so that the order holds. Each reading
// queue keeps a cursor in the log (a KindCursor row of the bindings table: the last id
// read and the number of rows read); the log's row count is a CounterPages counter,
// so the paged depth of a queue is exact without reading the log. When a queue's
// ready lane is exhausted its receivers depage: the next rows after the cursor become
// message rows of the queue in one transaction with the cursor. Page ids are taken
// under the log's lock and registered until their commit ends; a depage never moves a
// cursor past one still being written. Rows every reader has passed are deleted in
// bulk (PageTrims). A queue bound to an address whose log has rows reads only what is
// appended after the binding. Large messages are not paged (their bodies are stored
// once already, in chunks).
//
// Ids are taken before the commit and commits may finish out of order, so a refill can
// pass the id of a message whose commit is still under way. Publishers therefore
// register their ids before writing; a refill marks those it read, and after the
// commit the publisher puts a message in memory unless a refill did, if the window
// covers its id. Deletes of rows not in memory (purge, an older live's receipt) are
// registered likewise so refills skip them. A failed write may still have committed
// (the answer to a COMMIT can be lost): after a failed insert the cursor moves back
// below its ids, so that later refills find the rows if they exist. (A failed ack that
// did commit makes the message be delivered again and leaves the depth one too high
// until the next activation.)
//
// # Publishing
//
// Every persistent message of one call (a batch, or an address fan-out) is one
// sqlstore.Batch (message rows plus idempotency rows) and one Writer.Write; a result
// is a success only after that commit. Only then do the messages become visible and
// waiting receivers wake. Validation is per message: body size (ErrTooLarge past
// Config.MaxMessageSize), content type, headers (HeaderCountMax, HeaderNameMaxLen,
// HeaderValueMaxLen), priority 0..9, delay and TTL ranges, idempotency key (printable
// ASCII, at most 255).
//
// Idempotency keys are scoped to a queue, or to an address for address publishes
// (stored with "@" before the address name). Each scope keeps an in-memory map of keys
// in front of the store's duplicate table (DuplicateGet on a miss: the store is the
// truth after a restart or failover). A publish whose key is known answers the first
// message's id with Duplicate set and stores nothing; a concurrent publish of a key
// still being committed waits for its outcome. The reaper deletes keys older than
// Config.DuplicateWindow every Config.DuplicateCleanupInterval (a minute), first in the
// store and then in memory, so a key is honoured for at least the window and at most a
// minute longer. Keys of a deleted queue stay until they expire. Once a cleanup has
// deleted every key older than the activation (and than the last failed publish
// write, which may have committed), the maps know every key the store holds and
// publishes stop asking the store.
//
// Addresses route to their bound queues: anycast to one of them, round robin per
// message; multicast to every one (one row per queue, all with the same id). An
// address routes nowhere when no queue is bound: the publish fails with ErrConflict
// and stores nothing, so that publishers notice rather than lose messages silently.
// An address created without a routing type is multicast.
//
// # Receiving and receipts
//
// Receive takes up to Max ready messages, dropping expired ones (deleted through the
// writer) and dead-lettering those past max_deliveries, and leases them: in flight
// until now+lease. With none ready and Wait > 0 the receiver parks on the queue's FIFO
// list of waiters; publishes, nacks, lease ends and delayed messages coming due wake as
// many waiters as messages arrived. A receive whose context ends after it leased
// messages but before it returned puts them back, delivery count unchanged.
//
// DeliveryCount is the stored count plus the deliveries by this live; Redelivered is
// DeliveryCount > 1. The count is written (MessageUpdate, through the writer) only when
// a message goes back, by nack or lease expiry, and for every message in flight when
// the server deactivates gracefully (a handover, a restart), not on every receive:
// after a crash a message's count can be one short.
//
// A receipt names one delivery: "<epoch hex>.<id hex>.<nonce hex>" (lower-case hex,
// no leading zeros: any other spelling is malformed), with a random nonce per
// delivery. Ack deletes through the writer and answers after the commit;
// the receipts of one call are one Write. Per receipt:
//
//   - this live's receipt of the latest delivery acks, also when its lease has ended
//     but nobody received the message since;
//   - a receipt of an earlier delivery of a message delivered again since is
//     ErrReceiptStale; of a message that is gone (acked, purged) ErrReceiptUnknown;
//   - a receipt issued by an older live (a lower epoch) acks its message if this live
//     has not delivered that message since it activated; if it has, the receipt is
//     stale. Past the window the store is asked whether the message still exists:
//     one read by primary key for all such receipts of the call (MessagesByID).
//
// Nack ends a lease at once; the message goes back to its place, or to the delayed
// heap after a delay, and its count is persisted. Extend moves a lease end. Both need
// an in-flight delivery of this live. When a lease ends (reaper) the message goes back
// as after a nack.
//
// max_deliveries: when a message would become deliverable again (nack, lease end, or
// found in the window) with a delivery count >= MaxDeliveries, it moves to the queue's
// dead_letter_queue (created with default settings if missing) in one batch: a new row
// there (a new id, or the same id for a large message so that it names the same chunks;
// delivery count 0, no TTL, headers HeaderDeadLetterFrom and
// HeaderDeadLetterOriginalID added) and the delete here. Without a dead-letter queue
// it is deleted, logged and counted. If the write fails the message stays and is tried
// again when next deliverable.
//
// # Queues, addresses and bindings
//
// They are rows of the bindings table (kinds queue, address, binding; settings as JSON
// in Config). QueueCreate is idempotent: the same settings answer created=false, other
// settings ErrConflict. QueueDelete refuses new work on the queue, waits for the
// publishes under way, then deletes its messages (QueuePurges), its binding rows and
// the queue row in one batch; waiting receivers get ErrQueueNotFound and its receipts
// become unknown. QueuePurge deletes every message that is not leased: the ready and
// delayed messages of the window, then, page by page, every stored message past the
// window whose id was handed out before the purge started and whose commit had
// finished when the purge read it. Leased messages (and messages being acked) stay, so
// their receipts still work. Pages are separate transactions.
// Names of queues and addresses match ^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$ (ValidName).
//
// # Errors
//
// Only the sentinels of errors.go, wrapped with detail. Store failures wrap
// ErrUnavailable; a fenced or stopped writer is ErrNotLive.
//
// # Locks
//
// The allowed lock order, outermost first; a path may skip levels but never go back up:
//
//	live.adminMu (queue, address and binding changes, held across their store write)
//	live.metaMu  (the queue and address maps; never held across I/O)
//	queue.mu     (one queue; never held across I/O; never two queues at once)
//	dedupSet.mu, pageLog.mu, live.logsMu, live.bgMu (leaves)
//
// Server.lifeMu serialises Activate and Deactivate and is taken by nothing else;
// Server.doneMu guards the Done channel only (a leaf). Deactivation waits for the
// background work (live.bg: the queues' read-ahead) holding no queue lock, so a
// read-ahead, which takes queue.mu, can always finish.
package server
