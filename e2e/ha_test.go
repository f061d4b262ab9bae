package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/migrations"
)

// TestE2EKillUnderLoad kills the live of a primary-backup pair with SIGKILL while
// publishers and a consumer run: the backup serves within lock-expiration plus one
// poll interval (plus slack), every publish that got 201 is delivered, every message
// left unacked is delivered again, and no message comes back after its ack was
// answered ok.
func TestE2EKillUnderLoad(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) {
		heavy(t)
		ctx := deadline(t)
		const queue = "load"
		p := startPrimary(ctx, t, "primary", store)
		p.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
		b := startBackup(ctx, t, "backup", store)
		var before clusterStatus
		eventually(ctx, t, "the live lists the backup", func() error {
			var err error
			if before, err = p.cluster(ctx); err != nil {
				return err
			}
			if before.Role != "live" || before.LiveNode != "primary" || !slices.Contains(before.Backups, "backup") {
				return fmt.Errorf("/v1/cluster of the live: %+v", before)
			}
			return nil
		})

		l := newLoad(t, queue, p, b)
		l.start(ctx, 4)
		l.awaitPublished(ctx, 200, 50)

		require.Zero(t, p.log.count("self-fencing"), "the live never lost its lock under load before the kill")
		killedAt := time.Now()
		p.kill()
		l.markKilled()
		took := waitUntil(ctx, t, "the backup is ready", killedAt, func() bool { return b.ready(ctx) == http.StatusOK })
		n, _ := l.counts()
		l.awaitPublished(ctx, n+100, 0)
		l.mu.Lock()
		firstPub := l.firstPubAt.Sub(killedAt)
		l.mu.Unlock()
		t.Logf("kill -9 failover: backup /readyz 200 after %s, first 201 after %s (bound %s)",
			took.Round(time.Millisecond), firstPub.Round(time.Millisecond), takeoverBound())
		require.Less(t, took, takeoverBound(), "takeover after kill -9")

		after, err := b.cluster(ctx)
		require.NoError(t, err)
		require.Equal(t, "live", after.Role)
		require.Greater(t, after.Epoch, before.Epoch, "the takeover bumped the epoch")
		l.drain(ctx)
		require.Equal(t, 0, b.stop(ctx), "exit code after SIGTERM")
	})
}

// messageIDs returns the ids of every message row (queues and paged addresses) whose
// epoch is epoch, read directly from the store's tables.
func messageIDs(ctx context.Context, t *testing.T, store string, epoch int64) map[string]bool {
	t.Helper()
	db := openSQL(t, store)
	out := map[string]bool{}
	for _, table := range []string{migrations.MessagesDefault, migrations.PagesDefault} {
		rows, err := db.QueryContext(ctx, "SELECT id FROM "+table)
		require.NoError(t, err, "read %s", table)
		for rows.Next() {
			var id int64
			require.NoError(t, rows.Scan(&id))
			if id>>43 == epoch {
				out[fmt.Sprint(id)] = true
			}
		}
		require.NoError(t, rows.Err())
		require.NoError(t, rows.Close())
	}
	return out
}

