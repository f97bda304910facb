package provision

import (
	"context"
	"errors"

	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/store"
)

// Stager is implemented by registrars that keep some hubs' identities in
// the engine's own store (dpsd's built-in hubs). For those the engine
// commits the identity, the registration record and the allocation's note
// as one batch (store.Batcher): neither the record nor the identity is ever
// durable without the other, so no intent needs recording first, and a
// registration costs one commit instead of three or four.
type Stager interface {
	// StageDevice returns the store writes that put dev into its hub, to
	// be committed in one batch with the registration record; nil, and no
	// error, when dev's hub or change cannot be staged (a hub elsewhere, a
	// move between hubs, an identity the hub holds already), which the
	// engine then writes through RegisterDevice. The writes' conditions
	// fail the batch if the hub changes before it commits.
	StageDevice(ctx context.Context, dev *HubDevice) (*Staged, error)
}

// Staged is a hub change as store writes.
type Staged struct {
	Writes []store.Write
	// Committed, when not nil, is called once the batch committed.
	Committed func()
}

// maxNoteAttempts bounds how often a batch is prepared again after its
// note's condition failed (another write to the allocation log of the same
// registration got in between).
const maxNoteAttempts = 3

// errStale reports that a write batched with a registration record found
// the store changed since it was prepared.
var errStale = errors.New("provision: a batched write's condition failed")

// commitStaged commits p's registration record over prev together with its
// hub identity, when the registrar can stage that identity in the engine's
// store. It returns the stored record; nil, and no error, when p must take
// the intent path instead; errLostRace when prev is no longer current.
func (e *Engine) commitStaged(ctx context.Context, p *plan, prev *enroll.Registration) (*enroll.Registration, error) {
	if _, ok := e.st.(store.Batcher); !ok || e.opt.NoStaging {
		return nil, nil
	}
	sg, ok := e.opt.Registrar.(Stager)
	if !ok {
		return nil, nil
	}
	staged, err := sg.StageDevice(ctx, p.dev)
	if err != nil {
		// What the hub would refuse, it refuses through RegisterDevice too,
		// with the same handling there; only the fast path is skipped.
		e.log.Debug("staging the hub identity failed; writing it to the hub instead",
			"registrationId", p.final.State.RegistrationID, "hub", p.dev.Hub, "err", err)
		return nil, nil
	}
	if staged == nil {
		return nil, nil
	}
	final := *p.final
	final.Work = nil
	stored, err := e.swapWith(ctx, &final, prev, staged.Writes, p.note)
	switch {
	case errors.Is(err, errStale):
		// The hub changed since it was staged (the identity was created
		// meanwhile): the intent path handles what it holds.
		return nil, nil
	case errors.Is(err, errLostRace):
		// The allocation happened all the same; its note says so.
		keep(ctx, p.note)
		return nil, err
	case err != nil:
		return nil, err
	}
	if staged.Committed != nil {
		staged.Committed()
	}
	return stored, nil
}

// swapWith writes r over prev by compare-and-swap, as swap does, in one
// batch with extra and with note's write when the store can batch: the
// record and what goes with it commit together or not at all. It fails
// with errLostRace when prev is no longer current, errStale when one of
// extra's conditions failed. A note that cannot join the batch is kept on
// its own; without a Batcher, extra must be empty.
func (e *Engine) swapWith(ctx context.Context, r, prev *enroll.Registration, extra []store.Write, note Note) (*enroll.Registration, error) {
	b, ok := e.st.(store.Batcher)
	if !ok || (len(extra) == 0 && note == nil) {
		if len(extra) > 0 {
			return nil, errors.New("provision: batched writes need a store.Batcher")
		}
		keep(ctx, note)
		return e.swap(ctx, r, prev)
	}
	cond := store.Condition{MustNotExist: true}
	if prev != nil {
		cond = store.Condition{IfMatch: prev.ETag()}
	}
	rw, stored, err := enroll.RegistrationWrite(r, cond)
	if err != nil {
		return nil, err
	}
	// The last attempt leaves out a note whose record kept changing, and
	// keeps it on its own after the commit.
	for attempt := 0; ; attempt++ {
		writes := append([]store.Write{rw}, extra...)
		noted := false
		if note != nil && attempt < maxNoteAttempts {
			if nw, err := note.Write(ctx, prev == nil && attempt == 0); err == nil {
				writes = append(writes, nw)
				noted = true
			}
		}
		recs, err := b.Apply(ctx, writes)
		var be *store.BatchError
		switch {
		case err == nil:
			if !noted {
				keep(ctx, note)
			}
			return stored(recs[0]), nil
		case errors.As(err, &be) && be.Index == 0:
			return nil, errLostRace
		case errors.As(err, &be) && noted && be.Index == len(writes)-1:
			continue // the note's record changed; prepare it again
		case errors.As(err, &be):
			return nil, errStale
		default:
			return nil, unavailable(err)
		}
	}
}

// keep writes a note on its own, if there is one.
func keep(ctx context.Context, n Note) {
	if n != nil {
		n.Keep(ctx)
	}
}
