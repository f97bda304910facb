package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/dpsd/dpsd/internal/store"
)

// batcher returns s's Batcher, skipping the test when s has none.
func batcher(t *testing.T, s store.Store) store.Batcher {
	t.Helper()
	if c, ok := s.(*closeOnce); ok {
		s = c.Store
	}
	b, ok := s.(store.Batcher)
	if !ok {
		t.Skip("the store does not implement store.Batcher")
	}
	return b
}

func testBatchCommitsAll(t *testing.T, s store.Store) {
	b := batcher(t, s)
	old := put(t, s, store.Record{Kind: store.KindRegistration, ID: "dev-1", Data: doc("old")}, store.Condition{})
	gone := put(t, s, store.Record{Kind: store.KindEnrollment, ID: "gone", Data: doc("x")}, store.Condition{})
	recs, err := b.Apply(t.Context(), []store.Write{
		{Record: store.Record{Kind: store.KindRegistration, ID: "Dev-1", Data: doc("new")}, Cond: store.Condition{IfMatch: old.ETag}},
		{Record: store.Record{Kind: store.KindHubDevice, ID: "hub/dev-1", Ref: "hub", Data: doc("identity")}, Cond: store.Condition{MustNotExist: true}},
		{Delete: true, Record: store.Record{Kind: store.KindEnrollment, ID: "gone"}, Cond: store.Condition{IfMatch: gone.ETag}},
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(recs) != 3 {
		t.Fatalf("Apply returned %d records, want 3", len(recs))
	}
	reg := get(t, s, store.KindRegistration, "dev-1")
	if string(reg.Data) != string(doc("new")) || reg.ETag != recs[0].ETag || reg.ETag == old.ETag {
		t.Errorf("registration after Apply = %s etag %q, want the new document with etag %q", reg.Data, reg.ETag, recs[0].ETag)
	}
	if reg.ID != "dev-1" || !reg.Created.Equal(old.Created) {
		t.Errorf("registration kept id %q created %v, want the first write's dev-1 and %v", reg.ID, reg.Created, old.Created)
	}
	dev := get(t, s, store.KindHubDevice, "hub/dev-1")
	if dev.ETag != recs[1].ETag || dev.Ref != "hub" {
		t.Errorf("hub device = etag %q ref %q, want %q and hub", dev.ETag, dev.Ref, recs[1].ETag)
	}
	if _, err := s.Get(t.Context(), store.KindEnrollment, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted record: Get err = %v, want ErrNotFound", err)
	}
	if recs[2].ETag != "" || recs[2].Data != nil {
		t.Errorf("Apply's record for a delete = %+v, want the zero Record", recs[2])
	}
}

func testBatchAllOrNothing(t *testing.T, s store.Store) {
	b := batcher(t, s)
	reg := put(t, s, store.Record{Kind: store.KindRegistration, ID: "dev", Data: doc("kept")}, store.Condition{})
	taken := put(t, s, store.Record{Kind: store.KindHubDevice, ID: "hub/dev", Data: doc("theirs")}, store.Condition{})

	tests := []struct {
		name   string
		writes []store.Write
		index  int
		want   error
	}{
		{"exists", []store.Write{
			{Record: store.Record{Kind: store.KindRegistration, ID: "dev", Data: doc("mine")}, Cond: store.Condition{IfMatch: reg.ETag}},
			{Record: store.Record{Kind: store.KindHubDevice, ID: "hub/dev", Data: doc("mine")}, Cond: store.Condition{MustNotExist: true}},
		}, 1, store.ErrExists},
		{"precondition", []store.Write{
			{Record: store.Record{Kind: store.KindHubDevice, ID: "hub/new", Data: doc("mine")}, Cond: store.Condition{MustNotExist: true}},
			{Record: store.Record{Kind: store.KindRegistration, ID: "dev", Data: doc("mine")}, Cond: store.Condition{IfMatch: "stale"}},
		}, 1, store.ErrPrecondition},
		{"delete missing", []store.Write{
			{Record: store.Record{Kind: store.KindRegistration, ID: "dev", Data: doc("mine")}},
			{Delete: true, Record: store.Record{Kind: store.KindHubDevice, ID: "hub/none"}},
		}, 1, store.ErrNotFound},
		// Batches of creates alone, a new device's usual batch, which a
		// store may write in one statement: the failure still names its
		// write and undoes the others.
		{"creates, one exists", []store.Write{
			{Record: store.Record{Kind: store.KindHubDevice, ID: "hub/new", Data: doc("mine")}, Cond: store.Condition{MustNotExist: true}},
			{Record: store.Record{Kind: store.KindHubDevice, ID: "hub/dev", Data: doc("mine")}, Cond: store.Condition{MustNotExist: true}},
			{Record: store.Record{Kind: store.KindHubDevice, ID: "hub/other", Data: doc("mine")}, Cond: store.Condition{MustNotExist: true}},
		}, 1, store.ErrExists},
		{"creates, one id twice", []store.Write{
			{Record: store.Record{Kind: store.KindHubDevice, ID: "hub/other", Data: doc("mine")}, Cond: store.Condition{MustNotExist: true}},
			{Record: store.Record{Kind: store.KindHubDevice, ID: "hub/new", Data: doc("mine")}, Cond: store.Condition{MustNotExist: true}},
			{Record: store.Record{Kind: store.KindHubDevice, ID: "HUB/Other", Data: doc("mine")}, Cond: store.Condition{MustNotExist: true}},
		}, 2, store.ErrExists},
		{"first fails", []store.Write{
			{Record: store.Record{Kind: store.KindRegistration, ID: "dev", Data: doc("mine")}, Cond: store.Condition{MustNotExist: true}},
			{Record: store.Record{Kind: store.KindHubDevice, ID: "hub/other", Data: doc("mine")}},
		}, 0, store.ErrExists},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := b.Apply(t.Context(), tc.writes)
			var be *store.BatchError
			if !errors.As(err, &be) || !errors.Is(err, tc.want) || be.Index != tc.index {
				t.Fatalf("Apply = %v, %v; want a *BatchError for write %d wrapping %v", recs, err, tc.index, tc.want)
			}
			if got := get(t, s, store.KindRegistration, "dev"); got.ETag != reg.ETag {
				t.Errorf("registration changed by a failed batch: %s", got.Data)
			}
			if got := get(t, s, store.KindHubDevice, "hub/dev"); got.ETag != taken.ETag {
				t.Errorf("hub device changed by a failed batch: %s", got.Data)
			}
			for _, id := range []string{"hub/new", "hub/other"} {
				if _, err := s.Get(t.Context(), store.KindHubDevice, id); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("%s written by a failed batch (Get err %v)", id, err)
				}
			}
		})
	}
}