// TestE2ESigstopFencing stops the live with SIGSTOP while it is being published to,
// past its lock expiration, until the backup has taken over; then continues it. The
// old live commits nothing after the takeover (proved from the message table: no row
// of its epoch appears that was not there at the takeover), every publish sent to it
// after SIGCONT gets 503, and it turns itself into a backup.
func TestE2ESigstopFencing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) {
		heavy(t)
		ctx := deadline(t)
		const queue = "stopped"
		p := startPrimary(ctx, t, "primary", store)
		p.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
		b := startBackup(ctx, t, "backup", store)
		old, err := p.cluster(ctx)
		require.NoError(t, err)

		// Publishers aimed at the old live only, recording every answer.
		type answer struct {
			sent   time.Time
			status int
			id     string
		}
		var (
			mu      sync.Mutex
			answers []answer
			wg      sync.WaitGroup
		)
		stop := make(chan struct{})
		for w := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					sent := time.Now()
					rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					st, id := tryPublish(rctx, p, queue, fmt.Sprintf("w%d-%d", w, i))
					cancel()
					mu.Lock()
					answers = append(answers, answer{sent, st, id})
					mu.Unlock()
					if st != http.StatusCreated {
						select { // a bounded pace while refused
						case <-stop:
							return
						case <-time.After(10 * time.Millisecond):
						}
					}
				}
			}()
		}
		defer func() {
			closeStop(stop)
			_ = p.cmd.Process.Signal(syscall.SIGCONT) // if the test failed while it was stopped
			wg.Wait()
		}()
		eventually(ctx, t, "publishing to the live", func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(answers) < 50 {
				return fmt.Errorf("%d answers", len(answers))
			}
			return nil
		})

		require.Zero(t, p.log.count("self-fencing"), "the live never lost its lock under load before the stop")
		stoppedAt := time.Now()
		p.signal(syscall.SIGSTOP)
		took, ok := within(ctx, takeoverBound(), stoppedAt, func() bool { return b.ready(ctx) == http.StatusOK })
		newLive, deposed := b, p
		var contAt time.Time
		if ok {
			t.Logf("takeover from a SIGSTOPped live after %s", took.Round(time.Millisecond))
		} else {
			// The stopped live holds a lock in the database: a write transaction was in
			// flight when it stopped, and the takeover waits for it.
			msg := fmt.Sprintf("the backup did not take over from the SIGSTOPped live within %s: "+
				"a write transaction of the stopped live holds a database lock the takeover waits for", takeoverBound())
			if strings.HasPrefix(store, "sqlite:") {
				t.Logf("%s (SQLite: a stopped process keeps the database write lock until it resumes; "+
					"checking the fencing after SIGCONT instead)", msg)
			} else {
				t.Errorf("%s; checking the fencing after SIGCONT. Sessions in the database:\n%s", msg, openTransactions(ctx, t, store))
			}
			// Once resumed, the old live ends its transaction and fences itself; a new
			// epoch takes over, on either instance (a primary may take the lock back).
			contAt = time.Now()
			p.signal(syscall.SIGCONT)
			took = waitUntil(ctx, t, "a new live once the stopped live resumed", contAt, func() bool {
				for _, x := range []*broker{b, p} {
					if cs, err := x.cluster(ctx); err == nil && cs.Role == "live" && cs.Epoch > old.Epoch {
						newLive = x
						return true
					}
				}
				return false
			})
			if newLive == p {
				deposed = b
			}
			t.Logf("%s took over %s after the SIGCONT", newLive.name, took.Round(time.Millisecond))
		}
		cur, err := newLive.cluster(ctx)
		require.NoError(t, err)
		require.Equal(t, "live", cur.Role)
		require.Greater(t, cur.Epoch, old.Epoch)
		atTakeover := messageIDs(ctx, t, store, old.Epoch)

		// Publishes sent to the deposed instance from now on (after SIGCONT and after the
		// takeover) must be refused.
		refuseFrom := time.Now()
		if contAt.IsZero() {
			contAt = time.Now()
			p.signal(syscall.SIGCONT)
			refuseFrom = contAt
		}
		for i := range 20 {
			st, _, data := deposed.publish(ctx, "/v1/queues/"+queue+"/messages", fmt.Sprintf("after SIGCONT %d", i), "")
			require.Equal(t, http.StatusServiceUnavailable, st, "a publish to the deposed %s after SIGCONT: %s", deposed.name, data)
		}
		deposed.awaitRole(ctx, "backup")
		require.NotEqual(t, http.StatusOK, deposed.ready(ctx))
		closeStop(stop)
		wg.Wait()

		st, id, data := newLive.publish(ctx, "/v1/queues/"+queue+"/messages", "on the new live", "")
		require.Equal(t, http.StatusCreated, st, "%s", data)
		require.Equal(t, cur.Epoch, epochOf(t, id))

		later := messageIDs(ctx, t, store, old.Epoch)
		for id := range later {
			require.True(t, atTakeover[id], "message %s of the old epoch %d was committed after the takeover", id, old.Epoch)
		}
		mu.Lock()
		defer mu.Unlock()
		created, refused := 0, 0
		for _, a := range answers {
			switch {
			case a.status == http.StatusCreated && epochOf(t, a.id) == old.Epoch:
				created++
				require.True(t, atTakeover[a.id], "publish %s answered 201 but was not in the store at the takeover", a.id)
				require.True(t, a.sent.Before(refuseFrom), "a publish sent after SIGCONT and the takeover got 201: %s", a.id)
			case a.status == http.StatusCreated:
				require.Same(t, p, newLive, "201 under epoch %d from the deposed primary", epochOf(t, a.id))
			case a.sent.After(refuseFrom) && deposed == p:
				require.Equal(t, http.StatusServiceUnavailable, a.status, "a publish sent after SIGCONT and the takeover")
				refused++
			}
		}
		t.Logf("old epoch %d: %d rows at the takeover, %d later; %d publishes got 201 under it, %d refused after SIGCONT",
			old.Epoch, len(atTakeover), len(later), created, refused)
		require.Equal(t, 0, p.stop(ctx))
		require.Equal(t, 0, b.stop(ctx))
	})
}

