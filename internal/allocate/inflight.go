package allocate

import (
	"context"
	"fmt"
	"sync"
)

// Bounds on webhook calls in flight.
const (
	// DefaultMaxConcurrent bounds the webhook calls in flight on a node:
	// each holds an outbound socket and a goroutine, and a hanging
	// webhook would otherwise hold as many as devices register.
	DefaultMaxConcurrent = 256
	// DefaultMaxConcurrentPerGroup bounds those of one enrollment group
	// (individual enrollments: of one webhook URL), so one slow webhook
	// cannot take every slot from the others.
	DefaultMaxConcurrentPerGroup = 64
)

// inflight hands out slots for webhook calls, from one pool for the node
// and one per key.
type inflight struct {
	all    chan struct{}
	perKey int

	mu   sync.Mutex
	keys map[string]*keySlots
}

type keySlots struct {
	slots chan struct{}
	users int // callers holding or waiting for a slot; the entry goes at 0
}

func newInflight(total, perKey int) *inflight {
	return &inflight{all: make(chan struct{}, total), perKey: perKey, keys: make(map[string]*keySlots)}
}

// acquire waits for a slot of key and one of the node until ctx ends,
// and returns the function that gives them back.
func (f *inflight) acquire(ctx context.Context, key string) (release func(), err error) {
	f.mu.Lock()
	ks := f.keys[key]
	if ks == nil {
		ks = &keySlots{slots: make(chan struct{}, f.perKey)}
		f.keys[key] = ks
	}
	ks.users++
	f.mu.Unlock()
	done := func() {
		f.mu.Lock()
		if ks.users--; ks.users == 0 {
			delete(f.keys, key)
		}
		f.mu.Unlock()
	}
	select {
	case ks.slots <- struct{}{}:
	case <-ctx.Done():
		done()
		return nil, fmt.Errorf("%d webhook calls of this enrollment already in flight", f.perKey)
	}
	select {
	case f.all <- struct{}{}:
	case <-ctx.Done():
		<-ks.slots
		done()
		return nil, fmt.Errorf("%d webhook calls already in flight on this node", cap(f.all))
	}
	return func() {
		<-f.all
		<-ks.slots
		done()
	}, nil
}
