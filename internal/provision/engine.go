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
	"sync/atomic"
	"time"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/allocpolicy"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/issuer"
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

	// issue is the certificate to issue for the device's csr, nil when it
	// sent none.
	issue *issuance
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
	// Note, when not nil, is the allocation's record of why it chose Hub,
	// for the engine to keep: in the same commit as the registration when
	// it can, otherwise on its own before the hub is written.
	Note Note
}

// A Note is a record an allocation asks the engine to keep (its entry in
// the allocation log).
type Note interface {
	// Write returns the store write that keeps the note, made against what
	// is stored now; its condition fails if that changes before it commits.
	// fresh says the registration has no record yet, which lets a note
	// whose record goes with the registration's assume it has none.
	Write(ctx context.Context, fresh bool) (store.Write, error)
	// Keep writes the note on its own. A failure is logged, not returned:
	// a note never fails a registration.
	Keep(ctx context.Context)
}

// Registrar writes device identities and initial twins to hubs. The
// engine records what it will write before it calls RegisterDevice, and
// may call it again for the same device after a crash or a takeover.
type Registrar interface {
	// RegisterDevice creates or updates dev's identity and twin in its
	// hub. It is idempotent, and when it fails it leaves the hub as it
	// found it as far as it can: it deletes an identity it created and
	// puts back the credentials of one it changed.
	RegisterDevice(ctx context.Context, dev *HubDevice) error
	// UnregisterDevice removes dev's identity from its hub if the hub
	// holds it with dev's credentials; an identity that is absent, or that
	// holds other credentials, is left alone and is not an error.
	UnregisterDevice(ctx context.Context, dev *HubDevice) error
	// LookupDevice returns the identity a hub holds under deviceID, or nil
	// when it holds none.
	LookupDevice(ctx context.Context, hub, deviceID string) (*enroll.HubIdentity, error)
}

// HubDevice is the identity the engine asks a hub to hold. It is stored
// as JSON in the record of a registration in progress.
type HubDevice struct {
	Hub      string `json:"hub"`
	DeviceID string `json:"deviceId"`
	// PrimaryKey and SecondaryKey are the keys the device attests with (the
	// derived keys for a group member), so it can use the same key on the hub.
	PrimaryKey   string `json:"primaryKey,omitempty"`
	SecondaryKey string `json:"secondaryKey,omitempty"`
	// X509 is set for a device that attested with a certificate: the hub
	// authenticates it by certificate, and PrimaryKey and SecondaryKey are
	// empty.
	X509        *HubX509         `json:"x509,omitempty"`
	IoTEdge     bool             `json:"iotEdge,omitempty"`
	InitialTwin *dps.InitialTwin `json:"initialTwin,omitempty"`
	// ResetTwin asks the hub to replace the twin with InitialTwin rather
	// than keep the data of an existing device (reprovision with reset).
	ResetTwin bool `json:"resetTwin,omitempty"`
	// PreviousHub is the hub the device was on, when it moves; the registrar
	// migrates or drops the old identity as the reprovision policy says.
	PreviousHub       string `json:"previousHub,omitempty"`
	MigrateDeviceData bool   `json:"migrateDeviceData,omitempty"`
}

