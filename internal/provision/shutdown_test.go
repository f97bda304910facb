package provision

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
)

func customEnrollment(t *testing.T, f *fixture, id string) string {
	t.Helper()
	e, err := enroll.PutEnrollment(context.Background(), f.st, id, &dps.IndividualEnrollment{
		RegistrationID: id, Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		AllocationPolicy:           dps.AllocationCustom,
		CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: "https://alloc.example/x", APIVersion: "2021-10-01"},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	return e.Attestation.SymmetricKey.PrimaryKey
}

// TestDrainLetsSlowAllocationsFinish: during the shutdown grace a slow
// webhook's registration completes and its poll is answered, while new
// registrations are refused with 503 and a Retry-After.
func TestDrainLetsSlowAllocationsFinish(t *testing.T) {
	ctx := context.Background()
	alloc := &slowAllocator{release: make(chan struct{})}
	f := newFixture(t, Options{Allocator: alloc, SyncWait: time.Millisecond})
	req := f.request("dev", customEnrollment(t, f, "dev"))
	res, err := f.eng.Register(ctx, req)
	if err != nil || res.Operation.Status != dps.StatusAssigning {
		t.Fatalf("register = %+v, %v", res.Operation, err)
	}
	if n := f.eng.Pending(); n != 1 {
		t.Errorf("Pending() = %d, want 1", n)
	}

	drained := make(chan bool)
	go func() {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		drained <- f.eng.Drain(dctx)
	}()
	// Wait until draining refuses a new device.
	other := f.request("other", f.individual("other", "hub.example", ""))
	for i := 0; ; i++ {
		_, err := f.eng.Register(ctx, other)
		var de *dps.Error
		if errors.As(err, &de) && de.ErrorCode == dps.CodeServiceUnavailable && de.RetryAfter > 0 {
			break
		}
		if err != nil {
			t.Fatalf("register while draining: %v", err)
		}
		// Drain had not started: that device registered; try another.
		id := fmt.Sprintf("other-%d", i)
		other = f.request(id, f.individual(id, "hub.example", ""))
		time.Sleep(10 * time.Millisecond)
	}
	poll, err := f.eng.OperationStatus(ctx, req, res.Operation.OperationID)
	if err != nil || poll.Operation.Status != dps.StatusAssigning {
		t.Fatalf("poll while draining = %+v, %v", poll.Operation, err)
	}
	close(alloc.release) // the webhook answers within the grace
	// Drain waits for the work to end and for the device to learn the
	// outcome, which it does only by polling.
	for {
		poll, err = f.eng.OperationStatus(ctx, req, res.Operation.OperationID)
		if err != nil {
			t.Fatal(err)
		}
		if poll.Operation.Status != dps.StatusAssigning {
			break
		}
		select {
		case <-drained:
			t.Fatal("Drain ended before the device was answered")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if poll.Operation.Status != dps.StatusAssigned || poll.Operation.RegistrationState.AssignedHub != "hub-custom.example" {
		t.Fatalf("poll during the drain = %+v", poll.Operation)
	}
	select {
	case ok := <-drained:
		if !ok {
			t.Fatal("Drain gave up although the device was answered")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Drain still waiting after the device was answered")
	}
	if err := f.eng.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// blockingRegistrar is a hub whose writes hang until their context ends.
type blockingRegistrar struct {
	countingRegistrar
	started chan struct{}
	block   atomic.Bool
}

func (r *blockingRegistrar) RegisterDevice(ctx context.Context, d *HubDevice) error {
	if r.block.Load() {
		select {
		case r.started <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return ctx.Err()
	}
	return r.countingRegistrar.RegisterDevice(ctx, d)
}

// TestCloseHandsHubWritesToRecovery: a hub write that shutdown cuts short is
// not reported failed; it stays recorded with its lease ended, and the
// restarted node finishes it when the device polls.
func TestCloseHandsHubWritesToRecovery(t *testing.T) {
	ctx := context.Background()
	alloc := &slowAllocator{release: make(chan struct{})}
	close(alloc.release) // the webhook answers at once; the hub hangs
	reg := &blockingRegistrar{started: make(chan struct{}, 1)}
	reg.block.Store(true)
	f := newFixture(t, Options{Allocator: alloc, Registrar: reg, SyncWait: time.Millisecond, Node: "node-a"})
	req := f.request("dev", customEnrollment(t, f, "dev"))
	res, err := f.eng.Register(ctx, req)
	if err != nil || res.Operation.Status != dps.StatusAssigning {
		t.Fatalf("register = %+v, %v", res.Operation, err)
	}
	select {
	case <-reg.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the hub write never started")
	}
	// The grace ends at once: Drain gives up, Close hands the work over.
	dctx, cancel := context.WithCancel(ctx)
	cancel()
	if f.eng.Drain(dctx) {
		t.Fatal("Drain reported finished work with a hub write hanging")
	}
	if err := f.eng.Close(ctx); err != nil {
		t.Fatal(err)
	}
	rec, err := enroll.GetRegistration(ctx, f.st, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Work == nil || len(rec.Work.Target) == 0 || rec.State.Status != dps.StatusAssigning {
		t.Fatalf("after shutdown: status %q, work %+v; want the intent with its hub write", rec.State.Status, rec.Work)
	}
	if rec.Work.LeaseUntil.After(time.Now()) {
		t.Errorf("lease still runs until %v: other nodes would wait for it", rec.Work.LeaseUntil)
	}

	// The node restarts; the device's poll takes the work over.
	reg.block.Store(false)
	eng2 := New(f.st, Options{IDScope: scope, Allocator: alloc, Registrar: reg, SyncWait: time.Minute, Node: "node-a"})
	defer eng2.Close(ctx)
	poll, err := eng2.OperationStatus(ctx, req, res.Operation.OperationID)
	if err != nil || poll.Operation.Status != dps.StatusAssigned || poll.Operation.RegistrationState.AssignedHub != "hub-custom.example" {
		t.Fatalf("poll after restart = %+v, %v", poll.Operation, err)
	}
	if reg.count() != 1 {
		t.Errorf("hub writes completed: %d, want 1", reg.count())
	}
}
