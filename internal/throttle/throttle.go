// Package throttle limits how often one device, and one source address,
// may ask the engine for work: every transport calls the engine through
// it, so a device that re-registers or looks up its status in a tight
// loop gets 429 with a Retry-After, in Azure's error shape, before it
// costs a store write or a decode of its group. The limits sit in front of
// the engine; its own limit on polls of an operation still assigning
// stays where it is.
package throttle

import (
	"context"
	"math"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
)

// Engine is what a Provisioner wraps: the engine's device-facing methods.
type Engine interface {
	Register(ctx context.Context, req provision.Request) (provision.Result, error)
	OperationStatus(ctx context.Context, req provision.Request, operationID string) (provision.Result, error)
	Status(ctx context.Context, req provision.Request) (*dps.DeviceRegistrationState, error)
}

// Rate is a token bucket: Burst requests at once, refilled at PerSecond.
// A PerSecond of zero or less means no limit.
type Rate struct {
	PerSecond float64
	Burst     int
}

// Defaults, each far above what an SDK does: a device registers once and
// polls every few seconds; an SDK retrying after errors registers a few
// times a minute.
var (
	DefaultRegister  = Rate{PerSecond: 1, Burst: 20}
	DefaultLookup    = Rate{PerSecond: 10, Burst: 100}
	DefaultPerSource = Rate{PerSecond: 2000, Burst: 4000}
)

// Options set the limits; a zero Rate means its default.
type Options struct {
	// Register limits registers per registration id (and ID scope).
	Register Rate
	// Lookup limits status lookups per registration id: operation status
	// polls and registration status queries together.
	Lookup Rate
	// PerSource limits every device request from one source address.
	PerSource Rate
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Provisioner is an Engine that answers 429 to requests over a limit and
// passes the others on.
type Provisioner struct {
	next                     Engine
	register, lookup, source *limiter
}

// New returns next behind the limits of opts.
func New(next Engine, opts Options) *Provisioner {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	orDefault := func(r, def Rate) Rate {
		if r == (Rate{}) {
			return def
		}
		return r
	}
	return &Provisioner{
		next:     next,
		register: newLimiter(orDefault(opts.Register, DefaultRegister), now),
		lookup:   newLimiter(orDefault(opts.Lookup, DefaultLookup), now),
		source:   newLimiter(orDefault(opts.PerSource, DefaultPerSource), now),
	}
}

// Register passes req on unless its device or source is over its limit.
func (p *Provisioner) Register(ctx context.Context, req provision.Request) (provision.Result, error) {
	if err := p.allow(p.register, req); err != nil {
		return provision.Result{}, err
	}
	return p.next.Register(ctx, req)
}

// OperationStatus passes req on unless its device or source is over its
// limit.
func (p *Provisioner) OperationStatus(ctx context.Context, req provision.Request, operationID string) (provision.Result, error) {
	if err := p.allow(p.lookup, req); err != nil {
		return provision.Result{}, err
	}
	return p.next.OperationStatus(ctx, req, operationID)
}

// Status passes req on unless its device or source is over its limit.
func (p *Provisioner) Status(ctx context.Context, req provision.Request) (*dps.DeviceRegistrationState, error) {
	if err := p.allow(p.lookup, req); err != nil {
		return nil, err
	}
	return p.next.Status(ctx, req)
}

func (p *Provisioner) allow(perDevice *limiter, req provision.Request) error {
	// The source first: a client cycling through registration ids is
	// stopped without filling the per-device map.
	if wait, ok := p.source.take(source(req.RemoteAddr)); !ok {
		return throttled("Too many requests from this address.", wait)
	}
	key := strings.ToLower(req.IDScope + "/" + req.RegistrationID)
	if wait, ok := perDevice.take(key); !ok {
		return throttled("Too many requests for this registration.", wait)
	}
	return nil
}

func throttled(msg string, wait time.Duration) error {
	e := dps.Errorf(dps.CodeThrottled, "%s", msg)
	// Retry-After is in whole seconds; round up so a device that obeys it
	// finds a token.
	e.RetryAfter = time.Duration(math.Ceil(max(wait.Seconds(), 1))) * time.Second
	return e
}

func source(remoteAddr string) string {
	if host, _, err := net.SplitHostPort(remoteAddr); err == nil {
		return host
	}
	return remoteAddr
}

// limiter is a token bucket per key.
type limiter struct {
	rate  Rate
	now   func() time.Time
	mu    sync.Mutex
	b     map[string]*bucket
	swept time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(r Rate, now func() time.Time) *limiter {
	return &limiter{rate: r, now: now, b: make(map[string]*bucket)}
}

// take spends a token of key's bucket; when there is none it returns the
// wait until there will be.
func (l *limiter) take(key string) (time.Duration, bool) {
	if l.rate.PerSecond <= 0 {
		return 0, true
	}
	burst := float64(max(l.rate.Burst, 1))
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		// Full buckets say nothing; dropping them keeps the map as small
		// as the set of keys busy right now.
		for k, b := range l.b {
			if b.tokens+now.Sub(b.last).Seconds()*l.rate.PerSecond >= burst {
				delete(l.b, k)
			}
		}
		l.swept = now
	}
	b, ok := l.b[key]
	if !ok {
		b = &bucket{tokens: burst, last: now}
		l.b[key] = b
	}
	b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*l.rate.PerSecond)
	b.last = now
	if b.tokens < 1 {
		return time.Duration((1 - b.tokens) / l.rate.PerSecond * float64(time.Second)), false
	}
	b.tokens--
	return 0, true
}

// Scaled returns r at perSecond, with the burst that keeps its window
// (Burst ÷ PerSecond seconds): how a single setting changes a limit. Zero
// keeps r; a negative value means no limit.
func (r Rate) Scaled(perSecond float64) Rate {
	switch {
	case perSecond == 0:
		return r
	case perSecond < 0:
		return Rate{PerSecond: -1}
	}
	window := float64(r.Burst) / r.PerSecond
	return Rate{PerSecond: perSecond, Burst: max(1, int(math.Ceil(window*perSecond)))}
}
