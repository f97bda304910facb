package server

import (
	"context"

	"github.com/dpsd/dpsd/store"
)

// notifyingStore tells onChange about every successful write to the kinds
// it watches. The service API writes through it, so the engine drops cached
// enrollment groups the moment one changes on this node.
type notifyingStore struct {
	store.Store
	kinds    map[store.Kind]bool
	onChange func(store.Kind)
}

func (n *notifyingStore) Put(ctx context.Context, rec store.Record, cond store.Condition) (store.Record, error) {
	out, err := n.Store.Put(ctx, rec, cond)
	if err == nil && n.kinds[rec.Kind] {
		n.onChange(rec.Kind)
	}
	return out, err
}

func (n *notifyingStore) Delete(ctx context.Context, kind store.Kind, id string, cond store.Condition) error {
	err := n.Store.Delete(ctx, kind, id, cond)
	if err == nil && n.kinds[kind] {
		n.onChange(kind)
	}
	return err
}
