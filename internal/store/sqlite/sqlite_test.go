package sqlite

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/storetest"
)

func openTemp(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openTemp(t) })
}

func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open(driverName, dsn(path, false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

type appliedMigration struct {
	version   int
	name      string
	appliedAt int64
}

func appliedMigrations(t *testing.T, path string) []appliedMigration {
	t.Helper()
	rows, err := rawDB(t, path).QueryContext(t.Context(), "SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []appliedMigration
	for rows.Next() {
		var m appliedMigration
		if err := rows.Scan(&m.version, &m.name, &m.appliedAt); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestMigrations(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "data", "dpsd.db") // directory created by Open
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	latest := migrations[len(migrations)-1].version
	if v, err := s.SchemaVersion(ctx); err != nil || v != latest {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, latest)
	}
	if _, err := s.Put(ctx, store.Record{Kind: store.KindConfig, ID: "instance", Data: []byte(`{}`)}, store.Condition{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	first := appliedMigrations(t, path)
	if len(first) != len(migrations) {
		t.Fatalf("schema_migrations has %d rows, want %d", len(first), len(migrations))
	}

	t.Run("reopen keeps data and does not reapply", func(t *testing.T) {
		s, err := Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Get(ctx, store.KindConfig, "instance"); err != nil {
			t.Errorf("record lost on reopen: %v", err)
		}
		again := appliedMigrations(t, path)
		if fmt.Sprint(again) != fmt.Sprint(first) {
			t.Errorf("schema_migrations changed on reopen:\n%v\nwant\n%v", again, first)
		}
	})

	t.Run("new migration applied once", func(t *testing.T) {
		orig := migrations
		t.Cleanup(func() { migrations = orig })
		migrations = append(append([]migration(nil), orig...), migration{
			version: latest + 1,
			name:    "test extra",
			stmts:   []string{"CREATE TABLE test_extra (x INTEGER)"},
		})
		for range 2 {
			s, err := Open(ctx, path)
			if err != nil {
				t.Fatal(err)
			}
			if v, err := s.SchemaVersion(ctx); err != nil || v != latest+1 {
				t.Errorf("SchemaVersion = %d, %v; want %d", v, err, latest+1)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}
		got := appliedMigrations(t, path)
		if len(got) != len(first)+1 || fmt.Sprint(got[:len(first)]) != fmt.Sprint(first) || got[len(first)].name != "test extra" {
			t.Errorf("schema_migrations = %v, want the original rows plus one for the new migration", got)
		}
	})

	t.Run("newer database refused", func(t *testing.T) {
		// The previous subtest left the file at latest+1.
		_, err := Open(ctx, path)
		if err == nil || !strings.Contains(err.Error(), "newer") {
			t.Errorf("Open of a database from a newer dpsd: err = %v, want a refusal", err)
		}
	})

	t.Run("failed migration leaves the schema as it was", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "dpsd.db")
		orig := migrations
		t.Cleanup(func() { migrations = orig })
		migrations = append(append([]migration(nil), orig...), migration{
			version: latest + 1,
			name:    "broken",
			stmts:   []string{"CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL"},
		})
		if _, err := Open(ctx, path); err == nil {
			t.Fatal("Open with a broken migration succeeded")
		}
		var n int
		if err := rawDB(t, path).QueryRowContext(ctx, "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('records', 'half_done', 'schema_migrations')").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%d tables survive a failed migration, want none", n)
		}
	})
}

func TestDurableAcrossReopen(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "dpsd.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	// Many concurrent writers, so several batches are still queued when
	// Close starts: Close must commit them, not drop them.
	const writers, each = 32, 20
	var mu sync.Mutex
	acked := map[string]store.Record{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("dev-%02d-%02d", w, i)
				rec, err := s.Put(ctx, store.Record{Kind: store.KindRegistration, ID: id, Ref: "g", Data: []byte(`{"n":1}`)}, store.Condition{})
				if err != nil {
					t.Errorf("Put %s: %v", id, err)
					return
				}
				mu.Lock()
				acked[id] = rec
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkAcked(t, s, acked)
}

func checkAcked(t *testing.T, s *Store, acked map[string]store.Record) {
	t.Helper()
	for id, want := range acked {
		got, err := s.Get(t.Context(), store.KindRegistration, id)
		if err != nil {
			t.Errorf("acknowledged write of %s lost: %v", id, err)
			continue
		}
		if got.ETag != want.ETag || !got.Updated.Equal(want.Updated) {
			t.Errorf("%s: etag %s updated %v, want the acknowledged %s %v", id, got.ETag, got.Updated, want.ETag, want.Updated)
		}
	}
}

func TestCloseWithWritesInFlight(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "dpsd.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	acked := map[string]store.Record{}
	var wg sync.WaitGroup
	// Close once writes are flowing, so that it meets queued ones.
	flowing := make(chan struct{})
	var flowingOnce sync.Once
	for w := range 64 {
		wg.Go(func() {
			for i := range 50 {
				id := fmt.Sprintf("dev-%02d-%02d", w, i)
				rec, err := s.Put(ctx, store.Record{Kind: store.KindRegistration, ID: id, Data: []byte(`{}`)}, store.Condition{})
				if errors.Is(err, store.ErrUnavailable) {
					return // closed under us: fine, as long as it is not acknowledged
				}
				if err != nil {
					t.Errorf("Put %s: %v", id, err)
					return
				}
				mu.Lock()
				acked[id] = rec
				if len(acked) == 100 {
					flowingOnce.Do(func() { close(flowing) })
				}
				mu.Unlock()
			}
		})
	}
	allDone := make(chan struct{})
	go func() { wg.Wait(); close(allDone) }()
	select {
	case <-flowing:
	case <-allDone: // only if writes failed; reported by the writers
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	<-allDone

	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkAcked(t, s, acked)
	t.Logf("%d writes acknowledged before Close", len(acked))
}

// crashEnv makes the test binary act as the crashing child of TestCrash.
const crashEnv = "DPSD_SQLITE_CRASH_DB"

// TestCrash kills a process that is writing (SIGKILL, no Close, no
// checkpoint) and checks that every write it acknowledged is in the
// database afterwards.
func TestCrash(t *testing.T) {
	if path := os.Getenv(crashEnv); path != "" {
		crashChild(path)
		return
	}
	path := filepath.Join(t.TempDir(), "dpsd.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrash$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for enough acknowledgements that the kill lands mid-stream,
	// then kill the child by its own handle.
	const wantAcks = 300
	acked := map[string]store.Record{}
	sc := bufio.NewScanner(out)
	for len(acked) < wantAcks && sc.Scan() {
		var id, etag, updated string
		if _, err := fmt.Sscan(sc.Text(), &id, &etag, &updated); err != nil {
			continue // test framework output
		}
		var rec store.Record
		rec.ETag = etag
		if err := rec.Updated.UnmarshalText([]byte(updated)); err != nil {
			t.Fatalf("child line %q: %v", sc.Text(), err)
		}
		acked[id] = rec
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if len(acked) < wantAcks {
		t.Fatalf("child acknowledged only %d writes before exiting", len(acked))
	}

	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer s.Close()
	checkAcked(t, s, acked)
}

// crashChild writes until killed, printing each acknowledged write. It
// stops on its own after a bounded number of writes in case the parent
// never kills it.
func crashChild(path string) {
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 2000 {
				id := fmt.Sprintf("dev-%02d-%04d", g, i)
				rec, err := s.Put(ctx, store.Record{Kind: store.KindRegistration, ID: id, Data: []byte(`{"status":"assigned"}`)}, store.Condition{})
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				updated, _ := rec.Updated.MarshalText()
				mu.Lock()
				fmt.Fprintln(w, id, rec.ETag, string(updated))
				w.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	// Deliberately no Close: the process just ends.
	os.Exit(0)
}

func TestBusyIsUnavailable(t *testing.T) {
	old := busyTimeout
	busyTimeout = 50 * time.Millisecond // a real wait, but short for a test
	t.Cleanup(func() { busyTimeout = old })

	path := filepath.Join(t.TempDir(), "dpsd.db")
	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	rec := store.Record{Kind: store.KindEnrollment, ID: "e1", Data: []byte(`{}`)}
	if _, err := s.Put(ctx, rec, store.Condition{}); err != nil {
		t.Fatal(err)
	}

	// Another connection (as another process would) takes the write lock.
	other := rawDB(t, path)
	conn, err := other.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	_, err = s.Put(ctx, rec, store.Condition{})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Put while another connection holds the lock: err = %v, want ErrUnavailable", err)
	}
	// Reads are not blocked by a writer in WAL mode.
	if _, err := s.Get(ctx, store.KindEnrollment, "e1"); err != nil {
		t.Errorf("Get while locked: %v", err)
	}
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, rec, store.Condition{}); err != nil {
		t.Errorf("Put after the lock is released: %v", err)
	}
}

func TestPathWithQueryCharacters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "odd ?name#1.db")
	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(t.Context(), store.Record{Kind: store.KindConfig, ID: "x", Data: []byte(`{}`)}, store.Condition{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at the path given: %v", err)
	}
}
