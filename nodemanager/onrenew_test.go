package nodemanager_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/internal/testdb"
	"github.com/tablemq/tablemq/nodemanager"
)

// TestOnRenew checks that Config.OnRenew hears of every renewal of the live lock,
// successful ones and failed ones.
func TestOnRenew(t *testing.T) {
	t.Parallel()
	b := setup(t, testdb.SQLite)
	var ok, failed atomic.Int64
	cfg := testConfig("n1", nodemanager.PolicyBackup)
	cfg.OnRenew = func(took time.Duration, err error) {
		if took < 0 {
			t.Errorf("negative renew duration %s", took)
		}
		if err != nil {
			failed.Add(1)
		} else {
			ok.Add(1)
		}
	}
	n := b.start(t, cfg)
	eventually(t, 5*time.Second, "n1 live", n.act.isLive)
	eventually(t, 5*time.Second, "three renewals reported", func() bool { return ok.Load() >= 3 })
	require.Zero(t, failed.Load())

	n.store.cut.Store(true) // renewals now hang until their deadline and fail
	eventually(t, 5*time.Second, "a failed renewal reported", func() bool { return failed.Load() >= 1 })
	_ = n.stop(t)
}
