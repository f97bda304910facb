package server

import (
	"context"
	"log/slog"

	"github.com/dpsd/dpsd/internal/store"
)

// notifyingStore tells onChange about every successful write. The service
// API writes through it, so the engine drops cached enrollment groups the
// moment one changes on this node, and a deleted registration takes its
// allocation log with it.
type notifyingStore struct {
	store.Store
	onChange func(kind store.Kind, id string, deleted bool)
}

func (n *notifyingStore) Put(ctx context.Context, rec store.Record, cond store.Condition) (store.Record, error) {
	out, err := n.Store.Put(ctx, rec, cond)
	if err == nil {
		n.onChange(rec.Kind, rec.ID, false)
	}
	return out, err
}

func (n *notifyingStore) Delete(ctx context.Context, kind store.Kind, id string, cond store.Condition) error {
	err := n.Store.Delete(ctx, kind, id, cond)
	if err == nil {
		n.onChange(kind, id, true)
	}
	return err
}

// followChanges drops this node's cached data when any node writes a
// record of a cached kind, for stores that several nodes share (see
// store.Notifier): without it, a node would go on verifying devices
// against an enrollment group that another node disabled, or allocating
// to a hub another node unlinked, until its copy expired. It hands each
// kind to onChange, the function that handles this node's own writes, so
// both kinds of write invalidate the same things. It returns when ctx ends.
func followChanges(ctx context.Context, n store.Notifier, onChange func(kind store.Kind, id string, deleted bool), log *slog.Logger) {
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
		onChange(kind, "", false)
	}
}