// HubX509 is how a hub authenticates a device that attested with X.509.
type HubX509 struct {
	// PrimaryThumbprint and SecondaryThumbprint (SHA-256, upper-case hex)
	// are the certificates of an individual enrollment's
	// clientCertificates: the hub accepts exactly these ("selfSigned").
	PrimaryThumbprint   string `json:"primaryThumbprint,omitempty"`
	SecondaryThumbprint string `json:"secondaryThumbprint,omitempty"`
	// CACertificates (PEM) are the certificates that vouched for a group
	// member or an individual enrollment with caReferences: the hub accepts
	// a device certificate, with the device id as subject CN, that chains to
	// one of them ("certificateAuthority").
	CACertificates []string `json:"caCertificates,omitempty"`
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
	// HubTimeout bounds one hub write (RegisterDevice, or an undo).
	HubTimeout time.Duration
	// Node names this node for the leases of the registrations it works
	// on. A node that restarts under the same name takes over the work its
	// earlier run left at once, without waiting for the lease to run out.
	// Empty: a name of this run alone.
	Node string
	// NoStaging makes every registration record an intent before it
	// writes the hub, even where the registrar could stage the identity in
	// the engine's store and commit it with the record (Stager): for
	// comparing the two paths.
	NoStaging bool
	// Lease is how long work in progress stays its owner's without being
	// renewed: how soon another node takes over the work of a node that
	// died. The owner renews it every Lease/3.
	Lease time.Duration
	// DeviceKeySecret derives the identity keys of TPM devices
	// (tpm.IdentityKey); without it TPM devices are refused.
	DeviceKeySecret []byte
	// Authorities finds the CAs that issue certificates to devices that
	// send a csr; nil: every csr is refused.
	Authorities Authorities
	// Issuance is what a csr may hold and how long issued certificates last.
	Issuance issuer.Policy
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

	// owner names this run of the engine in the Work of its registrations.
	owner string
	// recovered counts interrupted registrations this engine took over;
	// bindingRefusals the proofs refused because the device is bound to
	// another enrollment.
	recovered, bindingRefusals atomic.Int64

	mu       sync.Mutex
	inflight map[string]chan struct{} // operation id → closed when done
	wg       sync.WaitGroup
	bg       context.Context // parent of background work; cancelled by Close
	stopBG   context.CancelFunc
	// draining refuses new registrations while shutdown waits for the
	// background ones (Drain).
	draining atomic.Bool
	// awaiting holds the background operations whose device has not been
	// answered their outcome yet: operation id → when the work finished
	// (zero while it runs). Drain waits for the devices' polls.
	awaiting map[string]time.Time
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
	if opt.HubTimeout == 0 {
		opt.HubTimeout = 30 * time.Second
	}
	if opt.Lease == 0 {
		opt.Lease = 10 * time.Second
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
		awaiting:   make(map[string]time.Time),
		owner:      opt.Node + "/" + randomHex(6),
	}
	e.bg, e.stopBG = context.WithCancel(context.Background())
	return e
}

