package hubhealth

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/linkedhub"
)

// Defaults of Options.
const (
	DefaultInterval = 15 * time.Second
	DefaultTimeout  = 5 * time.Second
	DefaultFailures = 2
	// maxParallel bounds the checks in flight in one round; MaxHubs is 50.
	maxParallel = 8
	// maxErrorBytes bounds the error text kept and shown for a hub.
	maxErrorBytes = 300
)

// HubLister lists the linked hubs; *linkedhub.Registry is one.
type HubLister interface {
	List(ctx context.Context) ([]*linkedhub.Hub, error)
}

// Options configure a Checker.
type Options struct {
	// Hubs lists the hubs to check, read at every round. Required.
	Hubs HubLister
	// Probe checks one hub by host name and returns nil when it answered
	// (hub.Registrar.Probe). Required.
	Probe func(ctx context.Context, host string) error
	// Interval between rounds; zero means DefaultInterval.
	Interval time.Duration
	// Timeout bounds one check; zero means DefaultTimeout.
	Timeout time.Duration
	// Failures is how many checks in a row must fail before a hub is
	// unhealthy; zero means DefaultFailures.
	Failures int
	// OnChange, when set, is called after a hub's state changes, outside
	// any lock.
	OnChange func(host string, h admin.LinkedHubHealth)
	Logger   *slog.Logger
	Now      func() time.Time
}

// Checker keeps the health of the linked hubs. It is safe for concurrent
// use; a nil *Checker knows nothing (every hub unknown).
type Checker struct {
	opt Options
	log *slog.Logger

	mu    sync.Mutex
	hubs  map[string]*admin.LinkedHubHealth // by lower-cased host name
	names map[string]string                 // lower-cased → as linked
	round chan struct{}                     // closed and replaced after every round
}

// New returns a checker; Run starts its rounds.
func New(opt Options) (*Checker, error) {
	if opt.Hubs == nil || opt.Probe == nil {
		return nil, errors.New("hubhealth: Options.Hubs and Options.Probe are required")
	}
	if opt.Interval <= 0 {
		opt.Interval = DefaultInterval
	}
	if opt.Timeout <= 0 {
		opt.Timeout = DefaultTimeout
	}
	if opt.Failures <= 0 {
		opt.Failures = DefaultFailures
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	return &Checker{
		opt: opt, log: opt.Logger,
		hubs: map[string]*admin.LinkedHubHealth{}, names: map[string]string{},
		round: make(chan struct{}),
	}, nil
}

// Run checks every linked hub at once, then every interval, until ctx
// ends.
func (c *Checker) Run(ctx context.Context) {
	t := time.NewTicker(c.opt.Interval)
	defer t.Stop()
	for {
		c.CheckAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// CheckAll runs one round: every linked hub is checked, in parallel
// (bounded), and hubs no longer linked are forgotten.
func (c *Checker) CheckAll(ctx context.Context) {
	hubs, err := c.opt.Hubs.List(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("hub health: cannot list the linked hubs; keeping what was known", "err", err)
		}
		return
	}
	linked := make(map[string]bool, len(hubs))
	sem := make(chan struct{}, maxParallel)
	var wg sync.WaitGroup
	for _, h := range hubs {
		linked[strings.ToLower(h.Name)] = true
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.check(ctx, h.Name)
		}()
	}
	wg.Wait()
	c.mu.Lock()
	for k := range c.hubs {
		if !linked[k] {
			delete(c.hubs, k)
			delete(c.names, k)
		}
	}
	close(c.round)
	c.round = make(chan struct{})
	c.mu.Unlock()
}

// Rounds returns a channel closed when the round under way (or the next
// one) ends, for tests and callers that want fresh results.
func (c *Checker) Rounds() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.round
}

// check probes one hub and records the result.
func (c *Checker) check(ctx context.Context, host string) {
	pctx, cancel := context.WithTimeout(ctx, c.opt.Timeout)
	start := c.opt.Now()
	err := c.opt.Probe(pctx, host)
	cancel()
	if ctx.Err() != nil {
		return // shutting down: a cancelled probe says nothing of the hub
	}
	now := c.opt.Now()
	key := strings.ToLower(host)

	c.mu.Lock()
	h := c.hubs[key]
	if h == nil {
		h = &admin.LinkedHubHealth{State: admin.HubHealthUnknown, Since: now}
		c.hubs[key] = h
	}
	c.names[key] = host
	prev := h.State
	h.LastCheck, h.LatencyMs = now, now.Sub(start).Milliseconds()
	if err == nil {
		h.ConsecutiveFailures, h.LastError = 0, ""
		if h.State != admin.HubHealthHealthy {
			h.State, h.Since = admin.HubHealthHealthy, now
		}
	} else {
		h.ConsecutiveFailures++
		h.LastError = errorText(err)
		if h.State != admin.HubHealthUnhealthy && h.ConsecutiveFailures >= c.opt.Failures {
			h.State, h.Since = admin.HubHealthUnhealthy, now
		}
	}
	snap := *h
	c.mu.Unlock()

	if snap.State == prev {
		return
	}
	switch snap.State {
	case admin.HubHealthUnhealthy:
		c.log.Warn("linked hub unhealthy: allocation skips it while other candidates are healthy",
			"hub", host, "failures", snap.ConsecutiveFailures, "err", snap.LastError)
	case admin.HubHealthHealthy:
		c.log.Info("linked hub healthy", "hub", host, "was", prev, "latencyMs", snap.LatencyMs)
	}
	if c.opt.OnChange != nil {
		c.opt.OnChange(host, snap)
	}
}

// Health returns what is known of the hub with host name host; a hub not
// checked yet is HubHealthUnknown.
func (c *Checker) Health(host string) admin.LinkedHubHealth {
	if c == nil {
		return admin.LinkedHubHealth{State: admin.HubHealthUnknown}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if h := c.hubs[strings.ToLower(host)]; h != nil {
		return *h
	}
	return admin.LinkedHubHealth{State: admin.HubHealthUnknown}
}

// All returns the health of every hub checked, by host name as linked.
func (c *Checker) All() map[string]admin.LinkedHubHealth {
	out := map[string]admin.LinkedHubHealth{}
	if c == nil {
		return out
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, h := range c.hubs {
		out[c.names[k]] = *h
	}
	return out
}

// errorText shortens an error for display: the hub client's errors can
// carry a whole error page.
func errorText(err error) string {
	s := err.Error()
	if errors.Is(err, context.DeadlineExceeded) {
		s = "no answer within the check timeout: " + s
	}
	if len(s) > maxErrorBytes {
		s = strings.ToValidUTF8(s[:maxErrorBytes], "") + "…"
	}
	return s
}
