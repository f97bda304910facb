package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/store"
)

// A registration is one unit of work across the store and a hub. The
// record and the hub must agree after any crash, race or failure: either
// the hub holds exactly the identity the committed record names, or the
// registration left nothing behind there. The engine gets there in three
// steps, each of which a crash may interrupt:
//
//  1. Intent. The record is written, by compare-and-swap over the one that
//     was read, with status "assigning" and a Work that names its owner
//     (this process), a lease, the record to restore (Prior) and, once the
//     hub is chosen, the hub write to perform (Target) and the record to
//     commit after it (Final). Only the writer of the intent touches the
//     hub, so two registrations of one id can never both write it: the
//     loser of the swap writes nothing anywhere.
//  2. The hub write (Registrar.RegisterDevice), idempotent, which undoes its
//     own partial changes when it fails.
//  3. Commit. The final record replaces the intent, again by
//     compare-and-swap.
//
// The owner renews the lease while it works, and stops its hub work when it
// cannot. Whoever finds work whose owner is gone (its lease ran out, or it
// was an earlier run of this node) claims it by compare-and-swap and
// finishes it: it repeats the Target write and commits Final, or, when that
// fails, undoes the Target and restores Prior. Without a Target nothing was
// written to a hub, and Prior is restored.

// errLostRace means another process changed the registration record first;
// the caller reads it again and decides anew.
var errLostRace = errors.New("provision: registration changed concurrently")

// errHandedOver means shutdown left the work to the recovery path
// (holder.handOver).
var errHandedOver = errors.New("provision: registration left to the recovery path at shutdown")

// leaseMargin is how long before its lease ends an owner stops its hub work
// when it could not renew the lease, so that no write of its lands after
// another process may have taken the work over.
const leaseMargin = 2 * time.Second

// alive reports whether the work recorded in r is still being done.
func (e *Engine) alive(r *enroll.Registration) bool {
	w := r.Work
	switch {
	case w.Owner == e.owner:
		return e.running(r.OperationID)
	case e.opt.Node != "" && ownerNode(w.Owner) == e.opt.Node:
		// An earlier run of this node: it is gone, whatever its lease says.
		return false
	}
	return e.opt.Now().Before(w.LeaseUntil)
}

// ownerNode is the node part of a Work owner ("node/boot").
func ownerNode(owner string) string {
	for i := len(owner) - 1; i >= 0; i-- {
		if owner[i] == '/' {
			return owner[:i]
		}
	}
	return owner
}

// track records that this process works on operation opID and returns the
// channel closed by untrack.
func (e *Engine) track(opID string) chan struct{} {
	done := make(chan struct{})
	e.mu.Lock()
	e.inflight[opID] = done
	e.mu.Unlock()
	return done
}

func (e *Engine) untrack(opID string, done chan struct{}) {
	e.mu.Lock()
	if e.inflight[opID] == done {
		delete(e.inflight, opID)
	}
	e.mu.Unlock()
	close(done)
}

func (e *Engine) running(opID string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.inflight[opID]
	return ok
}

func (e *Engine) waitFor(opID string) <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.inflight[opID]
}

// holder holds the lease of one registration's work: it keeps the latest
// stored record, renews the lease in the background and cancels the work's
// context when the lease is lost or about to run out unrenewed.
type holder struct {
	e      *Engine
	ctx    context.Context // the work's context; cancelled when the lease is gone
	cancel context.CancelFunc
	stop   chan struct{}
	done   chan struct{}

	mu  sync.Mutex
	rec *enroll.Registration
}

// hold starts holding the lease of rec, whose Work is this process's.
func (e *Engine) hold(parent context.Context, rec *enroll.Registration) *holder {
	h := &holder{e: e, rec: rec, stop: make(chan struct{}), done: make(chan struct{})}
	h.ctx, h.cancel = context.WithCancel(parent)
	go h.renew()
	return h
}

