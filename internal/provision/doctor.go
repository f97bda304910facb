package provision

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/store"
)

// DeviceLister is implemented by registrars that can list the identities
// a hub holds, which finding orphans needs.
type DeviceLister interface {
	// ListDevices returns a page of the identities in hub, in device-id
	// order, after the id after, and whether more follow.
	ListDevices(ctx context.Context, hub, after string, limit int) ([]*enroll.HubIdentity, bool, error)
}

// ErrCannotList is returned by a DeviceLister for a hub it cannot list.
var ErrCannotList = errors.New("provision: this hub's identities cannot be listed")

// Problem kinds a check reports (admin.Problem*).
const (
	ProblemInterrupted = admin.ProblemInterrupted
	ProblemMissing     = admin.ProblemMissing
	ProblemMismatch    = admin.ProblemMismatch
	ProblemOrphan      = admin.ProblemOrphan
	ProblemUnreachable = admin.ProblemUnreachable
)

// Problem is one disagreement between the records and the hubs.
type Problem = admin.Problem

// CheckReport is what Check found.
type CheckReport = admin.CheckReport

// CheckOptions select what Check does.
type CheckOptions struct {
	// Repair fixes what it finds: finishes or undoes interrupted work, and
	// puts missing or changed identities back as their records say.
	Repair bool
	// Prune, with Repair, also deletes orphans: identities that no record
	// names. Hubs may hold devices made outside dpsd, so it is separate.
	Prune bool
	// Hubs are hubs to look for orphans in besides those records name
	// (for example every linked hub).
	Hubs []string
	// OnlyInterrupted looks at work in progress alone, and asks no hub
	// about committed records: the cheap pass a node makes when it starts.
	OnlyInterrupted bool
	// MaxProblems bounds the problems listed (not those counted); 0 means
	// 1000.
	MaxProblems int
}

func add(r *CheckReport, max int, p Problem) {
	r.Counts[p.Kind]++
	if p.Repaired {
		r.Repaired++
	}
	if len(r.Problems) < max {
		r.Problems = append(r.Problems, p)
	}
}

// Check compares every registration record with the identity its hub
// holds, and every identity in the hubs with the records (dpsd doctor).
func (e *Engine) Check(ctx context.Context, opt CheckOptions) (*CheckReport, error) {
	if opt.MaxProblems == 0 {
		opt.MaxProblems = 1000
	}
	rep := &CheckReport{Counts: map[string]int{}, Problems: []Problem{}, HubsListed: []string{}}
	// named[hub][device id] marks the identities records name.
	named := map[string]map[string]bool{}
	name := func(hub, dev string) {
		h := strings.ToLower(hub)
		if named[h] == nil {
			named[h] = map[string]bool{}
		}
		named[h][strings.ToLower(dev)] = true
	}
	unreachable := map[string]bool{}

	listOpt := store.ListOptions{Limit: 500}
	for {
		page, more, err := enroll.ListRegistrations(ctx, e.st, "", listOpt)
		if err != nil {
			return nil, fmt.Errorf("list registrations: %w", err)
		}
		for _, r := range page {
			rep.Registrations++
			if r.Work != nil {
				if r = e.settleWork(ctx, r, opt, rep, name); r == nil {
					continue
				}
			}
			if !opt.OnlyInterrupted {
				e.checkIdentity(ctx, r, opt, rep, name, unreachable)
			}
		}
		if !more || len(page) == 0 {
			break
		}
		listOpt.After = page[len(page)-1].State.RegistrationID
	}

	lister, ok := e.opt.Registrar.(DeviceLister)
	if !ok || opt.OnlyInterrupted {
		return rep, nil
	}
	hubs := map[string]string{}
	for _, h := range opt.Hubs {
		hubs[strings.ToLower(h)] = h
	}
	for h := range named {
		if _, ok := hubs[h]; !ok {
			hubs[h] = h
		}
	}
	for key, hub := range hubs {
		if unreachable[key] {
			continue
		}
		if err := e.findOrphans(ctx, lister, hub, named[key], opt, rep); err != nil {
			if !errors.Is(err, ErrCannotList) {
				add(rep, opt.MaxProblems, Problem{Kind: ProblemUnreachable, Hub: hub, Detail: err.Error()})
			}
			continue
		}
		rep.HubsListed = append(rep.HubsListed, hub)
	}
	return rep, nil
}

