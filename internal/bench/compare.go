package bench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"
)

// Comparison is the outcome of alternating rounds against a target and
// against the floor (package floor), with the same load.
type Comparison struct {
	Target, Floor []*Result // one per round, in order
	// FloorCPU is the CPU time (user and system) the floor's process used
	// over all its rounds, when the caller knows it.
	FloorCPU time.Duration
}

// Compare runs rounds rounds, each a run against target then one against
// floor, which differ only in where they dial. Alternating spreads whatever
// else the machine does over both alike. Each run gets registration ids of
// its own.
func Compare(ctx context.Context, target, floor Options, rounds int) (*Comparison, error) {
	if rounds < 1 || rounds > 100 {
		return nil, fmt.Errorf("bench: rounds must be 1..100, not %d", rounds)
	}
	c := &Comparison{}
	for i := range rounds {
		for _, side := range []struct {
			name string
			o    Options
			out  *[]*Result
		}{{"dpsd", target, &c.Target}, {"floor", floor, &c.Floor}} {
			o := side.o
			o.IDPrefix += side.name + "-r" + strconv.Itoa(i+1) + "-"
			if o.Progress != nil {
				fmt.Fprintf(o.Progress, "round %d/%d: %s\n", i+1, rounds, side.name)
			}
			res, err := Run(ctx, o)
			if err != nil {
				return nil, fmt.Errorf("round %d, %s: %w", i+1, side.name, err)
			}
			*side.out = append(*side.out, res)
		}
	}
	return c, nil
}

// Ratio is the median round's throughput of the target over the floor's.
func (c *Comparison) Ratio() float64 {
	f := medianRate(c.Floor)
	if f == 0 {
		return 0
	}
	return medianRate(c.Target) / f
}

// Failed counts failed registrations in every round.
func (c *Comparison) Failed() int {
	n := 0
	for _, r := range append(slices.Clone(c.Target), c.Floor...) {
		n += r.Failed
	}
	return n
}

// FloorCPUPerRegistration is FloorCPU spread over the floor's
// registrations, or 0 when either is unknown.
func (c *Comparison) FloorCPUPerRegistration() time.Duration {
	n := 0
	for _, r := range c.Floor {
		n += r.Succeeded + r.Failed
	}
	if n == 0 || c.FloorCPU <= 0 {
		return 0
	}
	return c.FloorCPU / time.Duration(n)
}

// Median returns the round of side whose throughput is the median.
func Median(side []*Result) *Result {
	if len(side) == 0 {
		return nil
	}
	s := slices.Clone(side)
	slices.SortFunc(s, func(a, b *Result) int {
		switch {
		case a.Rate() < b.Rate():
			return -1
		case a.Rate() > b.Rate():
			return 1
		}
		return 0
	})
	return s[len(s)/2]
}

func medianRate(side []*Result) float64 {
	if r := Median(side); r != nil {
		return r.Rate()
	}
	return 0
}

// Print writes each round and the medians side by side.
func (c *Comparison) Print(w io.Writer) {
	fmt.Fprintf(w, "%-7s %-6s %12s %10s %10s %10s %8s\n", "round", "side", "reg/s", "p50", "p99", "max", "failed")
	for i := range c.Target {
		for _, r := range []struct {
			side string
			res  *Result
		}{{"dpsd", c.Target[i]}, {"floor", c.Floor[i]}} {
			fmt.Fprintf(w, "%-7d %-6s %12.1f %10v %10v %10v %8d\n", i+1, r.side, r.res.Rate(),
				ms(r.res.Latency.P50), ms(r.res.Latency.P99), ms(r.res.Latency.Max), r.res.Failed)
		}
	}
	t, f := Median(c.Target), Median(c.Floor)
	fmt.Fprintf(w, "median  dpsd   %12.1f %10v %10v\n", t.Rate(), ms(t.Latency.P50), ms(t.Latency.P99))
	fmt.Fprintf(w, "median  floor  %12.1f %10v %10v\n", f.Rate(), ms(f.Latency.P50), ms(f.Latency.P99))
	p99 := 0.0
	if f.Latency.P99 > 0 {
		p99 = float64(t.Latency.P99) / float64(f.Latency.P99)
	}
	fmt.Fprintf(w, "dpsd / floor: %.2f of the throughput, %.2f× the p99 (%s, %d rounds)\n", c.Ratio(), p99, t.Transport, len(c.Target))
	if cpu := c.FloorCPUPerRegistration(); cpu > 0 {
		fmt.Fprintf(w, "floor process CPU: %d µs per registration\n", cpu.Microseconds())
	}
}
