package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tablemq/tablemq/sqlstore"
)

// Defaults of Config.
const (
	DuplicateWindowDefault = time.Hour
	MaxMessageSizeDefault  = 1 << 20 // 1 MiB until large messages land
	RedeliveryScanDefault  = 50 * time.Millisecond
)

// Config configures a Server. Zero values mean the defaults.
type Config struct {
	// NodeName names this instance in status and logs.
	NodeName string
	// DuplicateWindow is how long idempotency keys are remembered.
	DuplicateWindow time.Duration
	// MaxMessageSize bounds a message body in bytes (ErrTooLarge beyond it).
	MaxMessageSize int64
	// Writer configures the group-commit writer.
	Writer sqlstore.WriterConfig
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.DuplicateWindow <= 0 {
		c.DuplicateWindow = DuplicateWindowDefault
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = MaxMessageSizeDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if c.DuplicateWindow < time.Second {
		return errors.New("duplicate-window: must be at least 1s")
	}
	return nil
}

// Server is the broker core. See the package documentation.
type Server struct {
	cfg Config
	drv sqlstore.Driver
	log *slog.Logger
}

// New returns a Server on drv. It does not touch the store until Activate.
func New(drv sqlstore.Driver, cfg Config) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return &Server{cfg: cfg, drv: drv, log: cfg.Logger}, nil
}

// Activate makes this server the live broker under the given fencing epoch: it loads
// the bindings, starts the writer and the lease reaper, and starts serving. Queues fill
// their in-memory windows lazily.
func (s *Server) Activate(ctx context.Context, epoch int64) error { panic("TODO") }

// Deactivate stops serving at once: new requests get ErrNotLive, waiting receivers
// return, in-flight requests finish or fail, the writer drains. It is idempotent.
func (s *Server) Deactivate() { panic("TODO") }

// Done is closed when the server stops being live on its own (it was fenced).
func (s *Server) Done() <-chan struct{} { panic("TODO") }

// Role returns the current role.
func (s *Server) Role() Role { panic("TODO") }

// ClusterStatus returns what GET /v1/cluster shows.
func (s *Server) ClusterStatus() ClusterStatus { panic("TODO") }

// QueueCreate creates a queue. It returns created=false when the queue existed with
// the same settings, and ErrConflict when it existed with other settings.
func (s *Server) QueueCreate(ctx context.Context, name string, cfg QueueConfig) (created bool, err error) {
	panic("TODO")
}

// QueueGet describes a queue.
func (s *Server) QueueGet(ctx context.Context, name string) (QueueInfo, error) { panic("TODO") }

// QueueList describes every queue, ordered by name.
func (s *Server) QueueList(ctx context.Context) ([]QueueInfo, error) { panic("TODO") }

// QueueDelete deletes a queue, its messages and its bindings.
func (s *Server) QueueDelete(ctx context.Context, name string) error { panic("TODO") }

// QueuePurge deletes every message of a queue that is not leased; it returns how many.
func (s *Server) QueuePurge(ctx context.Context, name string) (int64, error) { panic("TODO") }

// AddressCreate creates an address; created=false when it existed with the same
// settings, ErrConflict when with others.
func (s *Server) AddressCreate(ctx context.Context, name string, cfg AddressConfig) (created bool, err error) {
	panic("TODO")
}

// AddressGet describes an address.
func (s *Server) AddressGet(ctx context.Context, name string) (AddressInfo, error) { panic("TODO") }

// AddressList describes every address, ordered by name.
func (s *Server) AddressList(ctx context.Context) ([]AddressInfo, error) { panic("TODO") }

// AddressDelete deletes an address and its bindings (not the queues).
func (s *Server) AddressDelete(ctx context.Context, name string) error { panic("TODO") }

// BindingCreate binds a queue to an address; created=false when already bound.
func (s *Server) BindingCreate(ctx context.Context, address, queue string) (created bool, err error) {
	panic("TODO")
}

// BindingDelete unbinds a queue from an address.
func (s *Server) BindingDelete(ctx context.Context, address, queue string) error { panic("TODO") }

// PublishQueue publishes messages to one queue. It returns one result per message, in
// order; a persistent message's result is a success only once it is committed. The
// error is non-nil only when nothing was attempted (unknown queue, not live).
func (s *Server) PublishQueue(ctx context.Context, queue string, msgs []Message) ([]PublishResult, error) {
	panic("TODO")
}

// PublishAddress publishes messages to an address, routed to its bound queues.
func (s *Server) PublishAddress(ctx context.Context, address string, msgs []Message) ([]PublishResult, error) {
	panic("TODO")
}

// Receive leases up to p.Max messages of a queue, waiting up to p.Wait for the first.
func (s *Server) Receive(ctx context.Context, queue string, p ReceiveParams) ([]Delivery, error) {
	panic("TODO")
}

// Ack deletes the leased messages durably; it returns once the deletes are committed.
func (s *Server) Ack(ctx context.Context, queue string, receipts []string) ([]ReceiptResult, error) {
	panic("TODO")
}

// Nack ends the leases at once and makes the messages deliverable again after delay.
func (s *Server) Nack(ctx context.Context, queue string, receipts []string, delay time.Duration) ([]ReceiptResult, error) {
	panic("TODO")
}

// Extend sets the leases of the messages to end lease from now.
func (s *Server) Extend(ctx context.Context, queue string, receipts []string, lease time.Duration) ([]ReceiptResult, error) {
	panic("TODO")
}
