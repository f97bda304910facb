package server

import (
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/listcache"
)

// linkedHubTTL bounds how long allocation uses a list of linked hubs before
// reading it again. Links changed on this node, or on another node of a
// PostgreSQL cluster (through the store's change notifications), drop the
// list at once; the TTL is the bound when a notification is lost.
const linkedHubTTL = time.Second

// newHubListCache keeps the linked hubs for allocation, which otherwise reads
// them from the store for every registration. Allocators only read the hubs
// they get.
func newHubListCache(reg *linkedhub.Registry) *listcache.Cache[*admin.LinkedHub] {
	return listcache.New(linkedHubTTL, reg.List)
}
