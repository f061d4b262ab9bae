package stdsql

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
)

// This file holds what every dialect shares of the storage surface of schema v2: the
// read statements (lane scans, page scans, chunk scans, counters), written once with a
// dialect's placeholders, and the bookkeeping of a batch's inserts (counter deltas and
// chunk references) that the PostgreSQL driver and Core both apply.

// Syntax is what the shared statements need to know of a dialect.
type Syntax struct {
	// Param renders the n-th (from 1) parameter marker: Dollar or Question.
	Param func(n int) string
	// SumInt renders the SUM of an integer column as a 64-bit integer (PostgreSQL sums
	// bigints as numeric).
	SumInt func(col string) string
	// ByteOrder follows a text column in an ORDER BY to order it byte by byte, as Go
	// compares strings (` COLLATE "C"` on PostgreSQL, whose database collation may be
	// a locale's; "" where the columns compare bytes already).
	ByteOrder string
}

// Dollar renders PostgreSQL's parameter markers.
func Dollar(n int) string { return "$" + strconv.Itoa(n) }

// Question renders the "?" parameter marker of database/sql drivers.
func Question(int) string { return "?" }

// MessageColumns are the columns of every message read, in the order ScanMessages
// reads them.
const MessageColumns = "queue, id, priority, deliver_at, expires_at, delivery_count, created_at, content_type, headers, body, size, large"

// PageColumns are the columns of every page-row read, in the order ScanPages reads
// them (column address holds the page log).
const PageColumns = "address, id, priority, deliver_at, expires_at, created_at, content_type, headers, body, size, large"

// Reads are the read statements of a dialect.
type Reads struct {
	syn Syntax
	m   string
	// scans[lane][from]: from is 1 when the statement starts after a key.
	scans                          [3][2]string
	counterList, pageScan, largeGe string
	// byIDs[k] reads the messages of a queue among 1<<k IDs.
	byIDs [byIDsBits + 1]string
}

// byIDsBits sets ByIDsMax: a statement of MessagesByID takes 1, 2, 4, ... up to
// 1<<byIDsBits IDs.
const byIDsBits = 8

// ByIDsMax is the most IDs one statement of MessagesByID reads.
const ByIDsMax = 1 << byIDsBits

// LargeScanLimitDefault is the number of chunks LargeScan returns when Limit <= 0.
const LargeScanLimitDefault = 1

// NewReads renders the read statements on tables t.
func NewReads(t migrations.Tables, syn Syntax) *Reads {
	r := &Reads{syn: syn, m: t.Messages}
	for _, lane := range []sqlstore.Lane{sqlstore.LaneID, sqlstore.LaneReady, sqlstore.LaneScheduled} {
		r.scans[lane][0] = r.laneSQL(lane, false)
		if lane != sqlstore.LaneID {
			r.scans[lane][1] = r.laneSQL(lane, true)
		}
	}
	p := syn.Param
	r.counterList = fmt.Sprintf("SELECT kind, name, %s, %s FROM %s GROUP BY kind, name ORDER BY kind%s, name%s",
		syn.SumInt("messages"), syn.SumInt("bytes"), t.Counters, syn.ByteOrder, syn.ByteOrder)
	r.pageScan = fmt.Sprintf("SELECT %s FROM %s WHERE address = %s AND id > %s ORDER BY id LIMIT %s", PageColumns, t.Pages, p(1), p(2), p(3))
	for k := range r.byIDs {
		marks := make([]string, 1<<k)
		for i := range marks {
			marks[i] = p(i + 2)
		}
		r.byIDs[k] = fmt.Sprintf("SELECT %s FROM %s WHERE queue = %s AND id IN (%s) ORDER BY id",
			MessageColumns, t.Messages, p(1), strings.Join(marks, ", "))
	}
	r.largeGe = fmt.Sprintf("SELECT data FROM %s WHERE message_id = %s AND chunk_no >= %s ORDER BY chunk_no LIMIT %s", t.LargeMessages, p(1), p(2), p(3))
	return r
}

// laneOrder is the ORDER BY of each lane.
var laneOrder = [3]string{
	sqlstore.LaneID:        "id",
	sqlstore.LaneReady:     "priority DESC, id",
	sqlstore.LaneScheduled: "deliver_at, priority DESC, id",
}

