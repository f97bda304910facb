package provision

import (
	"strings"
	"sync"
	"time"
)

// pollLimiter bounds how often one device may poll its operation: a token
// bucket per registration id. Azure allows 5 polls per 10 s; dpsd is more
// lenient because its own Retry-After is short, but a device polling in a
// tight loop still gets 429 with a Retry-After.
type pollLimiter struct {
	now   func() time.Time
	burst float64
	rate  float64 // tokens per second

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newPollLimiter(now func() time.Time, burst, perSecond float64) *pollLimiter {
	return &pollLimiter{now: now, burst: burst, rate: perSecond, buckets: make(map[string]*bucket)}
}

func (l *pollLimiter) allow(regID string) bool {
	now := l.now()
	key := strings.ToLower(regID)
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute {
		// Full buckets carry no information; drop them so the map stays
		// as small as the set of devices polling right now.
		for k, b := range l.buckets {
			if now.Sub(b.last).Seconds()*l.rate+b.tokens >= l.burst {
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
