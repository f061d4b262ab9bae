package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tablemq/tablemq/sqlstore"
)

// Defaults of Config.
const (
	DuplicateWindowDefault = time.Hour
	MaxMessageSizeDefault  = 1 << 30 // 1 GiB (bodies above LargeMessageThreshold are streamed in chunks)
	RedeliveryScanDefault  = 50 * time.Millisecond
	// WindowSizeDefault is the number of messages one refill of a queue's in-memory
	// window reads from the store.
	WindowSizeDefault = 1000
	// WindowBytesDefault bounds the bytes one refill of a window reads.
	WindowBytesDefault = 8 << 20
	// BlockTimeoutDefault is how long a publish waits for room under PolicyBlock.
	BlockTimeoutDefault = 10 * time.Second
	// DuplicateCleanupDefault is how often expired idempotency keys are deleted.
	DuplicateCleanupDefault = time.Minute
)

// Config configures a Server. Zero values mean the defaults.
type Config struct {
	// NodeName names this instance in status and logs.
	NodeName string
	// DuplicateWindow is how long idempotency keys are remembered.
	DuplicateWindow time.Duration
	// MaxMessageSize bounds a message body in bytes (ErrTooLarge beyond it).
	MaxMessageSize int64
	// LargeMessageThreshold is the body size in bytes above which PublishStream
	// stores a message as a large message, in chunks (see large.go). Default
	// LargeMessageThresholdDefault.
	LargeMessageThreshold int64
	// LargeChunkSize is the size in bytes of one chunk row of a large message.
	// Default LargeChunkSizeDefault.
	LargeChunkSize int
	// WindowSize is how many messages one refill of a queue's in-memory window reads
	// from the store (the keyset scan's limit). Default WindowSizeDefault.
	WindowSize int
	// WindowBytes bounds the bytes one refill reads (fewer rows when messages are
	// big). Default WindowBytesDefault.
	WindowBytes int64
	// MaxSizeBytes is the default size limit of an address or queue (Limits); -1 or 0
	// means none. Default -1.
	MaxSizeBytes int64
	// GlobalMaxSize bounds the sum of the sizes of all queues; past it every publish
	// applies its address's (or queue's) FullPolicy. -1 or 0 means none. Default -1.
	GlobalMaxSize int64
	// FullPolicy is the default address-full policy. Default PolicyPage.
	FullPolicy FullPolicy
	// BlockTimeout is how long a publish waits for room under PolicyBlock. Default
	// BlockTimeoutDefault.
	BlockTimeout time.Duration
	// ReaperInterval is how often the reaper ends expired leases and releases delayed
	// messages. Default RedeliveryScanDefault.
	ReaperInterval time.Duration
	// DuplicateCleanupInterval is how often idempotency keys older than
	// DuplicateWindow are deleted. Default DuplicateCleanupDefault.
	DuplicateCleanupInterval time.Duration
	// Writer configures the group-commit writer. Its OnFenced is called before the
	// server's own handling.
	Writer sqlstore.WriterConfig
	// HA, if set, supplies the node manager's view of the group for ClusterStatus.
	HA func() HAView
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock of leases, delays, TTLs and the duplicate window; nil means
	// time.Now. Tests set it to move time without waiting. (Timers still run on the
	// real clock: the reaper looks at Now every ReaperInterval.)
	Now func() time.Time
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.DuplicateWindow <= 0 {
		c.DuplicateWindow = DuplicateWindowDefault
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = MaxMessageSizeDefault
	}
	if c.WindowSize <= 0 {
		c.WindowSize = WindowSizeDefault
	}
	if c.WindowBytes <= 0 {
		c.WindowBytes = WindowBytesDefault
	}
	if c.MaxSizeBytes == 0 {
		c.MaxSizeBytes = -1
	}
	if c.GlobalMaxSize == 0 {
		c.GlobalMaxSize = -1
	}
	if c.FullPolicy == "" {
		c.FullPolicy = PolicyPage
	}
	if c.BlockTimeout <= 0 {
		c.BlockTimeout = BlockTimeoutDefault
	}
	if c.ReaperInterval <= 0 {
		c.ReaperInterval = RedeliveryScanDefault
	}
	if c.DuplicateCleanupInterval <= 0 {
		c.DuplicateCleanupInterval = DuplicateCleanupDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c.largeDefaults()
}

func (c Config) validate() error {
	if c.DuplicateWindow < time.Second {
		return errors.New("duplicate-window: must be at least 1s")
	}
	if c.WindowSize > 100_000 {
		return errors.New("window-size: must be at most 100000")
	}
	if err := c.FullPolicy.validate(); err != nil {
		return fmt.Errorf("address-full-policy: %w", err)
	}
	return c.validateLarge()
}

// Message ids: epoch<<idCounterBits | counter.
const (
	idCounterBits = 43
	idCounterMax  = int64(1)<<idCounterBits - 1
	// EpochMax is the largest fencing epoch a server can be activated with: the epoch
	// fills the bits of a message id above the 43-bit counter.
	EpochMax = int64(1)<<(63-idCounterBits) - 1
)

// Server is the broker core. See the package documentation.
type Server struct {
	cfg Config
	drv sqlstore.Driver
	log *slog.Logger

	role  atomic.Pointer[Role]
	epoch atomic.Int64 // epoch of the current or last activation
	cur   atomic.Pointer[live]

	ctr counters

	lifeMu sync.Mutex    // serialises Activate and Deactivate
	doneMu sync.Mutex    // guards done
	done   chan struct{} // closed when an activation ends because it was fenced
}

// New returns a Server on drv. It does not touch the store until Activate.
func New(drv sqlstore.Driver, cfg Config) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s := &Server{cfg: cfg, drv: drv, log: cfg.Logger, done: make(chan struct{})}
	s.setRole(RoleBackup)
	return s, nil
}

