package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"time"
)

func bench(ctx context.Context, log *slog.Logger, o options, w io.Writer) error {
	if err := o.more.parse(); err != nil {
		return err
	}
	prefix := fmt.Sprintf("tmqbench%d_", time.Now().UnixNano()%1_000_000)
	body := payload(o.size)

	r, err := newRaw(ctx, o.store, prefix, o.size)
	if err != nil {
		return err
	}
	defer r.close(context.Background(), o.keep)

	var runs [][]result
	for i := 1; i <= o.more.runs; i++ {
		log.Info("run", "n", i, "of", o.more.runs)
		res, err := runOnce(ctx, log, o, r, body, fmt.Sprintf("%sr%d_", prefix, i))
		if err != nil {
			return err
		}
		runs = append(runs, res)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	rows := aggregate(runs)

	fmt.Fprintf(w, "\n### %s: %d-byte messages, %s per scenario, %s, GOMAXPROCS=%d, store %s\n\n",
		time.Now().UTC().Format(time.RFC3339), o.size, o.duration, runsLabel(o.more.runs), runtime.GOMAXPROCS(0), redact(o.store))
	printTable(w, rows)
	fmt.Fprintln(w)
	printGoals(w, rows)
	return nil
}

func runsLabel(n int) string {
	if n == 1 {
		return "1 run"
	}
	return fmt.Sprintf("median of %d runs", n)
}

// runOnce runs every selected scenario once: the raw baselines, a broker on fresh
// tables named with prefix, the embedded SQLite broker, and RabbitMQ.
func runOnce(ctx context.Context, log *slog.Logger, o options, rw *raw, body []byte, prefix string) ([]result, error) {
	ru := &runner{log: log, o: o, body: body}
	rawRow := func(id, name string, c int, s *sample, err error) {
		if err != nil {
			ru.failed(id, name, c, err)
			return
		}
		ru.add(result{id: id, name: name, clients: c, s: s})
	}

	// Raw baselines first, on an empty table, always (every ratio needs them).
	if err := rw.reset(ctx); err != nil {
		return nil, err
	}
	s, err := rw.copyBatches(ctx, 1000, 1, o.duration)
	rawRow("raw-copy", "raw COPY, batches of 1000", 1, s, err)
	for _, c := range o.more.rawC {
		s, err := rw.singleInserts(ctx, c, o.duration)
		rawRow(fmt.Sprintf("raw-insert/%d", c), "raw single-row INSERT commits", c, s, err)
	}
	s, err = rw.deleteBatches(ctx, 100, o.duration)
	rawRow("raw-delete", "raw DELETE by key, batches of 100", 1, s, err)
	if err := rw.reset(ctx); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return ru.out, nil
	}

	if ru.want("bare net/http server") && ctx.Err() == nil {
		ru.httpFloor(ctx, o.more.floorC)
	}

	names := []string{"publish, 1 msg/request", "publish, batch of 100/request", "receive+ack", "steady", "fan-out"}
	needBroker := false
	for _, n := range names {
		needBroker = needBroker || ru.want(n)
	}
	if needBroker {
		b, err := startBrokerWith(ctx, log, launchOptions{binary: o.binary, store: o.store, prefix: prefix, name: "bench", pprof: o.profiles != ""})
		if err != nil {
			return nil, err
		}
		func() {
			defer b.stop()
			if ru.want(names[0]) {
				for _, c := range o.clients {
					ru.publishOne(ctx, b, c)
				}
			}
			if ru.want(names[1]) {
				for _, c := range o.more.batchC {
					ru.publishBatch(ctx, b, c)
				}
			}
			if ru.want(names[2]) {
				for _, bs := range o.more.recvB {
					for _, c := range o.more.consC {
						ru.receiveAck(ctx, b, bs, c)
					}
				}
			}
			if ru.want(names[3]) {
				rate, why := o.more.steadyRate, "-steady-rate"
				if rate <= 0 {
					best := 0.0
					for _, c := range o.clients {
						best = max(best, ru.rate(fmt.Sprintf("pub/%d", c)))
					}
					rate, why = best/2, "half of max"
					if best == 0 {
						rate, why = 1000, "no publish measured: default"
					}
				}
				ru.steady(ctx, b, rate, why)
			}
			if ru.want(names[4]) {
				ru.fanout(ctx, b)
			}
		}()
		if !o.keep {
			if err := dropTables(context.Background(), o.store, prefix); err != nil {
				log.Warn("drop broker tables", "prefix", prefix, "err", err)
			}
		}
	}
	if ru.want("embedded SQLite") && ctx.Err() == nil {
		ru.sqlite(ctx, prefix)
	}
	if ru.rabbitOn() && ru.want("RabbitMQ") && ctx.Err() == nil {
		if ru.rabbit(ctx, "classic", prefix) {
			ru.rabbit(ctx, "quorum", prefix)
		} else {
			ru.out = append(ru.out, result{id: "rmq-quorum-pub", name: "RabbitMQ quorum: publish, confirms", clients: o.more.rabbitPubs, note: "skipped: RabbitMQ unreachable"},
				result{id: "rmq-quorum-cons", name: "RabbitMQ quorum: consume, manual ack", clients: o.more.rabbitConsumers, note: "skipped: RabbitMQ unreachable"})
		}
	}
	return ru.out, nil
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

func redact(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		rest := u[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			cred := rest[:at]
			if c := strings.Index(cred, ":"); c >= 0 {
				return u[:i+3] + cred[:c] + ":***" + rest[at:]
			}
		}
	}
	return u
}
