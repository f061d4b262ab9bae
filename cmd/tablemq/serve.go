package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
	// readHeaderTimeout bounds reading a request's headers (slow-loris guard).
	readHeaderTimeout = 10 * time.Second
	// readTimeout bounds reading a whole request, body included.
	readTimeout = 2 * time.Minute
	// idleTimeout closes keep-alive connections idle this long.
	idleTimeout = 2 * time.Minute
	// fencedStopTimeout bounds the stop after the node manager ended the process (the
	// lock was lost or handed back); every request is refused with 503 by then.
	fencedStopTimeout = 5 * time.Second
)

// runServe is `tablemq serve`.
//
// Start-up: listen first (a port clash must not disturb a running group), open the
// store, migrate, create the server and the node manager, serve HTTP (/livez and
// /readyz answer at once; /readyz is 503 until the server is live), and run the node
// manager, which takes the live lock when it can and activates the server. With
// --ha-policy none the start-up succeeds only once the instance is live (it waits at
// most one lock expiration for a crashed predecessor's lock to lapse); a primary or
// backup may wait as a backup. The node manager's exit (lock held or lost under
// policy none, handed back without restart-backup) ends the process.
//
// Stop on SIGTERM or SIGINT: stop accepting connections and let requests in flight
// finish (http.Server.Shutdown); at the same time stop the node manager, which
// deactivates the server (waiting long polls end, what still arrives gets 503, the
// writer drains) and releases the live lock per --failover-on-shutdown; close the
// store. All of it within --shutdown-timeout; then exit 0.
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
	pprofAddr, stopPprof, err := startPprof(o.PprofListen, log.With("component", "pprof"))
	if err != nil {
		return err
	}
	defer stopPprof()
	metrics, err := httpapi.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		return err
	}

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
	hacfg.OnRenew = metrics.ObserveRenew
	var nm *nodemanager.Manager
	srv, err := server.New(drv, server.Config{
		NodeName:        o.NodeName,
		DuplicateWindow: o.DuplicateWindow,
		MaxMessageSize:  int64(o.MaxMessageSize),
		// Large messages (large-message-threshold, large-chunk-size).
		LargeMessageThreshold: int64(o.LargeMessageThreshold),
		LargeChunkSize:        int(o.LargeChunkSize),
		// Sizes and paging.
		MaxSizeBytes:  int64(o.MaxSizeBytes),
		GlobalMaxSize: int64(o.GlobalMaxSize),
		FullPolicy:    server.FullPolicy(strings.ToUpper(o.AddressFullPolicy)),
		BlockTimeout:  o.BlockTimeout,
		WindowSize:    o.WindowSize,
		WindowBytes:   int64(o.WindowBytes),
		Writer: sqlstore.WriterConfig{
			SyncPeriod: o.JournalSyncPeriod,
			Lanes:      o.WriterLanes,
			Logger:     log.With("component", "writer"),
			OnCommit:   metrics.ObserveCommit,
		},
		HA:     func() server.HAView { return haView(nm.Status()) },
		Logger: base.With("component", "server"), // the server adds node and epoch
	})
	if err != nil {
		return err
	}
	nm, err = nodemanager.New(drv, srv, hacfg)
	if err != nil {
		return err
	}
	handler := httpapi.New(srv, httpapi.Config{
		MaxBodyBytes: int64(o.MaxMessageSize),
		// Single publishes above the threshold are streamed (large messages).
		LargeMessageThreshold: int64(o.LargeMessageThreshold),
		Logger:                log.With("component", "http"),
		Metrics:               metrics,
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

	// The node manager owns the live lock and activates the server when it holds it.
	// It runs until nmCtx ends (a graceful stop: deactivate, then release the lock).
	nmCtx, stopNM := context.WithCancel(context.Background())
	defer stopNM()
	nmDone := make(chan error, 1)
	go func() { nmDone <- nm.Run(nmCtx) }()

	// Policy none must be live (or fail) before the start counts as a success; the
	// other policies have started once the manager runs: they may wait as backups.
	if o.HAPolicy == string(nodemanager.PolicyNone) {
		if err := awaitLive(ctx, srv, nmDone, serveErr); err != nil {
			stopNM()
			stopHTTP(time.Second)
			return err
		}
	}

	held.release(true)
	for _, w := range o.warnings {
		log.Warn(w)
	}
	log.Info("listening",
		"version", version,
		"store", drv.Dialect(),
		"store_url", o.store.Redacted,
		"listen", ln.Addr().String(),
		"ha_policy", o.HAPolicy,
		"holder", nm.HolderID())
	if pprofAddr != "" {
		log.Info("serving pprof", "pprof_listen", pprofAddr)
	}
	if srv.Role() == server.RoleLive {
		log.Info("tablemq is live", "epoch", srv.ClusterStatus().Epoch, "listen", ln.Addr().String())
	}

	select {
	case <-ctx.Done():
		if a.stopSignals != nil {
			a.stopSignals() // a second signal kills at once
		}
		log.Info("stopping", "reason", "signal", "timeout", o.ShutdownTimeout)
		closeStore = false
		return gracefulStop(o, log, hs, serveErr, func() error { stopNM(); return <-nmDone }, drv)

	case err := <-nmDone:
		stopHTTP(fencedStopTimeout)
		srv.Deactivate()
		if errors.Is(err, nodemanager.ErrHandedBack) {
			log.Info("stopped after handing back to the primary (restart-backup is off)")
			return nil
		}
		if err == nil {
			err = errors.New("the node manager stopped")
		}
		return err

	case err := <-serveErr:
		stopNM()
		if nmErr := <-nmDone; nmErr != nil {
			log.Warn("node manager", "err", nmErr)
		}
		return fmt.Errorf("http server: %w", err)
	}
}

// awaitLive waits until the server is live, the node manager gives up, the HTTP
// server fails, or ctx ends (a signal during start-up: a clean stop).
func awaitLive(ctx context.Context, srv *server.Server, nmDone <-chan error, serveErr <-chan error) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for srv.Role() != server.RoleLive {
		select {
		case <-ctx.Done():
			return nil
		case err := <-nmDone:
			if err == nil {
				err = errors.New("the node manager stopped during start-up")
			}
			return err
		case err := <-serveErr:
			return fmt.Errorf("http server: %w", err)
		case <-t.C:
		}
	}
	return nil
}

