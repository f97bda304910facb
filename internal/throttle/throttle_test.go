package throttle

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/provision"
)

type engine struct{ calls int }

func (e *engine) Register(context.Context, provision.Request) (provision.Result, error) {
	e.calls++
	return provision.Result{Operation: &dps.RegistrationOperationStatus{Status: dps.StatusAssigning}}, nil
}

func (e *engine) OperationStatus(context.Context, provision.Request, string) (provision.Result, error) {
	e.calls++
	return provision.Result{Operation: &dps.RegistrationOperationStatus{Status: dps.StatusAssigning}}, nil
}

func (e *engine) Status(context.Context, provision.Request) (*dps.DeviceRegistrationState, error) {
	e.calls++
	return &dps.DeviceRegistrationState{}, nil
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func req(regID, addr string) provision.Request {
	return provision.Request{IDScope: "0ne00000001", RegistrationID: regID, RemoteAddr: addr}
}

// throttledAfter calls do until it is throttled and returns how many
// calls passed, and the error of the first refused.
func throttledAfter(t *testing.T, do func() error) (int, *dps.Error) {
	t.Helper()
	for n := 0; n < 10000; n++ {
		if err := do(); err != nil {
			var e *dps.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not a *dps.Error", err)
			}
			return n, e
		}
	}
	t.Fatal("never throttled")
	return 0, nil
}

func TestLimits(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Unix(1e9, 0)}
	eng := &engine{}
	p := New(eng, Options{
		Register:  Rate{PerSecond: 1, Burst: 5},
		Lookup:    Rate{PerSecond: 2, Burst: 10},
		PerSource: Rate{PerSecond: 100, Burst: 30},
		Now:       clk.now,
	})

	// A register storm from one device: the burst passes, then 429 with a
	// whole-second Retry-After, in Azure's shape.
	n, e := throttledAfter(t, func() error { _, err := p.Register(ctx, req("dev-1", "10.0.0.1:1000")); return err })
	if n != 5 || e.ErrorCode != dps.CodeThrottled || e.Status() != 429 || e.RetryAfter != time.Second {
		t.Fatalf("register storm: %d passed, then %+v", n, e)
	}
	if eng.calls != 5 {
		t.Fatalf("engine called %d times, want 5", eng.calls)
	}
	// Another device is not affected; the same device's lookups have
	// their own bucket, shared by operation status and status queries.
	if _, err := p.Register(ctx, req("dev-2", "10.0.0.1:1001")); err != nil {
		t.Fatalf("another device: %v", err)
	}
	n, _ = throttledAfter(t, func() error {
		if _, err := p.OperationStatus(ctx, req("dev-1", "10.0.0.1:1000"), "op"); err != nil {
			return err
		}
		_, err := p.Status(ctx, req("dev-1", "10.0.0.1:1000"))
		return err
	})
	if n != 5 {
		t.Fatalf("lookup storm: %d pairs passed, want 5 (burst 10)", n)
	}
	// Time refills: one second is one more register.
	clk.t = clk.t.Add(time.Second)
	if _, err := p.Register(ctx, req("dev-1", "10.0.0.1:1000")); err != nil {
		t.Fatalf("after a second: %v", err)
	}

	// A source cycling through registration ids meets the per-source limit.
	i := 0
	n, e = throttledAfter(t, func() error {
		i++
		_, err := p.Register(ctx, req("cycle-"+string(rune('a'+i%26))+string(rune('a'+i/26)), "10.0.0.2:2000"))
		return err
	})
	if n != 30 || e.ErrorCode != dps.CodeThrottled {
		t.Fatalf("source storm: %d passed, want 30, then %+v", n, e)
	}
	if _, err := p.Register(ctx, req("other", "10.0.0.3:2000")); err != nil {
		t.Fatalf("another source: %v", err)
	}
}

func TestNoLimitAndScaled(t *testing.T) {
	p := New(&engine{}, Options{Register: Rate{PerSecond: -1}, PerSource: Rate{PerSecond: -1}})
	for range 1000 {
		if _, err := p.Register(context.Background(), req("dev", "10.0.0.1:1")); err != nil {
			t.Fatalf("no limit: %v", err)
		}
	}
	if got := DefaultRegister.Scaled(5); got != (Rate{PerSecond: 5, Burst: 100}) {
		t.Fatalf("Scaled(5) = %+v", got)
	}
	if got := DefaultRegister.Scaled(0); got != DefaultRegister {
		t.Fatalf("Scaled(0) = %+v", got)
	}
	if got := DefaultRegister.Scaled(-1); got.PerSecond > 0 {
		t.Fatalf("Scaled(-1) = %+v", got)
	}
}
