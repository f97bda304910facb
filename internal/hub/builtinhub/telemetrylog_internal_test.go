package builtinhub

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

func openTelemetryStore(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// startLog is a hub's telemetry as startHub makes it: a buffer, and a log
// loaded from st and running.
func startLog(t *testing.T, st store.Store, n, maxBytes int) (*messageBuffer, *telemetryLog) {
	t.Helper()
	b := newMessageBuffer(n, maxBytes, 0, nil)
	b.setPartitions(4)
	l := newTelemetryLog(st, "tl-hub", b, slog.New(slog.DiscardHandler))
	if err := l.load(t.Context()); err != nil {
		t.Fatal(err)
	}
	l.start()
	t.Cleanup(func() { _ = l.close(context.Background()) })
	return b, l
}

type placed struct {
	seq, partSeq int64
	partition    int
	body         string
}

func snapshot(b *messageBuffer) []placed {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []placed
	for _, m := range b.msgs {
		out = append(out, placed{m.SequenceNumber, m.partSeq, m.partition, m.Body})
	}
	return out
}

// TestTelemetryLogKeepsWhatItAcknowledged writes telemetry from many
// senders at once, then reads the store afresh, as a node does after a
// crash: every acknowledged message is there, with its sequence numbers
// in the hub and in its partition, and numbering goes on after them.
func TestTelemetryLogKeepsWhatItAcknowledged(t *testing.T) {
	st := openTelemetryStore(t)
	b, l := startLog(t, st, 1000, 0)
	var wg sync.WaitGroup
	for d := range 8 {
		wg.Go(func() {
			for i := range 25 {
				if err := l.keep([]Message{{DeviceID: fmt.Sprintf("dev-%d", d), Body: fmt.Sprintf("m-%d-%d", d, i), EnqueuedTime: time.Now()}}); err != nil {
					t.Errorf("keep: %v", err)
				}
			}
		})
	}
	wg.Wait()
	before := snapshot(b)
	if len(before) != 200 {
		t.Fatalf("buffer shows %d messages, want 200", len(before))
	}
	// No close: what a crash leaves is what was committed.
	b2, l2 := startLog(t, st, 1000, 0)
	after := snapshot(b2)
	if !slices.Equal(before, after) {
		t.Fatalf("after a restart the buffer shows\n%v\nwant\n%v", after, before)
	}
	if err := l2.keep([]Message{{DeviceID: "dev-0", Body: "next"}}); err != nil {
		t.Fatal(err)
	}
	last := snapshot(b2)[200]
	var prev placed
	for _, p := range before {
		if p.partition == last.partition {
			prev = p
		}
	}
	// A crash may leave numbers reserved and unused: a gap, never a
	// number given twice.
	if last.seq <= 200 || last.partSeq <= prev.partSeq {
		t.Fatalf("next message numbered %+v after a crash; want past 200 and partition sequence %d", last, prev.partSeq)
	}

	// A clean stop gives back what it reserved: no gap.
	if err := l2.close(t.Context()); err != nil {
		t.Fatal(err)
	}
	b3, l3 := startLog(t, st, 1000, 0)
	if err := l3.keep([]Message{{DeviceID: "dev-0", Body: "after a clean stop"}}); err != nil {
		t.Fatal(err)
	}
	if got := snapshot(b3)[201]; got.seq != last.seq+1 || got.partition == last.partition && got.partSeq != last.partSeq+1 {
		t.Fatalf("after a clean stop the next message is %+v, the last before %+v", got, last)
	}
}

// TestTelemetryLogRetention checks that the records follow the buffer's
// bounds: dropped messages are deleted from the store, and numbering goes
// on after a restart even when nothing but the newest is kept.
func TestTelemetryLogRetention(t *testing.T) {
	st := openTelemetryStore(t)
	b, l := startLog(t, st, 5, 0)
	for i := range 30 {
		if err := l.keep([]Message{{DeviceID: "d", Body: fmt.Sprint(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := snapshot(b); len(got) != 5 || got[4].seq != 30 {
		t.Fatalf("buffer %v; want the newest 5", got)
	}
	recs, _, err := st.List(t.Context(), KindTelemetry, store.ListOptions{Ref: "tl-hub", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	// The mark, the 5 kept, and at most the one dropped by the last write.
	if len(recs) > 7 {
		t.Fatalf("the store keeps %d telemetry records for a buffer of 5", len(recs))
	}
	b2, _ := startLog(t, st, 2, 0)
	if got := snapshot(b2); len(got) != 2 || got[0].seq != 29 || got[1].seq != 30 {
		t.Fatalf("restarted with a buffer of 2: %v", got)
	}
}

// TestTelemetryLogSharedStore runs two logs of one hub over one store, as
// two nodes over PostgreSQL: no sequence number is given twice, and a
// restart finds every message of both.
func TestTelemetryLogSharedStore(t *testing.T) {
	st := openTelemetryStore(t)
	_, a := startLog(t, st, 1000, 0)
	_, c := startLog(t, st, 1000, 0)
	var wg sync.WaitGroup
	for i, l := range []*telemetryLog{a, c, a, c} {
		wg.Go(func() {
			for j := range 20 {
				if err := l.keep([]Message{{DeviceID: "d", Body: fmt.Sprintf("%d-%d", i, j)}}); err != nil {
					t.Errorf("keep: %v", err)
				}
			}
		})
	}
	wg.Wait()
	b, _ := startLog(t, st, 1000, 0)
	got := snapshot(b)
	if len(got) != 80 {
		t.Fatalf("a restart finds %d messages, want 80", len(got))
	}
	seen := map[int64]bool{}
	for i, p := range got {
		if seen[p.partSeq] || (i > 0 && p.seq <= got[i-1].seq) {
			t.Fatalf("numbers given twice: %v", got)
		}
		seen[p.partSeq] = true
	}
}

// TestTelemetryLogImportsTheOldSnapshot reads the telemetry an older dpsd
// kept in one record at its last stop.
func TestTelemetryLogImportsTheOldSnapshot(t *testing.T) {
	st := openTelemetryStore(t)
	old, _ := json.Marshal(telemetryMark{Sequence: 9, Messages: []Message{{SequenceNumber: 8, DeviceID: "d", Body: "eight"}, {SequenceNumber: 9, DeviceID: "d", Body: "nine"}}})
	if _, err := st.Put(t.Context(), store.Record{Kind: KindTelemetry, ID: "tl-hub", Ref: "tl-hub", Data: old}, store.Condition{}); err != nil {
		t.Fatal(err)
	}
	startLog(t, st, 100, 0)
	b, l := startLog(t, st, 100, 0) // the second start reads records only
	if err := l.keep([]Message{{DeviceID: "d", Body: "ten"}}); err != nil {
		t.Fatal(err)
	}
	got := snapshot(b)
	if len(got) != 3 || got[0].body != "eight" || got[1].seq != 9 || got[2].seq <= 9 || got[2].partSeq <= 1 {
		t.Fatalf("after the import: %v", got)
	}
}
