package allocate

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWebhookCallsBounded: registrations against a hanging webhook hold
// at most MaxConcurrentPerGroup calls per group and MaxConcurrent in all;
// the others find no slot within the attempt timeout and fail like a
// webhook that does not answer, holding no socket meanwhile.
func TestWebhookCallsBounded(t *testing.T) {
	var mu sync.Mutex
	inFlight := map[string]int{}
	peak := map[string]int{}
	release := make(chan struct{})
	// The webhook learns that a timed-out call ended only when it sees the
	// connection close, a moment after the allocator has let the next call
	// in; so calls are counted only while none can have timed out yet,
	// when every allocation is still waiting for a slot.
	const attemptTimeout = 500 * time.Millisecond
	var start time.Time
	ws := newWebhookServer(t, func(_ int, r *http.Request) (int, string) {
		group := r.URL.Query().Get("group")
		mu.Lock()
		inFlight[group]++
		inFlight[""]++
		if time.Since(start) < attemptTimeout*4/5 {
			peak[group] = max(peak[group], inFlight[group])
			peak[""] = max(peak[""], inFlight[""])
		}
		mu.Unlock()
		select {
		case <-r.Context().Done():
		case <-release:
		}
		mu.Lock()
		inFlight[group]--
		inFlight[""]--
		mu.Unlock()
		return 0, ""
	})
	t.Cleanup(func() { close(release) })
	ts := newTestAllocator(t, hubList{hub(hubA, 1, true, "")}, func(o *WebhookOptions) {
		o.AttemptTimeout = attemptTimeout
		o.Retries = -1
		o.MaxConcurrent = 3
		o.MaxConcurrentPerGroup = 2
	})
	var wg sync.WaitGroup
	var failed atomic.Int32
	mu.Lock()
	start = time.Now()
	mu.Unlock()
	for _, group := range []string{"a", "b", "c"} {
		g := customGroup(ws.hookURL() + "&group=" + group)
		g.EnrollmentGroupID = "group-" + group
		for i := range 8 {
			wg.Go(func() {
				if _, err := ts.alloc.Allocate(t.Context(), groupInput("dev-"+group+string(rune('0'+i)), g)); err != nil {
					failed.Add(1)
				}
			})
		}
	}
	wg.Wait()
	if failed.Load() != 24 {
		t.Errorf("%d of 24 allocations failed, want all (the webhook hangs)", failed.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	for _, g := range []string{"a", "b", "c"} {
		if peak[g] > 2 {
			t.Errorf("group %s: %d calls in flight at once, want at most 2", g, peak[g])
		}
	}
	if peak[""] > 3 || peak[""] == 0 {
		t.Errorf("%d calls in flight at once in all, want 1 to 3", peak[""])
	}
}
