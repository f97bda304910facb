package provision

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/listcache"
	"github.com/dpsd/dpsd/internal/store"
)

// Allocator picks the hub for a registering device. The allocation
// policies (hashed, geoLatency, static, custom webhooks) implement it.
type Allocator interface {
	Allocate(ctx context.Context, in *AllocationInput) (*Allocation, error)
}

// AllocationInput is what an allocator may base its decision on.
type AllocationInput struct {
	RegistrationID string
	// Exactly one of Enrollment and Group is set.
	Enrollment *dps.IndividualEnrollment
	Group      *dps.EnrollmentGroup
	// AttestationType is how the device attested (dps.Attestation*).
	AttestationType string
	// X509 describes the certificates of a device that attested with
	// X.509 (the webhook's deviceRuntimeContext.x509); nil otherwise.
	X509 *dps.X509RegistrationResult
	// DevicePayload is the payload the device sent, or nil.
	DevicePayload json.RawMessage
	// Previous is the device's registration before this one; nil on the
	// first registration.
	Previous *dps.DeviceRegistrationState
	// RemoteAddr is the device's network address.
	RemoteAddr string
}

// Policy returns the allocation policy, candidate hubs, legacy hub name,
// initial twin and reprovision policy of whichever enrollment applies.
func (in *AllocationInput) Policy() (policy string, hubs []string, legacyHub string, twin *dps.InitialTwin, rp dps.ReprovisionPolicy) {
	rp = dps.ReprovisionPolicy{UpdateHubAssignment: true, MigrateDeviceData: true}
	if e := in.Enrollment; e != nil {
		if e.ReprovisionPolicy != nil {
			rp = *e.ReprovisionPolicy
		}
		return e.AllocationPolicy, e.IoTHubs, e.IoTHubHostName, e.InitialTwin, rp
	}
	g := in.Group
	if g.ReprovisionPolicy != nil {
		rp = *g.ReprovisionPolicy
	}
	return g.AllocationPolicy, g.IoTHubs, g.IoTHubHostName, g.InitialTwin, rp
}

// Allocation is an allocator's decision.
type Allocation struct {
	Hub string
	// InitialTwin overrides the enrollment's initial twin when not nil.
	InitialTwin *dps.InitialTwin
	// Payload is returned to the device in its registration state.
	Payload json.RawMessage
}

// Registrar creates or updates a device identity and its initial twin in a
// hub. It must be idempotent: the engine may call it again for the same
// device after a crash or a concurrent registration.
type Registrar interface {
	RegisterDevice(ctx context.Context, dev *HubDevice) error
}

// HubDevice is the identity the engine asks a hub to hold.
type HubDevice struct {
	Hub      string
	DeviceID string
	// PrimaryKey and SecondaryKey are the keys the device attests with (the
	// derived keys for a group member), so it can use the same key on the hub.
	PrimaryKey, SecondaryKey string
	// X509 is set for a device that attested with a certificate: the hub
	// authenticates it by certificate, and PrimaryKey and SecondaryKey are
	// empty.
	X509        *HubX509
	IoTEdge     bool
	InitialTwin *dps.InitialTwin
	// ResetTwin asks the hub to replace the twin with InitialTwin rather
	// than keep the data of an existing device (reprovision with reset).
	ResetTwin bool
	// PreviousHub is the hub the device was on, when it moves; the registrar
	// migrates or drops the old identity as the reprovision policy says.
	PreviousHub       string
	MigrateDeviceData bool
}

// HubX509 is how a hub authenticates a device that attested with X.509.
type HubX509 struct {
	// PrimaryThumbprint and SecondaryThumbprint (SHA-256, upper-case hex)
	// are the certificates of an individual enrollment's
	// clientCertificates: the hub accepts exactly these ("selfSigned").
	PrimaryThumbprint, SecondaryThumbprint string
	// CACertificates (PEM) are the certificates that vouched for a group
	// member or an individual enrollment with caReferences: the hub accepts
	// a device certificate, with the device id as subject CN, that chains to
	// one of them ("certificateAuthority").
	CACertificates []string
}