// openTransactions describes the sessions of store's database server that are not
// idle, for a failure message.
func openTransactions(ctx context.Context, t *testing.T, store string) string {
	t.Helper()
	q := `SELECT CONCAT(trx_state, ' since ', trx_started, ', lock waits: ', trx_lock_structs, ', query: ', COALESCE(trx_query, '-'))
		FROM information_schema.innodb_trx`
	if !strings.HasPrefix(store, "mysql://") {
		q = `SELECT state || ' (' || COALESCE(wait_event_type, '-') || '/' || COALESCE(wait_event, '-') || ') for ' ||
			(clock_timestamp() - state_change)::text || ': ' || regexp_replace(query, '\s+', ' ', 'g')
			FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state <> 'idle' AND datname = current_database()`
	}
	rows, err := openSQL(t, store).QueryContext(ctx, q)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return err.Error()
		}
		out = append(out, "  "+line)
	}
	return strings.Join(out, "\n")
}

// tryPublish publishes body to queue on b and returns the status and, with 201, the
// id; it is safe in any goroutine (it fails no test).
func tryPublish(ctx context.Context, b *broker, queue, body string) (int, string) {
	st, data := b.request(ctx, http.MethodPost, "/v1/queues/"+queue+"/messages", []byte(body),
		map[string]string{"Content-Type": "text/plain"})
	var out struct {
		ID string `json:"id"`
	}
	if st == http.StatusCreated && json.Unmarshal(data, &out) != nil {
		return -1, ""
	}
	return st, out.ID
}

func closeStop(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// TestE2ECutDatabase cuts the live's database connections (a TCP proxy between it and
// the database; the backup connects directly) under load: the live stops being ready
// before its lock can expire, the backup takes over, no message that got 201 is lost;
// once the connection heals the old live waits as a backup.
func TestE2ECutDatabase(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) {
		if strings.HasPrefix(store, "sqlite:") {
			t.Skip("sqlite has no network connection to cut")
		}
		heavy(t)
		ctx := deadline(t)
		const queue = "cut"
		_, upstream := viaProxy(t, store, "")
		proxy := newTCPProxy(t, upstream)
		liveStore, _ := viaProxy(t, store, proxy.addr())

		p := startPrimary(ctx, t, "primary", liveStore)
		p.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
		b := startBackup(ctx, t, "backup", store)
		l := newLoad(t, queue, p, b)
		l.start(ctx, 4)
		l.awaitPublished(ctx, 200, 50)

		cutAt := time.Now()
		proxy.Cut()
		l.markKilled()
		fenced := waitUntil(ctx, t, "the cut-off live stops being ready", cutAt,
			func() bool { return p.ready(ctx) != http.StatusOK })
		tookOver := waitUntil(ctx, t, "the backup takes over", cutAt,
			func() bool { return b.ready(ctx) == http.StatusOK })
		t.Logf("database cut: the live was unready after %s (lock-expiration %s), the backup ready after %s",
			fenced.Round(time.Millisecond), lockExpiration, tookOver.Round(time.Millisecond))
		require.Less(t, fenced, lockExpiration, "the live self-fences before its lock can expire")
		require.Less(t, tookOver, takeoverBound())

		n, _ := l.counts()
		l.awaitPublished(ctx, n+100, 0)
		proxy.Heal()
		p.awaitRole(ctx, "backup")
		l.drain(ctx)
		require.Equal(t, 0, p.stop(ctx))
		require.Equal(t, 0, b.stop(ctx))
	})
}