// laneSQL renders the scan of one lane. A scan after a key is a UNION ALL of simple
// range scans of the lane index (queue, deliver_at, priority DESC, id), each with the
// lane's ORDER BY and the LIMIT, so that every part is one index range read in order
// (an OR of the keyset conditions would not be); the outer ORDER BY and LIMIT merge
// them. The parameters are numbered in the order Scan lists the arguments.
func (r *Reads) laneSQL(lane sqlstore.Lane, from bool) string {
	n := 0
	p := func() string { n++; return r.syn.Param(n) }
	order := laneOrder[lane]
	part := func(cond func() string) string {
		q := p()
		c := cond()
		return fmt.Sprintf("SELECT %s FROM %s WHERE queue = %s AND %s ORDER BY %s LIMIT %s", MessageColumns, r.m, q, c, order, p())
	}
	switch {
	case lane == sqlstore.LaneID:
		return part(func() string { return "id > " + p() })
	case !from && lane == sqlstore.LaneReady:
		return part(func() string { return "deliver_at = 0" })
	case !from && lane == sqlstore.LaneScheduled:
		return part(func() string { return "deliver_at > 0" })
	}
	// Each part takes the queue, the key fields it uses, then its limit.
	var conds []func() string
	if lane == sqlstore.LaneReady {
		conds = []func() string{
			func() string { return "deliver_at = 0 AND priority = " + p() + " AND id > " + p() },
			func() string { return "deliver_at = 0 AND priority < " + p() },
		}
	} else {
		conds = []func() string{
			func() string { return "deliver_at = " + p() + " AND priority = " + p() + " AND id > " + p() },
			func() string { return "deliver_at = " + p() + " AND priority < " + p() },
			func() string { return "deliver_at > " + p() },
		}
	}
	var sb strings.Builder
	for i, c := range conds {
		if i > 0 {
			sb.WriteString(" UNION ALL ")
		}
		fmt.Fprintf(&sb, "SELECT %s FROM (%s) AS p%d", MessageColumns, part(c), i)
	}
	fmt.Fprintf(&sb, " ORDER BY %s LIMIT %s", order, p())
	return sb.String()
}

// Scan returns the statement and arguments of a MessageScan with the given limit.
func (r *Reads) Scan(p *sqlstore.MessageScanParams, limit int) (string, []any, error) {
	lim := int64(limit)
	switch p.Lane {
	case sqlstore.LaneID:
		return r.scans[sqlstore.LaneID][0], []any{p.Queue, p.AfterID, lim}, nil
	case sqlstore.LaneReady:
		if p.From == nil {
			return r.scans[sqlstore.LaneReady][0], []any{p.Queue, lim}, nil
		}
		k := p.From
		return r.scans[sqlstore.LaneReady][1], []any{p.Queue, k.Priority, k.ID, lim, p.Queue, k.Priority, lim, lim}, nil
	case sqlstore.LaneScheduled:
		// A key with no delivery time is before every scheduled message.
		if p.From == nil || p.From.DeliverAt <= 0 {
			return r.scans[sqlstore.LaneScheduled][0], []any{p.Queue, lim}, nil
		}
		k := p.From
		return r.scans[sqlstore.LaneScheduled][1], []any{
			p.Queue, k.DeliverAt, k.Priority, k.ID, lim,
			p.Queue, k.DeliverAt, k.Priority, lim,
			p.Queue, k.DeliverAt, lim,
			lim,
		}, nil
	}
	return "", nil, fmt.Errorf("unknown lane %d", p.Lane)
}

// ByIDs runs the statements of a MessagesByID with read, the dialect's query: the IDs
// sorted, without repeats, in runs of at most ByIDsMax, each list padded to a power of
// two with its last ID, so that nine statement texts serve every length (drivers
// prepare and cache statements by their text). The rows come back in ID order.
func (r *Reads) ByIDs(queue string, ids []int64, read func(query string, args []any) ([]sqlstore.Message, error)) ([]sqlstore.Message, error) {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var out []sqlstore.Message
	for len(ids) > 0 {
		run := ids[:min(len(ids), ByIDsMax)]
		ids = ids[len(run):]
		k := 0
		for 1<<k < len(run) {
			k++
		}
		args := make([]any, 1+1<<k)
		args[0] = queue
		for i := range 1 << k {
			args[1+i] = run[min(i, len(run)-1)]
		}
		ms, err := read(r.byIDs[k], args)
		if err != nil {
			return nil, err
		}
		out = append(out, ms...)
	}
	return out, nil
}

// CounterList is the statement of Driver.CounterList.
func (r *Reads) CounterList() string { return r.counterList }

// PageScan is the statement of Driver.PageScan: log, after id, limit.
func (r *Reads) PageScan() string { return r.pageScan }

// LargeScan is the statement of Driver.LargeScan: message id, first chunk, limit.
func (r *Reads) LargeScan() string { return r.largeGe }

