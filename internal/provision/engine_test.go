package provision

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/store"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

const scope = "0ne0000ABCD"

// fixture is an engine over a real embedded store with a counting registrar.
type fixture struct {
	t   testing.TB
	st  store.Store
	eng *Engine
	reg *countingRegistrar
	now time.Time
}

type countingRegistrar struct {
	mu    sync.Mutex
	calls []HubDevice
	err   error
}

func (r *countingRegistrar) RegisterDevice(_ context.Context, d *HubDevice) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, *d)
	return r.err
}

func (r *countingRegistrar) UnregisterDevice(context.Context, *HubDevice) error { return nil }

func (r *countingRegistrar) LookupDevice(context.Context, string, string) (*enroll.HubIdentity, error) {
	return nil, nil
}

func (r *countingRegistrar) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

func newFixture(t testing.TB, opt Options) *fixture {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "dpsd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{t: t, st: st, reg: &countingRegistrar{}, now: time.Now()}
	opt.IDScope = scope
	if opt.Registrar == nil {
		opt.Registrar = f.reg
	}
	f.eng = New(st, opt)
	t.Cleanup(func() { f.eng.Wait(context.Background()) })
	return f
}

func (f *fixture) individual(id, hub, status string) string {
	f.t.Helper()
	e, err := enroll.PutEnrollment(context.Background(), f.st, id, &dps.IndividualEnrollment{
		RegistrationID:     id,
		Attestation:        &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		IoTHubHostName:     hub,
		ProvisioningStatus: status,
	}, "")
	if err != nil {
		f.t.Fatal(err)
	}
	return e.Attestation.SymmetricKey.PrimaryKey
}

func (f *fixture) group(id, hub, status string) string {
	f.t.Helper()
	g, err := enroll.PutGroup(context.Background(), f.st, id, &dps.EnrollmentGroup{
		EnrollmentGroupID:  id,
		Attestation:        &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		AllocationPolicy:   dps.AllocationStatic,
		IoTHubs:            []string{hub},
		ProvisioningStatus: status,
	}, "")
	if err != nil {
		f.t.Fatal(err)
	}
	f.eng.InvalidateEnrollments()
	return g.Attestation.SymmetricKey.PrimaryKey
}

func token(t testing.TB, regID, key string, expiry time.Time) string {
	t.Helper()
	tok, err := sas.New(scope+"/registrations/"+regID, "registration", key, expiry)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *fixture) request(regID, key string) Request {
	return Request{IDScope: scope, RegistrationID: regID, SASToken: token(f.t, regID, key, f.now.Add(time.Hour)), Transport: "test"}
}

