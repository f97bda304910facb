package server

import (
	"context"
	"sync"
	"time"

	"github.com/dpsd/dpsd/linkedhub"
)

// linkedHubTTL bounds how long allocation uses a list of linked hubs before
// reading it again. Links changed on this node drop the list at once; a
// change made on another node counts within this time.
const linkedHubTTL = time.Second

// hubListCache keeps the linked hubs for allocation, which otherwise reads
// them from the store for every registration. Allocators only read the
// hubs they get.
type hubListCache struct {
	reg *linkedhub.Registry

	mu   sync.Mutex
	hubs []*linkedhub.Hub
	at   time.Time
}

// List implements allocate.HubLister.
func (c *hubListCache) List(ctx context.Context) ([]*linkedhub.Hub, error) {
	c.mu.Lock()
	if c.hubs != nil && time.Since(c.at) < linkedHubTTL {
		hubs := c.hubs
		c.mu.Unlock()
		return hubs, nil
	}
	c.mu.Unlock()
	hubs, err := c.reg.List(ctx)
	if err != nil {
		return nil, err
	}
	if hubs == nil {
		hubs = []*linkedhub.Hub{}
	}
	c.mu.Lock()
	c.hubs, c.at = hubs, time.Now()
	c.mu.Unlock()
	return hubs, nil
}

func (c *hubListCache) invalidate() {
	c.mu.Lock()
	c.hubs = nil
	c.mu.Unlock()
}
