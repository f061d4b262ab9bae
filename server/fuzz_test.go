package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/server"
)

// validNameRef is the name rule written out by hand.
func validNameRef(s string) bool {
	if len(s) < 1 || len(s) > server.NameMaxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("._-", rune(c))) {
			return false
		}
	}
	return true
}

func FuzzValidName(f *testing.F) {
	for _, s := range []string{"", "a", "orders.eu-1_x", "-x", ".x", "a b", "ä", strings.Repeat("a", 200), strings.Repeat("a", 201), "a\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := server.ValidName(s)
		require.Equal(t, validNameRef(s), err == nil, "%q: %v", s, err)
		if err != nil {
			require.ErrorIs(t, err, server.ErrInvalid)
		}
	})
}

// FuzzAckReceipt acks arbitrary receipts: each is reported per receipt as malformed,
// unknown or stale, never as a failure of the call, and nothing is acked by accident.
func FuzzAckReceipt(f *testing.F) {
	b := setup(f, server.Config{})
	mustCreateQueue(f, b.srv, "q", server.QueueConfig{})
	publish(f, b.srv, "q", "x")
	ds := receive(f, b.srv, "q", server.ReceiveParams{Lease: server.LeaseMax})
	require.Len(f, ds, 1)
	real := ds[0].Receipt
	parts := strings.Split(real, ".")
	for _, s := range []string{"", ".", "..", "1.1.1", "0.0.0", "ffffffffffffffffff.1.1", "1.-1.1", parts[0] + "." + parts[1] + ".1",
		"1." + parts[1] + "." + parts[2], real + "0", strings.ToUpper(real), " " + real} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if s == real {
			return
		}
		res, err := b.srv.Ack(context.Background(), "q", []string{s})
		require.NoError(t, err)
		require.Len(t, res, 1)
		require.Equal(t, s, res[0].Receipt)
		e := res[0].Err
		require.Error(t, e, "%q acked", s)
		require.True(t, errors.Is(e, server.ErrReceiptInvalid) || errors.Is(e, server.ErrReceiptUnknown) || errors.Is(e, server.ErrReceiptStale), "%q: %v", s, e)
	})
}
