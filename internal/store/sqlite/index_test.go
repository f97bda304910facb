package sqlite

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/storetest"
)

func TestConformanceWithoutIndex(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"), WithoutIndex())
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

// settle waits until kind's index has left the loading states (a Get
// starts the load) and returns the state it settled in.
func settle(t *testing.T, s *Store, kind store.Kind) indexState {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		switch st := s.idx.state(kind); st {
		case ready, tooMany:
			return st
		case unindexed:
			s.Get(t.Context(), kind, "settle-probe")
		}
		if time.Now().After(deadline) {
			t.Fatalf("index of %s never loaded", kind)
		}
		time.Sleep(time.Millisecond)
	}
}

func put(t *testing.T, s *Store, kind store.Kind, id string) store.Record {
	t.Helper()
	rec, err := s.Put(t.Context(), store.Record{Kind: kind, ID: id, Data: []byte(`{}`)}, store.Condition{})
	if err != nil {
		t.Fatalf("Put %s %s: %v", kind, id, err)
	}
	return rec
}

// fill writes ids prefix0..prefix(n-1) concurrently, so that group commit
// makes it quick.
func fill(t *testing.T, s *Store, kind store.Kind, prefix string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			for i := w; i < n; i += 32 {
				if _, err := s.Put(t.Context(), store.Record{Kind: kind, ID: fmt.Sprint(prefix, i), Data: []byte(`{}`)}, store.Condition{}); err != nil {
					t.Errorf("Put: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// wantGet checks that Get of id finds the record (as spelled first) or,
// with want "", that it reports ErrNotFound.
func wantGet(t *testing.T, s *Store, kind store.Kind, id, want string) {
	t.Helper()
	rec, err := s.Get(t.Context(), kind, id)
	switch {
	case want == "" && !errors.Is(err, store.ErrNotFound):
		t.Errorf("Get %s %q = %q, %v; want ErrNotFound", kind, id, rec.ID, err)
	case want != "" && (err != nil || rec.ID != want):
		t.Errorf("Get %s %q = %q, %v; want %q", kind, id, rec.ID, err, want)
	}
}

// TestIndexAnswersMissesWithoutDatabase proves that a miss does not reach
// SQLite by closing the read pool under the store: misses still answer
// ErrNotFound, while hits (which must read the database) now fail.
func TestIndexAnswersMissesWithoutDatabase(t *testing.T) {
	s := openTemp(t)
	defer s.Close()
	put(t, s, store.KindRegistration, "Dev-1")
	put(t, s, store.KindEnrollment, "Other-Kind")
	if st := settle(t, s, store.KindRegistration); st != ready {
		t.Fatalf("state = %v, want ready", st)
	}
	put(t, s, store.KindRegistration, "Dev-2") // after the load

	wantGet(t, s, store.KindRegistration, "dev-1", "Dev-1")
	wantGet(t, s, store.KindRegistration, "DEV-2", "Dev-2")
	wantGet(t, s, store.KindRegistration, "dev-3", "")
	wantGet(t, s, store.KindRegistration, "other-kind", "") // kinds are separate

	if err := s.rdb.Close(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dev-3", "Dev-10", "", "other-kind"} {
		if _, err := s.Get(t.Context(), store.KindRegistration, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get of missing %q with the database closed: %v, want ErrNotFound", id, err)
		}
	}
	for _, id := range []string{"dev-1", "Dev-2"} {
		if _, err := s.Get(t.Context(), store.KindRegistration, id); err == nil || errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get of existing %q with the database closed: %v, want a database error", id, err)
		}
	}
}

func TestIndexFollowsWrites(t *testing.T) {
	s := openTemp(t)
	defer s.Close()
	const k = store.KindRegistration
	settle(t, s, k) // an empty kind

	put(t, s, k, "Thermostat-ÄBC")
	wantGet(t, s, k, "thermostat-äbc", "Thermostat-ÄBC")
	wantGet(t, s, k, "THERMOSTAT-ÄBC", "Thermostat-ÄBC")
	wantGet(t, s, k, "thermostat-abc", "")

	// A replace keeps the first spelling and stays found.
	if _, err := s.Put(t.Context(), store.Record{Kind: k, ID: "THERMOSTAT-äbc", Data: []byte(`{"v":2}`)}, store.Condition{IfMatch: "*"}); err != nil {
		t.Fatal(err)
	}
	wantGet(t, s, k, "Thermostat-äbc", "Thermostat-ÄBC")

	if err := s.Delete(t.Context(), k, "thermostat-ÄBC", store.Condition{}); err != nil {
		t.Fatal(err)
	}
	wantGet(t, s, k, "Thermostat-ÄBC", "")
	put(t, s, k, "thermostat-äbc")
	wantGet(t, s, k, "Thermostat-ÄBC", "thermostat-äbc")

	// A write that fails its condition leaves the record absent.
	_, err := s.Put(t.Context(), store.Record{Kind: k, ID: "never", Data: []byte(`{}`)}, store.Condition{IfMatch: "*"})
	if !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("conditional Put of a missing record: %v", err)
	}
	wantGet(t, s, k, "never", "")

	if st := s.idx.state(k); st != ready {
		t.Errorf("state = %v, want ready", st)
	}
}

// TestIndexLoadsExistingDatabase opens a database whose records were
// written by a previous Store and by another connection, as another
// program would before dpsd starts.
func TestIndexLoadsExistingDatabase(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "dpsd.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, store.KindEnrollment, "Written-By-Store")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, path)
	for _, id := range []string{"Raw-1", "RAW-2"} {
		if _, err := db.ExecContext(ctx,
			"INSERT INTO records (kind, id_key, id, data, etag, created, updated) VALUES (?, ?, ?, '{}', 'e', 1, 1)",
			string(store.KindEnrollment), strings.ToLower(id), id); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st := settle(t, s, store.KindEnrollment); st != ready {
		t.Fatalf("state = %v, want ready", st)
	}
	wantGet(t, s, store.KindEnrollment, "written-by-store", "Written-By-Store")
	wantGet(t, s, store.KindEnrollment, "raw-1", "Raw-1")
	wantGet(t, s, store.KindEnrollment, "Raw-2", "RAW-2")
	wantGet(t, s, store.KindEnrollment, "raw-3", "")
}

func TestIndexBound(t *testing.T) {
	old := maxIndexedKeys
	maxIndexedKeys = 10
	t.Cleanup(func() { maxIndexedKeys = old })
	s := openTemp(t)
	defer s.Close()
	const k = store.KindRegistration

	t.Run("too many to load", func(t *testing.T) {
		for i := range 11 {
			put(t, s, store.KindEnrollment, fmt.Sprint("e", i))
		}
		if st := settle(t, s, store.KindEnrollment); st != tooMany {
			t.Fatalf("state = %v, want tooMany", st)
		}
		wantGet(t, s, store.KindEnrollment, "E3", "e3")
		wantGet(t, s, store.KindEnrollment, "e11", "")
	})

	t.Run("deleted ids are shed by a reload", func(t *testing.T) {
		settle(t, s, k)
		for i := range 10 {
			put(t, s, k, fmt.Sprint("gone", i))
		}
		for i := range 10 {
			if err := s.Delete(t.Context(), k, fmt.Sprint("gone", i), store.Condition{}); err != nil {
				t.Fatal(err)
			}
		}
		put(t, s, k, "kept") // the 11th hash: mostly deleted ids, so reload
		if st := settle(t, s, k); st != ready {
			t.Fatalf("state = %v, want ready after the reload", st)
		}
		if n := len(s.idx.kind(k).hashes); n != 1 {
			t.Errorf("%d hashes after the reload, want 1", n)
		}
		wantGet(t, s, k, "KEPT", "kept")
		wantGet(t, s, k, "gone1", "")
	})

	t.Run("growing past the bound", func(t *testing.T) {
		for i := range 10 {
			put(t, s, k, fmt.Sprint("more", i))
		}
		if st := s.idx.state(k); st != tooMany {
			t.Fatalf("state = %v, want tooMany", st)
		}
		wantGet(t, s, k, "more9", "more9")
		wantGet(t, s, k, "more10", "")
	})
}

// TestIndexConcurrent has Gets race with writes, including the load of
// the index while writes commit: every acknowledged write must be found
// by every Get that starts after the acknowledgement, and ids never
// written must never be found. Run it with -race.
func TestIndexConcurrent(t *testing.T) {
	for round := range 10 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			s := openTemp(t)
			defer s.Close()
			const k = store.KindRegistration
			fill(t, s, k, "old-", 200) // something for the load to read

			const writers, each = 8, 60
			var acked [writers]atomic.Int64 // writer w has acknowledged ids 0..acked[w]-1
			ctx, cancel := context.WithCancel(t.Context())
			var readers sync.WaitGroup
			for r := range 4 {
				readers.Go(func() {
					for i := 0; ctx.Err() == nil; i++ {
						w := (i + r) % writers
						n := acked[w].Load()
						if n > 0 {
							id := fmt.Sprintf("W%d-%d", w, (int64(i)*7919)%n)
							if _, err := s.Get(ctx, k, id); err != nil && ctx.Err() == nil {
								t.Errorf("Get of acknowledged %s: %v", id, err)
								return
							}
						}
						id := fmt.Sprintf("w%d-%d", w, n+each) // never written
						if _, err := s.Get(ctx, k, id); !errors.Is(err, store.ErrNotFound) && ctx.Err() == nil {
							t.Errorf("Get of missing %s: %v", id, err)
							return
						}
						// Let the writers run too: on few cores, readers
						// that never yield would starve them.
						runtime.Gosched()
					}
				})
			}
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() {
					for i := range each {
						id := fmt.Sprintf("w%d-%d", w, i)
						if _, err := s.Put(ctx, store.Record{Kind: k, ID: id, Data: []byte(`{}`)}, store.Condition{MustNotExist: true}); err != nil {
							t.Errorf("Put %s: %v", id, err)
							return
						}
						acked[w].Store(int64(i + 1))
						if i%10 == 9 {
							if err := s.Delete(ctx, k, fmt.Sprint("old-", w*each+i), store.Condition{}); err != nil && !errors.Is(err, store.ErrNotFound) {
								t.Errorf("Delete: %v", err)
							}
						}
					}
				})
			}
			wg.Wait()
			cancel()
			readers.Wait()
			if st := settle(t, s, k); st != ready {
				t.Errorf("state = %v, want ready", st)
			}
			for w := range writers {
				for i := range each {
					wantGet(t, s, k, fmt.Sprintf("W%d-%d", w, i), fmt.Sprintf("w%d-%d", w, i))
				}
			}
		})
	}
}

