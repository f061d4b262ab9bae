package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"time"

	_ "github.com/go-sql-driver/mysql" // database/sql driver "mysql", to drop the tables
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx", to drop the tables

	"github.com/tablemq/tablemq/nodemanager"
)

// haOptions are the lock settings of the failover measurement; a zero value leaves the
// flag to the binary's default.
type haOptions struct {
	renew, expiration, networkTimeout, poll time.Duration
}

// args renders the settings that are set as tablemq flags.
func (h haOptions) args() []string {
	var a []string
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"lock-renew-period", h.renew}, {"lock-expiration", h.expiration},
		{"network-timeout", h.networkTimeout}, {"backup-poll-interval", h.poll},
	} {
		if f.d > 0 {
			a = append(a, "--"+f.name, f.d.String())
		}
	}
	return a
}

// String describes the settings for the result table.
func (h haOptions) String() string {
	if a := h.args(); len(a) > 0 {
		return strings.Join(a, " ")
	}
	return "defaults"
}

// haNode is one `tablemq serve` process of the failover measurement.
type haNode struct {
	*broker
	name string
}

// pollStep is how often the measurement polls /readyz and retries a publish.
const pollStep = 5 * time.Millisecond

// failover measures, on o.store, the time from kill -9 of the live to the backup's
// /readyz 200 and to its first successful publish, and the time from SIGTERM of a live
// with --failover-on-shutdown true to the backup's first successful publish, each over
// o.rounds rounds, and prints the median and the worst as a Markdown table.
func failover(ctx context.Context, log *slog.Logger, o options, w io.Writer) error {
	if o.rounds < 1 {
		return fmt.Errorf("--rounds: want at least 1, got %d", o.rounds)
	}
	prefix := fmt.Sprintf("tmqfo%d_", time.Now().UnixNano()%1_000_000)
	f := &failoverRun{log: log, o: o, prefix: prefix}
	defer f.stopAll()
	if !o.keep {
		defer func() {
			if err := dropTables(context.Background(), o.store, prefix); err != nil {
				log.Warn("dropping the benchmark tables", "prefix", prefix, "err", err)
			}
		}()
	}

	kill, killPub, err := f.killRounds(ctx)
	if err != nil {
		return fmt.Errorf("kill -9 rounds: %w", err)
	}
	f.stopAll()
	hoReady, hoPub, err := f.handoverRounds(ctx)
	if err != nil {
		return fmt.Errorf("graceful handover rounds: %w", err)
	}

	fmt.Fprintf(w, "\n### %s: failover, store %s, %s, %d rounds each\n\n",
		time.Now().UTC().Format(time.RFC3339), redact(o.store), o.ha, o.rounds)
	fmt.Fprintln(w, "| measurement | median ms | worst ms |")
	fmt.Fprintln(w, "|---|---:|---:|")
	for _, r := range []struct {
		name string
		d    []time.Duration
	}{
		{"kill -9 of the live → backup /readyz 200", kill},
		{"kill -9 of the live → first 201 on the backup", killPub},
		{"SIGTERM of the live (failover-on-shutdown) → backup /readyz 200", hoReady},
		{"SIGTERM of the live (failover-on-shutdown) → first 201 on the backup", hoPub},
	} {
		med, worst := medianWorst(r.d)
		fmt.Fprintf(w, "| %s | %s | %s |\n", r.name, ms(med), ms(worst))
	}
	return nil
}

// failoverRun holds the processes of one measurement.
type failoverRun struct {
	log    *slog.Logger
	o      options
	prefix string
	pprof  bool // start every instance with --pprof-listen
	nodes  []*haNode
	next   int
}

// start starts an instance with policy and extra flags; it does not wait for it.
func (f *failoverRun) start(policy string, extra ...string) (*haNode, error) {
	f.next++
	name := fmt.Sprintf("node%d", f.next)
	args := append([]string{"--ha-policy", policy}, f.o.ha.args()...)
	b, err := launch(launchOptions{binary: f.o.binary, store: f.o.store, prefix: f.prefix, name: name,
		pprof: f.pprof, extra: append(args, extra...)})
	if err != nil {
		return nil, err
	}
	n := &haNode{broker: b, name: name}
	f.nodes = append(f.nodes, n)
	return n, nil
}

// stopAll kills every instance still running.
func (f *failoverRun) stopAll() {
	for _, n := range f.nodes {
		_ = n.cmd.Process.Kill()
		<-n.done
	}
	f.nodes = nil
}

