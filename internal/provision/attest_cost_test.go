package provision

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

// listCounter counts how often the enrollment groups are read.
type listCounter struct {
	store.Store
	groupLists atomic.Int64
}

func (c *listCounter) List(ctx context.Context, kind store.Kind, opt store.ListOptions) ([]store.Record, bool, error) {
	if kind == store.KindEnrollmentGroup {
		c.groupLists.Add(1)
	}
	return c.Store.List(ctx, kind, opt)
}

// TestFailedProofReadsNoEnrollmentData checks that devices no group vouches
// for cannot make the node read and decode the enrollment groups faster
// than the group list's TTL: what a failed proof costs must not grow with
// the groups' documents (one can be most of a megabyte), only with how
// many keys there are to try.
func TestFailedProofReadsNoEnrollmentData(t *testing.T) {
	f := newFixture(t, Options{})
	counter := &listCounter{Store: f.st}
	f.eng = New(counter, Options{IDScope: scope, Registrar: f.reg})
	t.Cleanup(func() { f.eng.Wait(context.Background()) })

	// Each read of the groups decodes every group document in full,
	// however large: that is what a storm of wrong keys must not be able
	// to repeat at will.
	f.group("grp", "hub.example", "")
	f.eng.InvalidateEnrollments()

	// Wrong keys, from ids that exist nowhere and from a member bound to
	// nothing, for a bounded time and count.
	const window = 600 * time.Millisecond
	start := time.Now()
	requests := 0
	for i := 0; time.Since(start) < window && i < 20000; i++ {
		req := f.request("stranger-"+string(rune('a'+i%26)), "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=")
		if _, err := f.eng.Register(t.Context(), req); code(err) != dps.CodeUnauthorized {
			t.Fatalf("wrong key: err = %v, want 401", err)
		}
		requests++
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	// The TTL allows one read per groupListTTL, plus the first.
	allowed := int64(elapsed/groupListTTL) + 2
	if got := counter.groupLists.Load(); got > allowed {
		t.Errorf("%d wrong-key requests in %v read the enrollment groups %d times, want at most %d (one per %v)",
			requests, elapsed.Round(time.Millisecond), got, allowed, groupListTTL)
	}
}