// Options configure an Engine.
type Options struct {
	// IDScope is the instance's scope; requests for other scopes are refused.
	IDScope   string
	Allocator Allocator // default: StaticAllocator
	Registrar Registrar // default: devices are recorded but no hub is told
	Logger    *slog.Logger
	Now       func() time.Time
	// PollInterval is the Retry-After given while an operation is assigning.
	PollInterval time.Duration
	// SyncWait is how long Register waits for an allocation that takes time
	// (a webhook) before answering "assigning"; fast allocations always
	// answer with the final result at once.
	SyncWait time.Duration
	// WorkTimeout bounds one registration's allocation and hub registration.
	WorkTimeout time.Duration
	// PollFirst makes Register answer "assigning" even when the result is
	// ready, with a Retry-After of zero, for clients that insist on the
	// classic register-then-poll exchange. By default a result that is
	// ready is returned in the register answer itself, which saves the
	// device a round trip and the poll delay its SDK would otherwise wait.
	PollFirst bool
}

// Engine provisions devices. It is safe for concurrent use.
type Engine struct {
	st    store.Store
	opt   Options
	log   *slog.Logger
	vouch *vouchCache
	// x509Groups caches the X.509 enrollment groups (attest_x509.go).
	x509Groups *listcache.Cache[*x509Group]
	polls      *pollLimiter

	mu       sync.Mutex
	inflight map[string]chan struct{} // operation id → closed when done
	wg       sync.WaitGroup
	bg       context.Context // parent of background work; cancelled by Close
	stopBG   context.CancelFunc
}

