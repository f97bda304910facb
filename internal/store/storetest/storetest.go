package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/store"
)

// Run checks s's conformance to the store.Store contract, and to
// store.Batcher's when s implements it. open must return
// a new, empty store for each call; Run closes every store it opens, so open
// must not close it (it may register cleanups such as removing files, which
// run after the store is closed).
//
// Beyond the documented contract, Run expects what dpsd relies on: Updated
// strictly increases on every update of a record, times come back in UTC
// exactly as the write returned them, and a write whose context is already
// cancelled fails without being applied.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"GetMissing", testGetMissing},
		{"PutGet", testPutGet},
		{"CaseInsensitiveIDs", testCaseInsensitiveIDs},
		{"Timestamps", testTimestamps},
		{"ETags", testETags},
		{"PutConditions", testPutConditions},
		{"DeleteConditions", testDeleteConditions},
		{"DeleteThenRecreate", testDeleteThenRecreate},
		{"KindsIsolated", testKindsIsolated},
		{"ListOrderAndPaging", testListOrderAndPaging},
		{"ListRef", testListRef},
		{"ListDefaultLimit", testListDefaultLimit},
		{"ListEmpty", testListEmpty},
		{"ConcurrentCompareAndSwap", testConcurrentCAS},
		{"ConcurrentCreateSameID", testConcurrentCreate},
		{"ConcurrentDistinctWriters", testConcurrentDistinct},
		{"LargeDocument", testLargeDocument},
		{"CancelledContext", testCancelledContext},
		{"Closed", testClosed},
		{"BatchCommitsAll", testBatchCommitsAll},
		{"BatchAllOrNothing", testBatchAllOrNothing},
		{"BatchSeesItsOwnWrites", testBatchSeesItsOwnWrites},
		{"BatchRefusesEmptyIDs", testBatchRefusesEmptyIDs},
		{"BatchConcurrent", testBatchConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &closeOnce{Store: open(t)}
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
}

// closeOnce lets a test close its store early without the cleanup closing
// it a second time, since the contract does not promise Close is idempotent.
type closeOnce struct {
	store.Store
	once sync.Once
	err  error
}

func (c *closeOnce) Close() error {
	c.once.Do(func() { c.err = c.Store.Close() })
	return c.err
}

// hangLimit bounds how long any single call may take before the suite
// declares it hung; it is a safety net, not a performance expectation.
const hangLimit = 30 * time.Second

func doc(v string) []byte { return []byte(`{"v":` + strconv.Quote(v) + `}`) }

func put(t *testing.T, s store.Store, rec store.Record, cond store.Condition) store.Record {
	t.Helper()
	got, err := s.Put(t.Context(), rec, cond)
	if err != nil {
		t.Fatalf("Put(%s %q, %+v): %v", rec.Kind, rec.ID, cond, err)
	}
	return got
}

func get(t *testing.T, s store.Store, kind store.Kind, id string) store.Record {
	t.Helper()
	got, err := s.Get(t.Context(), kind, id)
	if err != nil {
		t.Fatalf("Get(%s %q): %v", kind, id, err)
	}
	return got
}

func ids(recs []store.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

// listAll pages through a kind with the given page size, checking that
// every page but the last is full and reports more.
func listAll(t *testing.T, s store.Store, kind store.Kind, ref string, limit int) []store.Record {
	t.Helper()
	var all []store.Record
	after := ""
	for page := 0; page < 10000; page++ {
		recs, more, err := s.List(t.Context(), kind, store.ListOptions{Ref: ref, After: after, Limit: limit})
		if err != nil {
			t.Fatalf("List(%s, ref %q, after %q): %v", kind, ref, after, err)
		}
		all = append(all, recs...)
		if !more {
			return all
		}
		if len(recs) != limit {
			t.Fatalf("List page %d: %d records with more=true, want a full page of %d", page, len(recs), limit)
		}
		after = recs[len(recs)-1].ID
	}
	t.Fatal("List did not finish paging")
	return nil
}

func testGetMissing(t *testing.T, s store.Store) {
	_, err := s.Get(t.Context(), store.KindEnrollment, "nobody")
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get missing: err = %v, want ErrNotFound", err)
	}
}

