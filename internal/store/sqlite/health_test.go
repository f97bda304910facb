package sqlite

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/testenv"
)

// TestCheckWriteOnAFullDisk fills a real file system under the database:
// SQLite still answers reads, so only a write shows that the store cannot
// serve registrations, and CheckWrite must say so until space is back.
func TestCheckWriteOnAFullDisk(t *testing.T) {
	disk := testenv.SmallDisk(t, 4<<20)
	s, err := Open(t.Context(), filepath.Join(disk.Dir, "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	put := func(i int) error {
		_, err := s.Put(t.Context(), store.Record{Kind: store.KindRegistration, ID: fmt.Sprint("dev-", i), Data: make([]byte, 8<<10)}, store.Condition{})
		return err
	}
	if err := put(0); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckWrite(t.Context()); err != nil {
		t.Fatalf("CheckWrite on a working disk: %v", err)
	}

	disk.Fill(t)
	var failed error
	for i := 1; i < 100 && failed == nil; i++ {
		failed = put(i)
	}
	if !errors.Is(failed, store.ErrUnavailable) {
		t.Fatalf("writes to a full disk: %v, want store.ErrUnavailable", failed)
	}
	if _, err := s.Get(t.Context(), store.KindRegistration, "dev-0"); err != nil {
		t.Fatalf("read from a full disk: %v (reads should still work)", err)
	}
	if err := s.CheckWrite(t.Context()); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("CheckWrite on a full disk = %v, want store.ErrUnavailable", err)
	}

	disk.Free(t)
	if err := put(1000); err != nil {
		t.Fatalf("write after space came back: %v", err)
	}
	if err := s.CheckWrite(t.Context()); err != nil {
		t.Errorf("CheckWrite after space came back: %v", err)
	}
}
