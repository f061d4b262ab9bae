package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// agg is one scenario over every run: the median of each figure.
type agg struct {
	id, name, base, note string
	clients              int
	runs                 int // runs that measured it
	rate                 float64
	p50, p99, p999       time.Duration
	hasLat               bool
	errs                 int
	// serverUS, dbUS and loadUS are the medians of the CPU microseconds per message
	// of the server process, of the database and of the load generator; 0: not measured.
	serverUS, dbUS, loadUS float64
}

// aggregate takes the median of every scenario over the runs, in first-seen order.
func aggregate(runs [][]result) []*agg {
	var order []string
	by := map[string][]result{}
	for _, run := range runs {
		for _, x := range run {
			if _, ok := by[x.id]; !ok {
				order = append(order, x.id)
			}
			by[x.id] = append(by[x.id], x)
		}
	}
	var out []*agg
	for _, id := range order {
		xs := by[id]
		a := &agg{id: id, name: xs[0].name, clients: xs[0].clients, base: xs[0].base, note: xs[0].note}
		var ok []result
		for _, x := range xs {
			if x.s != nil {
				ok = append(ok, x)
				a.errs += x.s.errs
			}
		}
		a.runs = len(ok)
		if len(ok) > 0 {
			sort.Slice(ok, func(i, j int) bool { return ok[i].s.rate() < ok[j].s.rate() })
			mid := ok[len(ok)/2] // the median run (the upper one of two)
			a.name, a.note = mid.name, mid.note
			a.rate = medianF(ok, func(x result) float64 { return x.s.rate() })
			a.hasLat = len(mid.s.lat) > 0
			a.p50 = medianD(ok, 0.50)
			a.p99 = medianD(ok, 0.99)
			a.p999 = medianD(ok, 0.999)
			a.serverUS = medianF(ok, func(x result) float64 { return perMsgUS(x.s.serverCPU, x.s.msgs) })
			a.dbUS = medianF(ok, func(x result) float64 { return perMsgUS(x.s.dbCPU, x.s.msgs) })
			a.loadUS = medianF(ok, func(x result) float64 { return perMsgUS(x.s.loadCPU, x.s.msgs) })
			if len(ok) < len(xs) {
				a.note += fmt.Sprintf(" (measured in %d of %d runs)", len(ok), len(xs))
			}
		}
		out = append(out, a)
	}
	return out
}

// perMsgUS is d in microseconds per message, 0 without messages.
func perMsgUS(d time.Duration, msgs int) float64 {
	if msgs <= 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(msgs)
}