func (h *holder) renew() {
	defer close(h.done)
	every := h.e.opt.Lease / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-h.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(h.ctx, every)
		err := h.update(ctx, nil)
		cancel()
		if errors.Is(err, errLostRace) {
			h.e.log.Warn("registration taken over by another process; stopping its work",
				"registrationId", h.current().State.RegistrationID)
			h.cancel()
			return
		}
		if err != nil && !h.e.opt.Now().Before(h.current().Work.LeaseUntil.Add(-leaseMargin)) {
			h.e.log.Warn("registration lease could not be renewed; stopping its work",
				"registrationId", h.current().State.RegistrationID, "err", err)
			h.cancel()
			return
		}
	}
}

// release stops renewing; the context stays usable until the caller is
// done with it.
func (h *holder) release() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
}

func (h *holder) current() *enroll.Registration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rec
}

// update applies change (which may be nil) to the held record and writes it
// with a renewed lease.
func (h *holder) update(ctx context.Context, change func(*enroll.Registration)) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	next := *h.rec
	w := *h.rec.Work
	w.LeaseUntil = h.e.opt.Now().Add(h.e.opt.Lease)
	next.Work = &w
	if change != nil {
		change(&next)
	}
	stored, err := h.e.swap(ctx, &next, h.rec)
	if err != nil {
		return err
	}
	h.rec = stored
	return nil
}

// commit replaces the held record with final (which carries no Work) and
// stops renewing.
func (h *holder) commit(ctx context.Context, final *enroll.Registration) (*enroll.Registration, error) {
	h.release()
	h.mu.Lock()
	defer h.mu.Unlock()
	final.Work = nil
	var stored *enroll.Registration
	var err error
	// A store that cannot be reached for a moment should not turn finished
	// work into work someone must recover: try a few times.
	for attempt := range 4 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 250 * time.Millisecond)
		}
		stored, err = h.e.swap(ctx, final, h.rec)
		if err == nil || errors.Is(err, errLostRace) || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	h.rec = stored
	return stored, nil
}

// handOver leaves the held work to the recovery path: the intent stays
// recorded as it is, its lease ends now so that any node may take it over
// at once, and this process stops renewing it.
func (h *holder) handOver(ctx context.Context) error {
	defer h.release()
	return h.update(ctx, func(r *enroll.Registration) { r.Work.LeaseUntil = h.e.opt.Now() })
}

// restore puts back the record the work replaced (deleting the record when
// there was none) and stops renewing.
func (h *holder) restore(ctx context.Context) (*enroll.Registration, error) {
	h.release()
	h.mu.Lock()
	defer h.mu.Unlock()
	prior := h.rec.Work.Prior
	if prior == nil {
		err := h.e.st.Delete(ctx, store.KindRegistration, h.rec.State.RegistrationID, store.Condition{IfMatch: h.rec.ETag()})
		switch {
		case errors.Is(err, store.ErrPrecondition), errors.Is(err, store.ErrNotFound):
			return nil, errLostRace
		case err != nil:
			return nil, unavailable(err)
		}
		return nil, nil
	}
	return h.e.swap(ctx, prior, h.rec)
}

// swap writes r over cur by compare-and-swap: errLostRace when cur is no
// longer what is stored.
func (e *Engine) swap(ctx context.Context, r, cur *enroll.Registration) (*enroll.Registration, error) {
	cond := store.Condition{MustNotExist: true}
	if cur != nil {
		cond = store.Condition{IfMatch: cur.ETag()}
	}
	stored, err := enroll.PutRegistration(ctx, e.st, r, cond)
	switch {
	case err == nil:
		return stored, nil
	case errors.Is(err, store.ErrExists), errors.Is(err, store.ErrPrecondition), errors.Is(err, store.ErrNotFound):
		return nil, errLostRace
	}
	return nil, unavailable(err)
}

// target decodes the hub write a Work names, nil when it names none.
func target(w *enroll.Work) (*HubDevice, error) {
	if len(w.Target) == 0 {
		return nil, nil
	}
	var dev HubDevice
	if err := json.Unmarshal(w.Target, &dev); err != nil {
		return nil, fmt.Errorf("decode the hub write of a registration in progress: %w", err)
	}
	return &dev, nil
}

