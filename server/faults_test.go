package server_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/server"
	"github.com/tablemq/tablemq/sqlstore"
)

// faultyDriver wraps a real driver and fails commits on demand: before the commit
// (nothing written) or after it (written, but the caller hears an error, as when the
// answer to COMMIT is lost).
type faultyDriver struct {
	sqlstore.Driver
	failBefore atomic.Int32 // commits left to fail without writing
	failAfter  atomic.Int32 // commits left to fail after writing
}

var errInjected = errors.New("injected fault")

func (d *faultyDriver) BatchCommit(ctx context.Context, p *sqlstore.BatchCommitParams) error {
	if d.failBefore.Add(-1) >= 0 {
		return errInjected
	}
	if err := d.Driver.BatchCommit(ctx, p); err != nil {
		return err
	}
	if d.failAfter.Add(-1) >= 0 {
		return errInjected
	}
	return nil
}

func setupFaulty(t *testing.T, cfg server.Config) (*bundle, *faultyDriver) {
	t.Helper()
	b := setup(t, cfg)
	b.srv.Deactivate()
	fd := &faultyDriver{Driver: b.drv}
	b.drv = fd
	b.srv = b.start(t)
	return b, fd
}

func TestPublishWriteFails(t *testing.T) {
	t.Parallel()
	b, fd := setupFaulty(t, server.Config{})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})

	// Failed before the commit: nothing stored, nothing delivered.
	fd.failBefore.Store(1)
	res, err := b.srv.PublishQueue(ctx, "q", []server.Message{{Body: []byte("lost")}})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, server.ErrUnavailable)
	require.Empty(t, receive(t, b.srv, "q", server.ReceiveParams{Max: 10}))
	require.Equal(t, int64(0), info(t, b.srv, "q").Depth)

	// Failed after the commit: the publisher hears an error, yet the message is stored
	// and must be delivered; a retry with the same key finds it.
	publish(t, b.srv, "q", "before")
	fd.failAfter.Store(1)
	m := server.Message{Body: []byte("ambiguous"), IdempotencyKey: "k"}
	res, err = b.srv.PublishQueue(ctx, "q", []server.Message{m})
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, server.ErrUnavailable)
	res, err = b.srv.PublishQueue(ctx, "q", []server.Message{m})
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	require.True(t, res[0].Duplicate)

	ds := drain(t, b.srv, "q", 10)
	require.Equal(t, []string{"before", "ambiguous"}, bodies(ds))
	require.Equal(t, res[0].ID, ds[1].ID)
	ack(t, b.srv, "q", receipts(ds)...)
	n, err := b.drv.MessageCount(ctx, "q")
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestAckWriteFails(t *testing.T) {
	t.Parallel()
	b, fd := setupFaulty(t, server.Config{})
	ctx := context.Background()
	mustCreateQueue(t, b.srv, "q", server.QueueConfig{})
	publish(t, b.srv, "q", "x")
	ds := receive(t, b.srv, "q", server.ReceiveParams{})
	fd.failBefore.Store(1)
	res, err := b.srv.Ack(ctx, "q", receipts(ds))
	require.NoError(t, err)
	require.ErrorIs(t, res[0].Err, server.ErrUnavailable)
	// Still there; the same receipt acks on a retry (nobody received it since).
	require.Equal(t, int64(1), info(t, b.srv, "q").Depth)
	ack(t, b.srv, "q", ds[0].Receipt)
	require.Equal(t, int64(0), info(t, b.srv, "q").Depth)
}
