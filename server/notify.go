package server

import (
	"context"

	"github.com/dpsd/dpsd/store"
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
