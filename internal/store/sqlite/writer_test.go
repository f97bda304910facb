package sqlite

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/store"
)

// withLinger sets how long a batch may wait for company.
func withLinger(d time.Duration) Option { return func(o *options) { o.linger = d } }

// TestGather drives the writer's batching without a database: which
// queued ops join a batch, and when it stops waiting for more.
func TestGather(t *testing.T) {
	const forever = time.Hour // the test fails by timing out, never by a clock
	tests := []struct {
		name    string
		linger  time.Duration
		last    int // size of the previous batch
		queued  int // ops already queued behind the first
		later   int // ops sent one by one after gather started
		closeCh bool
		want    int
	}{
		{name: "lone writer commits at once", linger: forever, last: 1, want: 1},
		{name: "first batch commits at once", linger: forever, last: 0, queued: 2, want: 3},
		{name: "takes what queued, even beyond the last size", linger: forever, last: 2, queued: 6, want: 7},
		{name: "waits for as many as the last batch", linger: forever, last: 5, queued: 1, later: 3, want: 5},
		{name: "the linger ends the wait", linger: 20 * time.Millisecond, last: 5, queued: 1, want: 2},
		{name: "no linger configured", linger: 0, last: 5, want: 1},
		{name: "closing the queue ends the wait", linger: forever, last: 5, queued: 1, closeCh: true, want: 2},
		{name: "waits up to maxBatch at most", linger: forever, last: maxBatch + 10, queued: maxBatch - 2, later: 1, want: maxBatch},
		{name: "takes no more than maxBatch", linger: forever, last: 2, queued: maxBatch + 5, want: maxBatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &writer{ops: make(chan *op, maxBatch+16), linger: tc.linger}
			for range tc.queued {
				w.ops <- &op{}
			}
			timer := time.NewTimer(time.Hour)
			timer.Stop()
			got := make(chan int, 1)
			go func() { got <- len(w.gather([]*op{{}}, tc.last, timer)) }()
			for i := range tc.later {
				// Until the last op is sent, gather must still be waiting.
				select {
				case n := <-got:
					t.Fatalf("batch of %d committed before op %d of %d that it waits for", n, i+1, tc.later)
				case <-time.After(10 * time.Millisecond):
				}
				w.ops <- &op{}
			}
			if tc.closeCh {
				close(w.ops)
			}
			select {
			case n := <-got:
				if n != tc.want {
					t.Errorf("batch of %d, want %d", n, tc.want)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("gather still waiting, want a batch of %d", tc.want)
			}
		})
	}
}

// TestGroupCommitUnderLoad checks that writers that come back for the
// next batch find it waiting for them. 8 writers that each wait for their
// commit before the next write commit in batches of about 8 when the
// batch waits (a linger far longer than the scheduler needs), and in
// many more, smaller ones when it commits whatever has queued: after a
// commit the writers wake one by one, and the first to send its next
// write would go alone.
func TestGroupCommitUnderLoad(t *testing.T) {
	const writers, rounds = 8, 20
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"), withLinger(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	put := func(id string) {
		if _, err := s.Put(t.Context(), store.Record{Kind: store.KindRegistration, ID: id, Data: []byte(`{}`)}, store.Condition{}); err != nil {
			t.Error(err)
		}
	}
	// The first batch: all writers at once, so that it holds all of them.
	var start sync.WaitGroup
	start.Add(1)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			start.Wait()
			for i := range rounds {
				put(fmt.Sprintf("w%d-%d", w, i))
			}
		})
	}
	before := s.w.commits.Load()
	start.Done()
	wg.Wait()
	commits := s.w.commits.Load() - before
	// The first batches may split if the goroutines start slowly, and the
	// last ones if they end unevenly; in between each batch waits for all.
	if commits > rounds+writers {
		t.Errorf("%d writes took %d commits, want about %d", writers*rounds, commits, rounds)
	}
	t.Logf("%d writes in %d commits", writers*rounds, commits)
}