func (s *Server) setRole(r Role) { s.role.Store(&r) }

// Activate makes this server the live broker under the given fencing epoch: it loads
// the bindings, starts the writer and the lease reaper, and starts serving. Queues fill
// their in-memory windows lazily.
func (s *Server) Activate(ctx context.Context, epoch int64) error {
	if epoch < 1 || epoch > EpochMax {
		return fmt.Errorf("server: activate: epoch %d out of range 1..%d: %w", epoch, EpochMax, ErrInvalid)
	}
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if l := s.cur.Load(); l != nil && l.isStopping() {
		<-l.finished // a deactivation is under way: let it end
	}
	if l := s.cur.Load(); l != nil {
		if l.epoch == epoch {
			return nil
		}
		return fmt.Errorf("server: activate under epoch %d: already active under epoch %d: %w", epoch, l.epoch, ErrConflict)
	}
	s.setRole(RoleStarting)
	rows, err := s.drv.BindingList(ctx)
	if err != nil {
		s.setRole(RoleBackup)
		return fmt.Errorf("server: activate: load bindings: %w: %w", ErrUnavailable, err)
	}
	counters, err := s.drv.CounterList(ctx)
	if err != nil {
		s.setRole(RoleBackup)
		return fmt.Errorf("server: activate: load counters: %w: %w", ErrUnavailable, err)
	}
	l := newLive(s, epoch)
	l.loadBindings(rows, counters)

	s.doneMu.Lock()
	select {
	case <-s.done: // the previous activation was fenced: give watchers a fresh channel
		s.done = make(chan struct{})
	default:
	}
	s.doneMu.Unlock()
	wcfg := s.cfg.Writer
	if wcfg.Logger == nil {
		wcfg.Logger = s.log
	}
	userFenced := wcfg.OnFenced
	wcfg.OnFenced = func() {
		if userFenced != nil {
			userFenced()
		}
		// Called from the writer goroutine: deactivation stops the writer and waits
		// for it, so it must run elsewhere.
		go l.deactivate(true)
	}
	l.w = sqlstore.NewWriter(s.drv, epoch, wcfg)
	if err := l.w.Start(ctx); err != nil {
		s.setRole(RoleBackup)
		return fmt.Errorf("server: activate: start writer: %w", err)
	}
	// Counted before going live: from then on requests change the maps (under metaMu).
	nq, na := len(l.queues), len(l.addresses)
	l.startLarge() // large.go: sweeps the uploads earlier lives abandoned (before l is published)
	s.epoch.Store(epoch)
	s.cur.Store(l)
	go l.reaper()
	s.setRole(RoleLive)
	s.log.Info("server live", "node", s.cfg.NodeName, "epoch", epoch, "queues", nq, "addresses", na)
	return nil
}

// Deactivate stops serving at once: new requests get ErrNotLive, waiting receivers
// return, in-flight requests finish or fail, the writer drains. It is idempotent.
func (s *Server) Deactivate() {
	s.lifeMu.Lock() // an Activate under way finishes first, then is undone
	defer s.lifeMu.Unlock()
	if l := s.cur.Load(); l != nil {
		l.deactivate(false)
	}
}

