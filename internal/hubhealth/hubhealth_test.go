package hubhealth

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/linkedhub"
)

type hubList []*linkedhub.Hub

func (l *hubList) List(context.Context) ([]*linkedhub.Hub, error) { return *l, nil }

// TestStates walks one hub through the states: unknown until checked,
// unhealthy only after Failures failed checks in a row, healthy again
// after one success; a hub no longer linked is forgotten.
func TestStates(t *testing.T) {
	var mu sync.Mutex
	down := map[string]bool{}
	hubs := &hubList{{Name: "a.example"}, {Name: "B.example"}}
	var changes []string
	c, err := New(Options{
		Hubs: hubs,
		Probe: func(_ context.Context, host string) error {
			mu.Lock()
			defer mu.Unlock()
			if down[host] {
				return errors.New("connection refused")
			}
			return nil
		},
		Failures: 2,
		OnChange: func(host string, h admin.LinkedHubHealth) {
			mu.Lock()
			defer mu.Unlock()
			changes = append(changes, host+"="+h.State)
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if got := c.Health("a.example").State; got != admin.HubHealthUnknown {
		t.Fatalf("before any check: %s, want unknown", got)
	}
	setDown := func(v bool) { mu.Lock(); down["B.example"] = v; mu.Unlock() }

	steps := []struct {
		name     string
		down     bool
		want     string
		failures int
	}{
		{"answers", false, admin.HubHealthHealthy, 0},
		{"first failure is not enough", true, admin.HubHealthHealthy, 1},
		{"second failure in a row", true, admin.HubHealthUnhealthy, 2},
		{"still down", true, admin.HubHealthUnhealthy, 3},
		{"one success heals", false, admin.HubHealthHealthy, 0},
	}
	for _, s := range steps {
		setDown(s.down)
		c.CheckAll(ctx)
		// Looked up in another case than linked.
		h := c.Health("b.EXAMPLE")
		if h.State != s.want || h.ConsecutiveFailures != s.failures {
			t.Fatalf("%s: %s with %d failures, want %s with %d", s.name, h.State, h.ConsecutiveFailures, s.want, s.failures)
		}
		if s.down && h.LastError != "connection refused" {
			t.Errorf("%s: last error %q", s.name, h.LastError)
		}
	}
	want := []string{"a.example=healthy", "B.example=healthy", "B.example=unhealthy", "B.example=healthy"}
	if len(changes) != len(want) {
		t.Errorf("changes %q, want (in any order of hubs) %q", changes, want)
	}
	if all := c.All(); len(all) != 2 || all["B.example"].State != admin.HubHealthHealthy {
		t.Errorf("All() = %+v", all)
	}

	*hubs = (*hubs)[:1]
	c.CheckAll(ctx)
	if got := c.Health("B.example").State; got != admin.HubHealthUnknown {
		t.Errorf("unlinked hub still known as %s", got)
	}
	if all := c.All(); len(all) != 1 {
		t.Errorf("All() after unlinking = %+v", all)
	}
}

// TestProbeTimeout: a hub that never answers is unhealthy once the
// check's timeout passes, and the error says so.
func TestProbeTimeout(t *testing.T) {
	hubs := &hubList{{Name: "slow.example"}}
	c, err := New(Options{
		Hubs:     hubs,
		Probe:    func(ctx context.Context, _ string) error { <-ctx.Done(); return ctx.Err() },
		Timeout:  1, // the shortest: the probe sees its deadline at once
		Failures: 1,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	c.CheckAll(context.Background())
	h := c.Health("slow.example")
	if h.State != admin.HubHealthUnhealthy || h.LastError == "" {
		t.Fatalf("hub that never answers: %+v", h)
	}
}

func TestNilChecker(t *testing.T) {
	var c *Checker
	if c.Health("x").State != admin.HubHealthUnknown || len(c.All()) != 0 {
		t.Fatal("a nil checker should know nothing")
	}
}
