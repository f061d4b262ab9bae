package httpapi

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tablemq/tablemq/server"
)

// fakeBroker is a small in-memory Broker for the validation and error paths, and for
// the flows before the real server is wired in. It does not long-poll, expire leases
// or route by anything but plain bindings.
type fakeBroker struct {
	mu        sync.Mutex
	role      server.Role
	queues    map[string]*fakeQueue
	addresses map[string]*fakeAddress
	nextID    int
	panicOn   string // a method name that panics, for the recovery test
	failWith  error  // returned by every queue call when set
}

type fakeQueue struct {
	cfg     server.QueueConfig
	created time.Time
	msgs    []*fakeMsg
	dedup   map[string]string
}

type fakeMsg struct {
	id      string
	msg     server.Message
	leased  string // current receipt, "" when not leased
	count   int
	expires time.Time
}

type fakeAddress struct {
	cfg     server.AddressConfig
	created time.Time
	queues  []string
}

func newFakeBroker() *fakeBroker {
	return &fakeBroker{role: server.RoleLive, queues: map[string]*fakeQueue{}, addresses: map[string]*fakeAddress{}}
}

var _ Broker = (*fakeBroker)(nil)

func (f *fakeBroker) setRole(r server.Role) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.role = r
}

func (f *fakeBroker) check(method string) error {
	if f.panicOn == method {
		panic("fake panic in " + method)
	}
	if f.role != server.RoleLive {
		return server.ErrNotLive
	}
	return f.failWith
}

func (f *fakeBroker) Role() server.Role {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.role
}

func (f *fakeBroker) ClusterStatus() server.ClusterStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return server.ClusterStatus{NodeName: "fake", Role: f.role, Epoch: 1, LiveNode: "fake",
		LockExpiresAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (f *fakeBroker) QueueCreate(_ context.Context, name string, cfg server.QueueConfig) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("QueueCreate"); err != nil {
		return false, err
	}
	if q, ok := f.queues[name]; ok {
		if q.cfg != cfg {
			return false, fmt.Errorf("queue %q exists with other settings: %w", name, server.ErrConflict)
		}
		return false, nil
	}
	f.queues[name] = &fakeQueue{cfg: cfg, created: time.Now(), dedup: map[string]string{}}
	return true, nil
}

func (f *fakeBroker) queue(name string) (*fakeQueue, error) {
	q, ok := f.queues[name]
	if !ok {
		return nil, fmt.Errorf("queue %q: %w", name, server.ErrQueueNotFound)
	}
	return q, nil
}

func (f *fakeBroker) info(name string, q *fakeQueue) server.QueueInfo {
	qi := server.QueueInfo{Name: name, Config: q.cfg, CreatedAt: q.created, Depth: int64(len(q.msgs))}
	for _, m := range q.msgs {
		if m.leased != "" {
			qi.InFlight++
		}
	}
	for an, a := range f.addresses {
		if slices.Contains(a.queues, name) {
			qi.Addresses = append(qi.Addresses, an)
		}
	}
	return qi
}

func (f *fakeBroker) QueueGet(_ context.Context, name string) (server.QueueInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("QueueGet"); err != nil {
		return server.QueueInfo{}, err
	}
	q, err := f.queue(name)
	if err != nil {
		return server.QueueInfo{}, err
	}
	return f.info(name, q), nil
}

func (f *fakeBroker) QueueList(context.Context) ([]server.QueueInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("QueueList"); err != nil {
		return nil, err
	}
	var out []server.QueueInfo
	for _, name := range slices.Sorted(maps.Keys(f.queues)) {
		out = append(out, f.info(name, f.queues[name]))
	}
	return out, nil
}

func (f *fakeBroker) QueueDelete(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("QueueDelete"); err != nil {
		return err
	}
	if _, err := f.queue(name); err != nil {
		return err
	}
	delete(f.queues, name)
	return nil
}

func (f *fakeBroker) QueuePurge(_ context.Context, name string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("QueuePurge"); err != nil {
		return 0, err
	}
	q, err := f.queue(name)
	if err != nil {
		return 0, err
	}
	before := len(q.msgs)
	q.msgs = slices.DeleteFunc(q.msgs, func(m *fakeMsg) bool { return m.leased == "" })
	return int64(before - len(q.msgs)), nil
}

