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

type row struct {
	name    string
	clients int
	s       *sample
	base    string  // name of the baseline row
	baseVal float64 // its rate
}

func bench(ctx context.Context, log *slog.Logger, o options, w io.Writer) error {
	prefix := fmt.Sprintf("tmqbench%d_", time.Now().UnixNano()%1_000_000)
	body := payload(o.size)
	want := func(name string) bool { return o.only == "" || strings.Contains(name, o.only) }

	r, err := newRaw(ctx, o.store, prefix, o.size)
	if err != nil {
		return err
	}
	defer r.close(context.Background(), o.keep)

	var rows []row
	add := func(name string, clients int, s *sample, err error, base string, baseVal float64) error {
		if err != nil {
			return fmt.Errorf("%s (%d clients): %w", name, clients, err)
		}
		log.Info("scenario done", "scenario", name, "clients", clients, "msgs_per_s", int(s.rate()), "errors", s.errs)
		rows = append(rows, row{name, clients, s, base, baseVal})
		return nil
	}

	// Raw baselines first, on an empty table.
	rawCopy, err := r.copyBatches(ctx, 1000, 1, o.duration)
	if err := add("raw COPY, batches of 1000", 1, rawCopy, err, "", 0); err != nil {
		return err
	}
	for _, c := range o.clients {
		s, err := r.singleInserts(ctx, c, o.duration)
		if err := add("raw single-row INSERT commits", c, s, err, "", 0); err != nil {
			return err
		}
	}
	rawDel, err := r.deleteBatches(ctx, 100, o.duration)
	if err := add("raw DELETE by key, batches of 100", 1, rawDel, err, "", 0); err != nil {
		return err
	}

	b, err := startBroker(ctx, log, o.binary, o.store, prefix)
	if err != nil {
		return err
	}
	defer b.stop()

	for _, c := range o.clients {
		name := "publish, 1 msg/request"
		if !want(name) {
			continue
		}
		q := fmt.Sprintf("pub%d", c)
		if err := b.createQueue(ctx, q); err != nil {
			return err
		}
		sctx, cancel := context.WithTimeout(ctx, o.duration)
		s, err := runWorkers(sctx, c, 1, func(ctx context.Context, _ int) (int, error) {
			return 1, b.publish(ctx, q, body)
		})
		cancel()
		if err := add(name, c, s, err, "raw COPY", rawCopy.rate()); err != nil {
			return err
		}
	}

	for _, c := range o.clients {
		name := "receive+ack, max 10/request"
		if !want(name) {
			continue
		}
		q := fmt.Sprintf("cons%d", c)
		if err := b.createQueue(ctx, q); err != nil {
			return err
		}
		// Prefill: enough for the whole scenario at a generous rate, by batch publish.
		prefill := 100_000
		log.Info("prefilling", "queue", q, "messages", prefill)
		pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		_, err := runWorkers(pctx, 4, 100, func(ctx context.Context, _ int) (int, error) {
			if prefill <= 0 {
				return 0, errExhausted
			}
			prefill -= 100 // racy decrement is fine: an overshoot of a few batches does not matter
			return 100, b.publishBatch(ctx, q, body, 100)
		})
		cancel()
		if err != nil {
			return fmt.Errorf("prefill: %w", err)
		}
		sctx, cancel := context.WithTimeout(ctx, o.duration)
		s, err := runWorkers(sctx, c, 10, func(ctx context.Context, _ int) (int, error) {
			return b.receiveAck(ctx, q, 10)
		})
		cancel()
		if err := add(name, c, s, err, "raw DELETE", rawDel.rate()); err != nil {
			return err
		}
	}

	fmt.Fprintf(w, "\n### %s: %d-byte messages, %s per scenario, GOMAXPROCS=%d, store %s\n\n",
		time.Now().UTC().Format(time.RFC3339), o.size, o.duration, runtime.GOMAXPROCS(0), redact(o.store))
	fmt.Fprintln(w, "| scenario | clients | msgs/s | p50 ms | p99 ms | p99.9 ms | errors | ratio to raw |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---|")
	for _, x := range rows {
		ratio := ""
		if x.baseVal > 0 {
			ratio = fmt.Sprintf("%.2f × %s", x.s.rate()/x.baseVal, x.base)
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %s | %s | %s | %d | %s |\n", x.name, x.clients, x.s.rate(),
			ms(x.s.pct(0.50)), ms(x.s.pct(0.99)), ms(x.s.pct(0.999)), x.s.errs, ratio)
	}
	return nil
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
