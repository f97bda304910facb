package allocpolicy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/enroll"
	"github.com/dpsd/dpsd/internal/store"
)

// Kind is the store collection of allocation policies, keyed by name.
const Kind = store.KindAllocationPolicy

// MaxPolicies bounds how many policies an instance keeps.
const MaxPolicies = 100

// Policy is the wire form of a policy, defined in api/admin.
type Policy = admin.AllocationPolicy

// Definition is the wire form of a policy's source, defined in api/admin.
type Definition = admin.AllocationPolicyDefinition

// ErrNotFound is returned (wrapped) for a policy that does not exist.
var ErrNotFound = errors.New("allocation policy not found")

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidName reports whether name can name a policy: 1 to 64 letters,
// digits, '.', '_' and '-', starting with a letter or digit.
func ValidName(name string) bool { return validName.MatchString(name) }

// Registry reads and writes policies in a store and keeps each compiled
// once per version. It is safe for concurrent use; nodes sharing the store
// see each other's changes at their next evaluation (the etag of the
// stored record decides whether the compiled copy is still good).
type Registry struct {
	st        store.Store
	costLimit uint64

	mu       sync.Mutex
	compiled map[string]compiled
}

type compiled struct {
	etag    string
	prg     *Program
	checked time.Time // when the store last said etag is current
}

// recheckAfter is how long an allocation uses a compiled policy without
// asking the store whether it changed: a store read per allocation would
// cost more than the evaluation. Changes made through this registry apply
// at once; other nodes' within this time.
const recheckAfter = time.Second

// New returns a registry over st; costLimit <= 0 means DefaultCostLimit.
func New(st store.Store, costLimit uint64) *Registry {
	return &Registry{st: st, costLimit: costLimit, compiled: map[string]compiled{}}
}