func (f *fakeBroker) AddressCreate(_ context.Context, name string, cfg server.AddressConfig) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("AddressCreate"); err != nil {
		return false, err
	}
	if a, ok := f.addresses[name]; ok {
		if a.cfg != cfg {
			return false, fmt.Errorf("address %q: %w", name, server.ErrConflict)
		}
		return false, nil
	}
	f.addresses[name] = &fakeAddress{cfg: cfg, created: time.Now()}
	return true, nil
}

func (f *fakeBroker) address(name string) (*fakeAddress, error) {
	a, ok := f.addresses[name]
	if !ok {
		return nil, fmt.Errorf("address %q: %w", name, server.ErrAddressNotFound)
	}
	return a, nil
}

func (f *fakeBroker) AddressGet(_ context.Context, name string) (server.AddressInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("AddressGet"); err != nil {
		return server.AddressInfo{}, err
	}
	a, err := f.address(name)
	if err != nil {
		return server.AddressInfo{}, err
	}
	return server.AddressInfo{Name: name, Routing: a.cfg.Routing, Queues: slices.Clone(a.queues), CreatedAt: a.created}, nil
}

func (f *fakeBroker) AddressList(context.Context) ([]server.AddressInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("AddressList"); err != nil {
		return nil, err
	}
	var out []server.AddressInfo
	for _, name := range slices.Sorted(maps.Keys(f.addresses)) {
		a := f.addresses[name]
		out = append(out, server.AddressInfo{Name: name, Routing: a.cfg.Routing, Queues: slices.Clone(a.queues), CreatedAt: a.created})
	}
	return out, nil
}

func (f *fakeBroker) AddressDelete(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("AddressDelete"); err != nil {
		return err
	}
	if _, err := f.address(name); err != nil {
		return err
	}
	delete(f.addresses, name)
	return nil
}

func (f *fakeBroker) BindingCreate(_ context.Context, address, queue string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("BindingCreate"); err != nil {
		return false, err
	}
	a, err := f.address(address)
	if err != nil {
		return false, err
	}
	if _, err := f.queue(queue); err != nil {
		return false, err
	}
	if slices.Contains(a.queues, queue) {
		return false, nil
	}
	a.queues = append(a.queues, queue)
	slices.Sort(a.queues)
	return true, nil
}

func (f *fakeBroker) BindingDelete(_ context.Context, address, queue string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("BindingDelete"); err != nil {
		return err
	}
	a, err := f.address(address)
	if err != nil {
		return err
	}
	i := slices.Index(a.queues, queue)
	if i < 0 {
		return fmt.Errorf("%s -> %s: %w", address, queue, server.ErrBindingNotFound)
	}
	a.queues = slices.Delete(a.queues, i, i+1)
	return nil
}

func (f *fakeBroker) publishLocked(q *fakeQueue, m server.Message) server.PublishResult {
	if int64(len(m.Body)) > server.MaxMessageSizeDefault {
		return server.PublishResult{Err: server.ErrTooLarge}
	}
	if m.IdempotencyKey != "" {
		if id, ok := q.dedup[m.IdempotencyKey]; ok {
			return server.PublishResult{ID: id, Duplicate: true}
		}
	}
	f.nextID++
	id := strconv.Itoa(f.nextID)
	q.msgs = append(q.msgs, &fakeMsg{id: id, msg: m})
	if m.IdempotencyKey != "" {
		q.dedup[m.IdempotencyKey] = id
	}
	return server.PublishResult{ID: id}
}

func (f *fakeBroker) PublishQueue(_ context.Context, queue string, msgs []server.Message) ([]server.PublishResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("PublishQueue"); err != nil {
		return nil, err
	}
	q, err := f.queue(queue)
	if err != nil {
		return nil, err
	}
	out := make([]server.PublishResult, len(msgs))
	for i, m := range msgs {
		out[i] = f.publishLocked(q, m)
	}
	return out, nil
}

func (f *fakeBroker) PublishAddress(_ context.Context, address string, msgs []server.Message) ([]server.PublishResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("PublishAddress"); err != nil {
		return nil, err
	}
	a, err := f.address(address)
	if err != nil {
		return nil, err
	}
	out := make([]server.PublishResult, len(msgs))
	for i, m := range msgs {
		for _, qn := range a.queues {
			out[i] = f.publishLocked(f.queues[qn], m)
		}
	}
	return out, nil
}