// TestE2EPolicies runs the graceful-stop and failback sequences.
func TestE2EPolicies(t *testing.T) {
	t.Parallel()

	// A graceful stop with failover-on-shutdown hands over to the backup at once.
	t.Run("handover", func(t *testing.T) {
		t.Parallel()
		forEachBackend(t, func(t *testing.T, store string) {
			ctx := deadline(t)
			const queue = "handover"
			p := startPrimary(ctx, t, "primary", store, "--failover-on-shutdown", "true")
			p.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
			st, id, data := p.publish(ctx, "/v1/queues/"+queue+"/messages", "before", "")
			require.Equal(t, http.StatusCreated, st, "%s", data)
			b := startBackup(ctx, t, "backup", store)

			start := time.Now()
			p.signal(syscall.SIGTERM)
			var id2 string
			took := waitUntil(ctx, t, "the backup takes a publish", start, func() bool {
				var st int
				st, id2, _ = b.publish(ctx, "/v1/queues/"+queue+"/messages", "after", "")
				return st == http.StatusCreated
			})
			t.Logf("graceful handover: first 201 on the backup %s after SIGTERM", took.Round(time.Millisecond))
			require.Equal(t, 0, p.wait(ctx), "exit code after SIGTERM")
			require.Less(t, took, lockExpiration+takeoverBound()/2, "a handover does not wait for the lock to expire")
			requireMessages(ctx, t, b, queue, id, id2)
			require.Equal(t, 0, b.stop(ctx))
		})
	})

	// A graceful stop without failover-on-shutdown pauses the group: the backup stays
	// a backup until a primary starts.
	t.Run("pause", func(t *testing.T) {
		t.Parallel()
		forEachBackend(t, func(t *testing.T, store string) {
			ctx := deadline(t)
			const queue = "paused"
			p := startPrimary(ctx, t, "primary", store, "--failover-on-shutdown", "false")
			p.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
			st, id, data := p.publish(ctx, "/v1/queues/"+queue+"/messages", "before", "")
			require.Equal(t, http.StatusCreated, st, "%s", data)
			b := startBackup(ctx, t, "backup", store)
			require.Equal(t, 0, p.stop(ctx), "exit code after SIGTERM")

			observeFor(ctx, t, "the paused group", 3*lockExpiration, func() error {
				if st := b.ready(ctx); st != http.StatusServiceUnavailable {
					return fmt.Errorf("the backup's /readyz answered %d", st)
				}
				cs, err := b.cluster(ctx)
				if err != nil {
					return err
				}
				if cs.Role != "backup" {
					return fmt.Errorf("the backup's role is %q", cs.Role)
				}
				return nil
			})
			st, _, _ = b.publish(ctx, "/v1/queues/"+queue+"/messages", "refused", "")
			require.Equal(t, http.StatusServiceUnavailable, st)

			p2 := startPrimary(ctx, t, "primary-again", store)
			b.awaitRole(ctx, "backup")
			requireMessages(ctx, t, p2, queue, id)
			require.Equal(t, 0, p2.stop(ctx))
			require.Equal(t, 0, b.stop(ctx))
		})
	})

	// allow-failback with restart-backup: the backup that took over hands back to the
	// returning primary and waits as a backup again.
	t.Run("failback", func(t *testing.T) {
		t.Parallel()
		forEachBackend(t, func(t *testing.T, store string) {
			ctx := deadline(t)
			b, ids := failoverToBackup(ctx, t, store, "--allow-failback", "true", "--restart-backup", "true")
			start := time.Now()
			p2 := startPrimary(ctx, t, "primary-again", store)
			t.Logf("failback: the returning primary was ready after %s", time.Since(start).Round(time.Millisecond))
			b.awaitRole(ctx, "backup")
			require.False(t, b.exited(), "with restart-backup the backup keeps running")
			requireMessages(ctx, t, p2, "failback", ids...)
			require.Equal(t, 0, p2.stop(ctx))
			require.Equal(t, 0, b.stop(ctx))
		})
	})

	// allow-failback without restart-backup: the backup hands back and exits 0.
	t.Run("failback-exit", func(t *testing.T) {
		t.Parallel()
		forEachBackend(t, func(t *testing.T, store string) {
			ctx := deadline(t)
			b, ids := failoverToBackup(ctx, t, store, "--allow-failback", "true")
			p2 := startPrimary(ctx, t, "primary-again", store)
			require.Equal(t, 0, b.wait(ctx), "the backup exits 0 after handing back")
			requireMessages(ctx, t, p2, "failback", ids...)
			require.Equal(t, 0, p2.stop(ctx))
		})
	})
}

