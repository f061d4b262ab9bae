package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	httpapi "github.com/tablemq/tablemq/http"
	"github.com/tablemq/tablemq/nodemanager"
	"github.com/tablemq/tablemq/server"
	"github.com/tablemq/tablemq/sqlstore"
)

// Timeouts of the wiring that are not options.
const (
	// migrateTimeout bounds applying the migrations, waiting for another instance's
	// migration lock included.
	migrateTimeout = 5 * time.Minute
	// activateTimeoutMin is the least time Activate gets to load the bindings.
	activateTimeoutMin = 30 * time.Second
	// readHeaderTimeout bounds reading a request's headers (slow-loris guard).
	readHeaderTimeout = 10 * time.Second
	// readTimeout bounds reading a whole request, body included.
	readTimeout = 2 * time.Minute
	// idleTimeout closes keep-alive connections idle this long.
	idleTimeout = 2 * time.Minute
	// drainGrace is how long a graceful stop lets ordinary requests finish before it
	// deactivates the server, which releases waiting long polls. Capped by a quarter of
	// --shutdown-timeout.
	drainGrace = 2 * time.Second
	// fencedStopTimeout bounds the stop after this instance was fenced; every request
	// is refused with 503 by then, so there is nothing worth waiting for.
	fencedStopTimeout = 5 * time.Second
)

// runServe is `tablemq serve`.
//
// Start-up: listen first (a port clash must not fence a running instance), open the
// store, migrate, take the fencing epoch (nodemanager.Acquire: in the spine it bumps the
// epoch, so starting an instance fences any other instance on the same store), create the
// server, serve HTTP (/livez and /readyz answer at once; /readyz is 503 until the
// server is live), activate.
//
// Stop on SIGTERM or SIGINT: stop accepting connections and let requests in flight
// finish (http.Server.Shutdown); after a short grace deactivate the server, which
// releases waiting long polls, refuses what still arrives with 503 and drains the
// writer; close the store. All of it within --shutdown-timeout; then exit 0.
func runServe(ctx context.Context, a *app, o *options) (err error) {
	held := newHeldWriter(a.stderr)
	base := newLogger(o, held)
	log := base.With("node", o.NodeName)
	defer func() {
		// A start-up failure is reported by its one line; the held logs are shown only
		// to whoever asked for debug logs.
		held.release(err == nil || o.LogLevel == "debug")
	}()

	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer func() { _ = ln.Close() }() // on the normal path http.Server closes it first

	drv, err := openStore(ctx, o, log)
	if err != nil {
		return err
	}
	closeStore := true
	defer func() {
		if closeStore {
			if cerr := drv.Close(); cerr != nil {
				log.Warn("closing the store", "err", cerr)
			}
		}
	}()

	hacfg := o.haConfig()
	hacfg.Logger = log.With("component", "nodemanager")
	nm, err := nodemanager.New(drv, hacfg)
	if err != nil {
		return err
	}
	epoch, err := nm.Acquire(ctx)
	if err != nil {
		return err
	}

	srv, err := server.New(drv, server.Config{
		NodeName:        o.NodeName,
		DuplicateWindow: o.DuplicateWindow,
		MaxMessageSize:  int64(o.MaxMessageSize),
		Writer: sqlstore.WriterConfig{
			SyncPeriod: o.JournalSyncPeriod,
			Logger:     log.With("component", "writer"),
		},
		Logger: base.With("component", "server"), // the server adds node and epoch
	})
	if err != nil {
		return err
	}
	handler := httpapi.New(srv, httpapi.Config{
		MaxBodyBytes: int64(o.MaxMessageSize),
		Logger:       log.With("component", "http"),
	})
	hs := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		// No WriteTimeout: a long poll holds its response up to 30 s and streaming
		// consumers longer; the handlers bound their own work.
		IdleTimeout:    idleTimeout,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	stopHTTP := func(timeout time.Duration) {
		sctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			_ = hs.Close()
		}
		if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
			log.Warn("http server", "err", err)
		}
	}

	actx, cancel := context.WithTimeout(ctx, max(activateTimeoutMin, o.NetworkTimeout))
	err = srv.Activate(actx, epoch)
	cancel()
	if err != nil {
		stopHTTP(time.Second)
		return fmt.Errorf("activate: %w", err)
	}

	held.release(true)
	for _, w := range o.warnings {
		log.Warn(w)
	}
	log.Info("tablemq is live",
		"version", version,
		"store", drv.Dialect(),
		"store_url", o.store.Redacted,
		"epoch", epoch,
		"listen", ln.Addr().String(),
		"ha_policy", o.HAPolicy)

	select {
	case <-ctx.Done():
		if a.stopSignals != nil {
			a.stopSignals() // a second signal kills at once
		}
		log.Info("stopping", "reason", "signal", "timeout", o.ShutdownTimeout)
		closeStore = false
		return gracefulStop(o, log, hs, serveErr, srv, drv)

	case <-srv.Done():
		log.Error("fenced: another instance took over the store; stopping", "epoch", epoch)
		stopHTTP(fencedStopTimeout)
		srv.Deactivate()
		return fmt.Errorf("fenced: another instance took over the store (this one held epoch %d); stopped", epoch)

	case err := <-serveErr:
		srv.Deactivate()
		return fmt.Errorf("http server: %w", err)
	}
}

// gracefulStop stops the HTTP server, the broker and the store within
// --shutdown-timeout. It returns nil when everything stopped in time.
func gracefulStop(o *options, log *slog.Logger, hs *http.Server, serveErr <-chan error, srv *server.Server, drv sqlstore.Driver) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()

	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- hs.Shutdown(ctx) }()

	clean := true
	httpStopped := false
	grace := time.NewTimer(min(drainGrace, o.ShutdownTimeout/4))
	defer grace.Stop()
	select {
	case err := <-shutdownDone:
		httpStopped = true
		if err != nil {
			clean = false
		}
	case <-grace.C:
		// Requests still running are long polls (or slow): deactivating releases them.
	}

	deactivated := make(chan struct{})
	go func() {
		srv.Deactivate()
		close(deactivated)
	}()
	select {
	case <-deactivated:
	case <-ctx.Done():
		log.Error("the broker did not stop within shutdown-timeout", "timeout", o.ShutdownTimeout)
		clean = false
	}

	if !httpStopped {
		if err := <-shutdownDone; err != nil {
			log.Error("requests still running at shutdown-timeout were cut off", "err", err)
			_ = hs.Close()
			clean = false
		}
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		log.Warn("http server", "err", err)
	}

	if err := drv.Close(); err != nil {
		log.Warn("closing the store", "err", err)
	}
	if !clean {
		return fmt.Errorf("graceful stop did not finish within shutdown-timeout (%s)", o.ShutdownTimeout)
	}
	log.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// runMigrate is `tablemq migrate up`.
func runMigrate(ctx context.Context, a *app, o *options) (err error) {
	held := newHeldWriter(a.stderr)
	log := newLogger(o, held)
	defer func() { held.release(err == nil || o.LogLevel == "debug") }()

	drv, err := openStore(ctx, o, log)
	if err != nil {
		return err
	}
	if err := drv.Close(); err != nil {
		log.Warn("closing the store", "err", err)
	}
	for _, w := range o.warnings {
		log.Warn(w)
	}
	log.Info("schema is up to date", "store", drv.Dialect(), "store_url", o.store.Redacted)
	return nil
}