func testPutGet(t *testing.T, s store.Store) {
	in := store.Record{Kind: store.KindRegistration, ID: "dev-1", Ref: "Group-A", Data: doc("one")}
	got := put(t, s, in, store.Condition{})
	if got.Kind != in.Kind || got.ID != in.ID || got.Ref != in.Ref || !bytes.Equal(got.Data, in.Data) {
		t.Errorf("Put returned %s %q ref %q data %s, want %s %q ref %q data %s",
			got.Kind, got.ID, got.Ref, got.Data, in.Kind, in.ID, in.Ref, in.Data)
	}
	if got.ETag == "" {
		t.Error("Put returned an empty etag")
	}
	back := get(t, s, in.Kind, in.ID)
	if back.Kind != got.Kind || back.ID != got.ID || back.Ref != got.Ref || back.ETag != got.ETag ||
		!bytes.Equal(back.Data, got.Data) || !back.Created.Equal(got.Created) || !back.Updated.Equal(got.Updated) {
		t.Errorf("Get = %+v\nwant as Put returned %+v", back, got)
	}

	// A replacement changes the document and the ref.
	in2 := store.Record{Kind: store.KindRegistration, ID: "dev-1", Ref: "", Data: doc("two")}
	put(t, s, in2, store.Condition{})
	back = get(t, s, in.Kind, in.ID)
	if back.Ref != "" || !bytes.Equal(back.Data, in2.Data) {
		t.Errorf("after replace: ref %q data %s, want ref %q data %s", back.Ref, back.Data, "", in2.Data)
	}
}

