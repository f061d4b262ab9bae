package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
)

// validatePprof checks --pprof-listen (empty: off) and warns when it is reachable
// from other hosts.
func (o *options) validatePprof() error {
	if o.PprofListen == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(o.PprofListen)
	if err != nil {
		return fmt.Errorf("pprof-listen: want HOST:PORT, got %q", o.PprofListen)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("pprof-listen: invalid port %q in %q", port, o.PprofListen)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		o.warnings = append(o.warnings, "pprof-listen "+o.PprofListen+
			" is not a loopback address: profiles and stacks are served to other hosts without authentication")
	}
	return nil
}

// startPprof serves net/http/pprof on addr, on a listener of its own (never the API's).
// It returns the listener's address and a function that closes it (profiles under way
// are cut off). An empty addr starts nothing.
func startPprof(addr string, log *slog.Logger) (string, func(), error) {
	if addr == "" {
		return "", func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("pprof-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // also serves the named profiles (heap, goroutine, ...)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: readHeaderTimeout,
		// No WriteTimeout: a CPU profile or trace runs for its ?seconds= (30 by default).
		IdleTimeout: idleTimeout,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Warn("pprof server", "err", err)
		}
	}()
	return ln.Addr().String(), func() { _ = hs.Close(); <-done }, nil
}