// failoverToBackup starts a primary and a backup (with backupArgs), publishes one
// message on each side of a kill -9 of the primary, and returns the backup (live now)
// and the two ids. The queue is "failback".
func failoverToBackup(ctx context.Context, t *testing.T, store string, backupArgs ...string) (*broker, []string) {
	t.Helper()
	const queue = "failback"
	p := startPrimary(ctx, t, "primary", store)
	p.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
	st, id1, data := p.publish(ctx, "/v1/queues/"+queue+"/messages", "on the primary", "")
	require.Equal(t, http.StatusCreated, st, "%s", data)
	b := startBackup(ctx, t, "backup", store, backupArgs...)
	p.kill()
	b.awaitReady(ctx)
	st, id2, data := b.publish(ctx, "/v1/queues/"+queue+"/messages", "on the backup", "")
	require.Equal(t, http.StatusCreated, st, "%s", data)
	return b, []string{id1, id2}
}

// requireMessages receives (and acks) from queue on b until it has every id in want,
// and requires nothing else.
func requireMessages(ctx context.Context, t *testing.T, b *broker, queue string, want ...string) {
	t.Helper()
	var got []string
	for empties := 0; len(got) < len(want) && empties < 3; {
		msgs := b.receive(ctx, queue, 1000, "500ms", "1m")
		if len(msgs) == 0 {
			empties++
			continue
		}
		receipts := make([]string, 0, len(msgs))
		for _, m := range msgs {
			got = append(got, m.ID)
			receipts = append(receipts, m.Receipt)
		}
		b.ack(ctx, queue, receipts)
	}
	require.ElementsMatch(t, want, got)
}

// TestE2EManyBackupsTwentyKills runs one primary and three backups and kills the live
// with SIGKILL twenty times, starting a replacement backup each time. A watcher polls
// /v1/cluster of every running instance every 20 ms for the whole test: at no poll
// instant may two instances answer role "live", and no epoch is ever live on two
// nodes. One message published per round is still there at the end.
func TestE2EManyBackupsTwentyKills(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) {
		heavy(t)
		ctx := deadline(t)
		const queue, rounds, liveDwell = "kills", 20, 300 * time.Millisecond

		var (
			mu      sync.Mutex
			running []*broker
		)
		add := func(b *broker) { mu.Lock(); running = append(running, b); mu.Unlock() }
		remove := func(b *broker) {
			mu.Lock()
			running = slices.DeleteFunc(running, func(x *broker) bool { return x == b })
			mu.Unlock()
		}
		p := startPrimary(ctx, t, "primary", store)
		p.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
		add(p)
		next := 0
		newBackup := func(wait bool) {
			next++
			name := fmt.Sprintf("backup-%d", next)
			var b *broker
			if wait {
				b = startBackup(ctx, t, name, store)
			} else {
				b = launchServe(ctx, t, name, store, "--ha-policy", "shared-store-backup")
			}
			add(b)
		}
		for range 3 {
			newBackup(true)
		}

		w := startWatcher(ctx, t, func() []*broker {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(running)
		})

		var ids []string
		var took []time.Duration
		live, cs := findLive(ctx, t, &mu, &running, 0)
		for r := range rounds {
			// The live serves for a while (the watcher sees it next to the backups), then
			// it is killed.
			for i, start := 0, time.Now(); i == 0 || time.Since(start) < liveDwell; i++ {
				st, id, data := live.publish(ctx, "/v1/queues/"+queue+"/messages", fmt.Sprintf("round %d, %d", r, i), "")
				require.Equal(t, http.StatusCreated, st, "round %d: %s", r, data)
				require.Equal(t, cs.Epoch, epochOf(t, id))
				ids = append(ids, id)
			}

			killedAt := time.Now()
			live.kill()
			remove(live)
			newBackup(false)
			live, cs = findLive(ctx, t, &mu, &running, cs.Epoch)
			took = append(took, time.Since(killedAt))
		}
		polls, lives := w.stop()
		slices.Sort(took)
		t.Logf("%d kills: takeover median %s, worst %s; the watcher made %d polls of all instances (%d live answers)",
			rounds, took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), polls, lives)
		require.Less(t, took[len(took)-1], takeoverBound()+time.Second, "the slowest takeover")
		require.Greater(t, polls, rounds*5, "the watcher kept polling")
		requireMessages(ctx, t, live, queue, ids...)
	})
}