// Done is closed when the server stops being live on its own (it was fenced). A later
// Activate replaces it with a fresh channel.
func (s *Server) Done() <-chan struct{} {
	s.doneMu.Lock()
	defer s.doneMu.Unlock()
	return s.done
}

// Role returns the current role.
func (s *Server) Role() Role { return *s.role.Load() }

// ClusterStatus returns what GET /v1/cluster shows. The view of the group (live node,
// lock expiry, waiting backups, and the role while this instance is not live) comes
// from Config.HA when set.
func (s *Server) ClusterStatus() ClusterStatus {
	st := ClusterStatus{
		NodeName: s.cfg.NodeName,
		Role:     s.Role(),
		Epoch:    s.epoch.Load(),
		Backups:  []string{},
	}
	if st.Role == RoleLive {
		st.LiveNode = s.cfg.NodeName
	}
	if s.cfg.HA == nil {
		return st
	}
	v := s.cfg.HA()
	if st.Role != RoleLive && st.Role != RoleStopping && v.Role != "" {
		st.Role = v.Role
	}
	if v.Epoch > st.Epoch {
		st.Epoch = v.Epoch
	}
	if v.LiveNode != "" {
		st.LiveNode = v.LiveNode
	}
	st.LockExpiresAt = v.LockExpiresAt
	if v.Backups != nil {
		st.Backups = v.Backups
	}
	return st
}

// counters are the atomics behind Counters.
type counters struct {
	published, duplicates, delivered, redelivered, acked, nacked,
	leaseExpired, expired, deadLettered, deadLetterDropped,
	paged, depaged, fullDropped, fullRefused atomic.Int64
}

// Counters returns the running totals since New.
func (s *Server) Counters() Counters {
	c := &s.ctr
	return Counters{
		Published:         c.published.Load(),
		Duplicates:        c.duplicates.Load(),
		Delivered:         c.delivered.Load(),
		Redelivered:       c.redelivered.Load(),
		Acked:             c.acked.Load(),
		Nacked:            c.nacked.Load(),
		LeaseExpired:      c.leaseExpired.Load(),
		Expired:           c.expired.Load(),
		DeadLettered:      c.deadLettered.Load(),
		DeadLetterDropped: c.deadLetterDropped.Load(),
		Paged:             c.paged.Load(),
		Depaged:           c.depaged.Load(),
		FullDropped:       c.fullDropped.Load(),
		FullRefused:       c.fullRefused.Load(),
	}
}

// liveOrErr returns the current activation, or ErrNotLive.
func (s *Server) liveOrErr() (*live, error) {
	l := s.cur.Load()
	if l == nil || l.isStopping() {
		return nil, fmt.Errorf("server: %w (role %s)", ErrNotLive, s.Role())
	}
	return l, nil
}

// QueueCreate creates a queue. It returns created=false when the queue existed with
// the same settings, and ErrConflict when it existed with other settings.
func (s *Server) QueueCreate(ctx context.Context, name string, cfg QueueConfig) (created bool, err error) {
	l, err := s.liveOrErr()
	if err != nil {
		return false, err
	}
	if err := ValidName(name); err != nil {
		return false, err
	}
	if err := cfg.validate(name); err != nil {
		return false, err
	}
	_, created, err = l.queueEnsure(ctx, name, cfg, true)
	return created, err
}

// QueueGet describes a queue.
func (s *Server) QueueGet(ctx context.Context, name string) (QueueInfo, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return QueueInfo{}, err
	}
	q, err := l.queue(name)
	if err != nil {
		return QueueInfo{}, err
	}
	return q.info()
}

// QueueList describes every queue, ordered by name.
func (s *Server) QueueList(ctx context.Context) ([]QueueInfo, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return nil, err
	}
	out := []QueueInfo{}
	for _, q := range l.queueSnapshot() {
		qi, err := q.info()
		if errors.Is(err, ErrQueueNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, qi)
	}
	return out, nil
}

// QueueDelete deletes a queue, its messages and its bindings.
func (s *Server) QueueDelete(ctx context.Context, name string) error {
	l, err := s.liveOrErr()
	if err != nil {
		return err
	}
	return l.queueDelete(ctx, name)
}

// QueuePurge deletes every message of a queue that is not leased; it returns how many.
// See the package documentation for exactly which messages a purge covers.
func (s *Server) QueuePurge(ctx context.Context, name string) (int64, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return 0, err
	}
	q, err := l.queue(name)
	if err != nil {
		return 0, err
	}
	return q.purge(ctx)
}