// List returns every policy, ordered by name.
func (r *Registry) List(ctx context.Context) ([]*Policy, error) {
	recs, _, err := r.st.List(ctx, Kind, store.ListOptions{Limit: MaxPolicies})
	if err != nil {
		return nil, fmt.Errorf("list allocation policies: %w", err)
	}
	out := make([]*Policy, 0, len(recs))
	for _, rec := range recs {
		p, err := decode(rec)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Get returns the policy named name.
func (r *Registry) Get(ctx context.Context, name string) (*Policy, error) {
	rec, err := r.st.Get(ctx, Kind, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound(name)
	}
	if err != nil {
		return nil, fmt.Errorf("get allocation policy %q: %w", name, err)
	}
	return decode(rec)
}

// Put creates the policy name or replaces it. ifMatch, when not empty,
// must be its current etag ("*": it must exist); ifNoneMatch "*" demands
// that it does not exist yet. The source is compiled first: a policy that
// does not compile is refused with dps.CodeInvalidArgument and the
// compiler's message and position.
func (r *Registry) Put(ctx context.Context, name string, def Definition, ifMatch, ifNoneMatch string) (p *Policy, created bool, err error) {
	if !ValidName(name) {
		return nil, false, dps.Errorf(dps.CodeInvalidArgument, "The allocation policy name %q is not valid: use 1 to 64 letters, digits, '.', '_' and '-', starting with a letter or digit.", name)
	}
	if len(def.Description) > 1024 {
		return nil, false, dps.Errorf(dps.CodeInvalidArgument, "The description is longer than 1024 bytes.")
	}
	if _, err := Compile(name, def.Expression, r.costLimit); err != nil {
		var ce *CompileError
		if errors.As(err, &ce) {
			return nil, false, dps.Errorf(dps.CodeInvalidArgument, "The allocation policy %s does not compile: %s", name, ce.Error())
		}
		return nil, false, err
	}
	data, err := json.Marshal(&Policy{Expression: def.Expression, Description: def.Description})
	if err != nil {
		return nil, false, fmt.Errorf("encode allocation policy: %w", err)
	}
	cond := store.Condition{}
	switch {
	case ifNoneMatch == "*":
		cond.MustNotExist = true
	case ifMatch == "*":
		if _, err := r.Get(ctx, name); err != nil {
			return nil, false, err
		}
	case ifMatch != "":
		cond.IfMatch = enroll.NormalizeETag(ifMatch)
	default:
		if _, err := r.st.Get(ctx, Kind, name); errors.Is(err, store.ErrNotFound) {
			cond.MustNotExist = true
		}
	}
	if cond.MustNotExist {
		if n, err := r.count(ctx); err != nil {
			return nil, false, err
		} else if n >= MaxPolicies {
			return nil, false, dps.Errorf(dps.CodeInvalidArgument, "At most %d allocation policies can be kept.", MaxPolicies)
		}
	}
	rec, err := r.st.Put(ctx, store.Record{Kind: Kind, ID: name, Data: data}, cond)
	switch {
	case errors.Is(err, store.ErrExists):
		if ifNoneMatch == "*" {
			return nil, false, dps.Errorf(dps.CodeConflict, "The allocation policy %s exists already.", name)
		}
		return nil, false, dps.Errorf(dps.CodeConflict, "The allocation policy %s was created concurrently; try again.", name)
	case errors.Is(err, store.ErrPrecondition):
		return nil, false, dps.Errorf(dps.CodePreconditionFailed, "The etag %s does not match the allocation policy's current etag.", ifMatch)
	case errors.Is(err, store.ErrNotFound):
		return nil, false, notFound(name)
	case err != nil:
		return nil, false, fmt.Errorf("save allocation policy %q: %w", name, err)
	}
	r.mu.Lock()
	delete(r.compiled, name)
	r.mu.Unlock()
	p, err = decode(rec)
	return p, cond.MustNotExist, err
}

// Delete removes a policy; ifMatch works as in Put. Enrollments that
// select it then fail to allocate (400207) until it exists again.
func (r *Registry) Delete(ctx context.Context, name, ifMatch string) error {
	err := r.st.Delete(ctx, Kind, name, store.Condition{IfMatch: enroll.NormalizeETag(ifMatch)})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return notFound(name)
	case errors.Is(err, store.ErrPrecondition):
		return dps.Errorf(dps.CodePreconditionFailed, "The etag %s does not match the allocation policy's current etag.", ifMatch)
	case err != nil:
		return fmt.Errorf("delete allocation policy %q: %w", name, err)
	}
	r.mu.Lock()
	delete(r.compiled, name)
	r.mu.Unlock()
	return nil
}

// Program returns the compiled current version of the policy name, and
// its etag: compiled once per version.
func (r *Registry) Program(ctx context.Context, name string) (*Program, string, error) {
	r.mu.Lock()
	c, ok := r.compiled[name]
	r.mu.Unlock()
	if ok && time.Since(c.checked) < recheckAfter {
		return c.prg, c.etag, nil
	}
	p, err := r.Get(ctx, name)
	if err != nil {
		return nil, "", err
	}
	if ok && c.etag == p.ETag {
		r.mu.Lock()
		c.checked = time.Now()
		r.compiled[name] = c
		r.mu.Unlock()
		return c.prg, p.ETag, nil
	}
	prg, err := Compile(name, p.Expression, r.costLimit)
	if err != nil {
		return nil, "", fmt.Errorf("allocation policy %s: %w", name, err)
	}
	r.mu.Lock()
	if len(r.compiled) >= MaxPolicies {
		clear(r.compiled)
	}
	r.compiled[name] = compiled{etag: p.ETag, prg: prg, checked: time.Now()}
	r.mu.Unlock()
	return prg, p.ETag, nil
}

func (r *Registry) count(ctx context.Context) (int, error) {
	recs, _, err := r.st.List(ctx, Kind, store.ListOptions{Limit: MaxPolicies})
	if err != nil {
		return 0, fmt.Errorf("count allocation policies: %w", err)
	}
	return len(recs), nil
}

func decode(rec store.Record) (*Policy, error) {
	var p Policy
	if err := json.Unmarshal(rec.Data, &p); err != nil {
		return nil, fmt.Errorf("decode allocation policy %q: %w", rec.ID, err)
	}
	created, updated := rec.Created.UTC(), rec.Updated.UTC()
	p.Name, p.ETag = rec.ID, rec.ETag
	p.CreatedDateTimeUTC, p.LastUpdatedDateTimeUTC = &created, &updated
	return &p, nil
}

// notFoundError is both ErrNotFound and a dps error.
type notFoundError struct{ de *dps.Error }

func notFound(name string) error {
	return &notFoundError{de: dps.Errorf(dps.CodeNotFound, "The allocation policy %s does not exist.", name)}
}

func (e *notFoundError) Error() string   { return e.de.Message }
func (e *notFoundError) Unwrap() []error { return []error{ErrNotFound, e.de} }
