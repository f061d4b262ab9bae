package nodemanager

import (
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
	LockRenewPeriodDefault = 1 * time.Second
	LockExpirationDefault  = 4 * time.Second
	NetworkTimeoutDefault  = 2 * time.Second
	// PollIntervalDefault is how often a waiting instance tries the lock. With the
	// other defaults a kill -9 of the live is taken over 3 to 4.5 s later: the lock
	// expires LockExpiration after the last renewal (0 to LockRenewPeriod before the
	// kill), and a backup tries at most PollInterval later.
	PollIntervalDefault = 500 * time.Millisecond
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
	// PollInterval is how often a waiting instance tries to take the lock.
	PollInterval time.Duration
	// SafetyMargin is subtracted from LockExpiration to get the live's local deadline;
	// 0 means LockExpiration/10, at least 50ms.
	SafetyMargin time.Duration
	// Logger receives the manager's logs; nil means slog.Default().
	Logger *slog.Logger
	// OnRenew, if set, is called after every renewal of the live lock with the time
	// it took and its error (for metrics). It must not block.
	OnRenew func(took time.Duration, err error)
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
	if c.PollInterval == 0 {
		c.PollInterval = PollIntervalDefault
	}
	if c.SafetyMargin == 0 {
		c.SafetyMargin = defaultSafetyMargin(c.LockExpiration)
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
	if c.PollInterval <= 0 {
		return fmt.Errorf("backup-poll-interval: must be positive, got %s", c.PollInterval)
	}
	margin := c.SafetyMargin
	if margin == 0 {
		margin = defaultSafetyMargin(c.LockExpiration)
	}
	if margin < 0 || margin >= c.LockExpiration-c.LockRenewPeriod {
		return fmt.Errorf("lock safety margin %s: must leave room for a renewal within lock-expiration (%s) minus lock-renew-period (%s)",
			margin, c.LockExpiration, c.LockRenewPeriod)
	}
	return nil
}

// Warnings lists the settings of c that are accepted but have no effect, for the
// caller to log.
func (c Config) Warnings() []string {
	var w []string
	if c.Policy != PolicyBackup && (c.AllowFailback || c.RestartBackup) {
		w = append(w, "allow-failback and restart-backup act only with ha-policy shared-store-backup")
	}
	if c.RestartBackup && !c.AllowFailback {
		w = append(w, "restart-backup has no effect without allow-failback (it acts after a failback)")
	}
	return w
}

// defaultSafetyMargin is the margin used when Config.SafetyMargin is 0: a tenth of the
// lock expiration, at least 50ms.
func defaultSafetyMargin(expiration time.Duration) time.Duration {
	return max(expiration/10, 50*time.Millisecond)
}