func testCaseInsensitiveIDs(t *testing.T, s store.Store) {
	k := store.KindEnrollment
	first := put(t, s, store.Record{Kind: k, ID: "Device-ABC", Data: doc("1")}, store.Condition{})

	for _, id := range []string{"device-abc", "DEVICE-ABC", "Device-ABC", "dEVICE-aBC"} {
		if got := get(t, s, k, id); got.ID != "Device-ABC" || got.ETag != first.ETag {
			t.Errorf("Get(%q) = id %q etag %q, want id %q etag %q", id, got.ID, got.ETag, "Device-ABC", first.ETag)
		}
	}

	_, err := s.Put(t.Context(), store.Record{Kind: k, ID: "device-abc", Data: doc("x")}, store.Condition{MustNotExist: true})
	if !errors.Is(err, store.ErrExists) {
		t.Errorf("Put MustNotExist with other case: err = %v, want ErrExists", err)
	}

	// Writing under another spelling updates the same record and keeps the
	// spelling it was created with.
	upd := put(t, s, store.Record{Kind: k, ID: "DEVICE-abc", Data: doc("2")}, store.Condition{IfMatch: first.ETag})
	if upd.ID != "Device-ABC" {
		t.Errorf("Put under other case returned id %q, want original %q", upd.ID, "Device-ABC")
	}
	recs, _, err := s.List(t.Context(), k, store.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(recs); len(got) != 1 || got[0] != "Device-ABC" {
		t.Errorf("List = %q, want one record %q", got, "Device-ABC")
	}

	if err := s.Delete(t.Context(), k, "device-ABC", store.Condition{}); err != nil {
		t.Fatalf("Delete under other case: %v", err)
	}
	if _, err := s.Get(t.Context(), k, "Device-ABC"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after delete: err = %v, want ErrNotFound", err)
	}
}

func testTimestamps(t *testing.T, s store.Store) {
	k := store.KindEnrollmentGroup
	start := time.Now()
	created := put(t, s, store.Record{Kind: k, ID: "g1", Data: doc("1")}, store.Condition{})
	for name, ts := range map[string]time.Time{"Created": created.Created, "Updated": created.Updated} {
		if ts.Location() != time.UTC {
			t.Errorf("%s location %v, want UTC", name, ts.Location())
		}
		// A loose sanity bound that catches unit mistakes (seconds stored
		// as nanoseconds and the like), not a timing expectation.
		if d := ts.Sub(start); d < -time.Hour || d > time.Hour {
			t.Errorf("%s = %v, more than an hour from the time of the write (%v)", name, ts, start)
		}
	}
	if created.Updated.Before(created.Created) {
		t.Errorf("new record: Updated %v before Created %v", created.Updated, created.Created)
	}

	prev := created
	for i := range 5 {
		upd := put(t, s, store.Record{Kind: k, ID: "G1", Data: doc(strconv.Itoa(i))}, store.Condition{})
		if !upd.Created.Equal(created.Created) {
			t.Errorf("update %d: Created = %v, want it kept at %v", i, upd.Created, created.Created)
		}
		if !upd.Updated.After(prev.Updated) {
			t.Errorf("update %d: Updated = %v, want after %v", i, upd.Updated, prev.Updated)
		}
		back := get(t, s, k, "g1")
		if !back.Created.Equal(upd.Created) || !back.Updated.Equal(upd.Updated) {
			t.Errorf("update %d: Get times (%v, %v), Put returned (%v, %v)", i, back.Created, back.Updated, upd.Created, upd.Updated)
		}
		if back.Created.Location() != time.UTC || back.Updated.Location() != time.UTC {
			t.Errorf("update %d: Get times not in UTC", i)
		}
		prev = upd
	}
}

func testETags(t *testing.T, s store.Store) {
	k := store.KindConfig
	seen := map[string]bool{}
	var last store.Record
	for i := range 10 {
		last = put(t, s, store.Record{Kind: k, ID: "instance", Data: doc("same")}, store.Condition{})
		if last.ETag == "" || seen[last.ETag] {
			t.Fatalf("write %d: etag %q is empty or was seen before", i, last.ETag)
		}
		seen[last.ETag] = true
	}
	// Etags of different records differ too.
	other := put(t, s, store.Record{Kind: k, ID: "other", Data: doc("same")}, store.Condition{})
	if seen[other.ETag] {
		t.Errorf("another record got an etag already used: %q", other.ETag)
	}
	if got := get(t, s, k, "instance"); got.ETag != last.ETag {
		t.Errorf("Get etag %q, want the last write's %q", got.ETag, last.ETag)
	}
	// A recreated record must not get back an etag a client may still hold.
	if err := s.Delete(t.Context(), k, "instance", store.Condition{}); err != nil {
		t.Fatal(err)
	}
	again := put(t, s, store.Record{Kind: k, ID: "instance", Data: doc("same")}, store.Condition{})
	if seen[again.ETag] {
		t.Errorf("recreated record reused etag %q", again.ETag)
	}
}

// staleETag is an etag the record had before its current one.
const staleETag = "stale"

func testPutConditions(t *testing.T, s store.Store) {
	tests := []struct {
		name    string
		exists  bool
		cond    func(current string) store.Condition
		wantErr error
	}{
		{"none/absent", false, func(string) store.Condition { return store.Condition{} }, nil},
		{"none/present", true, func(string) store.Condition { return store.Condition{} }, nil},
		{"MustNotExist/absent", false, func(string) store.Condition { return store.Condition{MustNotExist: true} }, nil},
		{"MustNotExist/present", true, func(string) store.Condition { return store.Condition{MustNotExist: true} }, store.ErrExists},
		{"IfMatch current/present", true, func(c string) store.Condition { return store.Condition{IfMatch: c} }, nil},
		{"IfMatch stale/present", true, func(string) store.Condition { return store.Condition{IfMatch: staleETag} }, store.ErrPrecondition},
		{"IfMatch/absent", false, func(string) store.Condition { return store.Condition{IfMatch: "anything"} }, store.ErrPrecondition},
		{"IfMatch star/present", true, func(string) store.Condition { return store.Condition{IfMatch: "*"} }, nil},
		{"IfMatch star/absent", false, func(string) store.Condition { return store.Condition{IfMatch: "*"} }, store.ErrPrecondition},
	}
	k := store.KindEnrollment
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("put-cond-%d", i)
			var before store.Record
			current := ""
			if tc.exists {
				first := put(t, s, store.Record{Kind: k, ID: id, Data: doc("v1")}, store.Condition{})
				before = put(t, s, store.Record{Kind: k, ID: id, Data: doc("v2")}, store.Condition{})
				current = before.ETag
				if first.ETag == staleETag || current == staleETag {
					t.Fatal("store produced the literal etag used as stale")
				}
			}
			got, err := s.Put(t.Context(), store.Record{Kind: k, ID: id, Data: doc("new")}, tc.cond(current))
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("Put: err = %v, want %v", err, tc.wantErr)
			}
			after, gerr := s.Get(t.Context(), k, id)
			switch {
			case err == nil:
				if gerr != nil || after.ETag != got.ETag || string(after.Data) != string(doc("new")) {
					t.Errorf("after successful Put: Get = %+v, %v; want the new document with etag %q", after, gerr, got.ETag)
				}
			case tc.exists:
				if gerr != nil || after.ETag != before.ETag || string(after.Data) != string(doc("v2")) {
					t.Errorf("after failed Put: Get = %+v, %v; want the record unchanged", after, gerr)
				}
			default:
				if !errors.Is(gerr, store.ErrNotFound) {
					t.Errorf("after failed Put: Get err = %v, want ErrNotFound", gerr)
				}
			}
		})
	}
}