// New returns an engine over st.
func New(st store.Store, opt Options) *Engine {
	if opt.Allocator == nil {
		opt.Allocator = StaticAllocator{}
	}
	if opt.Registrar == nil {
		opt.Registrar = nopRegistrar{}
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.PollInterval == 0 {
		opt.PollInterval = time.Second
	}
	if opt.SyncWait == 0 {
		opt.SyncWait = 2 * time.Second
	}
	if opt.WorkTimeout == 0 {
		// Azure's webhook retry schedule waits 415 s in all; with eleven
		// attempts of up to 30 s each, a registration may take 12.5 min.
		opt.WorkTimeout = 15 * time.Minute
	}
	loadX509 := func(ctx context.Context) ([]*x509Group, error) { return listX509Groups(ctx, st) }
	e := &Engine{
		st:         st,
		opt:        opt,
		log:        opt.Logger,
		vouch:      newVouchCache(st, 100_000),
		x509Groups: listcache.New(groupListTTL, loadX509),
		polls:      newPollLimiter(opt.Now, 10, 2),
		inflight:   make(map[string]chan struct{}),
	}
	e.bg, e.stopBG = context.WithCancel(context.Background())
	return e
}

// Close stops background registrations (custom allocations waiting on a
// webhook), undoes their "assigning" records so devices retry afresh, and
// waits for that until ctx ends.
func (e *Engine) Close(ctx context.Context) error {
	e.stopBG()
	return e.Wait(ctx)
}

// Wait blocks until background registrations finish or ctx ends.
func (e *Engine) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// InvalidateEnrollments drops cached enrollment group data, for callers
// that change groups in this process.
func (e *Engine) InvalidateEnrollments() {
	e.vouch.invalidate()
	e.x509Groups.Invalidate()
}

// Register handles a device's register request.
func (e *Engine) Register(ctx context.Context, req Request) (Result, error) {
	if err := e.checkRequest(&req); err != nil {
		return Result{}, err
	}
	prev, err := e.loadRegistration(ctx, req.RegistrationID)
	if err != nil {
		return Result{}, err
	}
	who, err := e.attest(ctx, &req, prev)
	if err != nil {
		return Result{}, err
	}

	// A registration already under way (a device retrying, or the same
	// device on two connections) joins it instead of starting another.
	if prev != nil && prev.State.Status == dps.StatusAssigning && !e.stale(prev) {
		return e.result(prev), nil
	}

	opID := newOperationID()
	if who.disabled {
		r := e.newRecord(&req, who, prev, opID)
		r.State.Status = dps.StatusDisabled
		stored, err := e.commit(ctx, r, prev)
		if err != nil {
			return Result{}, err
		}
		return e.result(stored), nil
	}

	in := &AllocationInput{
		RegistrationID:  req.RegistrationID,
		Enrollment:      who.enrollment,
		Group:           who.group,
		AttestationType: who.attestationType(),
		X509:            who.x509,
		DevicePayload:   req.Payload,
		RemoteAddr:      req.RemoteAddr,
	}
	if prev != nil && prev.State.Status == dps.StatusAssigned {
		in.Previous = &prev.State
	}

	if !e.slowAllocation(in) {
		// Allocation is local and quick: do the whole registration now and
		// write the record once. A concurrent registration of the same
		// device loses the compare-and-swap and returns the winner's result.
		r := e.newRecord(&req, who, prev, opID)
		wctx, cancel := context.WithTimeout(ctx, e.opt.WorkTimeout)
		e.complete(wctx, r, in, who)
		cancel()
		stored, err := e.commit(ctx, r, prev)
		if err != nil {
			return Result{}, err
		}
		return e.registerAnswer(stored), nil
	}

	// Allocation may take long (a webhook with retries): record that the
	// device is assigning, so polls on any node find it, then finish in the
	// background and wait a little for a quick answer.
	r := e.newRecord(&req, who, prev, opID)
	r.State.Status = dps.StatusAssigning
	stored, err := e.commit(ctx, r, prev)
	if err != nil {
		return Result{}, err
	}
	if stored.OperationID != opID { // lost a race; the winner is working on it
		return e.result(stored), nil
	}
	done := e.startBackground(stored, prev, in, who)
	select {
	case <-done:
	case <-time.After(e.opt.SyncWait):
	case <-ctx.Done():
	}
	latest, err := e.loadRegistration(ctx, req.RegistrationID)
	if err != nil || latest == nil {
		return e.result(stored), nil
	}
	return e.registerAnswer(latest), nil
}

// registerAnswer is the answer to a register request: the result, or with
// PollFirst "assigning" with a Retry-After of zero when the result is ready.
func (e *Engine) registerAnswer(r *enroll.Registration) Result {
	res := e.result(r)
	if e.opt.PollFirst && res.Operation.Status != dps.StatusAssigning {
		res.Operation = &dps.RegistrationOperationStatus{
			OperationID:       r.OperationID,
			Status:            dps.StatusAssigning,
			RegistrationState: &dps.DeviceRegistrationState{RegistrationID: r.State.RegistrationID, Status: dps.StatusAssigning},
		}
		res.RetryAfter = 0
	}
	return res
}

// OperationStatus answers a device polling its register operation.
func (e *Engine) OperationStatus(ctx context.Context, req Request, operationID string) (Result, error) {
	if err := e.checkRequest(&req); err != nil {
		return Result{}, err
	}
	r, err := e.loadRegistration(ctx, req.RegistrationID)
	if err != nil {
		return Result{}, err
	}
	if _, err := e.attest(ctx, &req, r); err != nil {
		return Result{}, err
	}
	if r == nil || r.OperationID != operationID {
		return Result{}, dps.Errorf(dps.CodeOperationNotFound, "Operation %q not found.", operationID)
	}
	if r.State.Status == dps.StatusAssigning {
		if !e.polls.allow(req.RegistrationID) {
			return Result{}, &dps.Error{ErrorCode: dps.CodeThrottled, Message: "Too many status requests; slow down.", RetryAfter: 2 * time.Second}
		}
		if e.stale(r) {
			// The node that was working on it is gone; a new register
			// request will start over.
			return Result{}, dps.Errorf(dps.CodeOperationNotFound, "Operation %q was interrupted; register again.", operationID)
		}
	}
	return e.result(r), nil
}

// Status answers the device API's registration status lookup.
func (e *Engine) Status(ctx context.Context, req Request) (*dps.DeviceRegistrationState, error) {
	if err := e.checkRequest(&req); err != nil {
		return nil, err
	}
	r, err := e.loadRegistration(ctx, req.RegistrationID)
	if err != nil {
		return nil, err
	}
	if _, err := e.attest(ctx, &req, r); err != nil {
		return nil, err
	}
	if r == nil {
		return nil, enroll.ErrRegistrationNotFound
	}
	return &r.State, nil
}

// loadRegistration returns the device's registration record, or nil when it
// has none.
func (e *Engine) loadRegistration(ctx context.Context, regID string) (*enroll.Registration, error) {
	r, err := enroll.GetRegistration(ctx, e.st, regID)
	switch {
	case errors.Is(err, enroll.ErrRegistrationNotFound):
		return nil, nil
	case err != nil:
		return nil, unavailable(err)
	}
	return r, nil
}

func (e *Engine) checkRequest(req *Request) error {
	if !strings.EqualFold(req.IDScope, e.opt.IDScope) {
		return dps.Errorf(dps.CodeIDScopeNotFound, "ID scope %q is not served here.", req.IDScope)
	}
	if err := enroll.ValidateID("registrationId", req.RegistrationID); err != nil {
		return err
	}
	if len(req.Payload) > 0 {
		p := strings.TrimSpace(string(req.Payload))
		if p == "null" {
			req.Payload = nil
		} else if !strings.HasPrefix(p, "{") {
			return dps.Errorf(dps.CodeInvalidArgument, "The registration payload must be a JSON object.")
		}
	}
	return nil
}

// slowAllocation reports whether allocating may take long enough that the
// device should see "assigning" first.
func (e *Engine) slowAllocation(in *AllocationInput) bool {
	policy, _, _, _, _ := in.Policy()
	return strings.EqualFold(policy, dps.AllocationCustom)
}

func (e *Engine) newRecord(req *Request, who *vouched, prev *enroll.Registration, opID string) *enroll.Registration {
	r := &enroll.Registration{
		State:           dps.DeviceRegistrationState{RegistrationID: req.RegistrationID},
		OperationID:     opID,
		DevicePayload:   req.Payload,
		AttestationType: who.attestationType(),
	}
	if prev != nil {
		// Keep the stored spelling of the id and the current assignment
		// until a new one replaces it.
		r.State.RegistrationID = prev.State.RegistrationID
		r.State.AssignedHub, r.State.DeviceID = prev.State.AssignedHub, prev.State.DeviceID
	}
	if who.group != nil {
		r.EnrollmentGroupID = who.group.EnrollmentGroupID
	}
	switch {
	case who.x509 != nil:
		x := *who.x509
		r.State.X509 = &x
	case who.group != nil:
		r.State.SymmetricKey = &dps.SymmetricKeyRegistrationResult{EnrollmentGroupID: who.group.EnrollmentGroupID}
	}
	return r
}

// complete allocates a hub, registers the device there and fills r with the
// outcome (assigned or failed).
func (e *Engine) complete(ctx context.Context, r *enroll.Registration, in *AllocationInput, who *vouched) {
	policy, _, _, twin, rp := in.Policy()
	deviceID := r.State.RegistrationID
	if in.Enrollment != nil && in.Enrollment.DeviceID != "" {
		deviceID = in.Enrollment.DeviceID
	}
	var hub string
	var payload json.RawMessage
	var allocatedTwin *dps.InitialTwin
	if in.Previous != nil && !rp.UpdateHubAssignment && !strings.EqualFold(policy, dps.AllocationCustom) {
		// "Never reprovision": the device stays where it is. A custom
		// webhook is still asked (Azure offers it only the current hub),
		// because its payload goes back to the device every time.
		hub = in.Previous.AssignedHub
	} else {
		a, err := e.opt.Allocator.Allocate(ctx, in)
		if err != nil {
			e.fail(r, err)
			return
		}
		hub, payload, allocatedTwin = a.Hub, a.Payload, a.InitialTwin
	}

	substatus := dps.SubstatusInitialAssignment
	dev := &HubDevice{
		Hub: hub, DeviceID: deviceID,
		PrimaryKey: who.primaryKey, SecondaryKey: who.secondaryKey,
		X509:        who.hubX509,
		InitialTwin: twin,
	}
	if c := capabilities(in); c != nil {
		dev.IoTEdge = c.IoTEdge
	}
	if prev := in.Previous; prev != nil {
		switch {
		case !strings.EqualFold(prev.AssignedHub, hub) && rp.MigrateDeviceData:
			substatus = dps.SubstatusDeviceDataMigrated
			dev.PreviousHub, dev.MigrateDeviceData = prev.AssignedHub, true
		case !strings.EqualFold(prev.AssignedHub, hub):
			substatus = dps.SubstatusDeviceDataReset
			dev.PreviousHub, dev.ResetTwin = prev.AssignedHub, true
		case rp.UpdateHubAssignment && !rp.MigrateDeviceData:
			// Same hub with "reset to initial config": a factory reset.
			substatus = dps.SubstatusDeviceDataReset
			dev.ResetTwin = true
		default:
			substatus = dps.SubstatusReprovisionedToInitialAssignment
		}
	}
	// A webhook's initial twin replaces the enrollment's on the first
	// assignment, and on a move to another hub that resets the device's
	// data; otherwise the device keeps its twin and the webhook's is
	// ignored, as in Azure.
	if allocatedTwin != nil && (in.Previous == nil || (dev.ResetTwin && dev.PreviousHub != "")) {
		dev.InitialTwin = allocatedTwin
	}
	if err := e.opt.Registrar.RegisterDevice(ctx, dev); err != nil {
		e.log.Warn("hub registration failed", "registrationId", r.State.RegistrationID, "hub", hub, "err", err)
		var de *dps.Error
		if !errors.As(err, &de) {
			de = dps.Errorf(dps.CodeHubRegistrationFailed, "Registering the device in hub %s failed: %v", hub, err)
		}
		e.fail(r, de)
		return
	}
	r.State.Status = dps.StatusAssigned
	r.State.Substatus = substatus
	r.State.AssignedHub = hub
	r.State.DeviceID = deviceID
	r.State.Payload = payload
	r.State.ErrorCode, r.State.ErrorMessage = 0, ""
}

func capabilities(in *AllocationInput) *dps.DeviceCapabilities {
	if in.Enrollment != nil {
		return in.Enrollment.Capabilities
	}
	return in.Group.Capabilities
}

func (e *Engine) fail(r *enroll.Registration, err error) {
	de := dps.AsError(err)
	if de.ErrorCode == dps.CodeInternal {
		e.log.Error("registration failed", "registrationId", r.State.RegistrationID, "err", err)
	}
	r.State.Status = dps.StatusFailed
	r.State.Substatus = ""
	r.State.ErrorCode = de.ErrorCode
	r.State.ErrorMessage = de.Message
}

// commit writes r over prev (compare-and-swap) and returns what is stored:
// r, or the record of a registration that won a race against it.
func (e *Engine) commit(ctx context.Context, r *enroll.Registration, prev *enroll.Registration) (*enroll.Registration, error) {
	cond := store.Condition{MustNotExist: true}
	if prev != nil {
		cond = store.Condition{IfMatch: prev.ETag()}
	}
	stored, err := enroll.PutRegistration(ctx, e.st, r, cond)
	if err == nil {
		return stored, nil
	}
	if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrPrecondition) {
		winner, gerr := enroll.GetRegistration(ctx, e.st, r.State.RegistrationID)
		if gerr == nil {
			return winner, nil
		}
		err = gerr
	}
	return nil, unavailable(err)
}

