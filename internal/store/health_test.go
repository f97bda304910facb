package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestWriteHealth(t *testing.T) {
	full := fmt.Errorf("%w: database or disk is full", ErrUnavailable)
	probeOK := func(context.Context) error { return nil }
	probeFull := func(context.Context) error { return full }
	tests := []struct {
		name     string
		observed []error // oldest first
		probe    func(context.Context) error
		wantErr  bool
		probed   bool
	}{
		{"nothing written yet: the probe decides", nil, probeOK, false, true},
		{"nothing written yet, probe fails", nil, probeFull, true, true},
		{"recent success vouches without a probe", []error{nil}, probeFull, false, false},
		{"failed condition is a working database", []error{fmt.Errorf("put: %w", ErrPrecondition)}, probeFull, false, false},
		{"failed write since the last success", []error{nil, full}, probeOK, true, false},
		{"success after a failure", []error{full, nil}, probeFull, false, false},
		{"caller gave up says nothing", []error{context.Canceled}, probeOK, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h WriteHealth
			for _, err := range tc.observed {
				h.Observe(err)
				time.Sleep(time.Millisecond) // distinct times, in order
			}
			probed := false
			err := h.Check(t.Context(), func(ctx context.Context) error { probed = true; return tc.probe(ctx) })
			if (err != nil) != tc.wantErr {
				t.Errorf("Check = %v, want error %v", err, tc.wantErr)
			}
			if err != nil && !errors.Is(err, ErrUnavailable) {
				t.Errorf("Check = %v, want it to wrap ErrUnavailable", err)
			}
			if probed != tc.probed {
				t.Errorf("probed = %v, want %v", probed, tc.probed)
			}
		})
	}
}

// TestWriteHealthProbesSparingly checks that many health checks of an idle
// store make one probe write, not one each.
func TestWriteHealthProbesSparingly(t *testing.T) {
	var h WriteHealth
	probes := 0
	for range 100 {
		if err := h.Check(t.Context(), func(context.Context) error { probes++; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if probes != 1 {
		t.Errorf("100 checks made %d probes, want 1", probes)
	}
}

// TestWriteHealthConcurrentChecksShareAProbe checks that health checks
// arriving together while no answer is known make one probe between them.
func TestWriteHealthConcurrentChecksShareAProbe(t *testing.T) {
	var h WriteHealth
	var probes atomic.Int32
	release := make(chan struct{})
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = h.Check(t.Context(), func(context.Context) error { probes.Add(1); <-release; return nil })
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if n := probes.Load(); n != 1 {
		t.Errorf("20 concurrent checks made %d probes, want 1", n)
	}
}