func (f *fakeBroker) Receive(_ context.Context, queue string, p server.ReceiveParams) ([]server.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("Receive"); err != nil {
		return nil, err
	}
	q, err := f.queue(queue)
	if err != nil {
		return nil, err
	}
	lease := p.Lease
	if lease == 0 {
		lease = server.LeaseDefault
	}
	var out []server.Delivery
	for _, m := range q.msgs {
		if len(out) == p.Max {
			break
		}
		if m.leased != "" {
			continue
		}
		m.count++
		m.leased = m.id + ":" + strconv.Itoa(m.count)
		m.expires = time.Now().Add(lease)
		prio := server.PriorityDefault
		if m.msg.Priority != nil {
			prio = *m.msg.Priority
		}
		d := server.Delivery{ID: m.id, Receipt: m.leased, Body: m.msg.Body, ContentType: m.msg.ContentType,
			Headers: m.msg.Headers, DeliveryCount: m.count, Redelivered: m.count > 1, Priority: prio,
			PublishedAt: time.Now(), LeaseExpires: m.expires, Size: int64(len(m.msg.Body))}
		if d.Size > server.LargeMessageThresholdDefault {
			d.Large, d.Body = true, nil
		}
		out = append(out, d)
	}
	return out, nil
}

func (f *fakeBroker) receipts(method, queue string, receipts []string, fn func(q *fakeQueue, i int)) ([]server.ReceiptResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(method); err != nil {
		return nil, err
	}
	q, err := f.queue(queue)
	if err != nil {
		return nil, err
	}
	out := make([]server.ReceiptResult, len(receipts))
	for j, rc := range receipts {
		out[j].Receipt = rc
		id, _, ok := strings.Cut(rc, ":")
		if !ok {
			out[j].Err = server.ErrReceiptInvalid
			continue
		}
		i := slices.IndexFunc(q.msgs, func(m *fakeMsg) bool { return m.id == id })
		switch {
		case i < 0 || q.msgs[i].leased == "":
			out[j].Err = server.ErrReceiptUnknown
		case q.msgs[i].leased != rc:
			out[j].Err = server.ErrReceiptStale
		default:
			fn(q, i)
		}
	}
	return out, nil
}

func (f *fakeBroker) Ack(_ context.Context, queue string, receipts []string) ([]server.ReceiptResult, error) {
	return f.receipts("Ack", queue, receipts, func(q *fakeQueue, i int) { q.msgs = slices.Delete(q.msgs, i, i+1) })
}

func (f *fakeBroker) Nack(_ context.Context, queue string, receipts []string, _ time.Duration) ([]server.ReceiptResult, error) {
	return f.receipts("Nack", queue, receipts, func(q *fakeQueue, i int) { q.msgs[i].leased = "" })
}

func (f *fakeBroker) Extend(_ context.Context, queue string, receipts []string, lease time.Duration) ([]server.ReceiptResult, error) {
	return f.receipts("Extend", queue, receipts, func(q *fakeQueue, i int) { q.msgs[i].expires = time.Now().Add(lease) })
}

// PublishStream reads the whole body (the fake keeps bodies in memory) and publishes.
func (f *fakeBroker) PublishStream(ctx context.Context, queue string, m server.Message, body io.Reader) (server.PublishResult, error) {
	rest, err := io.ReadAll(body)
	if err != nil {
		return server.PublishResult{}, fmt.Errorf("%w: reading the message body: %w", server.ErrInvalid, err)
	}
	m.Body = append(bytes.Clone(m.Body), rest...)
	res, err := f.PublishQueue(ctx, queue, []server.Message{m})
	if err != nil {
		return server.PublishResult{}, err
	}
	return res[0], res[0].Err
}

// PublishAddressStream is PublishStream to an address.
func (f *fakeBroker) PublishAddressStream(ctx context.Context, address string, m server.Message, body io.Reader) (server.PublishResult, error) {
	rest, err := io.ReadAll(body)
	if err != nil {
		return server.PublishResult{}, fmt.Errorf("%w: reading the message body: %w", server.ErrInvalid, err)
	}
	m.Body = append(bytes.Clone(m.Body), rest...)
	res, err := f.PublishAddress(ctx, address, []server.Message{m})
	if err != nil {
		return server.PublishResult{}, err
	}
	return res[0], res[0].Err
}

// Body serves the body of a leased message for its current receipt.
func (f *fakeBroker) Body(_ context.Context, queue, id, receipt string) (*server.BodyReader, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("Body"); err != nil {
		return nil, err
	}
	q, err := f.queue(queue)
	if err != nil {
		return nil, err
	}
	for _, m := range q.msgs {
		if m.id == id && m.leased != "" && m.leased == receipt {
			return server.InlineBody(m.msg.Body, m.msg.ContentType), nil
		}
	}
	return nil, server.ErrReceiptUnknown
}
