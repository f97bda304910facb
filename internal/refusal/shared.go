package refusal

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/store"
)

// Bounds of the refusals kept in a shared store.
const (
	// DefaultStoreMax is how many refusals a shared store keeps, all
	// nodes together, when not told.
	DefaultStoreMax = 10000
	// DefaultStoreMaxAge is how long a shared store keeps a refusal when
	// not told.
	DefaultStoreMaxAge = 7 * 24 * time.Hour
	// queueSize bounds the refusals waiting to be written: a flood of
	// refused devices must not become a flood of database writes, so
	// what does not fit is only logged and kept in this node's ring.
	queueSize = 256
	// pruneEvery spaces out the sweeps that enforce the bounds.
	pruneEvery = time.Minute
	// maxStoredPerDevice bounds how many of one device's refusals a
	// search by registration id reads.
	maxStoredPerDevice = 1000
	// writeTimeout bounds one write of a refusal.
	writeTimeout = 5 * time.Second
)

// shared writes refusals to a store shared by several nodes and finds
// them there.
type shared struct {
	st     store.Store
	node   string
	max    int
	maxAge time.Duration
	now    func() time.Time
	log    *slog.Logger

	queue   chan admin.Refusal
	dropped atomic.Int64
}

func newShared(opt Options) *shared {
	return &shared{
		st:     opt.Store,
		node:   opt.Node,
		max:    cmp.Or(opt.StoreMax, DefaultStoreMax),
		maxAge: cmp.Or(opt.StoreMaxAge, DefaultStoreMaxAge),
		now:    opt.Now,
		log:    opt.Logger,
		queue:  make(chan admin.Refusal, queueSize),
	}
}

// enqueue hands r to Run without waiting; a nil *shared does nothing.
func (s *shared) enqueue(r admin.Refusal) {
	if s == nil || r.TrackingID == "" {
		return
	}
	select {
	case s.queue <- r:
	default:
		s.dropped.Add(1)
	}
}

// Run writes the refusals recorded to the shared store and keeps its
// bounds, until ctx ends; then it writes what is still queued (each write
// bounded) and returns. Without Options.Store it returns at once.
func (l *Log) Run(ctx context.Context) {
	s := l.shared
	if s == nil {
		return
	}
	tick := time.NewTicker(pruneEvery)
	defer tick.Stop()
	written := 0
	for {
		select {
		case r := <-s.queue:
			s.write(context.WithoutCancel(ctx), r)
			written++
		case <-tick.C:
			if n := s.dropped.Swap(0); n > 0 {
				s.log.Warn("refusals: the shared store kept up with none of some refused requests; they are in this node's log only", "dropped", n)
			}
			if written > 0 {
				written = 0
				if err := s.prune(ctx); err != nil && ctx.Err() == nil {
					s.log.Warn("refusals: pruning the shared store failed", "err", err)
				}
			}
		case <-ctx.Done():
			for {
				select {
				case r := <-s.queue:
					s.write(context.WithoutCancel(ctx), r)
				default:
					return
				}
			}
		}
	}
}

// Prune enforces the bounds of the shared store now (Run does it every
// minute it wrote).
func (l *Log) Prune(ctx context.Context) error {
	if l.shared == nil {
		return nil
	}
	return l.shared.prune(ctx)
}

func (s *shared) write(ctx context.Context, r admin.Refusal) {
	data, err := json.Marshal(r)
	if err != nil {
		s.log.Error("refusals: encode", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	_, err = s.st.Put(ctx, store.Record{Kind: store.KindRefusal, ID: r.TrackingID, Ref: r.RegistrationID, Data: data}, store.Condition{})
	if err != nil {
		s.log.Warn("refusals: writing to the shared store failed; the refusal is in this node's log only",
			"trackingId", r.TrackingID, "err", err)
	}
}

// find reads the stored refusals with trackingID and of registrationID,
// one of which is set.
func (s *shared) find(ctx context.Context, registrationID, trackingID string) ([]admin.Refusal, error) {
	if trackingID != "" {
		rec, err := s.st.Get(ctx, store.KindRefusal, trackingID)
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("get refusal %s: %w", trackingID, err)
		}
		r, err := decode(rec)
		if err != nil {
			return nil, err
		}
		if registrationID != "" && !strings.EqualFold(r.RegistrationID, registrationID) {
			return nil, nil
		}
		return []admin.Refusal{r}, nil
	}
	var out []admin.Refusal
	err := s.each(ctx, registrationID, maxStoredPerDevice, func(rec store.Record) error {
		r, err := decode(rec)
		if err != nil {
			return err
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

// each calls f for the stored refusals (of ref, when not empty), at most
// limit of them.
func (s *shared) each(ctx context.Context, ref string, limit int, f func(store.Record) error) error {
	after := ""
	seen := 0
	for {
		recs, more, err := s.st.List(ctx, store.KindRefusal, store.ListOptions{Ref: ref, After: after, Limit: 500})
		if err != nil {
			return fmt.Errorf("list refusals: %w", err)
		}
		for _, rec := range recs {
			if seen == limit {
				return nil
			}
			seen++
			if err := f(rec); err != nil {
				return err
			}
		}
		if !more || len(recs) == 0 {
			return nil
		}
		after = recs[len(recs)-1].ID
	}
}

// prune deletes the stored refusals older than the age bound, then the
// oldest beyond the count bound. Several nodes may prune at once: a
// record another node deleted first is no error.
func (s *shared) prune(ctx context.Context) error {
	type kept struct {
		id   string
		when time.Time
	}
	var all []kept
	// The store holds about max plus what was written since the last
	// sweep; reading more than a few times max would be a runaway.
	err := s.each(ctx, "", 4*s.max+queueSize, func(rec store.Record) error {
		all = append(all, kept{rec.ID, rec.Created})
		return nil
	})
	if err != nil {
		return err
	}
	slices.SortFunc(all, func(a, b kept) int { return b.when.Compare(a.when) }) // newest first
	oldest := s.now().Add(-s.maxAge)
	for i, k := range all {
		if i < s.max && k.when.After(oldest) {
			continue
		}
		err := s.st.Delete(ctx, store.KindRefusal, k.id, store.Condition{})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("delete refusal %s: %w", k.id, err)
		}
	}
	return nil
}

func decode(rec store.Record) (admin.Refusal, error) {
	var r admin.Refusal
	if err := json.Unmarshal(rec.Data, &r); err != nil {
		return r, fmt.Errorf("refusal %s: %w", rec.ID, err)
	}
	return r, nil
}

// merge returns the refusals of a and b, each tracking id once, newest
// first, at most limit (0: all).
func merge(a, b []admin.Refusal, limit int) []admin.Refusal {
	out := slices.Concat(a, b)
	slices.SortStableFunc(out, func(x, y admin.Refusal) int {
		if c := y.Time.Compare(x.Time); c != 0 {
			return c
		}
		return strings.Compare(x.TrackingID, y.TrackingID)
	})
	out = slices.CompactFunc(out, func(x, y admin.Refusal) bool { return strings.EqualFold(x.TrackingID, y.TrackingID) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	if out == nil {
		out = []admin.Refusal{}
	}
	return out
}