// findLive polls /v1/cluster of every running instance until exactly one answers role
// live with an epoch above after, and returns it.
func findLive(ctx context.Context, t *testing.T, mu *sync.Mutex, running *[]*broker, after int64) (*broker, clusterStatus) {
	t.Helper()
	var live *broker
	var cs clusterStatus
	eventually(ctx, t, fmt.Sprintf("a live with an epoch above %d", after), func() error {
		mu.Lock()
		all := slices.Clone(*running)
		mu.Unlock()
		live = nil
		for _, b := range all {
			s, err := b.cluster(ctx)
			if err != nil || s.Role != "live" {
				continue
			}
			if live != nil {
				t.Fatalf("both %s and %s answer role live", live.name, b.name)
			}
			live, cs = b, s
		}
		if live == nil {
			return fmt.Errorf("no instance is live")
		}
		if cs.Epoch <= after {
			return fmt.Errorf("%s is live under epoch %d", live.name, cs.Epoch)
		}
		return nil
	})
	return live, cs
}

// watcher polls /v1/cluster of every running instance, all at once, every 20 ms.
type watcher struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan struct{}
	polls  int
	lives  int
}

func startWatcher(ctx context.Context, t *testing.T, instances func() []*broker) *watcher {
	wctx, cancel := context.WithCancel(ctx)
	w := &watcher{t: t, cancel: cancel, done: make(chan struct{})}
	liveNode := map[int64]string{} // epoch -> the node seen live under it
	go func() {
		defer close(w.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-tick.C:
			}
			all := instances()
			answers := make([]clusterStatus, len(all))
			errs := make([]error, len(all))
			var wg sync.WaitGroup
			for i, b := range all {
				wg.Add(1)
				go func() {
					defer wg.Done()
					answers[i], errs[i] = b.cluster(wctx)
				}()
			}
			wg.Wait()
			if wctx.Err() != nil {
				return
			}
			w.polls++
			var live []string
			for i, cs := range answers {
				if errs[i] != nil || cs.Role != "live" {
					continue
				}
				live = append(live, fmt.Sprintf("%s (epoch %d)", cs.NodeName, cs.Epoch))
				if n, ok := liveNode[cs.Epoch]; ok && n != cs.NodeName {
					t.Errorf("epoch %d was live on %s and on %s", cs.Epoch, n, cs.NodeName)
				}
				liveNode[cs.Epoch] = cs.NodeName
			}
			w.lives += len(live)
			if len(live) > 1 {
				t.Errorf("poll %d: two instances answer role live: %s", w.polls, strings.Join(live, ", "))
			}
		}
	}()
	t.Cleanup(w.stopQuietly)
	return w
}

// stop ends the watcher and returns how many polls it made and how many live answers
// it saw.
func (w *watcher) stop() (polls, lives int) {
	w.stopQuietly()
	return w.polls, w.lives
}

func (w *watcher) stopQuietly() {
	w.cancel()
	<-w.done
}