func TestOneWriterPerFile(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "dpsd.db")
	first, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := Open(ctx, path); err == nil {
		s.Close()
		t.Fatal("a second indexed Store opened the file")
	}
	if s, err := Open(ctx, path, WithoutIndex()); err == nil {
		s.Close()
		t.Fatal("a Store WithoutIndex opened a file an indexed Store has open")
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	// Stores without the index share the file, and keep an indexed one out.
	a, err := Open(ctx, path, WithoutIndex())
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, path, WithoutIndex())
	if err != nil {
		t.Fatal(err)
	}
	put(t, a, store.KindConfig, "from-a")
	wantGet(t, b, store.KindConfig, "from-a", "from-a")
	if s, err := Open(ctx, path); err == nil {
		s.Close()
		t.Fatal("an indexed Store opened a file Stores WithoutIndex have open")
	}
	a.Close()
	b.Close()

	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open after the others closed: %v", err)
	}
	defer s.Close()
	wantGet(t, s, store.KindConfig, "from-a", "from-a")
}

// TestCloseDuringLoad closes a store whose index is loading.
func TestCloseDuringLoad(t *testing.T) {
	s := openTemp(t)
	fill(t, s, store.KindRegistration, "", 2000)
	s.Get(t.Context(), store.KindRegistration, "x") // starts the load
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(t.Context(), store.KindRegistration, "x"); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Get after Close: %v", err)
	}
}
