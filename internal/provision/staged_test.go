package provision_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/hub"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/store"
)

// countingStore counts the writes of a store that can batch, and can fail
// or interfere with its batches.
type countingStore struct {
	store.Store
	b store.Batcher

	puts, applies atomic.Int32
	// failApply, when set, fails every batch as an unreachable database.
	failApply atomic.Bool
	// beforeApply, when set, runs once before the next batch.
	beforeApply atomic.Pointer[func()]
}

func newCountingStore(st store.Store) *countingStore {
	return &countingStore{Store: st, b: st.(store.Batcher)}
}

func (s *countingStore) Put(ctx context.Context, rec store.Record, cond store.Condition) (store.Record, error) {
	if rec.Kind == store.KindRegistration || rec.Kind == store.KindHubDevice {
		s.puts.Add(1)
	}
	return s.Store.Put(ctx, rec, cond)
}

func (s *countingStore) Apply(ctx context.Context, writes []store.Write) ([]store.Record, error) {
	s.applies.Add(1)
	if f := s.beforeApply.Swap(nil); f != nil {
		(*f)()
	}
	if s.failApply.Load() {
		return nil, fmt.Errorf("injected: %w", store.ErrUnavailable)
	}
	return s.b.Apply(ctx, writes)
}

// notingAllocator assigns the world's first hub and leaves a note for the
// allocation log, as the real allocator does for the built-in policies.
type notingAllocator struct {
	hub string
	log *alloclog.Log
}

func (a notingAllocator) Allocate(ctx context.Context, in *provision.AllocationInput) (*provision.Allocation, error) {
	e := alloclog.Entry{RegistrationID: in.RegistrationID, AllocationPolicy: "static", Reason: "test", Outcome: alloclog.OutcomeAssigned, Hub: a.hub}
	return &provision.Allocation{Hub: a.hub, Note: a.log.Pending(e)}, nil
}

// stagedWorld is a world whose engine reaches the built-in hubs directly,
// so that it can stage their identities, through a counting store.
func stagedWorld(t *testing.T, opt provision.Options) (*world, *countingStore, *alloclog.Log) {
	t.Helper()
	w := newWorld(t, nil, 1)
	cs := newCountingStore(w.st)
	alog := alloclog.New(cs, alloclog.Options{Logger: quietLogger()})
	opt.IDScope, opt.Node, opt.Logger = scope, "node-staged", quietLogger()
	opt.Registrar = hub.NewRegistrar(hub.RegistrarOptions{Local: w.m, Logger: quietLogger()})
	opt.Allocator = notingAllocator{hub: w.hubs[0], log: alog}
	e := provision.New(cs, opt)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.Close(ctx)
	})
	w.engine = e
	return w, cs, alog
}

// TestStagedRegistrationIsOneCommit: a device new to a built-in hub gets
// its identity, initial twin, registration record and allocation log entry
// in one batch, with no intent written first, and they agree.
func TestStagedRegistrationIsOneCommit(t *testing.T) {
	ctx := context.Background()
	w, cs, alog := stagedWorld(t, provision.Options{})
	twin := &dps.InitialTwin{Tags: json.RawMessage(`{"site":"lab"}`), Properties: &dps.InitialTwinProperties{Desired: json.RawMessage(`{"rate":5}`)}}
	key := w.symmetricGroup("staged", twin)
	cs.puts.Store(0)

	must(t).assigned(w.engine.Register(ctx, sasRequest(t, "staged-dev", key)))

	if got := cs.applies.Load(); got != 1 {
		t.Errorf("%d batches, want 1", got)
	}
	if got := cs.puts.Load(); got != 0 {
		t.Errorf("%d single writes of registrations or hub devices, want none (no intent)", got)
	}
	rec, err := enroll.GetRegistration(ctx, w.st, "staged-dev")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Work != nil || rec.State.Status != dps.StatusAssigned || rec.Identity == nil {
		t.Fatalf("record %+v; want assigned, with its identity and no work", rec)
	}
	d := w.identity("staged-dev")
	if d == nil || d.Authentication.SymmetricKey == nil || d.Authentication.SymmetricKey.PrimaryKey != rec.Identity.PrimaryKey {
		t.Fatalf("hub identity %+v; want the record's key %q", d, rec.Identity.PrimaryKey)
	}
	r, _ := w.m.Registry(w.hubs[0])
	tw, err := r.GetTwin(ctx, "staged-dev")
	if err != nil {
		t.Fatal(err)
	}
	if tw.Tags["site"] != "lab" || fmt.Sprint(tw.Properties.Desired["rate"]) != "5" {
		t.Errorf("twin tags %v desired %v; want the initial twin", tw.Tags, tw.Properties.Desired)
	}
	entries, err := alog.List(ctx, "staged-dev")
	if err != nil || len(entries) != 1 || entries[0].Hub != w.hubs[0] {
		t.Errorf("allocation log %+v, %v; want the allocation's one entry", entries, err)
	}
	w.healthy(w.engine)
}