func medianF(xs []result, f func(result) float64) float64 {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	sort.Float64s(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

func medianD(xs []result, p float64) time.Duration {
	return time.Duration(medianF(xs, func(x result) float64 { return float64(x.s.pct(p)) }))
}

func find(rows []*agg, id string) *agg {
	for _, a := range rows {
		if a.id == id && a.runs > 0 {
			return a
		}
	}
	return nil
}

var baseLabel = map[string]string{"raw-copy": "raw COPY", "raw-delete": "raw DELETE"}

func printTable(w io.Writer, rows []*agg) {
	fmt.Fprintln(w, "| scenario | clients | msgs/s | p50 ms | p99 ms | p99.9 ms | errors | ratio to raw | server CPU µs/msg | db CPU µs/msg | load CPU µs/msg | notes |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|")
	for _, a := range rows {
		if a.runs == 0 {
			fmt.Fprintf(w, "| %s | %d | | | | | | | | | | %s |\n", a.name, a.clients, a.note)
			continue
		}
		ratio := ""
		if b := find(rows, a.base); b != nil && b.rate > 0 {
			ratio = fmt.Sprintf("%.2f × %s", a.rate/b.rate, baseLabel[a.base])
		}
		p50, p99, p999 := "", "", ""
		if a.hasLat {
			p50, p99, p999 = ms(a.p50), ms(a.p99), ms(a.p999)
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %s | %s | %s | %d | %s | %s | %s | %s | %s |\n", a.name, a.clients, a.rate,
			p50, p99, p999, a.errs, ratio, us(a.serverUS), us(a.dbUS), us(a.loadUS), a.note)
	}
}

// us renders CPU microseconds per message, "" when not measured.
func us(v float64) string {
	if v <= 0 {
		return ""
	}
	if v < 10 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// bestOf returns the fastest row whose id starts with prefix.
func bestOf(rows []*agg, prefix string) *agg {
	var best *agg
	for _, a := range rows {
		if a.runs > 0 && strings.HasPrefix(a.id, prefix) && (best == nil || a.rate > best.rate) {
			best = a
		}
	}
	return best
}

func rowLabel(a *agg) string {
	if strings.HasPrefix(a.id, "recv/") {
		return fmt.Sprintf("%s, %d consumers", a.name, a.clients)
	}
	return fmt.Sprintf("%s, %d clients", a.name, a.clients)
}

// printGoals prints the tablemq / RabbitMQ comparison and the goals of the
// performance issue with their measured values.
func printGoals(w io.Writer, rows []*agg) {
	batch := bestOf(rows, "batch/")
	pub64, pub16, pub256 := find(rows, "pub/64"), find(rows, "pub/16"), find(rows, "pub/256")
	bestPub := bestOf(rows, "pub/")
	recv := find(rows, "recv/100/16")
	rqPub, rqCons := find(rows, "rmq-quorum-pub"), find(rows, "rmq-quorum-cons")
	rcPub, rcCons := find(rows, "rmq-classic-pub"), find(rows, "rmq-classic-cons")

	fmt.Fprintln(w, "| tablemq | msgs/s | RabbitMQ classic msgs/s | tablemq / classic | RabbitMQ quorum msgs/s | tablemq / quorum |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|")
	cmp := func(t *agg, label string, c, q *agg) {
		if t == nil {
			fmt.Fprintf(w, "| %s | not measured | | | | |\n", label)
			return
		}
		cells := func(r *agg) (string, string) {
			if r == nil || r.rate == 0 {
				return "not measured", ""
			}
			return fmt.Sprintf("%.0f", r.rate), fmt.Sprintf("%.2f ×", t.rate/r.rate)
		}
		cr, cx := cells(c)
		qr, qx := cells(q)
		fmt.Fprintf(w, "| %s | %.0f | %s | %s | %s | %s |\n", rowLabel(t), t.rate, cr, cx, qr, qx)
	}
	cmp(batch, "publish, batch of 100/request", rcPub, rqPub)
	cmp(pub64, "publish, 1 msg/request, 64 clients", rcPub, rqPub)
	cmp(recv, "receive+ack, max 100/request, 16 consumers", rcCons, rqCons)
	fmt.Fprintln(w)

	fmt.Fprintln(w, "| goal | measured | target | result |")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	atLeast := func(goal string, measured, target float64, unit string, ok bool, why string) {
		if !ok {
			fmt.Fprintf(w, "| %s | | %s | not measured%s |\n", goal, fmtVal(target, unit), why)
			return
		}
		fmt.Fprintf(w, "| %s | %s | ≥ %s | %s |\n", goal, fmtVal(measured, unit), fmtVal(target, unit), verdict(measured, target, unit, true))
	}
	ratio := func(a, b *agg) (float64, bool) {
		if a == nil || b == nil || b.rate == 0 {
			return 0, false
		}
		return a.rate / b.rate, true
	}
	noRabbit := ": RabbitMQ or the tablemq row missing"
	v, ok := ratio(batch, find(rows, "raw-copy"))
	atLeast("publish, batches of 100 / raw COPY", v, 0.5, "×", ok, "")
	v, ok = ratio(batch, rqPub)
	atLeast("publish, batches of 100 / RabbitMQ quorum confirms", v, 2, "×", ok, noRabbit)
	v, ok = ratio(pub64, rqPub)
	atLeast("publish, 64 clients, 1 msg/request / RabbitMQ quorum confirms", v, 1, "×", ok, noRabbit)
	if pub16 != nil {
		atLeast("publish, 16 clients, 1 msg/request", pub16.rate, 22000, "msgs/s", true, "")
	} else {
		atLeast("publish, 16 clients, 1 msg/request", 0, 22000, "msgs/s", false, "")
	}
	v, ok = ratio(recv, rqCons)
	atLeast("receive+ack, batches of 100, 16 consumers / RabbitMQ quorum consume", v, 1.5, "×", ok, noRabbit)
	if st := find(rows, "steady-pub"); st != nil && st.hasLat {
		res := verdict(float64(st.p99)/1e6, 10, "ms", false)
		fmt.Fprintf(w, "| publish p99, %s | %s ms | ≤ 10 ms | %s |\n", st.name, ms(st.p99), res)
	} else {
		fmt.Fprintln(w, "| publish p99 at half of the max rate | | ≤ 10 ms | not measured |")
	}
	if sq := find(rows, "sqlite"); sq != nil {
		atLeast("embedded SQLite, batched publish+receive+ack", sq.rate, 25000, "msgs/s", true, "")
	} else {
		atLeast("embedded SQLite, batched publish+receive+ack", 0, 25000, "msgs/s", false, "")
	}
	v, ok = ratio(pub256, bestPub)
	goal := "no anti-scaling: 256 clients / best client count"
	if ok {
		goal += fmt.Sprintf(" (%d)", bestPub.clients)
	}
	atLeast(goal, v, 0.9, "×", ok, "")
}

func fmtVal(v float64, unit string) string {
	switch unit {
	case "×":
		return fmt.Sprintf("%.2f ×", v)
	case "ms", "MB":
		return fmt.Sprintf("%.2f %s", v, unit)
	case "%":
		return fmt.Sprintf("%.0f %%", v)
	}
	return fmt.Sprintf("%.0f %s", v, unit)
}

// verdict is the result cell of a goal: "met", or by how much it was missed. atLeast
// goals want measured ≥ target, the others measured ≤ target.
func verdict(measured, target float64, unit string, atLeast bool) string {
	switch {
	case atLeast && measured < target:
		return fmt.Sprintf("missed: %.0f %% of the target, short by %s", 100*measured/target, fmtVal(target-measured, unit))
	case !atLeast && measured > target:
		return fmt.Sprintf("missed: %.1f × the limit, over by %s", measured/target, fmtVal(measured-target, unit))
	}
	return "met"
}
