package e2e

import (
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
)

// tcpProxy forwards TCP connections to one upstream address, and can cut them: Cut
// closes every forwarded connection and refuses new ones (they are accepted and closed
// at once) until Heal.
type tcpProxy struct {
	ln       net.Listener
	upstream string

	mu    sync.Mutex // guards cut, conns
	cut   bool
	conns map[net.Conn]struct{}

	wg sync.WaitGroup // the accept loop and every forwarding goroutine
}

// newTCPProxy listens on a free local port and forwards to upstream; it is closed at
// the end of t.
func newTCPProxy(t *testing.T, upstream string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &tcpProxy{ln: ln, upstream: upstream, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(p.close)
	return p
}

// addr is the proxy's listening address.
func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

// Cut closes every forwarded connection and refuses new ones until Heal.
func (p *tcpProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		_ = c.Close()
	}
}

// Heal lets new connections through again.
func (p *tcpProxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// close stops the proxy and waits for its goroutines.
func (p *tcpProxy) close() {
	_ = p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

// track registers c unless the proxy is cut; it reports whether it did.
func (p *tcpProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *tcpProxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

func (p *tcpProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(c) {
			_ = c.Close()
			continue
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

// forward copies between the client connection c and a new upstream connection until
// either side ends or the proxy cuts them.
func (p *tcpProxy) forward(c net.Conn) {
	defer p.wg.Done()
	defer p.untrack(c)
	defer c.Close()
	up, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		return
	}
	if !p.track(up) {
		_ = up.Close()
		return
	}
	defer p.untrack(up)
	defer up.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src) // ends on EOF, a reset or a cut; both sides are closed below
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	_ = c.Close()
	_ = up.Close()
	<-done
}

// viaProxy returns store with its database host:port replaced by addr, and the
// host:port it had (call it with addr "" to learn the latter). Only network stores
// (postgres, mysql) have one.
func viaProxy(t *testing.T, store, addr string) (proxied, upstream string) {
	t.Helper()
	switch {
	case strings.HasPrefix(store, "postgres://"), strings.HasPrefix(store, "postgresql://"):
		u, err := url.Parse(store)
		require.NoError(t, err)
		upstream, u.Host = u.Host, addr
		return u.String(), upstream
	case strings.HasPrefix(store, "mysql://"):
		cfg, err := mysql.ParseDSN(strings.TrimPrefix(store, "mysql://"))
		require.NoError(t, err)
		upstream, cfg.Addr = cfg.Addr, addr
		return "mysql://" + cfg.FormatDSN(), upstream
	}
	t.Fatalf("no database address in %s", store)
	return "", ""
}