// settleWork counts the work in progress in r, and when repairing finishes
// or undoes work whose owner is gone. It returns the committed record that
// results, to be checked like any other, or nil when there is none.
func (e *Engine) settleWork(ctx context.Context, r *enroll.Registration, opt CheckOptions, rep *CheckReport, name func(hub, dev string)) *enroll.Registration {
	if e.alive(r) {
		rep.InProgress++
		// Its identities, before and after, are not orphans.
		nameWork(r, name)
		return nil
	}
	p := Problem{Kind: ProblemInterrupted, RegistrationID: r.State.RegistrationID, Detail: "owner " + r.Work.Owner + " is gone"}
	var done *enroll.Registration
	if opt.Repair {
		var err error
		done, err = e.recover(ctx, r)
		if err == nil || errors.Is(err, errLostRace) {
			p.Repaired = true
		} else {
			p.Detail += "; recovery failed: " + err.Error()
			done = nil
		}
	}
	if !p.Repaired {
		nameWork(r, name)
	}
	add(rep, opt.MaxProblems, p)
	if done == nil || done.Work != nil {
		return nil
	}
	return done
}

// nameWork marks the identities that work in progress may leave: the
// prior one and the one it writes.
func nameWork(r *enroll.Registration, name func(hub, dev string)) {
	if r.Identity != nil {
		name(r.Identity.Hub, r.Identity.DeviceID)
	}
	if p := r.Work.Prior; p != nil && p.Identity != nil {
		name(p.Identity.Hub, p.Identity.DeviceID)
	}
	if dev, err := target(r.Work); err == nil && dev != nil {
		name(dev.Hub, dev.DeviceID)
	}
}

// checkIdentity compares the identity a committed record names with its
// hub's.
func (e *Engine) checkIdentity(ctx context.Context, r *enroll.Registration, opt CheckOptions, rep *CheckReport, name func(hub, dev string), unreachable map[string]bool) {
	want := r.Identity
	if want == nil {
		if r.State.AssignedHub != "" {
			rep.Unverifiable++
			name(r.State.AssignedHub, r.State.DeviceID)
		}
		return
	}
	name(want.Hub, want.DeviceID)
	if unreachable[strings.ToLower(want.Hub)] {
		return
	}
	got, err := e.opt.Registrar.LookupDevice(ctx, want.Hub, want.DeviceID)
	if err != nil {
		unreachable[strings.ToLower(want.Hub)] = true
		add(rep, opt.MaxProblems, Problem{Kind: ProblemUnreachable, Hub: want.Hub, RegistrationID: r.State.RegistrationID, Detail: err.Error()})
		return
	}
	p := Problem{RegistrationID: r.State.RegistrationID, Hub: want.Hub, DeviceID: want.DeviceID}
	switch {
	case got == nil:
		p.Kind, p.Detail = ProblemMissing, "the hub holds no identity with this device id"
	case !SameCredentials(got, want):
		p.Kind, p.Detail = ProblemMismatch, "the hub's identity has other credentials than the device proved"
	default:
		return
	}
	if opt.Repair {
		hctx, cancel := context.WithTimeout(ctx, e.opt.HubTimeout)
		err := e.opt.Registrar.RegisterDevice(hctx, DeviceFromIdentity(want))
		cancel()
		if err != nil {
			p.Detail += "; repair failed: " + err.Error()
		} else {
			p.Repaired = true
		}
	}
	add(rep, opt.MaxProblems, p)
}

func (e *Engine) findOrphans(ctx context.Context, lister DeviceLister, hub string, named map[string]bool, opt CheckOptions, rep *CheckReport) error {
	after := ""
	for range 100_000 { // bounded: 100,000 pages
		page, more, err := lister.ListDevices(ctx, hub, after, 500)
		if err != nil {
			return err
		}
		for _, id := range page {
			if named[strings.ToLower(id.DeviceID)] {
				continue
			}
			p := Problem{Kind: ProblemOrphan, Hub: hub, DeviceID: id.DeviceID, Detail: "no registration record names this identity"}
			if opt.Repair && opt.Prune {
				dev := DeviceFromIdentity(id)
				if err := e.opt.Registrar.UnregisterDevice(ctx, dev); err != nil {
					p.Detail += "; delete failed: " + err.Error()
				} else {
					p.Repaired = true
				}
			}
			add(rep, opt.MaxProblems, p)
		}
		if !more || len(page) == 0 {
			return nil
		}
		after = page[len(page)-1].DeviceID
	}
	return nil
}

// SameCredentials reports whether a hub's identity has the credentials a
// record says it should.
func SameCredentials(got, want *enroll.HubIdentity) bool {
	return got.PrimaryKey == want.PrimaryKey && got.SecondaryKey == want.SecondaryKey &&
		strings.EqualFold(got.PrimaryThumbprint, want.PrimaryThumbprint) &&
		strings.EqualFold(got.SecondaryThumbprint, want.SecondaryThumbprint) &&
		got.CertificateAuthority == want.CertificateAuthority &&
		got.IoTEdge == want.IoTEdge
}
