package server

import (
	"fmt"
	"log/slog"

	"github.com/dpsd/dpsd/internal/allocate"
	"github.com/dpsd/dpsd/internal/alloclog"
)

// newAllocator builds the allocation policies over the linked hubs, with
// the custom allocation webhook client recording into the audit log.
func newAllocator(cfg Config, linked allocate.HubLister, alog *alloclog.Log, log *slog.Logger) (*allocate.Allocator, error) {
	policy, nets, err := allocationSettings(&cfg)
	if err != nil {
		return nil, err
	}
	wh, err := allocate.NewWebhook(allocate.WebhookOptions{
		Audit: alog, Logger: log, CAFiles: cfg.WebhookCAFiles,
		MaxConcurrent: cfg.WebhookMaxConcurrent, MaxConcurrentPerGroup: cfg.WebhookMaxConcurrentPerGroup,
	})
	if err != nil {
		return nil, fmt.Errorf("custom allocation webhooks: %w", err)
	}
	return allocate.New(allocate.Options{Hubs: linked, DefaultPolicy: policy, Networks: nets, Webhook: wh, Logger: log})
}
