package enroll

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

// docKind describes how one document type (individual enrollment or
// enrollment group) lives in the store, so that reading, writing, deleting,
// listing and bulk operations are written once for both.
type docKind[T any] struct {
	kind     store.Kind
	idName   string // "registrationId" or "enrollmentGroupId", for messages
	noun     string // "enrollment" or "enrollment group", for messages
	notFound int    // dps error code when the record is missing
	id       func(*T) string
	setID    func(*T, string)
	etag     func(*T) string
	// clearReadOnly drops the members a client may send back but the
	// service owns (etag, times, registration state).
	clearReadOnly func(*T)
	// setMeta overlays the record's etag and times, which are authoritative.
	setMeta   func(*T, store.Record)
	prepare   func(doc, old *T) error
	bulkError func(id string, code int, status string) dps.BulkEnrollmentOperationError
}

// precondition says when a write may replace an existing record.
type precondition struct {
	// ifMatch is the If-Match value: "" creates only (409 if the record
	// exists), "*" replaces any existing record, anything else must match.
	ifMatch string
	// upsert ignores ifMatch and writes whether or not the record exists
	// (bulk "update").
	upsert bool
}

// maxUpsertAttempts bounds the retries of an upsert that lost a race with a
// concurrent writer.
const maxUpsertAttempts = 3

func (k *docKind[T]) errNotFound(id string) error {
	return dps.Errorf(k.notFound, "The %s %q was not found.", k.noun, id)
}

func (k *docKind[T]) decode(rec store.Record) (*T, error) {
	var doc T
	if err := json.Unmarshal(rec.Data, &doc); err != nil {
		return nil, fmt.Errorf("decode %s %q: %w", k.noun, rec.ID, err)
	}
	k.setID(&doc, rec.ID)
	k.setMeta(&doc, rec)
	return &doc, nil
}

func (k *docKind[T]) get(ctx context.Context, st store.Store, id string) (*T, error) {
	rec, err := st.Get(ctx, k.kind, id)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, k.errNotFound(id)
		}
		return nil, fmt.Errorf("get %s %q: %w", k.noun, id, err)
	}
	return k.decode(rec)
}

// put validates doc and writes it under id according to pc. doc is not
// modified; the stored document (with keys and certificates) is returned.
// Nothing is written unless every check passes.
func (k *docKind[T]) put(ctx context.Context, st store.Store, id string, doc *T, pc precondition) (*T, error) {
	if err := ValidateID(k.idName, id); err != nil {
		return nil, err
	}
	switch bodyID := k.id(doc); {
	case bodyID == "":
		// The path names the record; a body without its id is still clear.
	case !strings.EqualFold(bodyID, id):
		return nil, dps.Errorf(dps.CodeInvalidArgument, "The %s %q in the body does not match %q in the request path.", k.idName, bodyID, id)
	}
	for attempt := 1; ; attempt++ {
		out, retry, err := k.putOnce(ctx, st, id, doc, pc)
		if !retry || attempt >= maxUpsertAttempts {
			return out, err
		}
	}
}

func (k *docKind[T]) putOnce(ctx context.Context, st store.Store, id string, doc *T, pc precondition) (out *T, retry bool, err error) {
	rec, err := st.Get(ctx, k.kind, id)
	exists := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, false, fmt.Errorf("put %s %q: %w", k.noun, id, err)
	}
	var cond store.Condition
	switch {
	case pc.upsert && exists:
		cond.IfMatch = rec.ETag
	case pc.upsert:
		cond.MustNotExist = true
	case pc.ifMatch == "":
		if exists {
			return nil, false, dps.Errorf(dps.CodeConflict, "The %s %q already exists; send If-Match with its etag (or *) to replace it.", k.noun, rec.ID)
		}
		cond.MustNotExist = true
	default:
		if !exists {
			return nil, false, dps.Errorf(dps.CodePreconditionFailed, "The %s %q does not exist, so If-Match cannot match.", k.noun, id)
		}
		if !ETagMatch(rec.ETag, pc.ifMatch) {
			return nil, false, dps.Errorf(dps.CodePreconditionFailed, "The %s %q has changed: If-Match %s does not match its etag.", k.noun, rec.ID, pc.ifMatch)
		}
		// Replace exactly the version that was merged below, so a write
		// that lands in between is not overwritten silently.
		cond.IfMatch = rec.ETag
	}
	var old *T
	if exists {
		if old, err = k.decode(rec); err != nil {
			return nil, false, err
		}
		id = rec.ID // keep the spelling the record was created with
	}
	next, err := clone(doc)
	if err != nil {
		return nil, false, err
	}
	k.setID(next, id)
	k.clearReadOnly(next)
	if err := k.prepare(next, old); err != nil {
		return nil, false, err
	}
	data, err := json.Marshal(next)
	if err != nil {
		return nil, false, fmt.Errorf("encode %s %q: %w", k.noun, id, err)
	}
	saved, err := st.Put(ctx, store.Record{Kind: k.kind, ID: id, Data: data}, cond)
	switch {
	case err == nil:
		k.setMeta(next, saved)
		return next, false, nil
	case pc.upsert && (errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrPrecondition)):
		return nil, true, dps.Errorf(dps.CodePreconditionFailed, "The %s %q kept changing while it was written; try again.", k.noun, id)
	case errors.Is(err, store.ErrExists):
		return nil, false, dps.Errorf(dps.CodeConflict, "The %s %q already exists; send If-Match with its etag (or *) to replace it.", k.noun, id)
	case errors.Is(err, store.ErrPrecondition):
		return nil, false, dps.Errorf(dps.CodePreconditionFailed, "The %s %q has changed: If-Match does not match its etag.", k.noun, id)
	}
	return nil, false, fmt.Errorf("put %s %q: %w", k.noun, id, err)
}