func testDeleteConditions(t *testing.T, s store.Store) {
	tests := []struct {
		name    string
		exists  bool
		cond    func(current string) store.Condition
		wantErr error
	}{
		{"none/absent", false, func(string) store.Condition { return store.Condition{} }, store.ErrNotFound},
		{"none/present", true, func(string) store.Condition { return store.Condition{} }, nil},
		{"MustNotExist ignored/present", true, func(string) store.Condition { return store.Condition{MustNotExist: true} }, nil},
		{"IfMatch current/present", true, func(c string) store.Condition { return store.Condition{IfMatch: c} }, nil},
		{"IfMatch stale/present", true, func(string) store.Condition { return store.Condition{IfMatch: staleETag} }, store.ErrPrecondition},
		{"IfMatch/absent", false, func(string) store.Condition { return store.Condition{IfMatch: "anything"} }, store.ErrPrecondition},
		{"IfMatch star/present", true, func(string) store.Condition { return store.Condition{IfMatch: "*"} }, nil},
		{"IfMatch star/absent", false, func(string) store.Condition { return store.Condition{IfMatch: "*"} }, store.ErrPrecondition},
	}
	k := store.KindEnrollment
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("del-cond-%d", i)
			current := ""
			if tc.exists {
				current = put(t, s, store.Record{Kind: k, ID: id, Data: doc("v")}, store.Condition{}).ETag
			}
			err := s.Delete(t.Context(), k, id, tc.cond(current))
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("Delete: err = %v, want %v", err, tc.wantErr)
			}
			after, gerr := s.Get(t.Context(), k, id)
			if err == nil || !tc.exists {
				if !errors.Is(gerr, store.ErrNotFound) {
					t.Errorf("Get after Delete: err = %v, want ErrNotFound", gerr)
				}
			} else if gerr != nil || after.ETag != current {
				t.Errorf("after failed Delete: Get = %+v, %v; want the record unchanged", after, gerr)
			}
		})
	}
}