func derived(t testing.TB, groupKey, regID string) string {
	k, err := sas.DeriveDeviceKey(groupKey, regID)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func code(err error) int {
	var de *dps.Error
	if errors.As(err, &de) {
		return de.ErrorCode
	}
	return 0
}

func TestRegisterOutcomes(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	devKey := f.individual("dev-1", "hub-a.example", "")
	offKey := f.individual("dev-off", "hub-a.example", dps.ProvisioningDisabled)
	gKey := f.group("grp", "hub-g.example", "")
	offGroupKey := f.group("grp-off", "hub-g.example", dps.ProvisioningDisabled)
	// One member of the enabled group is blocked by a disabled individual
	// enrollment with its own key.
	f.individual("member-blocked", "hub-a.example", dps.ProvisioningDisabled)
	other := sas.GenerateKey(32)

	expired := f.request("dev-1", devKey)
	expired.SASToken = token(t, "dev-1", devKey, f.now.Add(-time.Minute))
	wrongAudience := f.request("dev-1", devKey)
	wrongAudience.SASToken = token(t, "dev-2", devKey, f.now.Add(time.Hour))
	wrongScope := f.request("dev-1", devKey)
	wrongScope.IDScope = "0ne00000000"
	noProof := f.request("dev-1", devKey)
	noProof.SASToken = ""
	badPayload := f.request("dev-1", devKey)
	badPayload.Payload = json.RawMessage(`[1,2]`)

	tests := []struct {
		name      string
		req       Request
		wantCode  int    // error code, or 0
		status    string // operation status when no error
		hub       string
		group     string
		registrar int // registrar calls made
	}{
		{"individual", f.request("dev-1", devKey), 0, dps.StatusAssigned, "hub-a.example", "", 1},
		{"group member", f.request("member-1", derived(t, gKey, "member-1")), 0, dps.StatusAssigned, "hub-g.example", "grp", 1},
		{"disabled individual", f.request("dev-off", offKey), 0, dps.StatusDisabled, "", "", 0},
		{"member of disabled group", f.request("m-2", derived(t, offGroupKey, "m-2")), 0, dps.StatusDisabled, "", "grp-off", 0},
		{"disabled individual wins over group", f.request("member-blocked", derived(t, gKey, "member-blocked")), 0, dps.StatusDisabled, "", "", 0},
		{"member beside the blocked one", f.request("member-4", derived(t, gKey, "member-4")), 0, dps.StatusAssigned, "hub-g.example", "grp", 1},
		{"wrong key", f.request("dev-1", other), dps.CodeUnauthorized, "", "", "", 0},
		{"unknown registration id", f.request("nobody", other), dps.CodeUnauthorized, "", "", "", 0},
		{"group key used directly", f.request("member-3", gKey), dps.CodeUnauthorized, "", "", "", 0},
		{"expired token", expired, dps.CodeUnauthorized, "", "", "", 0},
		{"token for another device", wrongAudience, dps.CodeUnauthorized, "", "", "", 0},
		{"no proof", noProof, dps.CodeUnauthorized, "", "", "", 0},
		{"unknown scope", wrongScope, dps.CodeIDScopeNotFound, "", "", "", 0},
		{"payload not an object", badPayload, dps.CodeInvalidArgument, "", "", "", 0},
		{"bad registration id", Request{IDScope: scope, RegistrationID: "bad id!", SASToken: "x"}, dps.CodeInvalidArgument, "", "", "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := f.reg.count()
			res, err := f.eng.Register(ctx, tc.req)
			if tc.wantCode != 0 {
				if code(err) != tc.wantCode {
					t.Fatalf("err = %v, want code %d", err, tc.wantCode)
				}
				if _, gerr := enroll.GetRegistration(ctx, f.st, tc.req.RegistrationID); tc.req.RegistrationID == "nobody" && gerr == nil {
					t.Error("a refused device got a registration record")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			op := res.Operation
			if op.Status != tc.status || op.OperationID == "" || op.RegistrationState == nil {
				t.Fatalf("operation = %+v, want status %s with id and state", op, tc.status)
			}
			st := op.RegistrationState
			if st.AssignedHub != tc.hub || st.Status != tc.status {
				t.Errorf("state = %+v, want hub %q", st, tc.hub)
			}
			if tc.status == dps.StatusAssigned && (st.DeviceID != tc.req.RegistrationID || st.Substatus != dps.SubstatusInitialAssignment || st.ETag == "") {
				t.Errorf("assigned state incomplete: %+v", st)
			}
			if tc.group != "" && (st.SymmetricKey == nil || st.SymmetricKey.EnrollmentGroupID != tc.group) {
				t.Errorf("symmetricKey = %+v, want group %s", st.SymmetricKey, tc.group)
			}
			if got := f.reg.count() - before; got != tc.registrar {
				t.Errorf("registrar called %d times, want %d", got, tc.registrar)
			}
			// The record the service API shows is the one the device got.
			rec, err := enroll.GetRegistration(ctx, f.st, tc.req.RegistrationID)
			if err != nil {
				t.Fatal(err)
			}
			if rec.State.ETag != st.ETag || rec.State.Status != st.Status || rec.OperationID != op.OperationID {
				t.Errorf("stored %+v differs from answer %+v", rec.State, st)
			}
			if tc.group != "" && rec.EnrollmentGroupID != tc.group {
				t.Errorf("stored group %q, want %q", rec.EnrollmentGroupID, tc.group)
			}
			// Polling the operation gives the same answer.
			poll, err := f.eng.OperationStatus(ctx, tc.req, op.OperationID)
			if err != nil || poll.Operation.Status != tc.status || poll.RetryAfter != 0 {
				t.Errorf("poll = %+v, %v", poll, err)
			}
		})
	}
}

func TestHubKeysAreTheDeviceKeys(t *testing.T) {
	f := newFixture(t, Options{})
	gKey := f.group("grp", "hub.example", "")
	k := derived(t, gKey, "d-1")
	if _, err := f.eng.Register(context.Background(), f.request("d-1", k)); err != nil {
		t.Fatal(err)
	}
	d := f.reg.calls[0]
	if d.PrimaryKey != k || d.SecondaryKey == "" || d.DeviceID != "d-1" || d.Hub != "hub.example" {
		t.Errorf("hub device = %+v; want the derived key %s", d, k)
	}
}

func TestReRegistrationIsIdempotent(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	key := f.individual("dev", "hub.example", "")
	req := f.request("dev", key)
	req.Payload = json.RawMessage(`{"fw":"1.0"}`)
	first, err := f.eng.Register(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	second, err := f.eng.Register(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	a, b := first.Operation.RegistrationState, second.Operation.RegistrationState
	if a.AssignedHub != b.AssignedHub || a.DeviceID != b.DeviceID || !a.CreatedDateTimeUTC.Equal(*b.CreatedDateTimeUTC) {
		t.Errorf("re-registration moved the device: %+v then %+v", a, b)
	}
	if b.Substatus != dps.SubstatusReprovisionedToInitialAssignment {
		t.Errorf("substatus = %q", b.Substatus)
	}
	if first.Operation.OperationID == second.Operation.OperationID {
		t.Error("a new register reused the operation id")
	}
	rec, _ := enroll.GetRegistration(ctx, f.st, "dev")
	if string(rec.DevicePayload) != `{"fw":"1.0"}` {
		t.Errorf("device payload = %s", rec.DevicePayload)
	}
	// The old operation is gone; the new one answers.
	if _, err := f.eng.OperationStatus(ctx, req, first.Operation.OperationID); code(err) != dps.CodeOperationNotFound {
		t.Errorf("old operation: %v", err)
	}
}

func TestConcurrentRegistrationsAgree(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	key := f.individual("dev", "hub.example", "")
	const n = 16
	var wg sync.WaitGroup
	results := make([]Result, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = f.eng.Register(ctx, f.request("dev", key))
		}()
	}
	wg.Wait()
	rec, err := enroll.GetRegistration(ctx, f.st, "dev")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("register %d: %v", i, errs[i])
		}
		st := results[i].Operation.RegistrationState
		if st.AssignedHub != "hub.example" || st.DeviceID != "dev" || !st.CreatedDateTimeUTC.Equal(*rec.State.CreatedDateTimeUTC) {
			t.Errorf("register %d: %+v", i, st)
		}
	}
}

// slowAllocator blocks until released, like a webhook that takes its time.
type slowAllocator struct {
	release chan struct{}
	calls   atomic.Int32
}

func (a *slowAllocator) Allocate(ctx context.Context, in *AllocationInput) (*Allocation, error) {
	a.calls.Add(1)
	select {
	case <-a.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &Allocation{Hub: "hub-custom.example", Payload: json.RawMessage(`{"from":"webhook"}`)}, nil
}

func TestSlowAllocationAnswersAssigningThenAssigned(t *testing.T) {
	ctx := context.Background()
	alloc := &slowAllocator{release: make(chan struct{})}
	f := newFixture(t, Options{Allocator: alloc, SyncWait: time.Millisecond, PollInterval: time.Second})
	e, err := enroll.PutEnrollment(ctx, f.st, "dev", &dps.IndividualEnrollment{
		RegistrationID:             "dev",
		Attestation:                &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		AllocationPolicy:           dps.AllocationCustom,
		CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: "https://alloc.example/x", APIVersion: "2021-10-01"},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	req := f.request("dev", e.Attestation.SymmetricKey.PrimaryKey)
	res, err := f.eng.Register(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	op := res.Operation
	if op.Status != dps.StatusAssigning || res.RetryAfter != time.Second || op.RegistrationState.RegistrationID != "dev" {
		t.Fatalf("first answer = %+v (retry %v)", op, res.RetryAfter)
	}
	// A retried register joins the running operation instead of starting
	// a second allocation.
	again, err := f.eng.Register(ctx, req)
	if err != nil || again.Operation.OperationID != op.OperationID {
		t.Fatalf("retry = %+v, %v", again.Operation, err)
	}
	poll, err := f.eng.OperationStatus(ctx, req, op.OperationID)
	if err != nil || poll.Operation.Status != dps.StatusAssigning {
		t.Fatalf("poll while assigning = %+v, %v", poll.Operation, err)
	}
	close(alloc.release)
	if err := f.eng.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	poll, err = f.eng.OperationStatus(ctx, req, op.OperationID)
	if err != nil {
		t.Fatal(err)
	}
	st := poll.Operation.RegistrationState
	if poll.Operation.Status != dps.StatusAssigned || st.AssignedHub != "hub-custom.example" || string(st.Payload) != `{"from":"webhook"}` {
		t.Errorf("final = %+v", st)
	}
	if alloc.calls.Load() != 1 {
		t.Errorf("allocator called %d times", alloc.calls.Load())
	}
}

func TestFailures(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{})
	// No hub at all: static allocation fails with a clear code.
	key := f.individual("nohub", "", "")
	res, err := f.eng.Register(ctx, f.request("nohub", key))
	if err != nil {
		t.Fatal(err)
	}
	st := res.Operation.RegistrationState
	if res.Operation.Status != dps.StatusFailed || st.ErrorCode != dps.CodeNoHubForAllocation || st.ErrorMessage == "" {
		t.Errorf("no hub: %+v", st)
	}
	// The hub refuses the device: failed, never reported assigned.
	f.reg.err = errors.New("hub said no")
	key = f.individual("refused", "hub.example", "")
	res, err = f.eng.Register(ctx, f.request("refused", key))
	if err != nil {
		t.Fatal(err)
	}
	st = res.Operation.RegistrationState
	if st.Status != dps.StatusFailed || st.ErrorCode != dps.CodeHubRegistrationFailed || strings.Contains(st.ErrorMessage, "hub said no") ||
		!strings.Contains(st.ErrorMessage, "hub.example") || st.AssignedHub != "" {
		t.Errorf("hub failure: %+v", st)
	}
}

func TestPollLimit(t *testing.T) {
	ctx := context.Background()
	alloc := &slowAllocator{release: make(chan struct{})}
	defer close(alloc.release)
	f := newFixture(t, Options{Allocator: alloc, SyncWait: time.Millisecond})
	e, _ := enroll.PutEnrollment(ctx, f.st, "dev", &dps.IndividualEnrollment{
		RegistrationID: "dev", Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		AllocationPolicy:           dps.AllocationCustom,
		CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: "https://alloc.example/x", APIVersion: "2021-10-01"},
	}, "")
	req := f.request("dev", e.Attestation.SymmetricKey.PrimaryKey)
	res, err := f.eng.Register(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var throttled error
	for range 50 {
		if _, err := f.eng.OperationStatus(ctx, req, res.Operation.OperationID); err != nil {
			throttled = err
			break
		}
	}
	var de *dps.Error
	if !errors.As(throttled, &de) || de.ErrorCode != dps.CodeThrottled || de.RetryAfter <= 0 {
		t.Errorf("tight polling loop was not throttled: %v", throttled)
	}
}

func TestPollFirstAnswersAssigningWithZeroRetry(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, Options{PollFirst: true})
	key := f.individual("dev", "hub.example", "")
	req := f.request("dev", key)
	res, err := f.eng.Register(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Operation.Status != dps.StatusAssigning || res.RetryAfter != 0 || res.Operation.RegistrationState.RegistrationID != "dev" {
		t.Fatalf("register = %+v (retry %v), want assigning with Retry-After 0", res.Operation, res.RetryAfter)
	}
	poll, err := f.eng.OperationStatus(ctx, req, res.Operation.OperationID)
	if err != nil || poll.Operation.Status != dps.StatusAssigned || poll.Operation.RegistrationState.AssignedHub != "hub.example" {
		t.Fatalf("poll = %+v, %v", poll.Operation, err)
	}
}

func TestCloseUndoesInterruptedRegistrations(t *testing.T) {
	ctx := context.Background()
	alloc := &slowAllocator{release: make(chan struct{})}
	f := newFixture(t, Options{Allocator: alloc, SyncWait: time.Millisecond})
	e, err := enroll.PutEnrollment(ctx, f.st, "dev", &dps.IndividualEnrollment{
		RegistrationID: "dev", Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		AllocationPolicy:           dps.AllocationCustom,
		CustomAllocationDefinition: &dps.CustomAllocationDefinition{WebhookURL: "https://alloc.example/x", APIVersion: "2021-10-01"},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	req := f.request("dev", e.Attestation.SymmetricKey.PrimaryKey)
	res, err := f.eng.Register(ctx, req)
	if err != nil || res.Operation.Status != dps.StatusAssigning {
		t.Fatalf("register = %+v, %v", res.Operation, err)
	}
	// Shutdown while the webhook hangs: the engine gives up and removes the
	// record it had started, so the device's retry starts over.
	if err := f.eng.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := enroll.GetRegistration(ctx, f.st, "dev"); !errors.Is(err, enroll.ErrRegistrationNotFound) {
		t.Fatalf("registration after an interrupted first registration: %v", err)
	}

	// A new engine (the restarted node) registers the device afresh.
	close(alloc.release)
	eng2 := New(f.st, Options{IDScope: scope, Allocator: alloc, Registrar: f.reg, SyncWait: time.Minute})
	defer eng2.Close(ctx)
	res, err = eng2.Register(ctx, req)
	if err != nil || res.Operation.Status != dps.StatusAssigned {
		t.Fatalf("register after restart = %+v, %v", res.Operation, err)
	}
}

// twinAllocator answers like a webhook with an initial twin.
type twinAllocator struct{ twin *dps.InitialTwin }

func (a twinAllocator) Allocate(context.Context, *AllocationInput) (*Allocation, error) {
	return &Allocation{Hub: "hub.example", InitialTwin: a.twin}, nil
}

func TestWebhookTwinTheHubWouldRefuse(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 11) + `1` + strings.Repeat(`}`, 11)
	f := newFixture(t, Options{Allocator: twinAllocator{&dps.InitialTwin{Tags: json.RawMessage(deep)}}})
	ctx := context.Background()
	g, err := enroll.PutGroup(ctx, f.st, "custom", &dps.EnrollmentGroup{
		EnrollmentGroupID: "custom",
		Attestation:       &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		AllocationPolicy:  dps.AllocationCustom,
		CustomAllocationDefinition: &dps.CustomAllocationDefinition{
			WebhookURL: "http://127.0.0.1:1/allocate", APIVersion: "2019-03-31"},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.eng.Register(ctx, f.request("dev", derived(t, g.Attestation.SymmetricKey.PrimaryKey, "dev")))
	if err != nil {
		t.Fatal(err)
	}
	st := res.Operation.RegistrationState
	if res.Operation.Status != dps.StatusFailed || st.ErrorCode != dps.CodeCustomAllocationFailed || !strings.Contains(st.ErrorMessage, "initialTwin") {
		t.Fatalf("want failed/400207 naming the twin, got %+v", st)
	}
	if n := f.reg.count(); n != 0 {
		t.Fatalf("the hub was called %d times", n)
	}
}