// startBackground finishes a slow registration outside the request and
// returns a channel closed when it is recorded. prev is the record the
// registration replaced, restored if shutdown interrupts the work.
func (e *Engine) startBackground(r, prev *enroll.Registration, in *AllocationInput, who *vouched) <-chan struct{} {
	done := make(chan struct{})
	e.mu.Lock()
	e.inflight[r.OperationID] = done
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer func() {
			e.mu.Lock()
			delete(e.inflight, r.OperationID)
			e.mu.Unlock()
			close(done)
		}()
		ctx, cancel := context.WithTimeout(e.bg, e.opt.WorkTimeout)
		defer cancel()
		final := *r
		e.complete(ctx, &final, in, who)
		if e.bg.Err() != nil {
			e.rollback(r, prev)
			return
		}
		// Record the outcome even when the work ran out of time: the
		// device must learn it failed rather than poll "assigning".
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer ccancel()
		if _, err := e.commit(cctx, &final, r); err != nil {
			e.log.Error("recording registration result failed", "registrationId", r.State.RegistrationID, "err", err)
		}
	}()
	return done
}

// rollback undoes the "assigning" record of a registration that shutdown
// interrupted, so that the device's next register starts afresh on any node
// instead of waiting for an operation nobody is working on.
func (e *Engine) rollback(r, prev *enroll.Registration) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var err error
	if prev != nil {
		_, err = enroll.PutRegistration(ctx, e.st, prev, store.Condition{IfMatch: r.ETag()})
	} else {
		err = e.st.Delete(ctx, store.KindRegistration, r.State.RegistrationID, store.Condition{IfMatch: r.ETag()})
	}
	if err != nil {
		e.log.Warn("undoing an interrupted registration failed; it ends when its operation times out",
			"registrationId", r.State.RegistrationID, "err", err)
	}
}

