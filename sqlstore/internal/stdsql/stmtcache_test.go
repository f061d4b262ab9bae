package stdsql

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLadder(t *testing.T) {
	require.Empty(t, ladder(nil, 3, 3))
	require.Equal(t, [][2]int{{0, 1}}, ladder(nil, 0, 1))
	require.Equal(t, [][2]int{{10, 74}, {74, 106}, {106, 110}}, ladder(nil, 10, 110))
	require.Equal(t, [][2]int{{0, 256}, {256, 512}, {512, 640}, {640, 641}}, ladder(nil, 0, 641))
	// Every run is a power of two rows, at most ladderMax, and the runs cover the
	// range in order.
	for n := 1; n <= 3*ladderMax; n++ {
		runs := ladder(nil, 0, n)
		at := 0
		for _, r := range runs {
			require.Equal(t, at, r[0])
			k := r[1] - r[0]
			require.True(t, k > 0 && k <= ladderMax && k&(k-1) == 0, "run of %d rows", k)
			at = r[1]
		}
		require.Equal(t, n, at)
	}
}