// Drain is the first step of a graceful shutdown: from now on new
// registrations are refused with 503 and a Retry-After (a device retries,
// through a load balancer on another node), while polls and status lookups
// are still answered. It waits until the registrations in the background
// (custom allocations waiting on a webhook, hub writes) finish and each of
// their devices has polled once since — a device learns its result only by
// polling — or ctx ends, and reports whether all that happened.
func (e *Engine) Drain(ctx context.Context) bool {
	e.draining.Store(true)
	if e.Wait(ctx) != nil {
		return false
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for e.awaitingPolls() > 0 {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// awaitPollFor is how long after its background work finished a device is
// expected to poll: it was told to wait PollInterval, and may be slow.
func (e *Engine) awaitPollFor() time.Duration { return 3*e.opt.PollInterval + 2*time.Second }

// awaitingPolls counts the background operations that finished lately and
// whose devices have not been answered the outcome; it forgets the older.
func (e *Engine) awaitingPolls() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n, now := 0, e.opt.Now()
	for op, finished := range e.awaiting {
		switch {
		case finished.IsZero():
			n++ // still running
		case now.Sub(finished) > e.awaitPollFor():
			delete(e.awaiting, op) // the device is not coming back soon
		default:
			n++
		}
	}
	return n
}

// awaitStarted and awaitFinished note a background operation's life;
// answered notes that its device was told the outcome.
func (e *Engine) awaitStarted(opID string) {
	e.awaitingPolls() // forgets the old ones, so the map stays small
	e.mu.Lock()
	e.awaiting[opID] = time.Time{}
	e.mu.Unlock()
}

func (e *Engine) awaitFinished(opID string) {
	e.mu.Lock()
	if _, ok := e.awaiting[opID]; ok {
		e.awaiting[opID] = e.opt.Now()
	}
	e.mu.Unlock()
}

func (e *Engine) answered(opID string) {
	e.mu.Lock()
	delete(e.awaiting, opID)
	e.mu.Unlock()
}

// Pending is how many registrations Drain would wait for now: those in
// the background, and those that finished lately whose devices have not
// polled for the outcome yet.
func (e *Engine) Pending() int { return e.awaitingPolls() }

// Close stops the background registrations and hands what they leave to
// the recovery path, then waits for that until ctx ends. A registration
// still allocating (no hub touched) gets its prior record back, as the
// recovery path would do, so the device's next register starts afresh on
// any node. One whose hub write was under way stays recorded with that
// write and its lease ends at once: the next node to see it (a device's
// poll or register, the doctor's sweep, this node's next start) repeats the
// write and commits, or undoes it. Call Drain first to let them finish.
func (e *Engine) Close(ctx context.Context) error {
	e.draining.Store(true)
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

// Recovered is how many interrupted registrations this engine took over.
func (e *Engine) Recovered() int64 { return e.recovered.Load() }

// BindingRefusals is how many proofs this engine refused because the device
// is bound to another enrollment.
func (e *Engine) BindingRefusals() int64 { return e.bindingRefusals.Load() }

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
	if e.draining.Load() {
		return Result{}, &dps.Error{ErrorCode: dps.CodeServiceUnavailable,
			Message: "The service is shutting down; try again.", RetryAfter: time.Second}
	}
	return e.register(ctx, &req, "")
}

// maxRegisterRounds bounds how often one request reads the record again
// after losing a race for it.
const maxRegisterRounds = 4

// register runs a checked register request. opID, when set, is the
// operation to continue under the same id (a device polling an operation
// whose owner died).
func (e *Engine) register(ctx context.Context, req *Request, opID string) (Result, error) {
	lost := false
	for range maxRegisterRounds {
		prev, err := e.loadRegistration(ctx, req.RegistrationID)
		if err != nil {
			return Result{}, err
		}
		who, err := e.attest(ctx, req, prev)
		if err != nil {
			return Result{}, err
		}
		if prev != nil && prev.Work != nil {
			if e.alive(prev) {
				// A registration already under way (a device retrying, or
				// the same device on two connections) joins it instead of
				// starting another.
				return e.join(ctx, prev), nil
			}
			if _, err := e.recover(ctx, prev); err != nil && !errors.Is(err, errLostRace) {
				return Result{}, err
			}
			continue
		}
		if lost && prev != nil && dps.Terminal(prev.State.Status) {
			// This request lost the record to another register of the
			// same device, which has finished since: a registration made
			// while this one waited is its answer too, as a device that
			// sends two registers at once expects, rather than a third.
			return e.registerAnswer(prev), nil
		}
		res, err := e.start(ctx, req, who, prev, opID)
		if errors.Is(err, errLostRace) {
			lost = true
			continue
		}
		return res, err
	}
	return Result{}, &dps.Error{ErrorCode: dps.CodeThrottled, Message: "The registration is being changed concurrently; try again.", RetryAfter: e.opt.PollInterval}
}

// join answers a request for a registration that is in progress: when this
// process does the work, with its outcome if that comes quickly.
func (e *Engine) join(ctx context.Context, r *enroll.Registration) Result {
	deadline := time.NewTimer(e.opt.SyncWait)
	defer deadline.Stop()
	// Follow the operations this process runs on the record until one
	// ends: another request may start a new one as soon as r's ends.
	for range maxRegisterRounds {
		if done := e.waitFor(r.OperationID); done != nil {
			select {
			case <-done:
			case <-deadline.C:
				return e.result(r)
			case <-ctx.Done():
				return e.result(r)
			}
		} else if r.Work.Owner != e.owner {
			return e.result(r)
		}
		latest, err := e.loadRegistration(ctx, r.State.RegistrationID)
		if err != nil || latest == nil {
			return e.result(r)
		}
		if latest.Work == nil || latest.Work.Owner != e.owner {
			return e.registerAnswer(latest)
		}
		r = latest
	}
	return e.result(r)
}

// start begins a new register operation over prev, the record read.
func (e *Engine) start(ctx context.Context, req *Request, who *vouched, prev *enroll.Registration, opID string) (Result, error) {
	if opID == "" {
		opID = newOperationID()
	}
	r := e.newRecord(req, who, prev, opID)
	if who.disabled {
		// Nothing is written to a hub, so the device stays bound to what
		// it was bound to: deleting the disabled individual enrollment
		// that blocks a group member lets it back in through its group.
		if prev != nil {
			r.EnrollmentGroupID = prev.EnrollmentGroupID
		}
		r.State.Status = dps.StatusDisabled
		stored, err := e.swap(ctx, r, prev)
		if err != nil {
			return Result{}, err
		}
		return e.result(stored), nil
	}

	var is *issuance
	if req.CSR != "" {
		var err error
		if is, err = e.prepareIssuance(ctx, req, who); err != nil {
			return Result{}, err
		}
	}
	e.carryIssued(r, prev, who)
	in := &AllocationInput{
		issue:           is,
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
		// Allocation is local and quick, with no effect outside: decide
		// first, so that the intent names the hub write and a failed
		// allocation costs one write and touches nothing.
		p, err := e.plan(ctx, r, in, who)
		if err != nil {
			e.fail(r, err)
			stored, err := e.swap(ctx, r, prev)
			if err != nil {
				return Result{}, err
			}
			return e.registerAnswer(stored), nil
		}
		if done, err := e.commitStaged(ctx, p, prev); err != nil || done != nil {
			if err != nil {
				return Result{}, err
			}
			return e.registerAnswer(done), nil
		}
		intent := e.intent(r, prev)
		if err := setTarget(intent, p); err != nil {
			return Result{}, err
		}
		// Tracked before the intent is stored, so that a concurrent
		// request in this process joins the work rather than taking it
		// for abandoned.
		done := e.track(opID)
		defer e.untrack(opID, done)
		stored, err := e.swapWith(ctx, intent, prev, nil, p.note)
		if err != nil {
			return Result{}, err
		}
		h := e.hold(context.WithoutCancel(ctx), stored)
		defer h.cancel()
		final, err := e.execute(ctx, h, r, p)
		if err != nil {
			return Result{}, err
		}
		return e.registerAnswer(final), nil
	}

	// Allocation may take long (a webhook with retries): record that the
	// device is assigning, so polls on any node find it, then finish in the
	// background and wait a little for a quick answer.
	intent := e.intent(r, prev)
	tracked := e.track(opID)
	stored, err := e.swap(ctx, intent, prev)
	if err != nil {
		e.untrack(opID, tracked)
		return Result{}, err
	}
	done := e.startBackground(stored, tracked, r, in, who)
	select {
	case <-done:
	case <-time.After(e.opt.SyncWait):
	case <-ctx.Done():
	}
	latest, err := e.loadRegistration(ctx, req.RegistrationID)
	if err != nil || latest == nil || latest.OperationID != opID {
		return e.result(stored), nil
	}
	return e.registerAnswer(latest), nil
}

// intent is the record that says r's operation is in progress, replacing
// prev: status assigning, owned by this process.
func (e *Engine) intent(r, prev *enroll.Registration) *enroll.Registration {
	in := *r
	in.State.Status = dps.StatusAssigning
	in.State.Substatus = ""
	in.State.ErrorCode, in.State.ErrorMessage = 0, ""
	in.Work = &enroll.Work{Owner: e.owner, LeaseUntil: e.opt.Now().Add(e.opt.Lease)}
	if prev != nil {
		in.Work.Prior = prev.WithoutETag()
	}
	return &in
}

// setTarget records in the intent the hub write of p and the record to
// commit after it.
func setTarget(intent *enroll.Registration, p *plan) error {
	t, err := json.Marshal(p.dev)
	if err != nil {
		return fmt.Errorf("encode hub write: %w", err)
	}
	intent.Work.Target = t
	intent.Work.Final = p.final.WithoutETag()
	return nil
}

// execute performs the hub write of p for the held intent and commits the
// outcome: p's final record, or base marked failed. It returns what it
// committed, or the record that replaced the intent meanwhile.
func (e *Engine) execute(ctx context.Context, h *holder, base *enroll.Registration, p *plan) (*enroll.Registration, error) {
	hctx, cancel := context.WithTimeout(h.ctx, e.opt.HubTimeout)
	err := e.opt.Registrar.RegisterDevice(hctx, p.dev)
	cancel()
	final := p.final
	if err != nil && e.bg.Err() != nil {
		// Shutdown cut the hub write short: its outcome is unknown, and
		// the device must not be told it failed. The recovery path
		// repeats the write and commits, or undoes it.
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer ccancel()
		if herr := h.handOver(cctx); herr != nil {
			e.log.Warn("handing an interrupted registration over failed; it is recovered when its lease ends",
				"registrationId", base.State.RegistrationID, "err", herr)
		}
		return nil, errHandedOver
	}
	if err != nil {
		e.log.Warn("hub registration failed", "registrationId", base.State.RegistrationID, "hub", p.dev.Hub, "err", err)
		var de *dps.Error
		if !errors.As(err, &de) {
			// Not err's text: it names internal addresses (the hub's URL,
			// a dial error). The log line above has it for the operator.
			de = dps.Errorf(dps.CodeHubRegistrationFailed, "Registering the device in hub %s failed; the service's log says why.", p.dev.Hub)
		}
		failed := *base
		e.fail(&failed, de)
		final = &failed
	}
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer ccancel()
	stored, err := h.commit(cctx, final)
	switch {
	case errors.Is(err, errLostRace):
		// Another process took the work over (this one stalled past its
		// lease); it finishes or undoes it. Answer with what is stored.
		latest, lerr := e.loadRegistration(ctx, base.State.RegistrationID)
		if lerr != nil || latest == nil {
			return nil, unavailable(errors.Join(err, lerr))
		}
		return latest, nil
	case err != nil:
		// The intent stays recorded with its Target: whoever takes it over
		// repeats the hub write and commits, or undoes it.
		e.log.Warn("recording a registration's outcome failed; it will be recovered",
			"registrationId", base.State.RegistrationID, "err", err)
		return nil, err
	}
	return stored, nil
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
func (e *Engine) OperationStatus(ctx context.Context, req Request, operationID string) (res Result, err error) {
	if err := e.checkRequest(&req); err != nil {
		return Result{}, err
	}
	defer func() {
		// The device is being told the outcome while the listeners are
		// still open: shutdown need not wait for it any longer.
		if (err == nil && res.Operation != nil && dps.Terminal(res.Operation.Status)) || isNotFound(err) {
			e.answered(operationID)
		}
	}()
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
	if r.Work != nil {
		if !e.polls.allow(req.RegistrationID) {
			return Result{}, &dps.Error{ErrorCode: dps.CodeThrottled, Message: "Too many status requests; slow down.", RetryAfter: 2 * time.Second}
		}
		if !e.alive(r) {
			// The process working on it is gone: take the work over and,
			// unless that finished it, run the registration again under
			// the same operation id, so the device's polling goes on.
			latest, err := e.recover(ctx, r)
			if errors.Is(err, errLostRace) {
				// Another process got there first: see what it left.
				latest, err = e.loadRegistration(ctx, req.RegistrationID)
			}
			if err != nil {
				return Result{}, err
			}
			if latest != nil && latest.OperationID == operationID {
				return e.result(latest), nil
			}
			return e.register(ctx, &req, operationID)
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
	if !strings.EqualFold(policy, dps.AllocationCustom) {
		return false
	}
	// An in-process policy (policy:NAME) is local and quick like the
	// built-in ones; only a webhook is slow.
	var def *dps.CustomAllocationDefinition
	if in.Enrollment != nil {
		def = in.Enrollment.CustomAllocationDefinition
	} else if in.Group != nil {
		def = in.Group.CustomAllocationDefinition
	}
	if def != nil {
		if _, ok := allocpolicy.NameOf(def.WebhookURL); ok {
			return false
		}
	}
	return true
}

func (e *Engine) newRecord(req *Request, who *vouched, prev *enroll.Registration, opID string) *enroll.Registration {
	r := &enroll.Registration{
		State:             dps.DeviceRegistrationState{RegistrationID: req.RegistrationID},
		OperationID:       opID,
		DevicePayload:     req.Payload,
		AttestationType:   who.attestationType(),
		EnrollmentGroupID: who.boundGroupID(),
	}
	if prev != nil {
		// Keep the stored spelling of the id and the current assignment
		// until a new one replaces it.
		r.State.RegistrationID = prev.State.RegistrationID
		r.State.AssignedHub, r.State.DeviceID = prev.State.AssignedHub, prev.State.DeviceID
		r.Identity = prev.Identity
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

// plan is a decided registration: the hub write and the record to commit
// once it succeeded.
type plan struct {
	dev   *HubDevice
	final *enroll.Registration
	// note is the allocation's record of why, kept with the outcome when
	// they can be committed together; nil when there is none.
	note Note
}

// plan allocates a hub for the registration r describes and returns the
// hub write and the assigned record; it changes nothing anywhere.
func (e *Engine) plan(ctx context.Context, r *enroll.Registration, in *AllocationInput, who *vouched) (*plan, error) {
	policy, _, _, twin, rp := in.Policy()
	deviceID := r.State.RegistrationID
	if in.Enrollment != nil && in.Enrollment.DeviceID != "" {
		deviceID = in.Enrollment.DeviceID
	}
	var hub string
	var payload json.RawMessage
	var allocatedTwin *dps.InitialTwin
	var note Note
	if in.Previous != nil && !rp.UpdateHubAssignment && !strings.EqualFold(policy, dps.AllocationCustom) {
		// "Never reprovision": the device stays where it is. A custom
		// webhook is still asked (Azure offers it only the current hub),
		// because its payload goes back to the device every time.
		hub = in.Previous.AssignedHub
	} else {
		a, err := e.opt.Allocator.Allocate(ctx, in)
		if err != nil {
			return nil, err
		}
		hub, payload, allocatedTwin, note = a.Hub, a.Payload, a.InitialTwin, a.Note
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
	// Refuse here what the hub would refuse, before anything is written.
	if err := enroll.ValidateInitialTwin(dev.InitialTwin); err != nil {
		if dev.InitialTwin == allocatedTwin {
			return nil, dps.Errorf(dps.CodeCustomAllocationFailed, "Custom allocation failed: the webhook's initialTwin would be refused by the IoT hub: %s", dps.AsError(err).Message)
		}
		return nil, err
	}
	final := *r
	final.State.Status = dps.StatusAssigned
	final.State.Substatus = substatus
	final.State.AssignedHub = hub
	final.State.DeviceID = deviceID
	final.State.Payload = payload
	final.State.ErrorCode, final.State.ErrorMessage = 0, ""
	if who.tpmBlob != "" {
		final.State.TPM = &dps.TPMRegistrationResult{AuthenticationKey: who.tpmBlob}
	}
	if err := e.applyIssuance(in.issue, dev, &final); err != nil {
		return nil, err
	}
	final.Identity = IdentityOf(dev)
	return &plan{dev: dev, final: &final, note: note}, nil
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

// startBackground finishes a slow registration, whose intent is stored,
// outside the request, and returns a channel closed when it is recorded.
// base is the registration as started, before any outcome.
// done is the channel track returned for the operation; it is closed here.
func (e *Engine) startBackground(stored *enroll.Registration, done chan struct{}, base *enroll.Registration, in *AllocationInput, who *vouched) <-chan struct{} {
	e.awaitStarted(stored.OperationID)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer e.untrack(stored.OperationID, done)
		defer e.awaitFinished(stored.OperationID)
		wctx, cancel := context.WithTimeout(e.bg, e.opt.WorkTimeout)
		defer cancel()
		h := e.hold(wctx, stored)
		defer h.cancel()

		p, err := e.plan(h.ctx, base, in, who)
		if err == nil {
			keep(h.ctx, p.note)
		}
		// Record the outcome even when the work ran out of time: the
		// device must learn it failed rather than poll "assigning".
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(wctx), 10*time.Second)
		defer ccancel()
		if e.bg.Err() != nil || (err != nil && h.ctx.Err() != nil && wctx.Err() == nil) {
			// Shutdown (or a lost lease) interrupted the allocation before
			// any hub was touched: put the prior record back, so the
			// device's next register starts afresh on any node.
			e.abandon(cctx, h)
			return
		}
		if err != nil {
			failed := *base
			e.fail(&failed, err)
			if _, err := h.commit(cctx, &failed); err != nil && !errors.Is(err, errLostRace) {
				e.log.Error("recording registration result failed", "registrationId", base.State.RegistrationID, "err", err)
			}
			return
		}
		// The hub write is durable in the intent before the hub is touched.
		if err := h.update(cctx, func(r *enroll.Registration) { _ = setTarget(r, p) }); err != nil {
			if !errors.Is(err, errLostRace) {
				e.log.Error("recording a registration's hub write failed", "registrationId", base.State.RegistrationID, "err", err)
				e.abandon(cctx, h)
			}
			return
		}
		_, err = e.execute(cctx, h, base, p)
		switch {
		case errors.Is(err, errHandedOver):
			e.log.Info("shutdown interrupted a registration's hub write; left for the recovery path",
				"registrationId", base.State.RegistrationID, "operationId", stored.OperationID)
		case err != nil:
			e.log.Error("recording registration result failed", "registrationId", base.State.RegistrationID, "err", err)
		}
	}()
	return done
}

// abandon puts back the prior record of held work that touched no hub.
func (e *Engine) abandon(ctx context.Context, h *holder) {
	if _, err := h.restore(ctx); err != nil && !errors.Is(err, errLostRace) {
		e.log.Warn("undoing an interrupted registration failed; it is recovered when its lease ends",
			"registrationId", h.current().State.RegistrationID, "err", err)
	}
}

func (e *Engine) result(r *enroll.Registration) Result {
	st := r.State
	op := &dps.RegistrationOperationStatus{OperationID: r.OperationID, Status: st.Status, RegistrationState: &st}
	res := Result{Operation: op}
	if st.Status == dps.StatusAssigned && len(r.IssuedChain) > 0 {
		st.IssuedCertificateChain = r.IssuedChain
	}
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

func (nopRegistrar) RegisterDevice(context.Context, *HubDevice) error   { return nil }
func (nopRegistrar) UnregisterDevice(context.Context, *HubDevice) error { return nil }
func (nopRegistrar) LookupDevice(context.Context, string, string) (*enroll.HubIdentity, error) {
	return nil, nil
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("provision: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}
