package nodemanager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Policy is the HA policy of an instance.
type Policy string

// HA policies, named as in Artemis.
const (
	// PolicyNone: the instance takes the store when it starts and never waits as a
	// backup.
	PolicyNone Policy = "none"
	// PolicyPrimary: the instance is the preferred live of its group.
	PolicyPrimary Policy = "shared-store-primary"
	// PolicyBackup: the instance waits as a backup and takes over when the live's lock
	// lapses.
	PolicyBackup Policy = "shared-store-backup"
)

// Defaults of Config.
const (
	PolicyDefault          = PolicyNone
	LockRenewPeriodDefault = 2 * time.Second
	LockExpirationDefault  = 10 * time.Second
	NetworkTimeoutDefault  = 5 * time.Second
)

// Config configures a Manager. Zero values mean the defaults. The validation messages
// name the options as the tablemq flags do.
type Config struct {
	// NodeName names this instance in the lock row and in logs.
	NodeName string
	// Policy is the HA policy.
	Policy Policy
	// LockRenewPeriod is how often the live renews the live lock.
	LockRenewPeriod time.Duration
	// LockExpiration is how long the lock lasts after a renewal, on the database clock.
	LockExpiration time.Duration
	// NetworkTimeout bounds every lock statement.
	NetworkTimeout time.Duration
	// FailoverOnShutdown: a graceful stop of the live hands over to a backup.
	FailoverOnShutdown bool
	// AllowFailback: a backup that became live hands back when the primary returns.
	AllowFailback bool
	// RestartBackup: after handing back, wait as a backup again.
	RestartBackup bool
	// Logger receives the manager's logs; nil means slog.Default().
	Logger *slog.Logger
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Policy == "" {
		c.Policy = PolicyDefault
	}
	if c.LockRenewPeriod == 0 {
		c.LockRenewPeriod = LockRenewPeriodDefault
	}
	if c.LockExpiration == 0 {
		c.LockExpiration = LockExpirationDefault
	}
	if c.NetworkTimeout == 0 {
		c.NetworkTimeout = NetworkTimeoutDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports the first invalid setting of c (after WithDefaults), naming it.
func (c Config) Validate() error {
	switch c.Policy {
	case PolicyNone, PolicyPrimary, PolicyBackup:
	default:
		return fmt.Errorf("ha-policy: want %s, %s or %s, got %q", PolicyNone, PolicyPrimary, PolicyBackup, c.Policy)
	}
	if c.NodeName == "" {
		return errors.New("node-name: must not be empty")
	}
	if c.LockRenewPeriod <= 0 {
		return fmt.Errorf("lock-renew-period: must be positive, got %s", c.LockRenewPeriod)
	}
	if c.LockExpiration <= 0 {
		return fmt.Errorf("lock-expiration: must be positive, got %s", c.LockExpiration)
	}
	if c.LockRenewPeriod >= c.LockExpiration {
		return fmt.Errorf("lock-renew-period: must be shorter than lock-expiration (%s), got %s", c.LockExpiration, c.LockRenewPeriod)
	}
	if c.NetworkTimeout <= 0 {
		return fmt.Errorf("network-timeout: must be positive, got %s", c.NetworkTimeout)
	}
	if c.NetworkTimeout >= c.LockExpiration {
		return fmt.Errorf("network-timeout: must be shorter than lock-expiration (%s), got %s: one hung statement would outlive the lock",
			c.LockExpiration, c.NetworkTimeout)
	}
	return nil
}

// Warnings lists the settings of c that are accepted but do not act as asked in this
// version, for the caller to log.
func (c Config) Warnings() []string {
	var w []string
	if c.Policy != PolicyNone {
		w = append(w, fmt.Sprintf("ha-policy %s is accepted but not implemented yet: this instance behaves as ha-policy none "+
			"(it takes the store at start and fences any other instance on it)", c.Policy))
	}
	if c.Policy == PolicyNone && (c.FailoverOnShutdown || c.AllowFailback || c.RestartBackup) {
		w = append(w, "failover-on-shutdown, allow-failback and restart-backup have no effect with ha-policy none")
	}
	if c.RestartBackup && !c.AllowFailback {
		w = append(w, "restart-backup has no effect without allow-failback (it acts after a failback)")
	}
	return w
}

// Store is what the node manager needs from the store. sqlstore.Driver implements it.
type Store interface {
	// EpochBump increments the fencing epoch and returns the new value; every write
	// transaction under an older epoch fails from then on.
	EpochBump(ctx context.Context) (int64, error)
}

// Manager decides when this instance may write to the store, and under which epoch.
type Manager struct {
	store Store
	cfg   Config
	log   *slog.Logger
}

// New returns a Manager on store. It does not touch the store until Acquire.
func New(store Store, cfg Config) (*Manager, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("nodemanager: %w", err)
	}
	return &Manager{store: store, cfg: cfg, log: cfg.Logger}, nil
}

// Acquire makes this instance the writer of the store and returns its fencing epoch.
// In the spine it bumps the epoch at once, whatever the policy, which fences every
// other instance on the store. It is bounded by NetworkTimeout.
func (m *Manager) Acquire(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.NetworkTimeout)
	defer cancel()
	epoch, err := m.store.EpochBump(ctx)
	if err != nil {
		return 0, fmt.Errorf("nodemanager: take the fencing epoch: %w", err)
	}
	m.log.Debug("took the fencing epoch", "epoch", epoch)
	return epoch, nil
}