// TestStagedBatchFailureLeavesNothing: when the batch cannot commit, the
// device is told to retry and neither a record nor an identity exists;
// its retry then succeeds.
func TestStagedBatchFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	w, cs, _ := stagedWorld(t, provision.Options{})
	key := w.symmetricGroup("staged-fail", nil)
	cs.failApply.Store(true)
	_, err := w.engine.Register(ctx, sasRequest(t, "fail-dev", key))
	if errCode(err) != dps.CodeServiceUnavailable {
		t.Fatalf("Register with the store failing = %v; want %d", err, dps.CodeServiceUnavailable)
	}
	if _, err := enroll.GetRegistration(ctx, w.st, "fail-dev"); !errors.Is(err, enroll.ErrRegistrationNotFound) {
		t.Errorf("record after a failed batch: err %v, want none", err)
	}
	if d := w.identity("fail-dev"); d != nil {
		t.Errorf("hub identity after a failed batch: %+v", d)
	}
	cs.failApply.Store(false)
	must(t).assigned(w.engine.Register(ctx, sasRequest(t, "fail-dev", key)))
	w.healthy(w.engine)
}

// TestStagedFallsBackWhenTheHubChanged: an identity the hub holds already,
// or one created between staging and commit, is handled by the intent path
// (RegisterDevice), which gives it the device's credentials.
func TestStagedFallsBackWhenTheHubChanged(t *testing.T) {
	ctx := context.Background()
	w, cs, _ := stagedWorld(t, provision.Options{})
	key := w.symmetricGroup("staged-race", nil)
	r, _ := w.m.Registry(w.hubs[0])
	other := &azurehub.Device{DeviceID: "present", Authentication: &azurehub.Authentication{Type: azurehub.AuthSAS,
		SymmetricKey: &azurehub.SymmetricKey{PrimaryKey: "b3RoZXIta2V5LW90aGVyLWtleQ==", SecondaryKey: "b3RoZXIta2V5LW90aGVyLWtleQ=="}}}

	t.Run("present before", func(t *testing.T) {
		if _, err := r.CreateDevice(ctx, other); err != nil {
			t.Fatal(err)
		}
		cs.puts.Store(0)
		must(t).assigned(w.engine.Register(ctx, sasRequest(t, "present", key)))
		if cs.puts.Load() == 0 {
			t.Error("no single writes: the intent path was not taken")
		}
	})
	t.Run("created meanwhile", func(t *testing.T) {
		racer := *other
		racer.DeviceID = "racer"
		hook := func() {
			if _, err := r.CreateDevice(ctx, &racer); err != nil {
				t.Error(err)
			}
		}
		cs.beforeApply.Store(&hook)
		cs.puts.Store(0)
		must(t).assigned(w.engine.Register(ctx, sasRequest(t, "racer", key)))
		if cs.puts.Load() == 0 {
			t.Error("no single writes: the intent path was not taken after the batch failed")
		}
	})
	for _, id := range []string{"present", "racer"} {
		rec, err := enroll.GetRegistration(ctx, w.st, id)
		if err != nil {
			t.Fatal(err)
		}
		if d := w.identity(id); d == nil || d.Authentication.SymmetricKey.PrimaryKey != rec.Identity.PrimaryKey {
			t.Errorf("%s: hub identity %+v does not hold the record's key", id, d)
		}
	}
	w.healthy(w.engine)
}

// TestStagedConcurrentRegistrationsAgree: many registers of the same new
// device at once, and of many devices, all end in one record and one
// identity that agree.
func TestStagedConcurrentRegistrationsAgree(t *testing.T) {
	ctx := context.Background()
	w, _, alog := stagedWorld(t, provision.Options{})
	key := w.symmetricGroup("staged-many", nil)
	const same, distinct = 16, 48
	var wg sync.WaitGroup
	results := make([]provision.Result, same+distinct)
	errs := make([]error, same+distinct)
	for i := range same + distinct {
		id := "same-dev"
		if i >= same {
			id = fmt.Sprintf("dev-%02d", i)
		}
		wg.Go(func() { results[i], errs[i] = w.engine.Register(ctx, sasRequest(t, id, key)) })
	}
	wg.Wait()
	rec, err := enroll.GetRegistration(ctx, w.st, "same-dev")
	if err != nil {
		t.Fatal(err)
	}
	for i := range same + distinct {
		if errs[i] != nil {
			t.Fatalf("register %d: %v", i, errs[i])
		}
		st := results[i].Operation.RegistrationState
		if st.Status != dps.StatusAssigned {
			t.Fatalf("register %d: %+v", i, st)
		}
		if i < same && !st.CreatedDateTimeUTC.Equal(*rec.State.CreatedDateTimeUTC) {
			t.Errorf("register %d of the same device answered another registration: %+v", i, st)
		}
	}
	entries, err := alog.List(ctx, "same-dev")
	if err != nil || len(entries) == 0 {
		t.Errorf("allocation log of the contended device: %d entries, %v; want at least one", len(entries), err)
	}
	w.healthy(w.engine)
}

// TestNoStagingWritesAnIntent: the switch that turns the fast path off
// does, so the two paths can be compared: the intent goes first (in one
// batch with the allocation's note), the outcome after the hub write.
func TestNoStagingWritesAnIntent(t *testing.T) {
	ctx := context.Background()
	w, cs, alog := stagedWorld(t, provision.Options{NoStaging: true})
	key := w.symmetricGroup("unstaged", nil)
	cs.puts.Store(0)
	must(t).assigned(w.engine.Register(ctx, sasRequest(t, "unstaged-dev", key)))
	if cs.applies.Load() != 1 || cs.puts.Load() != 1 {
		t.Errorf("%d batches and %d single registration writes; want 1 (intent and note) and 1 (outcome)", cs.applies.Load(), cs.puts.Load())
	}
	if entries, err := alog.List(ctx, "unstaged-dev"); err != nil || len(entries) != 1 {
		t.Errorf("allocation log %+v, %v; want one entry", entries, err)
	}
	w.healthy(w.engine)
}
