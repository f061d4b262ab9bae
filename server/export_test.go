package server

import "fmt"

// CheckWindow recounts what queue name holds in memory and compares it with the
// bookkeeping kept beside it (stored per lane, memBytes): the tests call it after
// publishes, nacks with a delay, acks and refills.
func CheckWindow(s *Server, name string) error {
	l, err := s.liveOrErr()
	if err != nil {
		return err
	}
	l.metaMu.RLock()
	q := l.queues[name]
	l.metaMu.RUnlock()
	if q == nil {
		return fmt.Errorf("queue %q not active", name)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	var stored [laneCount]int
	var bytes int64
	for _, m := range q.index {
		if m.persistent {
			stored[laneOf(m.deliverAt)]++
		}
		bytes += footprint(m)
	}
	if stored != q.stored {
		return fmt.Errorf("queue %q: stored by lane %v, counted %v", name, q.stored, stored)
	}
	if bytes != q.memBytes {
		return fmt.Errorf("queue %q: memBytes %d, counted %d", name, q.memBytes, bytes)
	}
	return nil
}
