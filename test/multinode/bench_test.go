package multinode

import (
	"flag"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/client/device"
)

var (
	benchFlag        = flag.Bool("multinode.bench", false, "run TestThroughput: registrations/s of 1, 2 and 3 nodes on PostgreSQL and 1 on SQLite")
	benchDevices     = flag.Int("multinode.bench.n", 2000, "registrations per configuration (bounded to 1..100000)")
	benchConcurrency = flag.Int("multinode.bench.c", 32, "registrations in flight at once (bounded to 1..1000)")
	benchConfigs     = flag.String("multinode.bench.configs", "sqlite:1,postgres:1,postgres:2,postgres:3", "store:nodes pairs to measure")
)

// TestThroughput measures provisioning throughput of dpsd configurations
// with one load generator: distinct devices of one symmetric-key group
// (static allocation, no hub contacted) register over HTTPS, spread
// round-robin over the nodes, each node's devices sharing keep-alive
// connections. It reports figures and asserts only that every
// registration succeeded; all processes share this machine's cores, which
// the figures must be read with.
func TestThroughput(t *testing.T) {
	if !*benchFlag {
		t.Skip("a benchmark; run with -multinode.bench")
	}
	n, conc := *benchDevices, *benchConcurrency
	if n < 1 || n > 100_000 || conc < 1 || conc > 1000 {
		t.Fatalf("-multinode.bench.n %d / -multinode.bench.c %d out of bounds", n, conc)
	}
	type row struct {
		name   string
		rate   float64
		p50    time.Duration
		p99    time.Duration
		failed int64
		// first and last: the rate of the first and last tenth.
		first, last float64
	}
	var rows []row
	for cfg := range strings.SplitSeq(*benchConfigs, ",") {
		storeName, nodesText, _ := strings.Cut(strings.TrimSpace(cfg), ":")
		var nodes int
		if _, err := fmt.Sscan(nodesText, &nodes); err != nil || (storeName != "sqlite" && storeName != "postgres") || (storeName == "sqlite" && nodes != 1) {
			t.Fatalf("-multinode.bench.configs: bad entry %q (want sqlite:1 or postgres:N)", cfg)
		}
		name := fmt.Sprintf("%s/%d-node", storeName, nodes)
		t.Run(name, func(t *testing.T) {
			c := startCluster(t, clusterOptions{nodes: nodes, sqlite: storeName == "sqlite", logLevel: "warn"})
			key := c.createGroup(t, c.nodes[0], "bench-group")
			// Warm up connections, caches and the database.
			if res := load(t, c, key, "warm-", min(n, 100), conc); res.failed > 0 {
				t.Fatalf("warm-up: %d of %d registrations failed: %s", res.failed, min(n, 100), res.sample)
			}
			res := load(t, c, key, "bench-", n, conc)
			if res.failed > 0 {
				t.Errorf("%d of %d registrations failed, e.g. %s", res.failed, n, res.sample)
			}
			r := row{name: name, rate: float64(n-int(res.failed)) / res.elapsed.Seconds(), p50: res.pct(50), p99: res.pct(99), failed: res.failed}
			r.first, r.last = res.tenths()
			t.Logf("%s: %d registrations, concurrency %d, %v: %.0f registrations/s (first tenth %.0f/s, last tenth %.0f/s), p50 %v, p99 %v",
				name, n, conc, res.elapsed.Round(time.Millisecond), r.rate, r.first, r.last, r.p50, r.p99)
			rows = append(rows, r)
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-18s %14s %12s %12s %10s %10s %7s\n", "configuration", "registrations/s", "first tenth", "last tenth", "p50", "p99", "failed")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-18s %14.0f %12.0f %12.0f %10v %10v %7d\n", r.name, r.rate, r.first, r.last, r.p50.Round(100*time.Microsecond), r.p99.Round(100*time.Microsecond), r.failed)
	}
	fmt.Fprintf(&b, "(%d registrations per configuration, concurrency %d, HTTPS with keep-alive, static allocation)\n", n, conc)
	t.Log(b.String())
}

type loadResult struct {
	elapsed   time.Duration
	latencies []time.Duration
	// finished holds when each successful registration finished, since
	// the start, in order: the rate of the first and the last tenth shows
	// whether the cost per registration grows with the records stored.
	finished []time.Duration
	failed   int64
	sample   string
}

// pct returns the p-th percentile of the successful registrations' times.
func (r *loadResult) pct(p int) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, len(r.latencies)*p/100)]
}

// tenths returns the registrations per second of the first and of the
// last tenth of the successful registrations.
func (r *loadResult) tenths() (first, last float64) {
	n := len(r.finished)
	k := n / 10
	if k == 0 {
		return 0, 0
	}
	first = float64(k) / r.finished[k-1].Seconds()
	last = float64(k) / (r.finished[n-1] - r.finished[n-1-k]).Seconds()
	return first, last
}

// load registers n distinct devices (prefix + sequence number), conc at a
// time, device i on node i mod len(nodes). Each device tries once.
func load(t *testing.T, c *cluster, groupKey, prefix string, n, conc int) *loadResult {
	t.Helper()
	var next atomic.Int64
	var failed atomic.Int64
	var mu sync.Mutex
	res := &loadResult{latencies: make([]time.Duration, 0, n)}
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				node := c.nodes[i%len(c.nodes)]
				t0 := time.Now()
				_, err := device.Register(t.Context(), c.deviceConfig(node, groupKey, fmt.Sprintf("%s%06d", prefix, i)))
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					failed.Add(1)
					if res.sample == "" {
						res.sample = err.Error()
					}
				} else {
					res.latencies = append(res.latencies, d)
					res.finished = append(res.finished, time.Since(start))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.failed = failed.Load()
	slices.Sort(res.latencies)
	return res
}