// forget drops n (which has exited) from the running instances.
func (f *failoverRun) forget(n *haNode) {
	f.nodes = slices.DeleteFunc(f.nodes, func(x *haNode) bool { return x == n })
}

// role returns n's role from /v1/cluster ("" when it does not answer).
func (n *haNode) role(ctx context.Context) string {
	var cs struct {
		Role string `json:"role"`
	}
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := n.do(rctx, http.MethodGet, "/v1/cluster", "", nil, http.StatusOK, &cs); err != nil {
		return ""
	}
	return cs.Role
}

// ready reports whether n's /readyz answers 200.
func (n *haNode) ready(ctx context.Context) bool {
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return n.do(rctx, http.MethodGet, "/readyz", "", nil, http.StatusOK, nil) == nil
}

// await polls cond every pollStep until it holds, n exits, or limit passes.
func (n *haNode) await(ctx context.Context, what string, limit time.Duration, cond func() bool) error {
	end := time.Now().Add(limit)
	for !cond() {
		select {
		case <-n.done:
			return fmt.Errorf("%s exited while waiting until %s", n.name, what)
		default:
		}
		if time.Now().After(end) {
			return fmt.Errorf("%s: not %s within %s", n.name, what, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollStep):
		}
	}
	return nil
}

// startLive starts an instance as primary and waits until it is live.
func (f *failoverRun) startLive(ctx context.Context, extra ...string) (*haNode, error) {
	live, err := f.start("shared-store-primary", extra...)
	if err != nil {
		return nil, err
	}
	return live, live.await(ctx, "ready", time.Minute, func() bool { return live.ready(ctx) })
}

// startPair starts the first instance, as primary, and a backup; it creates the queue.
func (f *failoverRun) startPair(ctx context.Context, extra ...string) (live, backup *haNode, err error) {
	if live, err = f.startLive(ctx, extra...); err != nil {
		return nil, nil, err
	}
	if err := live.createQueue(ctx, "failover"); err != nil && !strings.Contains(err.Error(), "status 200") {
		return nil, nil, err
	}
	backup, err = f.startBackup(ctx, extra...)
	return live, backup, err
}

// startBackup starts a backup and waits until it waits as one.
func (f *failoverRun) startBackup(ctx context.Context, extra ...string) (*haNode, error) {
	b, err := f.start("shared-store-backup", extra...)
	if err != nil {
		return nil, err
	}
	return b, b.await(ctx, "a backup", time.Minute, func() bool { return b.role(ctx) == "backup" })
}

// measure polls the backup after the live was stopped at t0: it returns the time to
// /readyz 200 and to the first 201 of a publish.
func measure(ctx context.Context, backup *haNode, t0 time.Time, limit time.Duration) (ready, pub time.Duration, err error) {
	if err := backup.await(ctx, "ready", limit, func() bool { return backup.ready(ctx) }); err != nil {
		return 0, 0, err
	}
	ready = time.Since(t0)
	body := []byte("after failover")
	if err := backup.await(ctx, "publishing", limit, func() bool { return backup.publish(ctx, "failover", body) == nil }); err != nil {
		return 0, 0, err
	}
	return ready, time.Since(t0), nil
}

// jitter waits a random time up to the longer of the lock-renew-period and the
// backup-poll-interval, so that a round stops the live at a random phase of both
// cycles: a takeover's time depends on how long before the kill the last renewal was,
// and on when the backup polls next (a backup that just started polls at once).
func (f *failoverRun) jitter(ctx context.Context) error {
	renew, poll := f.o.ha.renew, f.o.ha.poll
	if renew == 0 {
		renew = nodemanager.LockRenewPeriodDefault
	}
	if poll == 0 {
		poll = nodemanager.PollIntervalDefault
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(rand.N(max(renew, poll))):
		return nil
	}
}

// limit bounds one takeover.
func (f *failoverRun) limit() time.Duration {
	exp := f.o.ha.expiration
	if exp == 0 {
		exp = nodemanager.LockExpirationDefault
	}
	return 10*exp + 10*time.Second
}

// killRounds kills the live with SIGKILL o.rounds times, each time with one backup
// waiting, and restarts the killed instance as the next backup.
func (f *failoverRun) killRounds(ctx context.Context) (ready, pub []time.Duration, err error) {
	live, backup, err := f.startPair(ctx)
	if err != nil {
		return nil, nil, err
	}
	for r := range f.o.rounds {
		if err := f.jitter(ctx); err != nil {
			return nil, nil, err
		}
		t0 := time.Now()
		if err := live.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			return nil, nil, fmt.Errorf("kill: %w", err)
		}
		<-live.done
		f.forget(live)
		rd, pd, err := measure(ctx, backup, t0, f.limit())
		if err != nil {
			return nil, nil, fmt.Errorf("round %d: %w", r+1, err)
		}
		f.log.Info("kill -9 round", "round", r+1, "ready_ms", rd.Milliseconds(), "first_publish_ms", pd.Milliseconds())
		ready, pub = append(ready, rd), append(pub, pd)
		live = backup
		if backup, err = f.startBackup(ctx); err != nil {
			return nil, nil, err
		}
	}
	return ready, pub, nil
}

// handoverRounds stops the live with SIGTERM o.rounds times, every instance running
// with --failover-on-shutdown true, and restarts the stopped one as the next backup.
func (f *failoverRun) handoverRounds(ctx context.Context) (ready, pub []time.Duration, err error) {
	fos := []string{"--failover-on-shutdown", "true"}
	live, backup, err := f.startPair(ctx, fos...)
	if err != nil {
		return nil, nil, err
	}
	for r := range f.o.rounds {
		if err := f.jitter(ctx); err != nil {
			return nil, nil, err
		}
		t0 := time.Now()
		if err := live.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			return nil, nil, fmt.Errorf("SIGTERM: %w", err)
		}
		rd, pd, err := measure(ctx, backup, t0, f.limit())
		if err != nil {
			return nil, nil, fmt.Errorf("round %d: %w", r+1, err)
		}
		select {
		case <-live.done:
		case <-time.After(time.Minute):
			return nil, nil, fmt.Errorf("round %d: %s did not exit within a minute of SIGTERM", r+1, live.name)
		}
		if code := live.cmd.ProcessState.ExitCode(); code != 0 {
			return nil, nil, fmt.Errorf("round %d: %s exited %d after SIGTERM", r+1, live.name, code)
		}
		f.forget(live)
		f.log.Info("handover round", "round", r+1, "ready_ms", rd.Milliseconds(), "first_publish_ms", pd.Milliseconds())
		ready, pub = append(ready, rd), append(pub, pd)
		live = backup
		if backup, err = f.startBackup(ctx, fos...); err != nil {
			return nil, nil, err
		}
	}
	return ready, pub, nil
}

// medianWorst returns the median and the maximum of d.
func medianWorst(d []time.Duration) (time.Duration, time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)-1]
}

// dropTables drops every table whose name starts with prefix from a postgres or mysql
// store (a SQLite store is a file the user chose; it is left as it is).
func dropTables(ctx context.Context, store, prefix string) error {
	return withTables(ctx, store, prefix, func(conn *sql.Conn, driver string, names []string) error {
		drop := "DROP TABLE IF EXISTS %s CASCADE"
		if driver == "mysql" {
			drop = "DROP TABLE IF EXISTS %s"
			if _, err := conn.ExecContext(ctx, "SET FOREIGN_KEY_CHECKS = 0"); err != nil {
				return fmt.Errorf("drop tables: %w", err)
			}
		}
		var errs []error
		for _, n := range names { // the prefix is the benchmark's own: [a-z0-9_]
			if _, err := conn.ExecContext(ctx, fmt.Sprintf(drop, n)); err != nil {
				errs = append(errs, fmt.Errorf("drop %s: %w", n, err))
			}
		}
		return errors.Join(errs...)
	})
}

// withTables calls f with one connection to a postgres or mysql store and the names of
// its tables that start with prefix; for any other store it does nothing.
func withTables(ctx context.Context, store, prefix string, f func(conn *sql.Conn, driver string, names []string) error) error {
	var driver, dsn, list string
	switch {
	case strings.HasPrefix(store, "postgres://"), strings.HasPrefix(store, "postgresql://"):
		driver, dsn = "pgx", store
		list = `SELECT tablename FROM pg_tables WHERE schemaname = current_schema()`
	case strings.HasPrefix(store, "mysql://"):
		driver, dsn = "mysql", strings.TrimPrefix(store, "mysql://")
		list = `SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()`
	default:
		return nil
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx) // one session: settings such as the foreign key switch are per session
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	rows, err := conn.QueryContext(ctx, list)
	if err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return fmt.Errorf("list tables: %w", err)
		}
		if strings.HasPrefix(n, prefix) {
			names = append(names, n)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	return f(conn, driver, names)
}
