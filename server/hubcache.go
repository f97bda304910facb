package server

import (
	"context"
	"sync"
	"time"

	"github.com/dpsd/dpsd/linkedhub"
)

// linkedHubTTL bounds how long allocation uses a list of linked hubs before
// reading it again. Links changed on this node, or on another node of a
// PostgreSQL cluster (through the store's change notifications), drop the
// list at once; the TTL is the bound when a notification is lost.
const linkedHubTTL = time.Second

// hubListCache keeps the linked hubs for allocation, which otherwise reads
// them from the store for every registration. Allocators only read the
// hubs they get.
type hubListCache struct {
	reg *linkedhub.Registry

	mu   sync.Mutex
	hubs []*linkedhub.Hub
	at   time.Time
	gen  uint64 // bumped by invalidate, so a reload racing a change is not kept
}

// List implements allocate.HubLister.
func (c *hubListCache) List(ctx context.Context) ([]*linkedhub.Hub, error) {
	c.mu.Lock()
	if c.hubs != nil && time.Since(c.at) < linkedHubTTL {
		hubs := c.hubs
		c.mu.Unlock()
		return hubs, nil
	}
	gen := c.gen
	c.mu.Unlock()
	hubs, err := c.reg.List(ctx)
	if err != nil {
		return nil, err
	}
	if hubs == nil {
		hubs = []*linkedhub.Hub{}
	}
	c.mu.Lock()
	if c.gen == gen {
		c.hubs, c.at = hubs, time.Now()
	}
	c.mu.Unlock()
	return hubs, nil
}

func (c *hubListCache) invalidate() {
	c.mu.Lock()
	c.hubs = nil
	c.gen++
	c.mu.Unlock()
}
