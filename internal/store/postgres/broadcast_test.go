package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/postgres/pgtest"
)

// TestBroadcastAcrossStores checks that a message broadcast through one
// Store (one node) reaches another's Broadcasts, after the empty message
// that says it listens, and that another deployment's schema in the same
// database hears nothing of it.
func TestBroadcastAcrossStores(t *testing.T) {
	a, dsn := openFresh(t)
	b, err := Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	other, err := Open(t.Context(), pgtest.Schema(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })

	listen := func(s *Store) <-chan []byte {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		ch, err := s.Broadcasts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-ch:
			if len(m) != 0 {
				t.Fatalf("first message %q, want the empty one", m)
			}
		case <-timeout(t):
			t.Fatal("never listened")
		}
		return ch
	}
	got, elsewhere := listen(b), listen(other)
	if err := a.Broadcast(t.Context(), []byte(`{"hub":"h1","event":"c2d"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if string(m) != `{"hub":"h1","event":"c2d"}` && string(m) != `{"hub": "h1", "event": "c2d"}` {
			t.Errorf("received %q", m)
		}
	case <-timeout(t):
		t.Fatal("the broadcast did not arrive")
	}
	// The other schema's listener hears its own broadcast, and nothing
	// before it.
	if err := other.Broadcast(t.Context(), []byte(`"mine"`)); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-elsewhere:
		if string(m) != `"mine"` {
			t.Errorf("another schema's listener received %q", m)
		}
	case <-timeout(t):
		t.Fatal("the other schema's broadcast did not arrive")
	}
	if err := a.Broadcast(t.Context(), make([]byte, store.MaxBroadcast+1)); err == nil {
		t.Error("an oversized broadcast was sent")
	}
}

// timeout is a channel that fires after notifyWait.
func timeout(t *testing.T) <-chan time.Time {
	t.Helper()
	return time.After(notifyWait)
}
