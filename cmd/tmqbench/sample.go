package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// errExhausted ends a worker early: there is nothing left to do (an empty queue).
var errExhausted = errors.New("exhausted")

// sample is the outcome of one scenario: message count, wall time, and the latency of
// every operation.
type sample struct {
	msgs    int
	elapsed time.Duration
	lat     []time.Duration
	errs    int
	lastErr error
	// serverCPU, dbCPU and loadCPU are the CPU time the server process, the
	// database's processes and this load generator used during the scenario; 0 when
	// not measured (see cpu.go).
	serverCPU, dbCPU, loadCPU time.Duration
}

func (s *sample) rate() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.msgs) / s.elapsed.Seconds()
}

func (s *sample) pct(p float64) time.Duration {
	if len(s.lat) == 0 {
		return 0
	}
	i := int(float64(len(s.lat)-1) * p)
	return s.lat[i]
}

// runWorkers runs op on n goroutines until ctx ends or every worker is exhausted. op
// returns how many messages it moved. An error other than errExhausted is counted; a
// worker that sees more than 100 errors gives up.
func runWorkers(ctx context.Context, n, _ int, op func(ctx context.Context, worker int) (int, error)) (*sample, error) {
	var mu sync.Mutex
	total := &sample{}
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var lat []time.Duration
			msgs, errs := 0, 0
			var lastErr error
			for ctx.Err() == nil {
				t0 := time.Now()
				k, err := op(ctx, w)
				if errors.Is(err, errExhausted) {
					break
				}
				if err != nil {
					if ctx.Err() != nil {
						break
					}
					errs++
					lastErr = err
					if errs > 100 {
						break
					}
					continue
				}
				lat = append(lat, time.Since(t0))
				msgs += k
			}
			mu.Lock()
			total.msgs += msgs
			total.errs += errs
			if lastErr != nil {
				total.lastErr = lastErr
			}
			total.lat = append(total.lat, lat...)
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	total.elapsed = time.Since(start)
	sort.Slice(total.lat, func(i, j int) bool { return total.lat[i] < total.lat[j] })
	if total.msgs == 0 && total.lastErr != nil {
		return total, fmt.Errorf("no operation succeeded: %w", total.lastErr)
	}
	return total, nil
}

func payload(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000)
}
