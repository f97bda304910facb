package listcache

import (
	"context"
	"sync"
	"time"
)

// Cache holds one list, loaded on demand and kept for a TTL. It is safe for
// concurrent use. Concurrent misses each load the list; the loads are
// expected to be cheap enough that this beats making callers wait in line.
type Cache[E any] struct {
	ttl  time.Duration
	load func(context.Context) ([]E, error)

	mu       sync.Mutex
	items    []E
	loaded   bool // items is a list loaded at loadedAt, not dropped since
	loadedAt time.Time
	// gen counts invalidations. A load that started before one must not
	// keep its list: it may hold an item as it was before the change.
	gen uint64
}

// New returns a cache that reads its list with load and keeps it for ttl.
func New[E any](ttl time.Duration, load func(context.Context) ([]E, error)) *Cache[E] {
	return &Cache[E]{ttl: ttl, load: load}
}

// List returns the list as it was at most the TTL ago, loading it when
// older. Callers must not modify the returned slice: later calls share it.
func (c *Cache[E]) List(ctx context.Context) ([]E, error) {
	return c.ListFresh(ctx, c.ttl)
}

// ListFresh is List with a tighter bound: it loads the list again when it is
// maxAge old or older. A maxAge above the TTL is the TTL.
func (c *Cache[E]) ListFresh(ctx context.Context, maxAge time.Duration) ([]E, error) {
	maxAge = min(maxAge, c.ttl)
	c.mu.Lock()
	if c.loaded && time.Since(c.loadedAt) < maxAge {
		items := c.items
		c.mu.Unlock()
		return items, nil
	}
	gen := c.gen
	c.mu.Unlock()

	items, err := c.load(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.gen == gen { // nothing changed while loading; else the list may predate the change
		c.items, c.loaded, c.loadedAt = items, true, time.Now()
	}
	c.mu.Unlock()
	return items, nil
}

// Invalidate drops the list, and the result of any load already running,
// so the next List reads the store again.
func (c *Cache[E]) Invalidate() {
	c.mu.Lock()
	c.items, c.loaded, c.loadedAt = nil, false, time.Time{}
	c.gen++
	c.mu.Unlock()
}

// Update replaces the held list with f's result, keeping its age, so a
// caller can reorder it. f must return a new slice rather than modify its
// argument, which List callers may still be reading. Without a held list,
// f is not called.
func (c *Cache[E]) Update(f func([]E) []E) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loaded {
		c.items = f(c.items)
	}
}
