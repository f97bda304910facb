package enroll

import (
	"context"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/store"
)

// enrollments stores dps.IndividualEnrollment documents, keys and
// certificates included, under store.KindEnrollment.
var enrollments = &docKind[dps.IndividualEnrollment]{
	kind:     store.KindEnrollment,
	idName:   "registrationId",
	noun:     "enrollment",
	notFound: dps.CodeEnrollmentNotFound,
	id:       func(e *dps.IndividualEnrollment) string { return e.RegistrationID },
	setID:    func(e *dps.IndividualEnrollment, id string) { e.RegistrationID = id },
	etag:     func(e *dps.IndividualEnrollment) string { return e.ETag },
	clearReadOnly: func(e *dps.IndividualEnrollment) {
		e.ETag, e.CreatedDateTimeUTC, e.LastUpdatedDateTimeUTC, e.RegistrationState = "", nil, nil, nil
	},
	setMeta: func(e *dps.IndividualEnrollment, rec store.Record) {
		created, updated := rec.Created.UTC(), rec.Updated.UTC()
		e.ETag, e.CreatedDateTimeUTC, e.LastUpdatedDateTimeUTC = EnrollmentETag(rec.ETag), &created, &updated
	},
	prepare: prepareEnrollment,
	bulkError: func(id string, code int, status string) dps.BulkEnrollmentOperationError {
		return dps.BulkEnrollmentOperationError{RegistrationID: id, ErrorCode: code, ErrorStatus: status}
	},
}

// GetEnrollment returns the stored individual enrollment with its symmetric
// keys and certificates (a *dps.Error 404201 when there is none). Its etag
// and times are the record's. Use EnrollmentView before showing it to a
// client.
func GetEnrollment(ctx context.Context, st store.Store, registrationID string) (*dps.IndividualEnrollment, error) {
	return enrollments.get(ctx, st, registrationID)
}

// PutEnrollment creates or replaces the individual enrollment
// registrationID with e, applying Azure's rules: ifMatch "" only creates
// (409001 if it exists), "*" or the current etag (quoted or not) replaces
// (412001 if it does not exist or the etag is stale). e is validated (400004
// on any problem), defaults and generated keys are filled in, and keys and
// certificates omitted by an update are kept from the stored record. Members
// the service owns (etag, times, registrationState) are ignored. e itself is
// not modified; the stored enrollment, with keys, is returned.
func PutEnrollment(ctx context.Context, st store.Store, registrationID string, e *dps.IndividualEnrollment, ifMatch string) (*dps.IndividualEnrollment, error) {
	return enrollments.put(ctx, st, registrationID, e, precondition{ifMatch: ifMatch})
}

// DeleteEnrollment removes an individual enrollment; ifMatch may be empty,
// "*" or its etag. The device's registration record is left alone.
func DeleteEnrollment(ctx context.Context, st store.Store, registrationID, ifMatch string) error {
	return enrollments.delete(ctx, st, registrationID, ifMatch)
}

// ListEnrollments returns a page of individual enrollments (with keys) and
// whether more follow.
func ListEnrollments(ctx context.Context, st store.Store, opt store.ListOptions) ([]*dps.IndividualEnrollment, bool, error) {
	return enrollments.list(ctx, st, opt)
}

// BulkEnrollments runs a bulk operation on individual enrollments. A bad
// request as a whole (mode, more than dps.MaxBulkItems items, duplicate ids)
// is a *dps.Error 400004; otherwise each item's failure is reported in the
// result: create → 409001 if it exists, update → upsert,
// updateIfMatchETag → 412001 if the item's etag is stale, delete → 404201
// if it is missing (and 412001 if the item carries a stale etag).
func BulkEnrollments(ctx context.Context, st store.Store, op *dps.BulkEnrollmentOperation) (*dps.BulkEnrollmentOperationResult, error) {
	return enrollments.bulk(ctx, st, op.Mode, op.Enrollments)
}