// haView turns the node manager's status into the server's view of the group.
func haView(st nodemanager.Status) server.HAView {
	role := server.RoleStarting
	switch st.Role {
	case nodemanager.RoleBackup:
		role = server.RoleBackup
	case nodemanager.RoleLive:
		role = server.RoleLive
	case nodemanager.RoleStopping, nodemanager.RoleStopped:
		role = server.RoleStopping
	}
	backups := st.Backups
	if backups == nil {
		backups = []string{}
	}
	return server.HAView{Role: role, Epoch: st.Epoch, LiveNode: st.LiveNode, LockExpiresAt: st.LockExpiresAt, Backups: backups}
}

// gracefulStop stops the HTTP server, the broker and the store within
// --shutdown-timeout. It returns nil when everything stopped in time.
func gracefulStop(o *options, log *slog.Logger, hs *http.Server, serveErr <-chan error, stopManager func() error, drv sqlstore.Driver) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()

	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- hs.Shutdown(ctx) }()

	clean := true

	// At the same time, the node manager deactivates the server (waiting long polls
	// end, what still arrives gets 503 so clients move to the next live, publishes
	// and acks under way commit as the writer drains) and releases the live lock: a
	// backup takes over at once with failover-on-shutdown, or the group pauses.
	deactivated := make(chan struct{})
	go func() {
		if err := stopManager(); err != nil {
			log.Warn("node manager", "err", err)
		}
		close(deactivated)
	}()
	select {
	case <-deactivated:
	case <-ctx.Done():
		log.Error("the broker did not stop within shutdown-timeout", "timeout", o.ShutdownTimeout)
		clean = false
	}

	if err := <-shutdownDone; err != nil {
		log.Error("requests still running at shutdown-timeout were cut off", "err", err)
		_ = hs.Close()
		clean = false
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