func testBatchSeesItsOwnWrites(t *testing.T, s store.Store) {
	b := batcher(t, s)
	_, err := b.Apply(t.Context(), []store.Write{
		{Record: store.Record{Kind: store.KindRegistration, ID: "x", Data: doc("1")}, Cond: store.Condition{MustNotExist: true}},
		{Record: store.Record{Kind: store.KindRegistration, ID: "X", Data: doc("2")}, Cond: store.Condition{IfMatch: "*"}},
		{Delete: true, Record: store.Record{Kind: store.KindRegistration, ID: "x"}},
		{Record: store.Record{Kind: store.KindRegistration, ID: "x", Data: doc("3")}, Cond: store.Condition{MustNotExist: true}},
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if got := get(t, s, store.KindRegistration, "x"); string(got.Data) != string(doc("3")) {
		t.Errorf("after put, update, delete, create in one batch: %s, want %s", got.Data, doc("3"))
	}
}

func testBatchRefusesEmptyIDs(t *testing.T, s store.Store) {
	b := batcher(t, s)
	_, err := b.Apply(t.Context(), []store.Write{
		{Record: store.Record{Kind: store.KindRegistration, ID: "fine", Data: doc("1")}},
		{Record: store.Record{Kind: store.KindRegistration, Data: doc("2")}},
	})
	if err == nil {
		t.Fatal("Apply with an empty id succeeded")
	}
	if _, err := s.Get(t.Context(), store.KindRegistration, "fine"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused batch wrote its first record (Get err %v)", err)
	}
	if recs, err := b.Apply(t.Context(), nil); err != nil || len(recs) != 0 {
		t.Errorf("Apply(nil) = %v, %v; want nothing and no error", recs, err)
	}
}

// testBatchConcurrent races batches that each claim one record against
// plain writes and failing batches: exactly one claim wins, the failing
// batches leave nothing, and the plain writes are unaffected.
func testBatchConcurrent(t *testing.T, s store.Store) {
	b := batcher(t, s)
	claim := put(t, s, store.Record{Kind: store.KindRegistration, ID: "claimed", Data: doc("free")}, store.Condition{})
	const n = 24
	var wg sync.WaitGroup
	wins := make(chan int, n)
	errs := make(chan error, 3*n)
	for i := range n {
		wg.Add(3)
		go func() {
			defer wg.Done()
			_, err := b.Apply(t.Context(), []store.Write{
				{Record: store.Record{Kind: store.KindRegistration, ID: "claimed", Data: doc(fmt.Sprint(i))}, Cond: store.Condition{IfMatch: claim.ETag}},
				{Record: store.Record{Kind: store.KindHubDevice, ID: fmt.Sprintf("hub/winner-%d", i)}, Cond: store.Condition{MustNotExist: true}},
			})
			switch {
			case err == nil:
				wins <- i
			case !errors.Is(err, store.ErrPrecondition):
				errs <- fmt.Errorf("claim %d: %w", i, err)
			}
		}()
		go func() {
			defer wg.Done()
			_, err := b.Apply(t.Context(), []store.Write{
				{Record: store.Record{Kind: store.KindHubDevice, ID: fmt.Sprintf("hub/loser-%d", i)}},
				{Record: store.Record{Kind: store.KindRegistration, ID: "claimed"}, Cond: store.Condition{MustNotExist: true}},
			})
			if !errors.Is(err, store.ErrExists) {
				errs <- fmt.Errorf("failing batch %d: err = %v, want ErrExists", i, err)
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := s.Put(t.Context(), store.Record{Kind: store.KindEnrollment, ID: fmt.Sprintf("plain-%d", i), Data: doc("p")}, store.Condition{MustNotExist: true}); err != nil {
				errs <- fmt.Errorf("plain put %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(wins)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var won []int
	for i := range wins {
		won = append(won, i)
	}
	if len(won) != 1 {
		t.Fatalf("%d batches claimed the record, want exactly 1: %v", len(won), won)
	}
	devs := listAll(t, s, store.KindHubDevice, "", 100)
	if len(devs) != 1 || devs[0].ID != fmt.Sprintf("hub/winner-%d", won[0]) {
		t.Errorf("hub devices after the race: %v, want only the winner's", ids(devs))
	}
	if got := listAll(t, s, store.KindEnrollment, "", 100); len(got) != n {
		t.Errorf("%d plain writes committed, want %d", len(got), n)
	}
}