// ScanCounters reads the rows of the CounterList statement.
func ScanCounters(rows Rows) ([]sqlstore.Counter, error) {
	var out []sqlstore.Counter
	for rows.Next() {
		var c sqlstore.Counter
		if err := rows.Scan(&c.Kind, &c.Name, &c.Messages, &c.Bytes); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// ScanPages reads page rows selected in the order of PageColumns.
func ScanPages(rows Rows, capHint int) ([]sqlstore.PageRow, error) {
	out := make([]sqlstore.PageRow, 0, capHint)
	for rows.Next() {
		var p sqlstore.PageRow
		var headers string
		var large int64
		if err := rows.Scan(&p.Log, &p.ID, &p.Priority, &p.DeliverAt, &p.ExpiresAt, &p.CreatedAt, &p.ContentType,
			&headers, &p.Body, &p.Size, &large); err != nil {
			return nil, err
		}
		if p.Body == nil {
			p.Body = []byte{}
		}
		p.Large = large != 0
		var err error
		if p.Headers, err = sqlstore.DecodeHeaders(headers); err != nil {
			return nil, fmt.Errorf("page row %d: %w", p.ID, err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// ScanChunks reads the rows of the LargeScan statement.
func ScanChunks(rows Rows, capHint int) ([][]byte, error) {
	out := make([][]byte, 0, capHint)
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		if b == nil {
			b = []byte{}
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// MessageSize is the size column of an inserted message: the body length, or for a
// large message (whose body is in chunks) the Size the caller gives.
func MessageSize(m *sqlstore.Message) int64 {
	if m.Large {
		return m.Size
	}
	return int64(len(m.Body))
}

// PageSize is MessageSize for a page row.
func PageSize(p *sqlstore.PageRow) int64 {
	if p.Large {
		return p.Size
	}
	return int64(len(p.Body))
}

// Flag renders a boolean column (SMALLINT / TINYINT / INTEGER 0 or 1).
func Flag(b bool) int16 {
	if b {
		return 1
	}
	return 0
}

// CounterDelta is a change of one counter row (of the batch's slot).
type CounterDelta struct {
	sqlstore.CounterKey
	Messages, Bytes int64
}

// RefDelta is a number of references to the chunks of one large message.
type RefDelta struct {
	ID int64
	N  int64
}

// Deltas accumulates counter changes by key.
type Deltas map[sqlstore.CounterKey]*CounterDelta

// Add adds messages and bytes to the counter of kind and name.
func (d Deltas) Add(kind, name string, messages, bytes int64) {
	k := sqlstore.CounterKey{Kind: kind, Name: name}
	c := d[k]
	if c == nil {
		c = &CounterDelta{CounterKey: k}
		d[k] = c
	}
	c.Messages += messages
	c.Bytes += bytes
}

// Sorted returns the non-zero deltas ordered by kind and name (so that concurrent
// transactions lock counter rows in one order).
func (d Deltas) Sorted() []CounterDelta {
	out := make([]CounterDelta, 0, len(d))
	for _, c := range d {
		if c.Messages != 0 || c.Bytes != 0 {
			out = append(out, *c)
		}
	}
	slices.SortFunc(out, func(a, b CounterDelta) int {
		if c := strings.Compare(a.Kind, b.Kind); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// Refs accumulates reference changes by message ID.
type Refs map[int64]int64

// Sorted returns the changes ordered by ID.
func (r Refs) Sorted() []RefDelta {
	out := make([]RefDelta, 0, len(r))
	for id, n := range r {
		out = append(out, RefDelta{ID: id, N: n})
	}
	slices.SortFunc(out, func(a, b RefDelta) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// InsertEffects returns what the message and page inserts of b add to the counters
// (CounterQueue and CounterPages) and to the chunk references of large messages.
// Inserts either all happen or fail the transaction, so these are exactly the rows
// written.
func InsertEffects(b *sqlstore.Batch) (Deltas, Refs) {
	deltas, refs := Deltas{}, Refs{}
	for i := range b.MessageInserts {
		m := &b.MessageInserts[i]
		deltas.Add(sqlstore.CounterQueue, m.Queue, 1, MessageSize(m))
		if m.Large {
			refs[m.ID]++
		}
	}
	for i := range b.PageInserts {
		p := &b.PageInserts[i]
		deltas.Add(sqlstore.CounterPages, p.Log, 1, PageSize(p))
		if p.Large {
			refs[p.ID]++
		}
	}
	return deltas, refs
}

// CheckSlot refuses a counter slot outside 0..sqlstore.SlotMax.
func CheckSlot(slot int) error {
	if slot < 0 || slot > sqlstore.SlotMax {
		return fmt.Errorf("counter slot %d out of 0..%d", slot, sqlstore.SlotMax)
	}
	return nil
}

// MissingChunks is the error of a batch that names a large message whose chunk 0 does
// not exist (never put, or already deleted).
func MissingChunks(ids string) error {
	return fmt.Errorf("large message %s has no chunks (LargePut first): %w", ids, sqlstore.ErrNotFound)
}
