package main

import (
	"flag"
	"fmt"
	"strings"
	"time"
)

// moreOptions are the knobs of the scenarios beyond the spine's publish and receive.
type moreOptions struct {
	runs            int
	rawClients      string
	floorClients    string
	batchClients    string
	recvBatches     string
	consumers       string
	steadyRate      float64
	steadySenders   int
	steadyConsumers int
	fanoutClients   int
	sqliteClients   int
	prefillMax      int
	rabbit          string
	rabbitPubs      int
	rabbitWindow    int
	rabbitConsumers int
	rabbitPrefetch  int

	// Parsed lists.
	rawC, floorC, batchC, recvB, consC []int
}

// registerMoreFlags registers the flags of moreOptions on the default flag set.
func registerMoreFlags(m *moreOptions) {
	flag.IntVar(&m.runs, "runs", 1, "repeat every scenario this many times and report the median of each")
	flag.StringVar(&m.rawClients, "raw-clients", "1,16", "connection counts of the raw single-row INSERT baseline")
	flag.StringVar(&m.floorClients, "floor-clients", "64", "client counts of the bare net/http server scenario")
	flag.StringVar(&m.batchClients, "batch-clients", "16", "client counts of the batch publish (100 per request)")
	flag.StringVar(&m.recvBatches, "batches", "1,10,100", "receive+ack batch sizes (max per receive)")
	flag.StringVar(&m.consumers, "consumers", "1,16,64", "receive+ack consumer counts")
	flag.Float64Var(&m.steadyRate, "steady-rate", 0, "offered publish rate of the steady scenario in msgs/s (0: half of the best measured 1-msg publish rate)")
	flag.IntVar(&m.steadySenders, "steady-senders", 256, "concurrent senders available to the open-loop steady publisher")
	flag.IntVar(&m.steadyConsumers, "steady-consumers", 4, "consumers (max 100 per receive) of the steady scenario")
	flag.IntVar(&m.fanoutClients, "fanout-clients", 16, "publishers of the fan-out scenario (1 msg/request to an address with 10 queues)")
	flag.IntVar(&m.sqliteClients, "sqlite-clients", 4, "publishers and consumers (each) of the embedded SQLite scenario")
	flag.IntVar(&m.prefillMax, "prefill-max", 300_000, "most messages prefilled for one receive+ack scenario")
	flag.StringVar(&m.rabbit, "rabbitmq", envOr("TABLEMQ_BENCH_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/"), "RabbitMQ URL for the comparison ('' or 'off' skips it)")
	flag.IntVar(&m.rabbitPubs, "rabbitmq-publishers", 16, "RabbitMQ publishers (one connection and channel each)")
	flag.IntVar(&m.rabbitWindow, "rabbitmq-window", 256, "RabbitMQ unconfirmed messages per publisher")
	flag.IntVar(&m.rabbitConsumers, "rabbitmq-consumers", 16, "RabbitMQ consumers (one connection and channel each)")
	flag.IntVar(&m.rabbitPrefetch, "rabbitmq-prefetch", 256, "RabbitMQ consumer prefetch (basic.qos)")
}

// parse checks the values and parses the lists.
func (m *moreOptions) parse() error {
	if m.runs < 1 {
		return fmt.Errorf("-runs: %d is not a positive number", m.runs)
	}
	var err error
	for _, l := range []struct {
		name string
		s    string
		dst  *[]int
	}{{"-raw-clients", m.rawClients, &m.rawC}, {"-floor-clients", m.floorClients, &m.floorC}, {"-batch-clients", m.batchClients, &m.batchC},
		{"-batches", m.recvBatches, &m.recvB}, {"-consumers", m.consumers, &m.consC}} {
		if *l.dst, err = intList(l.name, l.s); err != nil {
			return err
		}
	}
	for _, b := range m.recvB {
		if b > 1000 {
			return fmt.Errorf("-batches: %d is above the receive limit of 1000", b)
		}
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"-steady-senders", m.steadySenders}, {"-steady-consumers", m.steadyConsumers}, {"-fanout-clients", m.fanoutClients},
		{"-sqlite-clients", m.sqliteClients}, {"-rabbitmq-publishers", m.rabbitPubs}, {"-rabbitmq-window", m.rabbitWindow},
		{"-rabbitmq-consumers", m.rabbitConsumers}, {"-rabbitmq-prefetch", m.rabbitPrefetch}, {"-prefill-max", m.prefillMax}} {
		if v.n < 1 {
			return fmt.Errorf("%s: %d is not a positive number", v.name, v.n)
		}
	}
	return nil
}

func intList(name, s string) ([]int, error) {
	var out []int
	for _, c := range strings.Split(s, ",") {
		if strings.TrimSpace(c) == "" {
			continue
		}
		var n int
		if _, err := fmt.Sscanf(strings.TrimSpace(c), "%d", &n); err != nil || n < 1 {
			return nil, fmt.Errorf("%s: %q is not a positive number", name, c)
		}
		out = append(out, n)
	}
	return out, nil
}

// seconds formats a duration in seconds with one decimal.
func seconds(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }
