package postgres

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/linkedhub"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/postgres/pgtest"
)

// notifyWait bounds every wait for a change to arrive.
const notifyWait = 10 * time.Second

func TestWatchedKindsAreTheCachedOnes(t *testing.T) {
	for _, k := range []store.Kind{store.KindEnrollmentGroup, linkedhub.Kind} {
		if !slices.Contains(watchedKinds, k) {
			t.Errorf("watchedKinds %q lacks %q, which nodes cache", watchedKinds, k)
		}
	}
}

// TestTriggersNameTheWatchedKinds checks that migration 2's triggers fire
// for exactly the watched kinds.
func TestTriggersNameTheWatchedKinds(t *testing.T) {
	quoted := make([]string, len(watchedKinds))
	for i, k := range watchedKinds {
		quoted[i] = "'" + string(k) + "'"
	}
	in := "kind IN (" + strings.Join(quoted, ", ") + ")"
	n := 0
	for _, stmt := range migrations[1].stmts {
		if strings.Contains(stmt, "CREATE TRIGGER") {
			n++
			if !strings.Contains(stmt, in) {
				t.Errorf("trigger does not fire for %s:\n%s", in, stmt)
			}
		}
	}
	if n != 2 {
		t.Errorf("found %d triggers in migration 2, want 2", n)
	}
}

// changes subscribes to s's changes for the rest of the test and waits
// until it listens, which it tells by delivering every watched kind.
func changes(t *testing.T, s *Store) <-chan store.Kind {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := s.Changes(ctx)
	if err != nil {
		t.Fatalf("Changes: %v", err)
	}
	expectAll(t, ch, "when it starts listening")
	return ch
}

// expectAll waits for every watched kind, in any order, and nothing else.
func expectAll(t *testing.T, ch <-chan store.Kind, when string) {
	t.Helper()
	want := slices.Clone(watchedKinds)
	timeout := time.After(notifyWait)
	for len(want) > 0 {
		select {
		case k, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed %s; still expecting %q", when, want)
			}
			i := slices.Index(want, k)
			if i < 0 {
				t.Fatalf("got %q %s; want only the watched kinds, still expecting %q", k, when, want)
			}
			want = slices.Delete(want, i, i+1)
		case <-timeout:
			t.Fatalf("still expecting %q %s after %v", want, when, notifyWait)
		}
	}
}

// expect waits for kind and fails on any other kind before it.
func expect(t *testing.T, ch <-chan store.Kind, kind store.Kind, after string) {
	t.Helper()
	select {
	case k, ok := <-ch:
		if !ok {
			t.Fatalf("channel closed; want %q after %s", kind, after)
		}
		if k != kind {
			t.Fatalf("got %q, want %q after %s", k, kind, after)
		}
	case <-time.After(notifyWait):
		t.Fatalf("no %q within %v after %s", kind, notifyWait, after)
	}
}

func put(t *testing.T, s *Store, kind store.Kind, id string) {
	t.Helper()
	if _, err := s.Put(t.Context(), store.Record{Kind: kind, ID: id, Data: []byte("{}")}, store.Condition{}); err != nil {
		t.Fatalf("Put %s %s: %v", kind, id, err)
	}
}

func del(t *testing.T, s *Store, kind store.Kind, id string) {
	t.Helper()
	if err := s.Delete(t.Context(), kind, id, store.Condition{}); err != nil {
		t.Fatalf("Delete %s %s: %v", kind, id, err)
	}
}

// TestChangesAcrossStores checks that writes through one Store (one node)
// reach another Store's Changes for the watched kinds only. Notifications
// arrive in commit order, so a watched write after unwatched ones proves
// the unwatched ones sent nothing once it arrives alone.
func TestChangesAcrossStores(t *testing.T) {
	a, dsn := openFresh(t)
	b, err := Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ch := changes(t, b)

	// What every registration writes must not notify.
	put(t, a, store.KindRegistration, "dev-01")
	put(t, a, "hubDevice", "hub/dev-01")
	put(t, a, "allocationLog", "dev-01")
	del(t, a, store.KindRegistration, "dev-01")
	put(t, a, store.KindEnrollmentGroup, "group-1")
	expect(t, ch, store.KindEnrollmentGroup, "registration, hub device and allocation log writes, then a group")

	put(t, a, store.KindEnrollmentGroup, "group-1") // an update
	expect(t, ch, store.KindEnrollmentGroup, "a group update")
	del(t, a, store.KindEnrollmentGroup, "group-1")
	expect(t, ch, store.KindEnrollmentGroup, "a group delete")
	put(t, a, linkedhub.Kind, "hub-1")
	expect(t, ch, linkedhub.Kind, "a linked hub write")
	del(t, a, linkedhub.Kind, "hub-1")
	expect(t, ch, linkedhub.Kind, "a linked hub delete")
	put(t, a, store.KindEnrollment, "dev-02")
	expect(t, ch, store.KindEnrollment, "an enrollment write")

	// A conditional write that fails changes nothing and tells nothing.
	if _, err := a.Put(t.Context(), store.Record{Kind: linkedhub.Kind, ID: "hub-2", Data: []byte("{}")}, store.Condition{IfMatch: "stale"}); err == nil {
		t.Fatal("Put with a stale etag succeeded")
	}
	// The writing store hears its own writes too.
	own := changes(t, a)
	put(t, a, store.KindEnrollmentGroup, "group-2")
	expect(t, ch, store.KindEnrollmentGroup, "a failed write, then a group write")
	expect(t, own, store.KindEnrollmentGroup, "its own group write")
}

// TestChangesOtherSchema checks that a deployment in another schema of the
// same database, which shares the notification channel, is not heard.
func TestChangesOtherSchema(t *testing.T) {
	mine, _ := openFresh(t)
	other, _ := openFresh(t)
	ch := changes(t, mine)
	put(t, other, linkedhub.Kind, "theirs")
	put(t, mine, store.KindEnrollmentGroup, "mine")
	expect(t, ch, store.KindEnrollmentGroup, "another schema's linked hub write, then a group write here")
}

// TestChangesCoalesce checks that a receiver that does not read never
// holds up the listening connection, and then gets each kind once rather
// than once per write.
func TestChangesCoalesce(t *testing.T) {
	a, dsn := openFresh(t)
	b, err := Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ch := changes(t, b)

	const writes = 200
	for i := range writes {
		put(t, a, store.KindEnrollmentGroup, "group")
		put(t, a, linkedhub.Kind, "hub")
		if i == 0 {
			// Let the forwarder take the first kind, so it is blocked
			// sending to a receiver that does not read.
			time.Sleep(50 * time.Millisecond)
		}
	}
	// The last write's notification has been read off the connection once
	// a write after it is: the sentinel kind arrives only after both.
	put(t, a, store.KindEnrollment, "sentinel")
	var got []store.Kind
	timeout := time.After(notifyWait)
	for !slices.Contains(got, store.KindEnrollment) {
		select {
		case k := <-ch:
			got = append(got, k)
		case <-timeout:
			t.Fatalf("no sentinel within %v; got %q", notifyWait, got)
		}
	}
	// At most: one kind already in flight when the receiver stopped, then
	// each pending kind once.
	if len(got) > len(watchedKinds)+1 {
		t.Errorf("%d writes delivered as %d values %q; want them coalesced", 2*writes+1, len(got), got)
	}
	for _, k := range []store.Kind{store.KindEnrollmentGroup, linkedhub.Kind} {
		if !slices.Contains(got, k) {
			t.Errorf("got %q; lacks %q", got, k)
		}
	}
}

// TestChangesReconnect cuts the listening connection and checks that the
// store listens again and then reports every watched kind, since the
// notifications sent meanwhile are lost.
func TestChangesReconnect(t *testing.T) {
	b, p := openThroughProxy(t)
	pids := make(chan uint32, 10)
	b.listenHook = func(pid uint32) { pids <- pid }
	// a writes straight to the database, as another node would.
	dsn, err := pgtest.WithParam(pgtest.BaseDSN(), "search_path", b.pool.Config().ConnConfig.RuntimeParams["search_path"])
	if err != nil {
		t.Fatal(err)
	}
	a, err := Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ch := changes(t, b)
	first := <-pids

	p.cut()
	// Written while b cannot listen: its notification is lost.
	put(t, a, linkedhub.Kind, "hub-during")
	time.Sleep(100 * time.Millisecond) // b notices, and retries in vain
	p.restore(t)

	select {
	case pid := <-pids:
		if pid == first {
			t.Errorf("listening again on backend %d, the one cut", pid)
		}
	case <-time.After(notifyWait):
		t.Fatalf("not listening again within %v of the database coming back", notifyWait)
	}
	expectAll(t, ch, "after listening again")
	put(t, a, store.KindEnrollmentGroup, "group-after")
	expect(t, ch, store.KindEnrollmentGroup, "a write after listening again")
}

// TestChangesEnd checks that the channel closes when its context ends and
// when the store closes, and that a closed store refuses new listeners.
func TestChangesEnd(t *testing.T) {
	s, dsn := openFresh(t)
	pids := make(chan uint32, 10)
	s.listenHook = func(pid uint32) { pids <- pid }
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := s.Changes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	drainUntilClosed(t, ch, "its context ended")

	ch = changes(t, s)
	pid := <-pids
	s.Close()
	drainUntilClosed(t, ch, "the store closed")
	if _, err := s.Changes(t.Context()); err == nil {
		t.Error("Changes on a closed store succeeded")
	}
	// Close waited for the listener, whose connection is gone; the server
	// may take a moment to notice.
	conn := pgtest.Conn(t, dsn)
	for i := 0; ; i++ {
		var n int
		if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if i == 100 {
			t.Fatalf("the listening backend %d still runs a second after Close", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func drainUntilClosed(t *testing.T, ch <-chan store.Kind, after string) {
	t.Helper()
	timeout := time.After(notifyWait)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("channel still open %v after %s", notifyWait, after)
		}
	}
}
