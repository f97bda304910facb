package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// KindHealth holds the one record that write-health probes rewrite (id
// "probe"); nothing reads it.
const KindHealth Kind = "health"

// WriteChecker is implemented by stores that can tell whether writes
// succeed right now, which is what a health check must report: a database
// that answers reads but cannot commit (a full disk, a read-only file
// system, a replica promoted away) serves no registration.
type WriteChecker interface {
	// CheckWrite returns nil when the store's writes succeed, or the
	// error that the last ones failed with.
	CheckWrite(ctx context.Context) error
}

// Bounds of WriteHealth.
const (
	// failureMemory is how long a failed write marks the store unhealthy
	// when no write has succeeded since. A probe's success does not clear
	// it: a nearly full disk can take a small probe and refuse the
	// registrations that matter.
	failureMemory = 10 * time.Second
	// recentSuccess is how long a successful write vouches for the store
	// without a probe, so a busy node probes never.
	recentSuccess = 5 * time.Second
	// probeEvery spaces out probes, so health checks from several load
	// balancers cost at most one small commit per interval.
	probeEvery = 2 * time.Second
)

// WriteHealth follows the outcome of a store's writes, for CheckWrite. The
// zero value is ready to use and safe for concurrent use.
type WriteHealth struct {
	probing  sync.Mutex // held while a probe runs, so checks share one
	mu       sync.Mutex
	lastOK   time.Time
	lastFail time.Time
	failErr  error
	probeAt  time.Time
	probeErr error
}

// Observe records the outcome of one write. Only ErrUnavailable counts as
// a failure: a failed condition or a caller that gave up says nothing
// about the database.
func (h *WriteHealth) Observe(err error) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case err == nil, errors.Is(err, ErrNotFound), errors.Is(err, ErrExists), errors.Is(err, ErrPrecondition):
		h.lastOK = now
	case errors.Is(err, ErrUnavailable):
		h.lastFail, h.failErr = now, err
	}
}

// Check reports the store's write health: the error of a recent failed
// write that nothing has succeeded since; else nil when a write succeeded
// recently; else the outcome of probe, a small write that is not observed,
// run at most once per probeEvery.
func (h *WriteHealth) Check(ctx context.Context, probe func(context.Context) error) error {
	if done, err := h.known(); done {
		return err
	}
	h.probing.Lock()
	defer h.probing.Unlock()
	// A probe that finished while this check waited answers it too.
	if done, err := h.known(); done {
		return err
	}
	err := probe(ctx)
	if err != nil {
		err = fmt.Errorf("write probe: %w", err)
	}
	h.mu.Lock()
	h.probeAt, h.probeErr = time.Now(), err
	h.mu.Unlock()
	return err
}

// known is Check's answer when it needs no probe.
func (h *WriteHealth) known() (done bool, err error) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failErr != nil && h.lastFail.After(h.lastOK) && now.Sub(h.lastFail) < failureMemory {
		return true, fmt.Errorf("the last write failed %v ago: %w", now.Sub(h.lastFail).Round(time.Millisecond), h.failErr)
	}
	if !h.lastOK.IsZero() && now.Sub(h.lastOK) < recentSuccess {
		return true, nil
	}
	if !h.probeAt.IsZero() && now.Sub(h.probeAt) < probeEvery {
		return true, h.probeErr
	}
	return false, nil
}