func testDeleteThenRecreate(t *testing.T, s store.Store) {
	k := store.KindRegistration
	old := put(t, s, store.Record{Kind: k, ID: "Reborn", Data: doc("1")}, store.Condition{})
	if err := s.Delete(t.Context(), k, "reborn", store.Condition{IfMatch: old.ETag}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(t.Context(), k, "reborn", store.Condition{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second Delete: err = %v, want ErrNotFound", err)
	}
	// The new record is a new record: new spelling, and Created is not
	// inherited from the deleted one.
	fresh := put(t, s, store.Record{Kind: k, ID: "REBORN", Data: doc("2")}, store.Condition{MustNotExist: true})
	if fresh.ID != "REBORN" {
		t.Errorf("recreated id %q, want %q", fresh.ID, "REBORN")
	}
	if fresh.Created.Before(old.Updated) {
		t.Errorf("recreated Created %v is before the deleted record's last update %v", fresh.Created, old.Updated)
	}
}

func testKindsIsolated(t *testing.T, s store.Store) {
	kinds := []store.Kind{store.KindConfig, store.KindEnrollment, store.KindEnrollmentGroup, store.KindRegistration}
	for _, k := range kinds {
		put(t, s, store.Record{Kind: k, ID: "shared-id", Ref: "r", Data: doc(string(k))}, store.Condition{MustNotExist: true})
	}
	for _, k := range kinds {
		if got := get(t, s, k, "SHARED-ID"); string(got.Data) != string(doc(string(k))) || got.Kind != k {
			t.Errorf("Get(%s) = kind %s data %s, want its own document", k, got.Kind, got.Data)
		}
		recs, more, err := s.List(t.Context(), k, store.ListOptions{})
		if err != nil || more || len(recs) != 1 || recs[0].Kind != k {
			t.Errorf("List(%s) = %d records, more %v, err %v; want only its own record", k, len(recs), more, err)
		}
	}
	if err := s.Delete(t.Context(), store.KindEnrollment, "shared-id", store.Condition{}); err != nil {
		t.Fatal(err)
	}
	for _, k := range kinds {
		_, err := s.Get(t.Context(), k, "shared-id")
		if want := k == store.KindEnrollment; errors.Is(err, store.ErrNotFound) != want {
			t.Errorf("after deleting the enrollment, Get(%s) err = %v", k, err)
		}
	}
}

func testListOrderAndPaging(t *testing.T, s store.Store) {
	k := store.KindEnrollment
	// Mixed case on purpose: the order is by lower-cased id, so "b-03"
	// sorts after "A-02" although 'b' > 'A' only case-insensitively.
	var want []string
	for i := range 23 {
		id := fmt.Sprintf("dev-%02d", i)
		switch i % 3 {
		case 1:
			id = strings.ToUpper(id)
		case 2:
			id = "Dev-" + id[4:]
		}
		want = append(want, id)
	}
	// Write in reverse so insertion order cannot pass for sorting.
	for i := len(want) - 1; i >= 0; i-- {
		put(t, s, store.Record{Kind: k, ID: want[i], Data: doc(want[i])}, store.Condition{})
	}
	put(t, s, store.Record{Kind: k, ID: "a-first", Data: doc("a-first")}, store.Condition{})
	put(t, s, store.Record{Kind: k, ID: "Z-last", Data: doc("Z-last")}, store.Condition{})
	want = append(append([]string{"a-first"}, want...), "Z-last")

	for _, limit := range []int{1, 5, 10, 25, 50} {
		t.Run(fmt.Sprintf("limit=%d", limit), func(t *testing.T) {
			got := listAll(t, s, k, "", limit)
			if strings.Join(ids(got), ",") != strings.Join(want, ",") {
				t.Errorf("paged List =\n%q\nwant\n%q", ids(got), want)
			}
			for _, r := range got {
				if string(r.Data) != string(doc(r.ID)) || r.ETag == "" || r.Created.IsZero() || r.Kind != k {
					t.Errorf("List record %q incomplete: %+v", r.ID, r)
				}
			}
		})
	}

	t.Run("after is exclusive and case-insensitive", func(t *testing.T) {
		recs, more, err := s.List(t.Context(), k, store.ListOptions{After: "DEV-10", Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(ids(recs), ","); got != "Dev-11,dev-12,DEV-13" || !more {
			t.Errorf("List after DEV-10 = %s more %v, want Dev-11,dev-12,DEV-13 more true", got, more)
		}
	})
	t.Run("after an id that does not exist", func(t *testing.T) {
		recs, _, err := s.List(t.Context(), k, store.ListOptions{After: "dev-105", Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(recs); len(got) != 1 || got[0] != "Dev-11" {
			t.Errorf("List after dev-105 = %q, want [Dev-11]", got)
		}
	})
	t.Run("after the last", func(t *testing.T) {
		recs, more, err := s.List(t.Context(), k, store.ListOptions{After: "z-last"})
		if err != nil || len(recs) != 0 || more {
			t.Errorf("List after the last = %q more %v err %v, want nothing", ids(recs), more, err)
		}
	})
	t.Run("exact page has no more", func(t *testing.T) {
		recs, more, err := s.List(t.Context(), k, store.ListOptions{Limit: len(want)})
		if err != nil || len(recs) != len(want) || more {
			t.Errorf("List with limit = total: %d records more %v err %v, want %d and no more", len(recs), more, err, len(want))
		}
	})
}

func testListRef(t *testing.T, s store.Store) {
	k := store.KindRegistration
	var wantA []string
	for i := range 12 {
		id := fmt.Sprintf("reg-%02d", i)
		ref := []string{"Group-A", "group-a", "Group-B", ""}[i%4]
		put(t, s, store.Record{Kind: k, ID: id, Ref: ref, Data: doc(id)}, store.Condition{})
		if i%4 < 2 {
			wantA = append(wantA, id)
		}
	}
	for _, ref := range []string{"group-a", "GROUP-A"} {
		for _, limit := range []int{2, 100} {
			got := listAll(t, s, k, ref, limit)
			if strings.Join(ids(got), ",") != strings.Join(wantA, ",") {
				t.Errorf("List ref %q limit %d = %q, want %q", ref, limit, ids(got), wantA)
			}
			for _, r := range got {
				if !strings.EqualFold(r.Ref, "group-a") {
					t.Errorf("List ref %q returned %q with ref %q", ref, r.ID, r.Ref)
				}
			}
		}
	}
	// The original spelling of the ref is kept.
	if got := get(t, s, k, "reg-00"); got.Ref != "Group-A" {
		t.Errorf("ref = %q, want %q", got.Ref, "Group-A")
	}
	// Moving a record to another ref moves it between filtered lists.
	put(t, s, store.Record{Kind: k, ID: "reg-00", Ref: "group-b", Data: doc("moved")}, store.Condition{})
	if got := listAll(t, s, k, "Group-A", 100); len(got) != len(wantA)-1 {
		t.Errorf("after moving reg-00: %d records with ref Group-A, want %d", len(got), len(wantA)-1)
	}
	if got := listAll(t, s, k, "nobody", 100); len(got) != 0 {
		t.Errorf("List with unknown ref = %q, want nothing", ids(got))
	}
}

func testListDefaultLimit(t *testing.T, s store.Store) {
	k := store.KindEnrollment
	n := store.DefaultListLimit + 7
	writeConcurrently(t, s, k, n, 8)
	recs, more, err := s.List(t.Context(), k, store.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != store.DefaultListLimit || !more {
		t.Fatalf("List with Limit 0 = %d records more %v, want %d and more", len(recs), more, store.DefaultListLimit)
	}
	rest, more, err := s.List(t.Context(), k, store.ListOptions{After: recs[len(recs)-1].ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != 7 || more {
		t.Errorf("second page = %d records more %v, want 7 and no more", len(rest), more)
	}
}

func testListEmpty(t *testing.T, s store.Store) {
	recs, more, err := s.List(t.Context(), store.KindRegistration, store.ListOptions{Ref: "x", Limit: 5})
	if err != nil || len(recs) != 0 || more {
		t.Errorf("List of empty kind = %d records more %v err %v", len(recs), more, err)
	}
}

// writeConcurrently creates n records of kind k ("w-0000"...) from the given
// number of goroutines.
func writeConcurrently(t *testing.T, s store.Store, k store.Kind, n, workers int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				id := fmt.Sprintf("w-%04d", i)
				if _, err := s.Put(t.Context(), store.Record{Kind: k, ID: id, Data: doc(id)}, store.Condition{MustNotExist: true}); err != nil {
					errs <- fmt.Errorf("put %s: %w", id, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

func testConcurrentCAS(t *testing.T, s store.Store) {
	const n = 32
	k := store.KindConfig
	put(t, s, store.Record{Kind: k, ID: "counter", Data: []byte("0")}, store.Condition{})

	// A compare-and-swap only fails when another increment committed after
	// our read, and each goroutine commits once, so no goroutine can fail
	// more than n-1 times; the bound below leaves room but stays finite.
	const maxAttempts = 4 * n
	var wg sync.WaitGroup
	var mu sync.Mutex
	successes, conflicts := 0, 0
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			for range maxAttempts {
				cur, err := s.Get(t.Context(), k, "counter")
				if err != nil {
					errs <- err
					return
				}
				v, err := strconv.Atoi(string(cur.Data))
				if err != nil {
					errs <- fmt.Errorf("counter document %q: %w", cur.Data, err)
					return
				}
				next := store.Record{Kind: k, ID: "counter", Data: []byte(strconv.Itoa(v + 1))}
				_, err = s.Put(t.Context(), next, store.Condition{IfMatch: cur.ETag})
				if errors.Is(err, store.ErrPrecondition) {
					mu.Lock()
					conflicts++
					mu.Unlock()
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				successes++
				mu.Unlock()
				return
			}
			errs <- fmt.Errorf("no successful increment in %d attempts", maxAttempts)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	final := get(t, s, k, "counter")
	if string(final.Data) != strconv.Itoa(n) || successes != n {
		t.Errorf("counter = %s after %d successful increments, want %d", final.Data, successes, n)
	}
	t.Logf("%d increments, %d conflicts", successes, conflicts)
}

func testConcurrentCreate(t *testing.T, s store.Store) {
	const n = 32
	k := store.KindRegistration
	var wg sync.WaitGroup
	results := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			_, err := s.Put(t.Context(), store.Record{Kind: k, ID: "contended", Data: doc(strconv.Itoa(i))}, store.Condition{MustNotExist: true})
			results <- err
		})
	}
	wg.Wait()
	close(results)
	created := 0
	for err := range results {
		switch {
		case err == nil:
			created++
		case !errors.Is(err, store.ErrExists):
			t.Errorf("Put MustNotExist: %v", err)
		}
	}
	if created != 1 {
		t.Errorf("%d concurrent creates succeeded, want exactly 1", created)
	}
}

func testConcurrentDistinct(t *testing.T, s store.Store) {
	k := store.KindRegistration
	const n = 512
	writeConcurrently(t, s, k, n, 64)
	got := listAll(t, s, k, "", 100)
	if len(got) != n {
		t.Fatalf("List after %d concurrent creates = %d records", n, len(got))
	}
	for i, r := range got {
		if want := fmt.Sprintf("w-%04d", i); r.ID != want || string(r.Data) != string(doc(want)) {
			t.Errorf("record %d = %q %s, want %q", i, r.ID, r.Data, want)
		}
	}
}

func testLargeDocument(t *testing.T, s store.Store) {
	const size = 1 << 20
	var b bytes.Buffer
	b.WriteString(`{"blob":"`)
	for i := 0; b.Len() < size; i++ {
		b.WriteByte(byte('a' + i%26))
	}
	b.WriteString(`"}`)
	data := b.Bytes()

	k := store.KindEnrollmentGroup
	got := put(t, s, store.Record{Kind: k, ID: "big", Data: data}, store.Condition{})
	if !bytes.Equal(got.Data, data) {
		t.Error("Put returned a different document")
	}
	if back := get(t, s, k, "big"); !bytes.Equal(back.Data, data) {
		t.Errorf("Get returned %d bytes, want the %d written", len(back.Data), len(data))
	}
	recs, _, err := s.List(t.Context(), k, store.ListOptions{})
	if err != nil || len(recs) != 1 || !bytes.Equal(recs[0].Data, data) {
		t.Errorf("List of the large document: %d records, err %v", len(recs), err)
	}
}

// bounded runs fn and fails the test if it does not return within
// hangLimit, so a store that hangs fails the suite instead of stalling it.
func bounded(t *testing.T, name string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	timer := time.NewTimer(hangLimit)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		t.Fatalf("%s did not return within %v", name, hangLimit)
		return nil
	}
}

func testCancelledContext(t *testing.T, s store.Store) {
	k := store.KindEnrollment
	put(t, s, store.Record{Kind: k, ID: "present", Data: doc("p")}, store.Condition{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	calls := []struct {
		name string
		fn   func() error
	}{
		{"Get", func() error { _, err := s.Get(ctx, k, "present"); return err }},
		{"Put", func() error {
			_, err := s.Put(ctx, store.Record{Kind: k, ID: "never", Data: doc("n")}, store.Condition{})
			return err
		}},
		{"Delete", func() error { return s.Delete(ctx, k, "present", store.Condition{}) }},
		{"List", func() error { _, _, err := s.List(ctx, k, store.ListOptions{}); return err }},
	}
	for _, c := range calls {
		if err := bounded(t, c.name, c.fn); err == nil {
			t.Errorf("%s with a cancelled context succeeded, want an error", c.name)
		}
	}
	// Writes that failed must not have happened.
	if _, err := s.Get(t.Context(), k, "never"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Put with cancelled context was applied: Get err = %v", err)
	}
	get(t, s, k, "present")
}

func testClosed(t *testing.T, s store.Store) {
	k := store.KindEnrollment
	put(t, s, store.Record{Kind: k, ID: "x", Data: doc("x")}, store.Condition{})
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ctx := t.Context()
	calls := []struct {
		name string
		fn   func() error
	}{
		{"Get", func() error { _, err := s.Get(ctx, k, "x"); return err }},
		{"Put", func() error {
			_, err := s.Put(ctx, store.Record{Kind: k, ID: "y", Data: doc("y")}, store.Condition{})
			return err
		}},
		{"Delete", func() error { return s.Delete(ctx, k, "x", store.Condition{}) }},
		{"List", func() error { _, _, err := s.List(ctx, k, store.ListOptions{}); return err }},
	}
	for _, c := range calls {
		if err := bounded(t, c.name, c.fn); err == nil {
			t.Errorf("%s on a closed store succeeded, want an error", c.name)
		}
	}
}
