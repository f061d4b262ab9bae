package nodemanager

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := Config{NodeName: "a"}.WithDefaults()
	require.Equal(t, PolicyNone, c.Policy)
	require.Equal(t, LockRenewPeriodDefault, c.LockRenewPeriod)
	require.Equal(t, LockExpirationDefault, c.LockExpiration)
	require.Equal(t, NetworkTimeoutDefault, c.NetworkTimeout)
	require.NoError(t, c.Validate())
	require.Empty(t, c.Warnings())
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Policy: "primary"}, "ha-policy: want"},
		{Config{NodeName: "-"}.WithDefaults(), ""},
		{Config{}.WithDefaults(), "node-name: must not be empty"},
		{Config{LockRenewPeriod: -time.Second}, "lock-renew-period: must be positive"},
		{Config{LockExpiration: -time.Second}, "lock-expiration: must be positive"},
		{Config{LockRenewPeriod: 10 * time.Second, LockExpiration: 10 * time.Second}, "lock-renew-period: must be shorter"},
		{Config{NetworkTimeout: -1}, "network-timeout: must be positive"},
		{Config{NetworkTimeout: 10 * time.Second}, "network-timeout: must be shorter"},
	} {
		cfg := tc.cfg
		if cfg.NodeName == "" && tc.want != "node-name: must not be empty" {
			cfg.NodeName = "n"
		}
		err := cfg.WithDefaults().Validate()
		if tc.want == "" {
			require.NoError(t, err)
			continue
		}
		require.ErrorContains(t, err, tc.want)
	}
}

func TestWarnings(t *testing.T) {
	t.Parallel()
	require.Empty(t, Config{Policy: PolicyBackup, AllowFailback: true, RestartBackup: true}.Warnings())
	require.Len(t, Config{Policy: PolicyNone, AllowFailback: true}.Warnings(), 1)
	require.Len(t, Config{Policy: PolicyPrimary, RestartBackup: true}.Warnings(), 2)
}