// stale reports whether an assigning record was left by work that is no
// longer running: not in this process, and not touched for a while.
func (e *Engine) stale(r *enroll.Registration) bool {
	e.mu.Lock()
	_, running := e.inflight[r.OperationID]
	e.mu.Unlock()
	if running || r.State.LastUpdatedDateTimeUTC == nil {
		return false
	}
	return e.opt.Now().Sub(*r.State.LastUpdatedDateTimeUTC) > e.opt.WorkTimeout
}

func (e *Engine) result(r *enroll.Registration) Result {
	st := r.State
	op := &dps.RegistrationOperationStatus{OperationID: r.OperationID, Status: st.Status, RegistrationState: &st}
	res := Result{Operation: op}
	if st.Status == dps.StatusAssigning {
		// Pollers only need the id and status; IoT Edge requires the id.
		op.RegistrationState = &dps.DeviceRegistrationState{RegistrationID: st.RegistrationID, Status: st.Status}
		res.RetryAfter = e.opt.PollInterval
	}
	return res
}

// unavailable turns a storage failure into the 503 devices retry.
func unavailable(err error) error {
	var de *dps.Error
	if errors.As(err, &de) {
		return de
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &dps.Error{ErrorCode: dps.CodeServiceUnavailable, Message: "The request timed out; try again.", RetryAfter: 3 * time.Second}
	}
	slog.Default().Error("storage error", "err", err)
	return &dps.Error{ErrorCode: dps.CodeServiceUnavailable, Message: "The service is temporarily unavailable; try again.", RetryAfter: 3 * time.Second}
}

// newOperationID makes an id shaped like Azure's: "4." + 16 hex + "." + UUID.
func newOperationID() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("provision: crypto/rand failed: " + err.Error())
	}
	u := b[8:]
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u)
	return fmt.Sprintf("4.%s.%s-%s-%s-%s-%s", hex.EncodeToString(b[:8]), h[0:8], h[8:12], h[12:16], h[16:20], h[20:32])
}

type nopRegistrar struct{}

func (nopRegistrar) RegisterDevice(context.Context, *HubDevice) error { return nil }
