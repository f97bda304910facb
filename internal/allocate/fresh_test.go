package allocate

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/listcache"
)

// TestStaleHubListReadAgainBeforeRefusing: a node keeps the linked hubs for
// a moment, and a hub linked on another node reaches it by a change notice
// that may come late. A device that the kept list would refuse is
// allocated from the list read afresh.
func TestStaleHubListReadAgainBeforeRefusing(t *testing.T) {
	var mu sync.Mutex
	var stored []*linkedhub.Hub
	loads := 0
	cache := listcache.New(time.Hour, func(context.Context) ([]*linkedhub.Hub, error) {
		mu.Lock()
		defer mu.Unlock()
		loads++
		return append([]*linkedhub.Hub(nil), stored...), nil
	})
	wh, err := NewWebhook(WebhookOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Options{Hubs: cache, Webhook: wh, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	hashed := func(named ...string) *dps.EnrollmentGroup {
		g := customGroup("", named...)
		g.AllocationPolicy, g.CustomAllocationDefinition = dps.AllocationHashed, nil
		return g
	}
	// Cached while nothing is linked.
	if _, err := a.Allocate(t.Context(), groupInput("early", hashed())); errCode(err) != dps.CodeNoHubForAllocation {
		t.Fatalf("with no hub linked: %v; want %d", err, dps.CodeNoHubForAllocation)
	}
	mu.Lock()
	stored = []*linkedhub.Hub{hub(hubA, 1, true, "")} // linked elsewhere; no notice yet
	mu.Unlock()

	for _, tc := range []struct {
		name string
		g    *dps.EnrollmentGroup
	}{
		{"hub named by the enrollment", hashed(hubA)},
		{"any linked hub", hashed()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := a.Allocate(t.Context(), groupInput("dev", tc.g))
			if err != nil || got.Hub != hubA {
				t.Fatalf("Allocate = %+v, %v; want %s from the list read again", got, err, hubA)
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if loads > 3 {
		t.Errorf("%d loads of the hub list; a list that answers is not read again", loads)
	}
}
