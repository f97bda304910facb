package server

import (
	"context"
	"log/slog"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/alloclog"
	"github.com/dpsd/dpsd/internal/listcache"
	"github.com/dpsd/dpsd/internal/provision"
	"github.com/dpsd/dpsd/internal/store"
)

// effects are what a write of a record causes besides the write itself,
// written out in one place:
//
//   - an enrollment group changed: the engine drops its cached groups;
//   - a linked hub changed: allocation drops its list of linked hubs;
//   - a registration deleted (through the service API, on this node): its
//     allocation log is deleted with it.
type effects struct {
	engine  *provision.Engine
	hubList *listcache.Cache[*admin.LinkedHub]
	alog    *alloclog.Log
	log     *slog.Logger
}

// written has the effects of a write of (kind, id); deleted tells a delete.
// id is empty for other nodes' writes, which are known by kind only.
func (e *effects) written(ctx context.Context, kind store.Kind, id string, deleted bool) {
	switch {
	case kind == store.KindEnrollmentGroup:
		e.engine.InvalidateEnrollments()
	case kind == store.KindLinkedHub:
		e.hubList.Invalidate()
	case kind == store.KindRegistration && deleted && id != "":
		// The log outlives the request that deleted the registration.
		if err := e.alog.Delete(context.WithoutCancel(ctx), id); err != nil {
			e.log.Warn("deleting allocation log", "registrationId", id, "err", err)
		}
	}
}

// notifyingStore has the effects of every successful write made through
// it. The service API and the linked-hub endpoints write through it, so
// the engine drops cached enrollment groups the moment one changes on this
// node, and a deleted registration takes its allocation log with it.
type notifyingStore struct {
	store.Store
	effects *effects
}

func (n *notifyingStore) Put(ctx context.Context, rec store.Record, cond store.Condition) (store.Record, error) {
	out, err := n.Store.Put(ctx, rec, cond)
	if err == nil {
		n.effects.written(ctx, rec.Kind, rec.ID, false)
	}
	return out, err
}

func (n *notifyingStore) Delete(ctx context.Context, kind store.Kind, id string, cond store.Condition) error {
	err := n.Store.Delete(ctx, kind, id, cond)
	if err == nil {
		n.effects.written(ctx, kind, id, true)
	}
	return err
}

// followChanges drops this node's cached data when any node writes a
// record of a cached kind, for stores that several nodes share (see
// store.Notifier): without it, a node would go on verifying devices
// against an enrollment group that another node disabled, or allocating
// to a hub another node unlinked, until its copy expired. Each kind has the
// effects of this node's own writes of it. It returns when ctx ends.
func followChanges(ctx context.Context, n store.Notifier, e *effects, log *slog.Logger) {
	changes, err := n.Changes(ctx)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("not following other nodes' changes; cached enrollment groups and linked hubs expire on their own", "err", err)
		}
		return
	}
	for kind := range changes {
		// Notifications carry no id, and deletes look like writes: no
		// cached kind needs more, and the handling of deleted records
		// (registrations' allocation logs) is for the node that deleted
		// them.
		e.written(ctx, kind, "", false)
	}
}
