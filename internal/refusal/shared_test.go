package refusal

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

// clock is a settable time for the tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestSharedStore: two logs over one store (two nodes) find each other's
// refusals by tracking and by registration id; the store keeps at most
// StoreMax and none older than StoreMaxAge.
func TestSharedStore(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	newNode := func(name string) (*Log, func()) {
		l := New(Options{Logger: quiet, Now: clk.now, Store: st, Node: name, StoreMax: 5, StoreMaxAge: time.Hour})
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); l.Run(rctx) }()
		return l, func() { cancel(); <-done }
	}
	a, stopA := newNode("a")
	b, stopB := newNode("b")
	defer stopB()

	record := func(l *Log, tracking, regID string) {
		ans := dps.Errorf(dps.CodeUnauthorized, "Unauthorized.")
		ans.TrackingID = tracking
		l.Record(ctx, Request{Transport: "mqtt", RegistrationID: regID}, ans, Because(ans, "wrong key"))
		clk.add(time.Second)
	}
	for i := range 3 {
		record(a, fmt.Sprintf("ta%d", i), "dev")
	}
	record(b, "tb0", "dev")
	record(b, "tb1", "other")
	stopA() // writes what is queued

	trackingIDs := func(l *Log, regID, trackingID string) []string {
		t.Helper()
		var ids []string
		// Run writes in the background: wait for it, bounded.
		for range 100 {
			found, err := l.Find(ctx, regID, trackingID, 0)
			if err != nil {
				t.Fatal(err)
			}
			ids = ids[:0]
			for _, r := range found {
				ids = append(ids, r.TrackingID)
			}
			if len(ids) > 0 && (trackingID != "" || len(ids) >= 4) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		return ids
	}
	if got := trackingIDs(b, "", "ta1"); !slices.Equal(got, []string{"ta1"}) {
		t.Errorf("node b finds tracking id ta1 of node a: %v", got)
	}
	if got := trackingIDs(b, "DEV", ""); !slices.Equal(got, []string{"tb0", "ta2", "ta1", "ta0"}) {
		t.Errorf("node b finds dev's refusals of both nodes, newest first: %v", got)
	}
	found, _ := b.Find(ctx, "", "ta0", 0)
	if len(found) != 1 || found[0].Node != "a" || found[0].Reason != "wrong key" || found[0].Transport != "mqtt" {
		t.Errorf("stored refusal = %+v", found)
	}

	// Count bound: 5 stored and 7 written, the two oldest go.
	record(b, "tb2", "dev")
	record(b, "tb3", "dev")
	waitStored := func(want int) []string {
		t.Helper()
		var ids []string
		for range 100 {
			recs, _, err := st.List(ctx, store.KindRefusal, store.ListOptions{Limit: 100})
			if err != nil {
				t.Fatal(err)
			}
			ids = ids[:0]
			for _, r := range recs {
				ids = append(ids, r.ID)
			}
			if len(ids) >= want {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		return ids
	}
	if got := waitStored(7); len(got) != 7 {
		t.Fatalf("stored before pruning: %v", got)
	}
	if err := b.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	// Created comes from the store's clock, not the test's: all were
	// written within the test, so the count bound decides alone here.
	if got := waitStored(0); len(got) != 5 || !slices.Contains(got, "tb3") {
		t.Errorf("after pruning to 5: %v", got)
	}

	// Age bound: an hour after the last write, nothing is kept.
	clk.mu.Lock()
	clk.t = time.Now().Add(61 * time.Minute)
	clk.mu.Unlock()
	if err := b.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if got := waitStored(0); len(got) != 0 {
		t.Errorf("after an hour: %v", got)
	}
}
