package nodemanager

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type fakeStore struct {
	epoch    int64
	err      error
	deadline bool
}

func (f *fakeStore) EpochBump(ctx context.Context) (int64, error) {
	_, f.deadline = ctx.Deadline()
	if f.err != nil {
		return 0, f.err
	}
	f.epoch++
	return f.epoch, nil
}

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
	require.Len(t, Config{Policy: PolicyBackup}.Warnings(), 1)
	require.Len(t, Config{Policy: PolicyNone, AllowFailback: true}.Warnings(), 1)
	require.Len(t, Config{Policy: PolicyPrimary, RestartBackup: true}.Warnings(), 2)
}

func TestAcquireBumpsTheEpoch(t *testing.T) {
	t.Parallel()
	st := &fakeStore{epoch: 41}
	m, err := New(st, Config{NodeName: "a"})
	require.NoError(t, err)
	epoch, err := m.Acquire(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(42), epoch)
	require.True(t, st.deadline, "bounded by the network timeout")

	st.err = errors.New("boom")
	_, err = m.Acquire(context.Background())
	require.ErrorIs(t, err, st.err)

	_, err = New(st, Config{})
	require.ErrorContains(t, err, "node-name")
}
