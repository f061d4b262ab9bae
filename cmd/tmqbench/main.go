// Command tmqbench measures a tablemq broker over HTTP next to the raw database it runs
// on, in the same run: it starts `tablemq serve` as its own process on a fresh set of
// tables, drives it with concurrent HTTP clients, and measures plain batched inserts and
// deletes of the same payload through the same driver for the baseline.
//
//	go run ./cmd/tmqbench --store postgres://postgres@127.0.0.1:5432/test --duration 10s
//
// Scenarios (filter with --only): a bare net/http server answering one-message
// publishes (floor.go, the HTTP part of any request's cost); confirmed publish with 1,
// 16, 64 and 256 clients, one message per request; batch publish of 100 per request; receive+ack with batches of
// 1, 10 and 100 and 1, 16 and 64 consumers; a steady open-loop publish+consume at half
// of the best publish rate (latency); fan-out to 10 queues; embedded SQLite batched
// publish+receive+ack; and RabbitMQ (classic and quorum queues, publisher confirms and
// manual acks) in the same run when it is reachable. --runs N repeats everything and
// reports medians.
//
// The output is a Markdown table (also written to --out when set) with msgs/s, latency
// percentiles and the ratio of each scenario to its raw baseline, then the
// tablemq/RabbitMQ ratios and the goals of the performance issue, met or missed.
//
// With --failover it measures failover instead (any store): kill -9 of the live until
// the backup's /readyz 200 and first successful publish, and a graceful handover
// (SIGTERM with --failover-on-shutdown true) until the backup's first successful
// publish, --rounds times each, printing median and worst:
//
//	go run ./cmd/tmqbench --failover --store mysql://root:@tcp(127.0.0.1:3306)/test \
//	    --lock-renew-period 200ms --lock-expiration 1s
//
// With --memory it measures bounded memory and takeover with a big backlog (memory.go):
// the broker's RSS with 1,000,000 messages in one queue against the same broker with
// the queue empty, kill -9 → first delivery with that backlog against a 1-message
// queue, the RSS growth while one 1 GiB message is uploaded and downloaded, and the
// consume rate of the backlog against a small queue's, with the goals of issue 4:
//
//	go run ./cmd/tmqbench --memory --binary bin/tablemq --memory-messages 1000000
//
// --only selects its parts too: "rss", "takeover", "consume" or "large".
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == floorServeFlag { // the floor scenario's server (floor.go)
		if err := serveFloor(os.Args[2]); err != nil {
			fmt.Fprintf(os.Stderr, "tmqbench: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "tmqbench: %v\n", err)
		os.Exit(1)
	}
}

type options struct {
	store    string
	binary   string
	duration time.Duration
	size     int
	clients  []int
	out      string
	keep     bool
	only     string
	profiles string // directory of per-scenario broker CPU profiles, or ""
	selfProf string // file of the load generator's own CPU profile, or ""

	failover bool      // measure failover instead of throughput
	rounds   int       // rounds of each failover measurement
	ha       haOptions // lock settings passed to tablemq (zero: its defaults)

	more moreOptions   // the scenarios of the performance issue (flags.go)
	mem  memoryOptions // the -memory measurements (memory.go)
}

func run() error {
	var o options
	var clients string
	flag.StringVar(&o.store, "store", envOr("TABLEMQ_BENCH_STORE", "postgres://postgres@127.0.0.1:5432/test"), "store URL (postgres only for the raw baseline)")
	flag.StringVar(&o.binary, "binary", "bin/tablemq", "tablemq binary to start")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "duration of each scenario")
	flag.IntVar(&o.size, "size", 1024, "message payload size in bytes")
	flag.StringVar(&clients, "clients", "1,16,64,256", "comma-separated client counts of the 1-msg publish")
	flag.StringVar(&o.out, "out", "", "also append the Markdown result to this file")
	flag.BoolVar(&o.keep, "keep", false, "keep the benchmark tables afterwards")
	flag.StringVar(&o.only, "only", "", "run only scenarios whose name contains this")
	flag.StringVar(&o.profiles, "profile-dir", "", "save a CPU profile of the broker during each broker scenario to this directory (go tool pprof)")
	flag.StringVar(&o.selfProf, "cpuprofile", "", "write a CPU profile of the load generator itself (this process) to this file")
	flag.BoolVar(&o.failover, "failover", false, "measure kill -9 failover and graceful handover times instead of throughput")
	flag.IntVar(&o.rounds, "rounds", 20, "with --failover: rounds of each measurement")
	flag.DurationVar(&o.ha.renew, "lock-renew-period", 0, "with --failover or --memory: tablemq --lock-renew-period (0: its default; 200ms with --memory)")
	flag.DurationVar(&o.ha.expiration, "lock-expiration", 0, "with --failover or --memory: tablemq --lock-expiration (0: its default; 1s with --memory)")
	flag.DurationVar(&o.ha.networkTimeout, "network-timeout", 0, "with --failover or --memory: tablemq --network-timeout (0: its default; 500ms with --memory)")
	flag.DurationVar(&o.ha.poll, "backup-poll-interval", 0, "with --failover or --memory: tablemq --backup-poll-interval (0: its default; 100ms with --memory)")
	registerMoreFlags(&o.more)
	registerMemoryFlags(&o.mem)
	flag.Parse()
	for _, c := range strings.Split(clients, ",") {
		var n int
		if _, err := fmt.Sscanf(strings.TrimSpace(c), "%d", &n); err != nil || n < 1 {
			return fmt.Errorf("--clients: %q is not a positive number", c)
		}
		o.clients = append(o.clients, n)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	if o.selfProf != "" {
		f, err := os.Create(o.selfProf)
		if err != nil {
			return fmt.Errorf("open --cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	var w io.Writer = os.Stdout
	if o.out != "" {
		f, err := os.OpenFile(o.out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("open --out: %w", err)
		}
		defer f.Close()
		w = io.MultiWriter(os.Stdout, f)
	}
	if o.failover && o.mem.on {
		return fmt.Errorf("--failover and --memory: choose one")
	}
	if o.failover {
		return failover(ctx, log, o, w)
	}
	if o.mem.on {
		return memoryMode(ctx, log, o, w)
	}
	return bench(ctx, log, o, w)
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}