func (k *docKind[T]) delete(ctx context.Context, st store.Store, id, ifMatch string) error {
	err := st.Delete(ctx, k.kind, id, store.Condition{IfMatch: NormalizeETag(ifMatch)})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return k.errNotFound(id)
	case errors.Is(err, store.ErrPrecondition):
		// The store says the same for a record that is not there: a
		// delete of nothing is 404, whatever the If-Match.
		if _, gerr := st.Get(ctx, k.kind, id); errors.Is(gerr, store.ErrNotFound) {
			return k.errNotFound(id)
		}
		return dps.Errorf(dps.CodePreconditionFailed, "The %s %q has changed: If-Match %s does not match its etag.", k.noun, id, ifMatch)
	case err != nil:
		return fmt.Errorf("delete %s %q: %w", k.noun, id, err)
	}
	return nil
}

func (k *docKind[T]) list(ctx context.Context, st store.Store, opt store.ListOptions) ([]*T, bool, error) {
	recs, more, err := st.List(ctx, k.kind, opt)
	if err != nil {
		return nil, false, fmt.Errorf("list %ss: %w", k.noun, err)
	}
	out := make([]*T, 0, len(recs))
	for _, rec := range recs {
		doc, err := k.decode(rec)
		if err != nil {
			return nil, false, err
		}
		out = append(out, doc)
	}
	return out, more, nil
}

// bulk runs a bulk operation. The request as a whole is checked first (mode,
// 1–10 items, no duplicate ids) and refused with 400 if wrong; after that
// each item succeeds or fails on its own and failures are listed in the
// result. Only a store failure (the database is down) fails the whole call.
func (k *docKind[T]) bulk(ctx context.Context, st store.Store, mode string, items []T) (*dps.BulkEnrollmentOperationResult, error) {
	m, err := bulkMode(mode)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 || len(items) > dps.MaxBulkItems {
		return nil, dps.Errorf(dps.CodeInvalidArgument, "A bulk operation takes 1 to %d %ss; this one has %d.", dps.MaxBulkItems, k.noun, len(items))
	}
	seen := make(map[string]bool, len(items))
	for i := range items {
		id := strings.ToLower(k.id(&items[i]))
		if id != "" && seen[id] {
			return nil, dps.Errorf(dps.CodeInvalidArgument, "The bulk operation names the %s %q more than once.", k.idName, k.id(&items[i]))
		}
		seen[id] = true
	}
	res := &dps.BulkEnrollmentOperationResult{IsSuccessful: true, Errors: []dps.BulkEnrollmentOperationError{}}
	for i := range items {
		item := &items[i]
		id := k.id(item)
		var err error
		switch {
		case m == dps.BulkCreate:
			_, err = k.put(ctx, st, id, item, precondition{})
		case m == dps.BulkUpdate, m == dps.BulkUpdateIfMatchETag && k.etag(item) == "":
			_, err = k.put(ctx, st, id, item, precondition{upsert: true})
		case m == dps.BulkUpdateIfMatchETag:
			_, err = k.put(ctx, st, id, item, precondition{ifMatch: k.etag(item)})
		case m == dps.BulkDelete:
			if err = ValidateID(k.idName, id); err == nil {
				err = k.delete(ctx, st, id, k.etag(item))
			}
		}
		if err == nil {
			continue
		}
		if errors.Is(err, store.ErrUnavailable) {
			return nil, err
		}
		de := dps.AsError(err)
		res.IsSuccessful = false
		res.Errors = append(res.Errors, k.bulkError(id, de.ErrorCode, de.Message))
	}
	return res, nil
}

// bulkMode returns the canonical spelling of a bulk mode. Clients spell
// updateIfMatchETag with either case, so modes compare case-insensitively.
func bulkMode(mode string) (string, error) {
	for _, m := range []string{dps.BulkCreate, dps.BulkUpdate, dps.BulkUpdateIfMatchETag, dps.BulkDelete} {
		if strings.EqualFold(mode, m) {
			return m, nil
		}
	}
	return "", dps.Errorf(dps.CodeInvalidArgument, "The bulk operation mode %q is not valid; use create, update, updateIfMatchETag or delete.", mode)
}