// AddressCreate creates an address; created=false when it existed with the same
// settings, ErrConflict when with others.
func (s *Server) AddressCreate(ctx context.Context, name string, cfg AddressConfig) (created bool, err error) {
	l, err := s.liveOrErr()
	if err != nil {
		return false, err
	}
	if err := ValidName(name); err != nil {
		return false, err
	}
	return l.addressCreate(ctx, name, cfg)
}

// AddressGet describes an address.
func (s *Server) AddressGet(ctx context.Context, name string) (AddressInfo, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return AddressInfo{}, err
	}
	return l.addressInfo(name)
}

// AddressList describes every address, ordered by name.
func (s *Server) AddressList(ctx context.Context) ([]AddressInfo, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return nil, err
	}
	return l.addressList(), nil
}

// AddressDelete deletes an address and its bindings (not the queues).
func (s *Server) AddressDelete(ctx context.Context, name string) error {
	l, err := s.liveOrErr()
	if err != nil {
		return err
	}
	return l.addressDelete(ctx, name)
}

// BindingCreate binds a queue to an address; created=false when already bound.
func (s *Server) BindingCreate(ctx context.Context, address, queue string) (created bool, err error) {
	l, err := s.liveOrErr()
	if err != nil {
		return false, err
	}
	return l.bindingCreate(ctx, address, queue)
}

// BindingDelete unbinds a queue from an address.
func (s *Server) BindingDelete(ctx context.Context, address, queue string) error {
	l, err := s.liveOrErr()
	if err != nil {
		return err
	}
	return l.bindingDelete(ctx, address, queue)
}

// PublishQueue publishes messages to one queue. It returns one result per message, in
// order; a persistent message's result is a success only once it is committed. The
// error is non-nil only when nothing was attempted (unknown queue, not live, an empty
// or too large batch).
func (s *Server) PublishQueue(ctx context.Context, queueName string, msgs []Message) ([]PublishResult, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return nil, err
	}
	if err := checkBatch(len(msgs)); err != nil {
		return nil, err
	}
	return l.publishQueue(ctx, queueName, msgs)
}

// PublishAddress publishes messages to an address, routed to its bound queues. An
// address without a bound queue stores nothing and fails the call with ErrConflict.
func (s *Server) PublishAddress(ctx context.Context, address string, msgs []Message) ([]PublishResult, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return nil, err
	}
	if err := checkBatch(len(msgs)); err != nil {
		return nil, err
	}
	return l.publishAddress(ctx, address, msgs)
}

// Receive leases up to p.Max messages of a queue, waiting up to p.Wait for the first.
func (s *Server) Receive(ctx context.Context, queue string, p ReceiveParams) ([]Delivery, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return nil, err
	}
	q, err := l.queue(queue)
	if err != nil {
		return nil, err
	}
	return q.receive(ctx, p)
}

// Ack deletes the leased messages durably; it returns once the deletes are committed.
func (s *Server) Ack(ctx context.Context, queue string, receipts []string) ([]ReceiptResult, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return nil, err
	}
	if err := checkReceipts(receipts); err != nil {
		return nil, err
	}
	q, err := l.queue(queue)
	if err != nil {
		return nil, err
	}
	return q.ack(ctx, receipts)
}

// Nack ends the leases at once and makes the messages deliverable again after delay.
func (s *Server) Nack(ctx context.Context, queue string, receipts []string, delay time.Duration) ([]ReceiptResult, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return nil, err
	}
	if err := checkReceipts(receipts); err != nil {
		return nil, err
	}
	if delay < 0 || delay > NackDelayMax {
		return nil, invalidf("delay %s out of range 0..%s", delay, NackDelayMax)
	}
	q, err := l.queue(queue)
	if err != nil {
		return nil, err
	}
	return q.nack(ctx, receipts, delay)
}

// Extend sets the leases of the messages to end lease from now.
func (s *Server) Extend(ctx context.Context, queue string, receipts []string, lease time.Duration) ([]ReceiptResult, error) {
	l, err := s.liveOrErr()
	if err != nil {
		return nil, err
	}
	if err := checkReceipts(receipts); err != nil {
		return nil, err
	}
	if lease < LeaseMin || lease > LeaseMax {
		return nil, invalidf("lease %s out of range %s..%s", lease, LeaseMin, LeaseMax)
	}
	q, err := l.queue(queue)
	if err != nil {
		return nil, err
	}
	return q.extend(receipts, lease), nil
}
