// Package sqlstore is the seam between the broker core and the SQL databases.
//
// It owns the row and parameter types, the Driver interface that every dialect
// implements (sqlstore/postgres, sqlstore/mysql, sqlstore/sqlite), the sentinel errors
// each driver maps its own errors to, and the group-commit Writer through which every
// write of a live broker goes. The conformance suite in sqlstore/storetest runs
// unchanged against every dialect.
//
// # Writing: group commit
//
// Callers hand the Writer a Batch (rows to insert, update and delete) and wait. One
// goroutine owns the pending requests: it takes everything queued (up to
// WriterConfig.MaxBatchRows rows and MaxBatchBytes bytes), merges it into one Batch and
// hands it to one of WriterConfig.Lanes lanes, which commits it in one transaction
// through Driver.BatchCommit on the lane's counter slot, then answers every waiter.
// Up to Lanes transactions are in flight at once (PostgreSQL only; one elsewhere, see
// DialectMaxLanes; the default is one); while every lane is busy new requests queue
// up, so batches grow with load and an idle writer commits a lone request at once;
// WriterConfig.SyncPeriod optionally waits a little longer to fill a batch. A request
// is answered only after its transaction committed (or failed), never before. Batches
// that must not be reordered (purges, binding deletes, page trims, counter deletes)
// wait for every lane to be idle and commit alone.
//
// # Fencing
//
// Only the live broker may write, and a deposed live must never commit. Row 4 of the
// node-manager table (NodeRowFence) holds the fencing epoch. Every write transaction
// (BatchCommit) first reads that row under a share lock (PostgreSQL FOR SHARE, MySQL
// LOCK IN SHARE MODE; SQLite takes the database write lock with BEGIN IMMEDIATE) and
// aborts with ErrFenced if the epoch is not the one the writer was given. A takeover
// (LeaseAcquire, which takes the live lock and increments the epoch in one
// transaction; or EpochBump) updates that row: its exclusive row lock waits for every
// in-flight write transaction of the old live to finish, and every write transaction that starts after it sees the new
// epoch and aborts. So there is no instant at which the old live's write can commit
// after the new epoch is visible: the two are serialised by the row lock. Lease renewals
// touch the live-lock row (NodeRowLiveLock), never the epoch row, so they never queue
// behind writes.
//
// Once a Writer sees ErrFenced it refuses every later write with ErrFenced, without a
// round trip, until it is given a new epoch. LargePut, LargeDelete and LargeSweep are
// fenced the same way.
//
// # Counters and large-message references
//
// BatchCommit keeps the counters table exact from the rows its statements really
// wrote: a delete of a key that does not exist changes nothing, a key deleted twice
// counts once, a QueuePurge drops the queue's counter rows. The size column of a row is
// len(Body) for an ordinary message (whatever Size says) and Size for a large one.
//
// Chunk 0 of a large message holds its reference count. Inserting a message or page
// row with Large set adds one; a message or page row that a batch really deletes
// (MessageDeletes, QueuePurges, PageTrims) removes one if the row was stored as
// large, whatever MessageKey.Large says; the transaction that brings the count to zero
// deletes every chunk. A batch that names a large message without chunk 0 fails with
// ErrNotFound, writing nothing. An upload in progress (count 0, never referenced) is
// only ever deleted by LargeDelete or LargeSweep. LargePut of a chunk that exists is
// ErrConflict.
package sqlstore
