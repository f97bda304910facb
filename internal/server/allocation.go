package server

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/allocate"
	"github.com/dpsd/dpsd/internal/alloclog"
)

// newAllocator builds the allocation policies over the linked hubs, with
// the custom allocation webhook client recording into the audit log.
func newAllocator(cfg Config, linked allocate.HubLister, alog *alloclog.Log, log *slog.Logger) (*allocate.Allocator, error) {
	policy := dps.AllocationHashed
	switch strings.ToLower(cfg.AllocationPolicy) {
	case "", "hashed":
	case "geolatency":
		policy = dps.AllocationGeoLatency
	case "static":
		policy = dps.AllocationStatic
	default:
		return nil, fmt.Errorf("--allocation-policy %q: want hashed, geoLatency or static (custom is per enrollment)", cfg.AllocationPolicy)
	}
	var nets []allocate.NetworkLocation
	if cfg.GeoNetworks != "" {
		var err error
		if nets, err = allocate.ParseNetworkMap(cfg.GeoNetworks); err != nil {
			return nil, fmt.Errorf("--geo-networks: %w", err)
		}
	}
	wh, err := allocate.NewWebhook(allocate.WebhookOptions{Audit: alog, Logger: log, CAFiles: cfg.WebhookCAFiles})
	if err != nil {
		return nil, fmt.Errorf("custom allocation webhooks: %w", err)
	}
	return allocate.New(allocate.Options{Hubs: linked, DefaultPolicy: policy, Networks: nets, Webhook: wh, Logger: log})
}