// Recover finishes or undoes the abandoned work recorded in r (see the
// comment at the top of this file) and returns the record that results:
// the work's final record, its prior record, or nil when the device had
// none. errLostRace means another process got there first.
func (e *Engine) recover(ctx context.Context, r *enroll.Registration) (*enroll.Registration, error) {
	claimed := *r
	w := *r.Work
	w.Owner = e.owner
	w.LeaseUntil = e.opt.Now().Add(e.opt.Lease)
	claimed.Work = &w
	// Tracked before the claim is stored, as in Engine.start.
	done := e.track(r.OperationID)
	defer e.untrack(r.OperationID, done)
	stored, err := e.swap(ctx, &claimed, r)
	if err != nil {
		return nil, err
	}
	e.log.Info("taking over an interrupted registration",
		"registrationId", r.State.RegistrationID, "operationId", r.OperationID, "previousOwner", r.Work.Owner, "hubWritten", len(r.Work.Target) > 0)
	e.recovered.Add(1)

	h := e.hold(context.WithoutCancel(ctx), stored)
	defer h.cancel()
	dev, err := target(&w)
	if err != nil || dev == nil || w.Final == nil {
		if err != nil {
			e.log.Error("undoing an unreadable registration in progress", "registrationId", r.State.RegistrationID, "err", err)
		}
		return h.restore(ctx)
	}
	hctx, cancel := context.WithTimeout(h.ctx, e.opt.HubTimeout)
	err = e.opt.Registrar.RegisterDevice(hctx, dev)
	cancel()
	if err == nil {
		return h.commit(ctx, w.Final)
	}
	e.log.Warn("finishing an interrupted registration failed; undoing it",
		"registrationId", r.State.RegistrationID, "hub", dev.Hub, "err", err)
	if err := e.undo(h.ctx, dev, w.Prior); err != nil {
		// The work stays recorded; whoever comes next tries again.
		h.release()
		return nil, unavailable(fmt.Errorf("undo the hub write of %s: %w", r.State.RegistrationID, err))
	}
	return h.restore(ctx)
}

// undo takes back a hub write whose outcome is unknown: the identity the
// prior record names is put back when it is the same one, otherwise the
// identity the write made is removed if it is still the write's.
func (e *Engine) undo(ctx context.Context, dev *HubDevice, prior *enroll.Registration) error {
	ctx, cancel := context.WithTimeout(ctx, e.opt.HubTimeout)
	defer cancel()
	if prior != nil && prior.Identity != nil && sameIdentityPlace(prior.Identity, dev) {
		return e.opt.Registrar.RegisterDevice(ctx, DeviceFromIdentity(prior.Identity))
	}
	return e.opt.Registrar.UnregisterDevice(ctx, dev)
}

func sameIdentityPlace(id *enroll.HubIdentity, dev *HubDevice) bool {
	return strings.EqualFold(id.Hub, dev.Hub) && strings.EqualFold(id.DeviceID, dev.DeviceID)
}

// IdentityOf is what a hub holds once dev is written there.
func IdentityOf(dev *HubDevice) *enroll.HubIdentity {
	id := &enroll.HubIdentity{Hub: dev.Hub, DeviceID: dev.DeviceID, IoTEdge: dev.IoTEdge}
	switch x := dev.X509; {
	case x != nil && x.PrimaryThumbprint != "":
		id.PrimaryThumbprint, id.SecondaryThumbprint = x.PrimaryThumbprint, x.SecondaryThumbprint
	case x != nil || (dev.PrimaryKey == "" && dev.SecondaryKey == ""):
		id.CertificateAuthority = true
	default:
		id.PrimaryKey, id.SecondaryKey = dev.PrimaryKey, dev.SecondaryKey
	}
	return id
}

// DeviceFromIdentity is the hub write that puts id back: the identity
// alone (no initial twin, no move), leaving the twin as it is.
func DeviceFromIdentity(id *enroll.HubIdentity) *HubDevice {
	dev := &HubDevice{Hub: id.Hub, DeviceID: id.DeviceID, IoTEdge: id.IoTEdge,
		PrimaryKey: id.PrimaryKey, SecondaryKey: id.SecondaryKey}
	switch {
	case id.PrimaryThumbprint != "":
		dev.X509 = &HubX509{PrimaryThumbprint: id.PrimaryThumbprint, SecondaryThumbprint: id.SecondaryThumbprint}
	case id.CertificateAuthority:
		dev.X509 = &HubX509{}
	}
	return dev
}
